"""Editing AMQP headers on the raw content-header bytes.

Strategy: a message's properties are kept exactly as the publisher sent them
(``model/message.py``); when the broker must change a header (``x-death``,
``x-delivery-count``, ``x-delay`` on release, ``x-stream-offset``) it edits
the encoded field table in place, so every value the publisher sent keeps
its field-table type tag (an ``I`` stays an ``I``) and only the headers the
broker touches are re-encoded. Edited tables are sorted by key, as
RabbitMQ's ``set_table_value`` leaves them. ``sender_keys`` reads the
sender-selected routing keys (CC/BCC) every publish path honours.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from mqbroker import errors
from mqbroker.model.message import Message
from mqbroker.protocol import codec
from mqbroker.protocol.table import encode_properties, encode_value

# --------------------------------------------------------------- raw tables

_FIXED_SIZES = {
    "t": 1, "b": 1, "B": 1, "s": 2, "u": 2, "I": 4, "i": 4,
    "l": 8, "L": 8, "f": 4, "d": 8, "T": 8, "D": 5, "V": 0, "\x00": 0,
}

RawItems = list[tuple[str, bytes]]


def _value_end(raw: bytes, offset: int) -> int:
    """End offset of the encoded value (tag included) starting at offset."""
    tag = chr(raw[offset])
    size = _FIXED_SIZES.get(tag)
    if size is not None:
        return offset + 1 + size
    if tag in "SxFA":
        (length,) = struct.unpack_from(">I", raw, offset + 1)
        return offset + 5 + int(length)
    raise ValueError(f"unknown field-table tag {tag!r}")


def split_table(raw: bytes, offset: int = 0) -> tuple[RawItems, int]:
    """A field table -> ([(key, encoded value with its tag)], end offset)."""
    (size,) = struct.unpack_from(">I", raw, offset)
    offset += 4
    end = offset + size
    items: RawItems = []
    while offset < end:
        klen = raw[offset]
        key = raw[offset + 1 : offset + 1 + klen].decode("utf-8", "replace")
        start = offset + 1 + klen
        offset = _value_end(raw, start)
        items.append((key, raw[start:offset]))
    return items, end


def split_array(value: bytes) -> list[bytes]:
    """An encoded ``A`` value (tag included) -> its encoded elements."""
    (size,) = struct.unpack_from(">I", value, 1)
    offset, end = 5, 5 + size
    elements = []
    while offset < end:
        stop = _value_end(value, offset)
        elements.append(value[offset:stop])
        offset = stop
    return elements


def join_table(items: RawItems) -> bytes:
    payload = b"".join(
        bytes((len(k.encode()),)) + k.encode() + v for k, v in items
    )
    return struct.pack(">I", len(payload)) + payload


def join_array(elements: list[bytes]) -> bytes:
    payload = b"".join(elements)
    return b"A" + struct.pack(">I", len(payload)) + payload


def sorted_items(items: RawItems) -> RawItems:
    return sorted(items, key=lambda kv: kv[0].encode())


# --------------------------------------------------------- raw properties

# (flag bit, kind) in wire order
_LAYOUT = (
    (0x8000, "s"), (0x4000, "s"), (0x2000, "F"), (0x1000, 1), (0x0800, 1),
    (0x0400, "s"), (0x0200, "s"), (0x0100, "s"), (0x0080, "s"), (0x0040, 8),
    (0x0020, "s"), (0x0010, "s"), (0x0008, "s"), (0x0004, "s"),
)
HEADERS_FLAG = 0x2000
EXPIRATION_FLAG = 0x0100


def split_properties(raw: bytes) -> tuple[int, dict[int, bytes]] | None:
    """Raw properties -> (flags, {flag bit: encoded field}); None when the
    flags need more than one word (never sent by real clients)."""
    if len(raw) < 2:
        return 0, {}
    (flags,) = struct.unpack_from(">H", raw, 0)
    if flags & 1:
        return None
    offset = 2
    fields: dict[int, bytes] = {}
    for bit, kind in _LAYOUT:
        if not flags & bit:
            continue
        if kind == "s":
            end = offset + 1 + raw[offset]
        elif kind == "F":
            (size,) = struct.unpack_from(">I", raw, offset)
            end = offset + 4 + size
        else:
            end = offset + int(kind)
        fields[bit] = raw[offset:end]
        offset = end
    return flags, fields


def join_properties(flags: int, fields: dict[int, bytes]) -> bytes:
    parts = [struct.pack(">H", flags)]
    for bit, _ in _LAYOUT:
        if flags & bit:
            parts.append(fields[bit])
    return b"".join(parts)


def edit_headers(
    raw: bytes,
    edit: Callable[[RawItems], RawItems],
    *,
    drop_expiration: bool = False,
) -> bytes:
    """New raw properties with the headers table passed through ``edit``
    (a list of (key, encoded value)); everything else byte for byte."""
    split = split_properties(raw)
    if split is None:  # multi-word flags: re-encode them as one word first
        split = split_properties(encode_properties(codec.decode_properties(raw)))
        assert split is not None
    flags, fields = split
    items: RawItems = []
    if flags & HEADERS_FLAG:
        items, _ = split_table(fields[HEADERS_FLAG])
    items = edit(items)
    fields[HEADERS_FLAG] = join_table(items)
    flags |= HEADERS_FLAG
    if drop_expiration and flags & EXPIRATION_FLAG:
        flags &= ~EXPIRATION_FLAG
        del fields[EXPIRATION_FLAG]
    return join_properties(flags, fields)


def with_header(message: Message, key: str, value: Any) -> Message:
    """The message with one header set (RabbitMQ sorts the table), e.g.
    ``x-delivery-count`` on a quorum-queue delivery."""
    encoded = encode_value(value)

    def edit(items: RawItems) -> RawItems:
        return sorted_items([(k, v) for k, v in items if k != key] + [(key, encoded)])

    return Message(
        message.msg_id,
        message.exchange,
        message.routing_key,
        edit_headers(message.properties_raw, edit),
        message.body,
    )


def sender_keys(headers: dict[str, Any] | None, name: str) -> list[str]:
    """CC or BCC routing keys; a non-array value is a 406 (RabbitMQ)."""
    if not headers or name not in headers:
        return []
    value = headers[name]
    if not isinstance(value, list):
        raise errors.PreconditionFailed(
            f"Invalid header '{name}': expected an array of strings"
        )
    keys = []
    for item in value:
        if isinstance(item, bytes | bytearray):
            item = bytes(item).decode("utf-8", "replace")
        if isinstance(item, str):
            keys.append(item)
    return keys


class HeaderStamp:
    """Properties with one long-int header appended, fast: per distinct
    raw properties (a publisher sends the same ones again and again) the
    stamped form is built once, and each message only gets its value
    written into that template. A stream stamps ``x-stream-offset`` this
    way at publish time, so replaying the log is copying."""

    def __init__(self, key: str, cache_size: int = 64) -> None:
        self.entry_head = bytes((len(key.encode()),)) + key.encode() + b"l"
        self.cache: dict[bytes, tuple[bytes, bytes]] = {}
        self.cache_size = cache_size

    def _template(self, raw: bytes) -> tuple[bytes, bytes]:
        split = split_properties(raw)
        if split is None:
            split = split_properties(encode_properties(codec.decode_properties(raw)))
            assert split is not None
        flags, fields = split
        table = fields.get(HEADERS_FLAG, b"\x00\x00\x00\x00") if flags & HEADERS_FLAG else b"\x00\x00\x00\x00"
        entry = self.entry_head + b"\x00" * 8
        (size,) = struct.unpack_from(">I", table)
        fields[HEADERS_FLAG] = struct.pack(">I", size + len(entry)) + table[4:] + entry
        stamped = join_properties(flags | HEADERS_FLAG, fields)
        # the 8 value bytes sit right after the headers table's last key
        cut = 2 + sum(
            len(fields[bit]) for bit, _ in _LAYOUT if (flags | HEADERS_FLAG) & bit and bit >= HEADERS_FLAG
        ) - 8
        return stamped[:cut], stamped[cut + 8 :]

    def parts(self, raw: bytes) -> tuple[bytes, bytes]:
        """The stamped properties before and after the 8 value bytes."""
        parts = self.cache.get(raw)
        if parts is None:
            if len(self.cache) >= self.cache_size:
                self.cache.clear()
            parts = self.cache[raw] = self._template(raw)
        return parts

    def stamp(self, raw: bytes, value: int) -> bytes:
        before, after = self.parts(raw)
        return before + value.to_bytes(8, "big", signed=True) + after
