"""Dead-lettering: the ``x-death`` history and where a dead letter goes.

Strategy: a dead-lettered message is a new message (new id) published to
the queue's dead-letter exchange; this module computes its content-header
properties and routing keys exactly as RabbitMQ (3.10, checked by the
differential tests in tests/policies) writes them:
- headers are edited on the raw bytes: every value the publisher sent keeps
  its field-table type tag (an ``I`` stays an ``I``), and only the headers
  RabbitMQ touches are re-encoded; the edited table is sorted by key, as
  RabbitMQ's ``set_table_value`` leaves it;
- ``x-death`` is a list of tables, one per (queue, reason), newest first; a
  repeat death increments ``count`` (a long-long) and moves that entry to
  the front, keeping its first ``time``; a message's very first death
  entry lists its keys as count, reason, queue, time, exchange,
  routing-keys[, original-expiration], later new or updated entries are
  sorted by key (RabbitMQ's ``sort_field_table``);
- ``original-expiration`` is recorded and the ``expiration`` property
  removed, so the copy does not expire again on the way;
- ``x-first-death-*`` are set once, ``x-last-death-*`` (RabbitMQ 3.13+)
  every time;
- routing keys are the original key plus CC (never BCC), unless the queue
  sets ``x-dead-letter-routing-key``, which replaces them all and drops the
  CC header;
- a cycle (the target queue is in the death history, this death included,
  with no ``rejected`` on the way) drops the message for that queue, so a
  queue dead-lettering expired messages to itself drops them at once.

The same raw editing serves ``x-delivery-count`` (``with_header``).
"""

from __future__ import annotations

import datetime
import struct
from collections.abc import Callable
from typing import Any

from pamqp import decode as pdecode

from mqbroker.core.message import Message
from mqbroker.core.router import sender_keys
from mqbroker.protocol import codec
from mqbroker.protocol.table import Typed, encode_properties, encode_value

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


def _sorted(items: RawItems) -> RawItems:
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
        return _sorted([(k, v) for k, v in items if k != key] + [(key, encoded)])

    return Message(
        message.msg_id,
        message.exchange,
        message.routing_key,
        edit_headers(message.properties_raw, edit),
        message.body,
    )


# ------------------------------------------------------------------ deaths


def _text(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return value


def _decode_entry(encoded: bytes) -> dict[str, Any] | None:
    if not encoded or encoded[:1] != b"F":
        return None
    try:
        _, table = pdecode.field_table(encoded[1:])
    except (ValueError, TypeError, KeyError, IndexError, struct.error, RecursionError):
        return None
    return table


def prior_deaths(message: Message) -> list[dict[str, Any]]:
    headers = message.headers or {}
    deaths = headers.get("x-death")
    if not isinstance(deaths, list):
        return []
    return [d for d in deaths if isinstance(d, dict)]


def is_cycle(deaths: list[tuple[str | None, str | None]], target_queue: str) -> bool:
    """RabbitMQ's ``is_cycle``: ``deaths`` is the history *including* this
    death, newest first, as (queue, reason); a dead letter reaching a queue
    it already died in, with no ``rejected`` on the way, is dropped."""
    for queue, reason in deaths:
        if reason == "rejected":
            return False
        if queue == target_queue:
            return True
    return False


def dead_letter_properties(
    message: Message,
    queue: str,
    reason: str,
    now: datetime.datetime,
    routing_key_override: str | None = None,
) -> tuple[bytes, list[tuple[str | None, str | None]]]:
    """-> (raw properties of the dead-lettered copy, the death history
    including this death as (queue, reason), newest first)."""
    props = message.props
    headers = message.headers or {}
    keys = [message.routing_key] + sender_keys(headers, "CC")
    history: list[tuple[str | None, str | None]] = []

    def new_entry(sort: bool) -> bytes:
        entry: RawItems = [
            ("count", encode_value(Typed("l", 1))),
            ("reason", encode_value(reason)),
            ("queue", encode_value(queue)),
            ("time", encode_value(Typed("T", now))),
            ("exchange", encode_value(message.exchange)),
            ("routing-keys", encode_value(list(keys))),
        ]
        expiration = props.expiration
        if expiration is not None:
            entry.append(("original-expiration", encode_value(_text(expiration))))
        return b"F" + join_table(_sorted(entry) if sort else entry)

    def edit(items: RawItems) -> RawItems:
        table = dict(items)
        drop = {"x-delivery-count"}
        if routing_key_override is not None:
            drop.add("CC")
        existing = table.get("x-death")
        if existing is not None and existing[:1] == b"A":
            elements = split_array(existing)
            found = None
            others = []
            for element in elements:
                decoded = _decode_entry(element)
                if (
                    found is None
                    and decoded is not None
                    and _text(decoded.get("queue")) == queue
                    and _text(decoded.get("reason")) == reason
                ):
                    found = (element, decoded)
                    continue
                others.append(element)
                history.append(
                    (_text(decoded.get("queue")), _text(decoded.get("reason")))
                    if decoded is not None
                    else (None, None)
                )
            if found is not None:
                entry_items, _ = split_table(found[0], 1)
                count = found[1].get("count")
                count = count if isinstance(count, int) else 0
                entry_items = [(k, v) for k, v in entry_items if k != "count"]
                entry_items.append(("count", encode_value(Typed("l", count + 1))))
                first = b"F" + join_table(_sorted(entry_items))
            else:
                first = new_entry(sort=True)
            x_death = join_array([first] + others)
        else:
            x_death = join_array([new_entry(sort=False)])
        history.insert(0, (queue, reason))
        out = {k: v for k, v in table.items() if k not in drop}
        out["x-death"] = x_death
        for suffix, value in (
            ("reason", reason), ("queue", queue), ("exchange", message.exchange)
        ):
            out.setdefault(f"x-first-death-{suffix}", encode_value(value))
            out[f"x-last-death-{suffix}"] = encode_value(value)
        return _sorted(list(out.items()))

    raw = edit_headers(message.properties_raw, edit, drop_expiration=True)
    return raw, history


def dead_letter_keys(message: Message, override: str | None) -> list[str]:
    if override is not None:
        return [override]
    return [message.routing_key] + sender_keys(message.headers, "CC")
