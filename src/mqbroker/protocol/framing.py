"""Bytes -> frames: the inbound half of the codec.

Strategy: ``FrameReader`` only ever looks at the 7-byte frame header before
it buffers a payload, so a peer announcing a frame larger than ``frame_max``
is refused (501) before we hold its bytes, and a partial frame is simply
"need more data" (pamqp alone cannot tell a partial frame from garbage).
The buffer is consumed by offset and compacted once per ``feed()``: reads
are O(n) in the bytes received, never O(n^2). Publishes, the bulk of
inbound traffic, are recognised whole (method + header + body) in one
pass, and a run of them to the same exchange and key in one call.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from mqbroker import errors

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE
FRAME_END_BYTE = b"\xce"
FRAME_OVERHEAD = 8  # 7-byte header + frame-end octet
FRAME_MIN_SIZE = 4096

_HEADER = struct.Struct(">BHI")
# basic.publish's method frame up to its ticket: type, channel, size,
# class, method, ticket (13 bytes)
_PUBLISH_HEAD = struct.Struct(">BHIHHH")
# a content header frame up to its body size (19 bytes)
_CONTENT_HEAD = struct.Struct(">BHIHHQ")


class FrameReader:
    """Splits a byte stream into (frame type, channel, payload) triples."""

    __slots__ = ("_buf", "_pos", "frame_max")

    def __init__(self, frame_max: int) -> None:
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self.frame_max = frame_max

    def feed(self, data: bytes) -> None:
        """Usually the buffer *is* the last read (no copy) or a small
        leftover plus it: slices of ``bytes`` are one allocation where a
        bytearray's are two, and every message takes three slices. A large
        leftover (a big frame arriving in pieces) switches to a bytearray
        that grows in place, so reassembly stays linear."""
        buf, pos = self._buf, self._pos
        left = len(buf) - pos
        self._pos = 0
        if not left:
            self._buf = bytes(data)
        elif isinstance(buf, bytearray):
            del buf[:pos]
            buf += data
        elif left < 65536:
            self._buf = buf[pos:] + data
        else:
            grown = bytearray(buf[pos:])
            grown += data
            self._buf = grown

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def take(self, n: int) -> bytes | None:
        """Raw bytes (the protocol header), or None until n are buffered."""
        if self.buffered < n:
            return None
        data = bytes(self._buf[self._pos : self._pos + n])
        self._pos += n
        return data

    def next_frame(self) -> tuple[int, int, bytes] | None:
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 7:
            if pos and pos == len(buf):
                # all consumed: do not keep the last read (up to 256 KiB)
                # alive while the connection sits idle
                self._buf = b""
                self._pos = 0
            return None
        ftype, channel, size = _HEADER.unpack_from(buf, pos)
        if size + FRAME_OVERHEAD > self.frame_max:
            raise errors.FrameError(
                f"frame size {size + FRAME_OVERHEAD} exceeds frame_max "
                f"{self.frame_max}"
            )
        end = pos + 7 + size
        if len(buf) <= end:
            return None
        if buf[end] != FRAME_END:
            raise errors.FrameError(
                f"invalid frame end octet {buf[end]:#04x} (expected 0xce)"
            )
        payload = bytes(buf[pos + 7 : end])
        self._pos = end + 1
        return ftype, channel, payload

    def next_publish(
        self, max_body: int
    ) -> tuple[int, str, str, int, bytes, bytes, int] | None:
        """The hot path: basic.publish + content header + body, all three
        whole in the buffer, decoded in one pass with no per-frame calls.

        -> (channel, exchange, routing key, mandatory/immediate bits,
        raw properties, body, end offset), or None whenever anything is
        unusual (another frame, a partial or split body, a body over
        ``max_body``, a malformed field); ``next_frame`` then takes the
        general path, which reports errors. Nothing is consumed until the
        caller calls ``consume(end)``, so it can still decline.
        """
        buf, pos = self._buf, self._pos
        have = len(buf)
        if have - pos < 39:  # smallest publish (17) + header (22) frames
            return None
        ftype, channel, size, class_id, method_id, _ = _PUBLISH_HEAD.unpack_from(buf, pos)
        if ftype != FRAME_METHOD or class_id != 60 or method_id != 40:
            return None
        frame_max = self.frame_max
        mend = pos + 7 + size
        if size + FRAME_OVERHEAD > frame_max or mend + 20 > have or buf[mend] != FRAME_END:
            return None
        ex_start = pos + 14
        rk_len_at = ex_start + buf[ex_start - 1]
        if rk_len_at >= mend:
            return None
        rk_end = rk_len_at + 1 + buf[rk_len_at]
        if rk_end + 1 != mend:
            return None
        content = self._content(mend + 1, channel, max_body)
        if content is None:
            return None
        try:
            exchange = buf[ex_start:rk_len_at].decode()
            routing_key = buf[rk_len_at + 1 : rk_end].decode()
        except UnicodeDecodeError:
            return None
        return channel, exchange, routing_key, buf[rk_end], content[0], content[1], content[2]

    def next_publish_run(
        self, max_body: int, limit: int
    ) -> tuple[int, str, str, int, list[tuple[bytes, bytes]], int] | None:
        """``next_publish``, then every following publish (up to ``limit``
        in all) whose method frame is byte-for-byte the first one's: same
        channel, exchange, routing key and flags -> (channel, exchange,
        routing key, bits, [(raw properties, body)], end offset). A
        publisher's stream of messages to one destination is parsed and
        routed once per run, not once per message."""
        first = self.next_publish(max_body)
        if first is None:
            return None
        channel, exchange, routing_key, bits, props, body, end = first
        items = [(props, body)]
        buf, pos = self._buf, self._pos
        mlen = 8 + _HEADER.unpack_from(buf, pos)[2]  # the whole method frame
        method = buf[pos : pos + mlen]
        content = self._content
        while len(items) < limit and buf.startswith(method, end):
            found = content(end + mlen, channel, max_body)
            if found is None:
                break
            items.append((found[0], found[1]))
            end = found[2]
        return channel, exchange, routing_key, bits, items, end

    def _content(self, hpos: int, channel: int, max_body: int) -> tuple[bytes, bytes, int] | None:
        """A whole content header + body at ``hpos`` -> (raw properties,
        body, offset past it), or None (partial, split, oversized, odd)."""
        buf = self._buf
        have = len(buf)
        frame_max = self.frame_max
        if hpos + 19 > have:
            return None
        htype, hchannel, hsize, hclass, _, body_size = _CONTENT_HEAD.unpack_from(buf, hpos)
        if (
            htype != FRAME_HEADER
            or hchannel != channel
            or hclass != 60
            or hsize < 14
            or hsize + FRAME_OVERHEAD > frame_max
            or body_size > max_body
            or body_size + FRAME_OVERHEAD > frame_max
        ):
            return None
        hend = hpos + 7 + hsize
        if hend >= have or buf[hend] != FRAME_END:
            return None
        if body_size:
            bpos = hend + 1
            if bpos + 7 + body_size >= have:
                return None
            btype, bchannel, bsize = _HEADER.unpack_from(buf, bpos)
            end = bpos + 7 + bsize
            if (
                btype != FRAME_BODY
                or bchannel != channel
                or bsize != body_size
                or buf[end] != FRAME_END
            ):
                return None
            body = bytes(buf[bpos + 7 : end])
        else:
            end = hend
            body = b""
        return bytes(buf[hpos + 19 : hend]), body, end + 1

    def consume(self, end: int) -> None:
        self._pos = end


def iter_frames(reader: FrameReader) -> Iterator[tuple[int, int, bytes]]:
    while (item := reader.next_frame()) is not None:
        yield item
