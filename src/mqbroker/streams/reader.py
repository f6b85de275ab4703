"""A consumer's reading position in a stream log.

Why a module of its own: reading is the replay hot path. ``read`` hands
out ``Entry`` objects (filters and consumer groups look at each one);
``read_block`` hands out one buffer of whole entries and where each
payload lies in it, so a plain consumer's deliveries are sliced from one
read instead of two reads and an object per entry.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from mqbroker.streams.segment import HEADER, Segment

if TYPE_CHECKING:
    from mqbroker.streams.log import StreamLog

# (offset, payload start, payload length) in a block's buffer
Span = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class Entry:
    offset: int
    timestamp_ms: int
    payload: bytes


class LogReader:
    """A consumer's position in the log: reads committed entries in order
    with one open file, crossing segments; never holds more than a batch."""

    def __init__(self, log: StreamLog, offset: int) -> None:
        self.log = log
        self.offset = max(offset, log.first_offset)
        self._fh: BinaryIO | None = None
        self._segment: Segment | None = None
        self._entry_bytes = 512  # read_raw's guess of an entry's size
        self._start = 0  # file position of the last read_raw

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
        self._fh = None
        self._segment = None

    def _position(self) -> bool:
        """Open the segment holding ``self.offset`` at its entry."""
        log = self.log
        if self.offset < log.first_offset:  # retention passed us by
            self.offset = log.first_offset
        segment = log.segment_for(self.offset)
        if segment is None:
            return False
        self.close()
        fh = open(segment.path, "rb", buffering=256 * 1024)  # noqa: SIM115
        offset, position = segment.seek_point(self.offset)
        fh.seek(position)
        while offset < self.offset:  # skip to the wanted entry
            length = HEADER.unpack(fh.read(HEADER.size))[0]
            fh.seek(length, os.SEEK_CUR)
            offset += 1
        self._fh, self._segment = fh, segment
        return True

    def read(self, max_entries: int = 256, max_bytes: int = 1 << 20) -> list[Entry]:
        """Up to ``max_entries`` committed entries from the position on."""
        out: list[Entry] = []
        size = 0
        limit = self.log.committed_next
        if self.offset < self.log.first_offset:
            self._segment = None  # retention passed us by: reposition
        while len(out) < max_entries and size < max_bytes and self.offset < limit:
            segment = self._segment
            if segment is None or self.offset >= segment.next_offset:
                if not self._position():
                    break
                segment = self._segment
            fh = self._fh
            assert fh is not None
            head = fh.read(HEADER.size)
            length, _crc, offset, ts = HEADER.unpack(head)
            payload = fh.read(length)
            out.append(Entry(offset, ts, payload))
            size += HEADER.size + length
            self.offset = offset + 1
        return out

    def read_raw(self, max_entries: int, max_bytes: int = 256 * 1024) -> tuple[bytes, int]:
        """The file from the next entry on -> (buffer, how many entries may
        be taken from it: committed, in this segment, at most
        ``max_entries``). The buffer holds the first entry whole, and as
        many more as ``max_bytes`` allows (the last may be cut); the caller
        walks it (a ``HEADER`` per entry) and says what it took with
        ``advance``. (b"", 0) at the committed end."""
        limit = self.log.committed_next
        if self.offset < self.log.first_offset:
            self._segment = None
        segment = self._segment
        if segment is None or self.offset >= segment.next_offset:
            if self.offset >= limit or not self._position():
                return b"", 0
            segment = self._segment
        assert segment is not None
        count = min(max_entries, min(limit, segment.next_offset) - self.offset)
        if count <= 0:
            return b"", 0
        fh = self._fh
        assert fh is not None
        self._start = fh.tell()
        # about what the wanted entries take (the last block's average)
        data = fh.read(min(max_bytes, max(8192, count * self._entry_bytes)))
        if len(data) >= HEADER.size:
            whole = HEADER.size + HEADER.unpack_from(data)[0]
            if whole > len(data):  # one large entry
                data += fh.read(whole - len(data))
        return data, count

    def advance(self, nbytes: int, entries: int) -> None:
        """``entries`` entries (``nbytes`` of the last ``read_raw``) were
        taken: the next read starts after them."""
        fh = self._fh
        assert fh is not None
        fh.seek(self._start + nbytes)
        self.offset += entries
        if entries:
            self._entry_bytes = nbytes // entries + 64

    def read_block(self, max_entries: int, max_bytes: int = 256 * 1024) -> tuple[bytes, list[Span]]:
        """``read_raw`` walked: up to ``max_entries`` whole entries ->
        (buffer, spans of their payloads)."""
        data, count = self.read_raw(max_entries, max_bytes)
        spans: list[Span] = []
        unpack = HEADER.unpack_from
        pos, end, hsize = 0, len(data), HEADER.size
        while len(spans) < count and end - pos >= hsize:
            length, _crc, offset, _ts = unpack(data, pos)
            if pos + hsize + length > end:
                break
            spans.append((offset, pos + hsize, length))
            pos += hsize + length
        if count:
            self.advance(pos, len(spans))
        return data, spans
