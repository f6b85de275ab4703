"""One segment of a stream log: a file of entries and its sparse index.

Strategy: a log is stored as a log. Entries are appended to a segment file
named by its first offset (``00000000000000000042.seg``); each entry is a
24-byte header (payload length, CRC-32 of the rest, offset, timestamp in
ms) and the payload, so a reader copies bytes and a torn tail is found by
its CRC. Every ``INDEX_INTERVAL`` bytes the segment remembers (offset,
position, timestamp) in memory and in an ``.idx`` file beside it, so a
reader seeks near any offset or time without reading the segment, and
reopening a big log does not scan it. The index file is a hint, never
trusted blindly: entries it points past the end of the data are dropped,
and the last segment is always verified from its last index point on.
"""

from __future__ import annotations

import os
import struct
import zlib
from array import array
from pathlib import Path

HEADER = struct.Struct(">IIQQ")  # payload length, crc32, offset, timestamp ms
INDEX_ENTRY = struct.Struct(">QQQ")  # offset, position, timestamp ms
INDEX_INTERVAL = 64 * 1024
# How much of a possibly unsynced segment's end recovery re-reads: more
# than one group commit leaves unsynced in practice (the write buffer is
# 1 MiB); each MiB costs ~15 ms of scanning per stream at start-up.
TAIL_VERIFY_BYTES = 4 << 20


_REST = struct.Struct(">QQ")  # the part of the header the CRC covers
_LENGTH_CRC = struct.Struct(">II")


def write_entry(out: bytearray, offset: int, timestamp_ms: int, payload: bytes) -> None:
    """Append one entry (header + payload) to ``out``, copying the
    payload once (the append hot path)."""
    rest = _REST.pack(offset, timestamp_ms)
    out += _LENGTH_CRC.pack(len(payload), zlib.crc32(payload, zlib.crc32(rest)))
    out += rest
    out += payload


def segment_name(first_offset: int) -> str:
    return f"{first_offset:020d}"


class Segment:
    """A segment's bounds and sparse index; the data lives in its file."""

    def __init__(self, directory: Path, first_offset: int) -> None:
        self.path = directory / (segment_name(first_offset) + ".seg")
        self.index_path = directory / (segment_name(first_offset) + ".idx")
        self.first_offset = first_offset
        self.next_offset = first_offset  # one past its last entry
        self.size = 0
        self.first_ts = 0
        self.last_ts = 0
        # flat (offset, position, timestamp) triples
        self.index = array("Q")
        self.fd: int | None = None  # open for appends while active or unsynced
        self._index_fd: int | None = None
        self._indexed_at = -INDEX_INTERVAL
        self.pins = 0  # commit marks in flight holding ``fd``

    @property
    def count(self) -> int:
        return self.next_offset - self.first_offset

    # ------------------------------------------------------------ write

    def create(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._index_fd = os.open(
            self.index_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644
        )

    def open_for_append(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self._index_fd = os.open(self.index_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def note(self, offset: int, position: int, timestamp_ms: int) -> None:
        """An entry was placed at ``position``: index it if it is due."""
        if not self.count:
            self.first_ts = timestamp_ms
        self.last_ts = timestamp_ms
        if position - self._indexed_at >= INDEX_INTERVAL:
            self._indexed_at = position
            self.index.extend((offset, position, timestamp_ms))
            if self._index_fd is not None:
                os.write(self._index_fd, INDEX_ENTRY.pack(offset, position, timestamp_ms))

    def close_files(self) -> None:
        for fd in (self.fd, self._index_fd):
            if fd is not None:
                os.close(fd)
        self.fd = self._index_fd = None

    def remove(self) -> None:
        self.close_files()
        for path in (self.path, self.index_path):
            path.unlink(missing_ok=True)

    # ------------------------------------------------------------- read

    def seek_point(self, offset: int) -> tuple[int, int]:
        """(offset, position) of the last index point at or before
        ``offset``: where a reader starts scanning for it."""
        index = self.index
        lo, hi = 0, len(index) // 3
        while lo < hi:
            mid = (lo + hi) // 2
            if index[mid * 3] <= offset:
                lo = mid + 1
            else:
                hi = mid
        if lo == 0:
            return self.first_offset, 0
        return index[(lo - 1) * 3], index[(lo - 1) * 3 + 1]

    def time_point(self, timestamp_ms: int) -> tuple[int, int]:
        """(offset, position) of the last index point older than
        ``timestamp_ms``: entries at or after the time come after it."""
        index = self.index
        best = (self.first_offset, 0)
        for i in range(0, len(index), 3):
            if index[i + 2] >= timestamp_ms:
                break
            best = (index[i], index[i + 1])
        return best

    # --------------------------------------------------------- recovery

    def load(self, *, verify_tail: bool) -> None:
        """Rebuild bounds from the files, and truncate a torn tail away.

        The index is a hint: the scan starts at its last point, and steps
        back a point whenever the entry there is not whole and in sequence
        (a stale or zero-filled index after a crash). A segment that may
        hold unsynced data (``verify_tail``: the last ones) is re-checked
        over its last ``TAIL_VERIFY_BYTES`` whatever the index says: the
        page cache writes back in any order, so a crash can leave a hole
        before a later index point that is itself intact."""
        data_size = self.path.stat().st_size
        self._load_index(data_size)
        if verify_tail:
            floor = max(data_size - TAIL_VERIFY_BYTES, 0)
            while self.index and self.index[-2] > floor:
                del self.index[-3:]
        while True:
            start_offset, start_pos = (
                (self.index[-3], self.index[-2]) if self.index else (self.first_offset, 0)
            )
            self._indexed_at = start_pos if self.index else -INDEX_INTERVAL
            if self.index:
                self.first_ts = self.index[2] if self.index[0] == self.first_offset else 0
            valid = self._scan(start_offset, start_pos, data_size)
            if valid > start_pos or valid == data_size or not self.index:
                break
            del self.index[-3:]  # that point leads to nothing whole
        if valid < data_size:
            os.truncate(self.path, valid)
        self.size = valid
        self._rewrite_index()

    def _load_index(self, data_size: int) -> None:
        self.index = array("Q")
        try:
            raw = self.index_path.read_bytes()
        except FileNotFoundError:
            return
        for i in range(0, len(raw) - INDEX_ENTRY.size + 1, INDEX_ENTRY.size):
            offset, position, ts = INDEX_ENTRY.unpack_from(raw, i)
            if position >= data_size or (self.index and offset <= self.index[-3]):
                break
            self.index.extend((offset, position, ts))
        if self.index:
            self._indexed_at = self.index[-2]

    def _scan(self, offset: int, position: int, data_size: int) -> int:
        """Walk entries from ``position``; returns the end of the last
        whole, matching one (setting next_offset and timestamps)."""
        expected = offset
        with open(self.path, "rb") as fh:
            fh.seek(position)
            while position + HEADER.size <= data_size:
                head = fh.read(HEADER.size)
                length, crc, entry_offset, ts = HEADER.unpack(head)
                end = position + HEADER.size + length
                if entry_offset != expected or end > data_size:
                    break
                payload = fh.read(length)
                if zlib.crc32(payload, zlib.crc32(head[8:])) != crc:
                    break
                if expected == self.first_offset:
                    self.first_ts = ts
                self.last_ts = ts
                if position - self._indexed_at >= INDEX_INTERVAL:
                    self._indexed_at = position
                    self.index.extend((entry_offset, position, ts))
                expected += 1
                position = end
        self.next_offset = expected
        return position

    def _rewrite_index(self) -> None:
        tmp = self.index_path.with_suffix(".idx.tmp")
        tmp.write_bytes(
            b"".join(
                INDEX_ENTRY.pack(self.index[i], self.index[i + 1], self.index[i + 2])
                for i in range(0, len(self.index), 3)
            )
        )
        os.replace(tmp, self.index_path)
