"""Framing of the replication connection: a 4-byte length, then msgpack.

Messages are small lists whose first item says what they are:
- follower -> leader: ``["hello", node, term, lsn, secret]`` once, then
  ``["ack", lsn]`` after each record is durable;
- leader -> follower: ``["tail"]`` (records follow from the follower's
  position) or ``["snapshot", term, lsn]`` + ``["file", path, bytes]``...
  + ``["end"]`` (replace your data dir), ``["rec", raw record]``, and
  ``["ping", lsn]`` when idle, so a silent leader is noticed.
A frame is bounded (``MAX_FRAME``): a peer that announces more is cut off.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack  # type: ignore[import-untyped]
import trio

MAX_FRAME = 1 << 30
_LEN = struct.Struct(">I")


class WireError(Exception):
    """The peer closed or sent something that is not a frame."""


def pack(message: list[Any]) -> bytes:
    body: bytes = msgpack.packb(message, use_bin_type=True)
    return _LEN.pack(len(body)) + body


class FrameReader:
    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buf = bytearray()

    async def _fill(self, n: int) -> None:
        while len(self._buf) < n:
            chunk = await self._stream.receive_some(1 << 20)
            if not chunk:
                raise WireError("connection closed")
            self._buf += chunk

    async def read(self) -> list[Any]:
        await self._fill(4)
        (size,) = _LEN.unpack_from(self._buf)
        if size > MAX_FRAME:
            raise WireError(f"frame of {size} bytes")
        await self._fill(4 + size)
        body = bytes(self._buf[4:4 + size])
        del self._buf[:4 + size]
        try:
            message = msgpack.unpackb(body, raw=False, strict_map_key=False)
        except Exception as exc:
            raise WireError(f"bad frame: {exc}") from exc
        if not isinstance(message, list) or not message:
            raise WireError("bad frame")
        return message
