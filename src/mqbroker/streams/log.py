"""An append-only stream log: segments, group-committed, read by offset.

Strategy: ``append`` only assigns the offset and adds the entry to a
bounded buffer (one ``write`` per batch, not per message). The broker's
group commit takes a ``commit_mark`` on the loop (the buffer goes to the
file, the files to sync are noted), fsyncs them in its worker thread
(``sync``), and back on the loop ``committed`` makes the entries visible:
readers never see an entry whose publish could still be lost, exactly as
confirms never precede the fsync. Retention drops whole segments, oldest
first, never the active one; offsets keep counting, so a consumer's offset
means the same message forever.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mqbroker.log import get_logger
from mqbroker.streams.reader import Entry, LogReader
from mqbroker.streams.segment import HEADER, Segment, write_entry

_log = get_logger(__name__)

# Appended entries are written to the file at the latest once this many
# bytes wait (or at the next commit mark): the buffer stays bounded.
WRITE_BUFFER_BYTES = 1 << 20
DEFAULT_SEGMENT_BYTES = 500_000_000




@dataclass(frozen=True, slots=True)
class CommitMark:
    next_offset: int
    fds: tuple[int, ...]
    sync_dir: bool
    # the segments whose fds are in ``fds``: pinned open until
    # ``committed`` so a sync in the worker never meets a closed fd
    segments: tuple[Segment, ...] = ()


@dataclass(frozen=True, slots=True)
class LogStats:
    first_offset: int
    last_offset: int  # -1: empty
    messages: int
    bytes: int
    segments: int
    first_timestamp_ms: int
    last_timestamp_ms: int


class StreamLog:
    def __init__(self, directory: Path, *, max_segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> None:
        self.directory = directory
        self.max_segment_bytes = max_segment_bytes
        directory.mkdir(parents=True, exist_ok=True)
        self.segments: list[Segment] = []
        self._pending = bytearray()
        self._pending_first = 0  # offset of the first buffered entry
        self._to_sync: list[Segment] = []  # written since the last mark
        self._new_segment = False
        self.destroyed = False
        self._open()
        self.committed_next = self.next_offset

    # ------------------------------------------------------------ open

    def _open(self) -> None:
        firsts = sorted(int(p.stem) for p in self.directory.glob("*.seg"))
        for i, first in enumerate(firsts):
            segment = Segment(self.directory, first)
            # the last two may hold unsynced data (a roll seals one)
            segment.load(verify_tail=i >= len(firsts) - 2)
            if self.segments and self.segments[-1].next_offset != first:
                # A torn sealed segment (its tail was never synced, so no
                # later entry was either): what follows would leave a gap
                # readers could never cross. Drop it; the torn one goes on.
                self._drop_from(segment)
                break
            self.segments.append(segment)
        # A tail segment emptied by truncation, or an empty log: start one.
        if not self.segments:
            self._start_segment(0)
        else:
            tail = self.segments[-1]
            tail.open_for_append()
            self._to_sync.append(tail)
        self._pending_first = self.next_offset

    def _drop_from(self, segment: Segment) -> None:
        """Remove ``segment`` and every later one found on disk."""
        doomed = sorted(
            int(p.stem) for p in self.directory.glob("*.seg")
            if int(p.stem) >= segment.first_offset
        )
        _log.warning(
            "stream_log_gap_dropped", directory=str(self.directory),
            expected=self.segments[-1].next_offset, segments=len(doomed),
        )
        for first in doomed:
            Segment(self.directory, first).remove()

    def _start_segment(self, first_offset: int) -> Segment:
        segment = Segment(self.directory, first_offset)
        segment.create()
        self.segments.append(segment)
        self._to_sync.append(segment)
        self._new_segment = True
        return segment

    # ---------------------------------------------------------- append

    @property
    def next_offset(self) -> int:
        return self.segments[-1].next_offset

    @property
    def first_offset(self) -> int:
        return self.segments[0].first_offset

    def append(self, payload: bytes, timestamp_ms: int) -> tuple[int, bool]:
        """Add an entry -> (its offset, whether a new segment was started:
        the moment retention is looked at)."""
        tail = self.segments[-1]
        timestamp_ms = max(timestamp_ms, tail.last_ts)  # never goes back
        size = HEADER.size + len(payload)
        rolled = tail.size + size > self.max_segment_bytes and self.roll()
        tail = self.segments[-1]
        offset = tail.next_offset
        tail.note(offset, tail.size, timestamp_ms)
        write_entry(self._pending, offset, timestamp_ms, payload)
        tail.size += size
        tail.next_offset = offset + 1
        if len(self._pending) >= WRITE_BUFFER_BYTES:
            self._write_pending()
        return offset, rolled

    def append_stamped(self, pieces: Iterable[tuple[bytes, bytes, bytes]], timestamp_ms: int) -> bool:
        """Entries whose payload is ``before + offset + after + body``,
        each with its own offset (8 bytes, big-endian) written between the
        pieces (a stream stamps ``x-stream-offset`` into the properties so),
        appended in one pass -> whether a segment was started."""
        rolled = False
        tail = self.segments[-1]
        timestamp_ms = max(timestamp_ms, tail.last_ts)
        pending = self._pending
        hsize = HEADER.size
        for before, after, body in pieces:
            offset = tail.next_offset
            payload = b"".join((before, offset.to_bytes(8, "big", signed=True), after, body))
            size = hsize + len(payload)
            if tail.size + size > self.max_segment_bytes and self.roll():
                rolled = True
                tail = self.segments[-1]
                pending = self._pending
            tail.note(offset, tail.size, timestamp_ms)
            write_entry(pending, offset, timestamp_ms, payload)
            tail.size += size
            tail.next_offset = offset + 1
            if len(pending) >= WRITE_BUFFER_BYTES:
                self._write_pending()
                pending = self._pending
        return rolled

    def roll(self) -> bool:
        """Seal the active segment and start the next one (a no-op on an
        empty active segment). True when a segment was started: the
        moment to evaluate retention, as RabbitMQ does."""
        tail = self.segments[-1]
        if not tail.count:
            return False
        self._write_pending()
        if tail.fd is not None and tail not in self._to_sync and not tail.pins:
            tail.close_files()
        self._start_segment(tail.next_offset)
        return True

    def _write_pending(self) -> None:
        if self._pending:
            tail = self.segments[-1]
            assert tail.fd is not None
            view = memoryview(self._pending)
            while view:  # a regular file may take less than asked (>2 GiB)
                view = view[os.write(tail.fd, view):]
            view.release()
            self._pending = bytearray()
            if tail not in self._to_sync:
                self._to_sync.append(tail)
        self._pending_first = self.next_offset

    # ---------------------------------------------------------- commit

    @property
    def dirty(self) -> bool:
        return self.committed_next < self.next_offset or bool(self._pending)

    def commit_mark(self) -> CommitMark:
        """On the loop: hand the buffered entries to the file and note
        what the worker thread must fsync."""
        self._write_pending()
        pinned = tuple(s for s in self._to_sync if s.fd is not None)
        for segment in pinned:
            segment.pins += 1
        fds = tuple(s.fd for s in pinned if s.fd is not None)
        mark = CommitMark(self.next_offset, fds, self._new_segment, pinned)
        self._to_sync = [self.segments[-1]]
        self._new_segment = False
        return mark

    def sync(self, mark: CommitMark) -> None:
        """In a worker thread: make the marked entries durable."""
        if self.destroyed:
            return
        for fd in mark.fds:
            try:
                os.fsync(fd)
            except OSError:
                if not self.destroyed:  # closed by retention: already synced
                    raise
        if mark.sync_dir:
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def committed(self, mark: CommitMark) -> bool:
        """On the loop: entries below the mark are now readable. True
        when that is news (consumers may have something to read). Marks
        are committed in the order they were taken."""
        for segment in mark.segments:
            segment.pins -= 1
        for segment in self.segments[:-1]:
            if (
                segment.fd is not None
                and not segment.pins  # no sync still using its fd
                and segment.next_offset <= mark.next_offset
            ):
                segment.close_files()  # sealed and synced
        if mark.next_offset > self.committed_next:
            self.committed_next = mark.next_offset
            return True
        return False

    # ------------------------------------------------------------ read

    def reader(self, offset: int) -> LogReader:
        return LogReader(self, offset)

    def segment_for(self, offset: int) -> Segment | None:
        for segment in reversed(self.segments):
            if segment.first_offset <= offset:
                return segment if offset < segment.next_offset else None
        return None

    def offset_for_timestamp(self, timestamp_ms: int) -> int:
        """The first committed offset stamped at or after the time."""
        for segment in self.segments:
            if segment.count and segment.last_ts >= timestamp_ms:
                offset, position = segment.time_point(timestamp_ms)
                for entry in _scan(segment, offset, position, self.committed_next):
                    if entry.timestamp_ms >= timestamp_ms:
                        return entry.offset
        return self.committed_next

    # ------------------------------------------------------- retention

    def apply_retention(
        self, *, max_bytes: int | None, max_age_ms: int | None, now_ms: int
    ) -> int:
        """Drop whole segments, oldest first, never the active one."""
        dropped = 0
        while len(self.segments) > 1:
            oldest = self.segments[0]
            if oldest.fd is not None:  # not yet synced: keep it for now
                break
            total = sum(s.size for s in self.segments)
            too_big = max_bytes is not None and total > max_bytes
            too_old = max_age_ms is not None and oldest.last_ts < now_ms - max_age_ms
            if not (too_big or too_old):
                break
            oldest.remove()
            self.segments.pop(0)
            dropped += 1
        return dropped

    def stats(self) -> LogStats:
        first, nxt = self.first_offset, self.committed_next
        return LogStats(
            first_offset=first,
            last_offset=nxt - 1 if nxt > first else -1,
            messages=max(0, nxt - first),
            bytes=sum(s.size for s in self.segments),
            segments=len(self.segments),
            first_timestamp_ms=self.segments[0].first_ts,
            last_timestamp_ms=self.segments[-1].last_ts,
        )

    def close(self) -> None:
        """Write and fsync what is still unsynced, then close: after a
        clean close every entry survives even an OS crash. Call it with
        no sync running."""
        self.sync(self.commit_mark())
        for segment in self.segments:
            segment.pins = 0
            segment.close_files()

    def destroy(self) -> None:
        self.destroyed = True
        self._pending = bytearray()
        for segment in self.segments:
            segment.close_files()
        shutil.rmtree(self.directory, ignore_errors=True)


def _scan(segment: Segment, offset: int, position: int, limit: int) -> Iterator[Entry]:
    """Entries of ``segment`` from the one at ``position`` (offset
    ``offset``) up to, not including, offset ``limit``."""
    with open(segment.path, "rb") as fh:
        fh.seek(position)
        while offset < min(limit, segment.next_offset):
            head = fh.read(HEADER.size)
            if len(head) < HEADER.size:
                return
            length, _crc, entry_offset, ts = HEADER.unpack(head)
            payload = fh.read(length)
            yield Entry(entry_offset, ts, payload)
            offset = entry_offset + 1
