"""A stream entry's payload: the message as it was published.

Layout: a head (exchange, routing key, filter value and properties
lengths), the exchange and routing key (UTF-8), the filter value (if
any), the raw content-header properties with ``x-stream-offset`` already
stamped into their headers, and the body. A replay slices deliveries
straight out of it: the exchange + key bytes become basic.deliver's fields
(cached), properties and body are copied as stored.
"""

from __future__ import annotations

import struct

from mqbroker.model.headers import HeaderStamp
from mqbroker.streams.segment import HEADER

HEAD = struct.Struct(">BBHI")  # exchange, routing key, filter, properties lengths
# a log entry's header (segment.HEADER) followed by its record's HEAD
ENTRY_HEAD = struct.Struct(">IIQQBBHI")
HEADER_SIZE = HEADER.size

# raw exchange + routing key of a record -> basic.deliver's two shortstr
# fields; bounded like codec.route_suffix's cache
SUFFIXES: dict[bytes, bytes] = {}


def route_suffix(route: bytes, elen: int) -> bytes:
    if len(SUFFIXES) >= 4096:
        SUFFIXES.clear()
    suffix = bytes((elen,)) + route[:elen] + bytes((len(route) - elen,)) + route[elen:]
    SUFFIXES[route] = suffix
    return suffix


# Deliveries carry their offset: stamped into the properties at publish,
# so a replay sends what is stored.
STAMP = HeaderStamp("x-stream-offset")
FILTER_KEY = b"x-stream-filter-value"


def encode_record(
    exchange: str, routing_key: str, filter_value: str | None, props: bytes, body: bytes
) -> bytes:
    ex = exchange.encode()
    key = routing_key.encode()
    flt = filter_value.encode() if filter_value is not None else b""
    head = HEAD.pack(len(ex), len(key), len(flt) + (filter_value is not None), len(props))
    return b"".join((head, ex, key, flt, props, body))


def decode_record(payload: bytes) -> tuple[str, str, str | None, bytes, bytes]:
    """-> (exchange, routing key, filter value, raw properties, body)."""
    elen, klen, flen, plen = HEAD.unpack_from(payload)
    pos = HEAD.size
    exchange = payload[pos : pos + elen].decode()
    pos += elen
    key = payload[pos : pos + klen].decode()
    pos += klen
    flt = payload[pos : pos + flen - 1].decode() if flen else None
    pos += max(flen - 1, 0)
    props = payload[pos : pos + plen]
    return exchange, key, flt, props, payload[pos + plen :]


Template = tuple[bytes, bytes]


class RecordTemplates:
    """A record's bytes before and after its stamped offset, per
    (exchange, routing key, properties, filter value): publishers send the
    same ones again and again, so a publish joins four pieces. Bounded."""

    def __init__(self, size: int = 64) -> None:
        self._cache: dict[tuple[str, str, bytes, str | None], Template] = {}
        self._size = size

    def get(self, exchange: str, routing_key: str, raw: bytes, value: str | None) -> Template:
        key = (exchange, routing_key, raw, value)
        template = self._cache.get(key)
        if template is None:
            before, after = STAMP.parts(raw)
            # (the properties' length is the stamped whole's)
            head = encode_record(exchange, routing_key, value, before, b"")
            elen, klen, flen, _ = HEAD.unpack_from(head)
            head = HEAD.pack(elen, klen, flen, len(before) + 8 + len(after)) + head[HEAD.size :]
            if len(self._cache) >= self._size:
                self._cache.clear()
            template = self._cache[key] = (head, after)
        return template
