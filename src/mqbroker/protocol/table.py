"""Field-table and property encoding that keeps values' types.

Strategy: the broker re-encodes properties only when it must change them
(BCC stripped, ``x-death`` added, ``x-delivery-count`` set). pamqp's encoder
writes every float as a 32-bit ``f`` and picks the narrowest integer, so a
dead-lettered message would lose precision in its float headers. Here floats
are doubles (``d``), integers pick the narrowest *signed* RabbitMQ type
(``b``, ``s``, ``I``, ``l``), and a value can force its tag with
``Typed(tag, value)`` (``x-death`` counts are ``l`` long-longs, as RabbitMQ
writes them). Tags follow RabbitMQ/Qpid, not the 0-9-1 spec.
"""

from __future__ import annotations

import datetime
import decimal
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pamqp import commands

_PROPERTY_ORDER = (
    ("content_type", 0x8000, "shortstr"),
    ("content_encoding", 0x4000, "shortstr"),
    ("headers", 0x2000, "table"),
    ("delivery_mode", 0x1000, "octet"),
    ("priority", 0x0800, "octet"),
    ("correlation_id", 0x0400, "shortstr"),
    ("reply_to", 0x0200, "shortstr"),
    ("expiration", 0x0100, "shortstr"),
    ("message_id", 0x0080, "shortstr"),
    ("timestamp", 0x0040, "timestamp"),
    ("message_type", 0x0020, "shortstr"),
    ("user_id", 0x0010, "shortstr"),
    ("app_id", 0x0008, "shortstr"),
    ("cluster_id", 0x0004, "shortstr"),
)


@dataclass(frozen=True, slots=True)
class Typed:
    """A value with an explicit field-table type tag."""

    tag: str
    value: Any


def _shortstr(value: str) -> bytes:
    raw = value.encode("utf-8")[:255]
    return bytes((len(raw),)) + raw


def _longstr(raw: bytes) -> bytes:
    return struct.pack(">I", len(raw)) + raw


def _timestamp(value: Any) -> int:
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.UTC)
        return int(value.timestamp())
    return int(value)


def encode_value(value: Any) -> bytes:
    if isinstance(value, TypedArray) and value.encoded:
        return value.encoded
    if isinstance(value, Typed):
        return _typed(value.tag, value.value)
    if isinstance(value, bool):
        return b"t" + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        if -128 <= value <= 127:
            return b"b" + struct.pack(">b", value)
        if -32768 <= value <= 32767:
            return b"s" + struct.pack(">h", value)
        if -(2**31) <= value < 2**31:
            return b"I" + struct.pack(">i", value)
        if -(2**63) <= value < 2**63:
            return b"l" + struct.pack(">q", value)
        raise TypeError(f"integer out of range: {value}")
    if isinstance(value, float):
        return b"d" + struct.pack(">d", value)
    if isinstance(value, str):
        return b"S" + _longstr(value.encode("utf-8"))
    if isinstance(value, bytes):
        return b"S" + _longstr(value)
    if isinstance(value, bytearray):
        return b"x" + _longstr(bytes(value))
    if isinstance(value, decimal.Decimal):
        sign, digits, exponent = value.as_tuple()
        scale = -int(exponent) if isinstance(exponent, int) and exponent < 0 else 0
        unscaled = int(value.scaleb(scale))
        return b"D" + struct.pack(">Bi", scale, unscaled)
    if isinstance(value, datetime.datetime):
        return b"T" + struct.pack(">Q", _timestamp(value))
    if isinstance(value, Mapping):
        return b"F" + encode_table(value)
    if isinstance(value, list | tuple):
        return b"A" + encode_array(value)
    if value is None:
        return b"V"
    raise TypeError(f"cannot encode {type(value).__name__} in a field table")


def _typed(tag: str, value: Any) -> bytes:
    if tag == "l":
        return b"l" + struct.pack(">q", int(value))
    if tag == "T":
        return b"T" + struct.pack(">Q", _timestamp(value))
    if tag == "S":
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
        return b"S" + _longstr(raw)
    return encode_value(value)


def encode_table(table: Mapping[str, Any]) -> bytes:
    parts = []
    for key, value in table.items():
        parts.append(_shortstr(str(key)))
        parts.append(encode_value(value))
    payload = b"".join(parts)
    return struct.pack(">I", len(payload)) + payload


def encode_array(items: Any) -> bytes:
    payload = b"".join(encode_value(v) for v in items)
    return struct.pack(">I", len(payload)) + payload


def encode_properties(props: commands.Basic.Properties) -> bytes:
    """Properties -> the raw bytes of a content header after body size."""
    flags = 0
    parts = []
    for name, bit, kind in _PROPERTY_ORDER:
        value = getattr(props, name, None)
        if value is None or (kind == "shortstr" and value == "" and name == "cluster_id"):
            continue
        flags |= bit
        if kind == "shortstr":
            parts.append(_shortstr(value if isinstance(value, str) else str(value)))
        elif kind == "table":
            parts.append(encode_table(value))
        elif kind == "octet":
            parts.append(struct.pack(">B", int(value) & 0xFF))
        else:
            parts.append(struct.pack(">Q", _timestamp(value)))
    return struct.pack(">H", flags) + b"".join(parts)


# ------------------------------------------------------ typed arrays

_FIXED_SIZES = {
    "t": 1, "b": 1, "B": 1, "s": 2, "u": 2, "I": 4, "i": 4,
    "l": 8, "L": 8, "f": 4, "d": 8, "T": 8, "D": 5, "V": 0,
}


class TypedArray(list):  # type: ignore[type-arg]
    """A decoded field-table array that remembers its wire encoding (the
    element type tags a decoded list loses): RabbitMQ compares arrays in
    headers-exchange bindings with their types, and a re-encode keeps
    them as sent."""

    encoded: bytes = b""


def _value_end(raw: bytes, offset: int) -> int:
    tag = chr(raw[offset])
    size = _FIXED_SIZES.get(tag)
    if size is not None:
        return offset + 1 + size
    (length,) = struct.unpack_from(">I", raw, offset + 1)
    return offset + 5 + int(length)


def mark_typed_arrays(table: dict[str, Any], raw: bytes, offset: int = 0) -> None:
    """Turn each top-level array of a decoded ``table`` into a
    ``TypedArray`` carrying its bytes from ``raw`` (the encoded table at
    ``offset``)."""
    (size,) = struct.unpack_from(">I", raw, offset)
    pos, end = offset + 4, offset + 4 + size
    while pos < end:
        klen = raw[pos]
        key = raw[pos + 1 : pos + 1 + klen].decode("utf-8", "replace")
        start = pos + 1 + klen
        pos = _value_end(raw, start)
        value = table.get(key)
        if raw[start] == 0x41 and isinstance(value, list) and not isinstance(value, TypedArray):
            typed = TypedArray(value)
            typed.encoded = raw[start:pos]
            table[key] = typed
