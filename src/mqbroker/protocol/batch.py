"""Many deliveries to one consumer, written in one pass.

Why: a stream consumer with credit is handed a block of entries at once
(a replay, or a live reader catching up after a commit). Writing them one
``write_delivery`` call at a time costs a call chain per message; this
loop packs only what differs per message (the delivery tag and the
sizes) and appends pre-encoded pieces, byte-for-byte what
``codec.write_delivery`` would produce.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence

from mqbroker.protocol import codec

_METHOD_HEAD = struct.Struct(">BHI")  # frame type, channel, size
_BODY = struct.Struct(">BBHI")  # end, type, channel, size

# (offset, route suffix, properties, body): the offset is the caller's
Record = tuple[int, bytes, "bytes | memoryview", "bytes | memoryview"]


def write_deliveries(
    out: bytearray,
    channel: int,
    prefix: bytes,
    first_tag: int,
    records: Sequence[Record],
    start: int,
    frame_max: int,
) -> int:
    """Append a basic.deliver + content for ``records[start:]`` (tags from
    ``first_tag`` on, never redelivered) -> the index of the first record
    not written: one whose body is empty, does not fit one frame or is
    large enough to be sent uncopied (the caller writes that one with
    ``write_delivery`` and calls again), or ``len(records)``."""
    limit = min(frame_max - codec.FRAME_OVERHEAD, codec.LARGE_BODY - 1)
    heads: dict[bytes, tuple[bytes, Callable[..., bytes]]] = {}
    base = len(prefix) + 9
    tag = first_tag
    pack_body = _BODY.pack
    end = len(records)
    i = start
    while i < end:
        _offset, suffix, props, body = records[i]
        size = len(body)
        if not size or size > limit:
            return i
        found = heads.get(suffix)
        if found is None:
            found = heads[suffix] = (
                _METHOD_HEAD.pack(1, channel, base + len(suffix)) + prefix,
                _middle(len(suffix)),
            )
        out += found[0]
        # tag, redelivered, exchange + key, frame end, content header
        out += found[1](tag, 0, suffix, 0xCE, 2, channel, 12 + len(props), 60, 0, size)
        out += props
        out += pack_body(0xCE, 3, channel, size)
        out += body
        out += b"\xce"
        tag += 1
        i += 1
    return end


_MIDDLES: dict[int, Callable[..., bytes]] = {}


def _middle(suffix_len: int) -> Callable[..., bytes]:
    """A packer for a deliver's tail and the content header up to its
    properties, for exchange + key fields of ``suffix_len`` bytes."""
    pack = _MIDDLES.get(suffix_len)
    if pack is None:
        pack = _MIDDLES[suffix_len] = struct.Struct(f">QB{suffix_len}sBBHIHHQ").pack
    return pack
