"""Replication records: one committed write batch as bytes, and how a
follower applies it.

Strategy: what is replicated is the store's own ``WriteBatch`` (the
logical changes: bodies, queue entries, definitions, dropped queues) plus
the bytes the batch appended to stream segment files, as file ranges. So
a follower's data dir becomes what the leader's is: the same LMDB records
and the same segment files, and promoting it is an ordinary start-up
(recovery) on that dir. Each record carries ``(term, lsn)``: the term of
the leader that wrote it and a number that grows by one per batch across
terms; the pair is stored in the batch itself (definition
``cluster/position``), so the store and its position never disagree.

Log ranges are captured on the loop as the batch is taken (each segment's
size then: everything below it is in the file already) and read in the
worker thread right after the local write, before retention may drop a
sealed segment. A range is ``[start, end)`` of one segment file, ``start``
where the previous capture of that segment ended.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgpack  # type: ignore[import-untyped]

from mqbroker.model.keys import store_key
from mqbroker.persistence import StoredEntry, StoredMessage, WriteBatch
from mqbroker.streams.log import StreamLog
from mqbroker.streams.queue import StreamQueue

POSITION = ("cluster", "position")


@dataclass(frozen=True, slots=True)
class Position:
    """Where a node's store is in the replicated history."""

    term: int = 0
    lsn: int = 0

    def as_list(self) -> list[int]:
        return [self.term, self.lsn]


@dataclass(slots=True)
class LogRange:
    path: str  # relative to the data dir
    start: int
    end: int
    data: bytes = b""


@dataclass(slots=True)
class Record:
    term: int
    lsn: int
    batch: WriteBatch
    ranges: list[LogRange] = field(default_factory=list)
    # (stream dir, its first segment's first offset) for the logs of the
    # batch: followers drop the segments retention dropped on the leader
    floors: list[tuple[str, int]] = field(default_factory=list)

    @property
    def position(self) -> Position:
        return Position(self.term, self.lsn)


def read_position(records: dict[str, dict[str, Any]]) -> Position:
    record = records.get(POSITION[1])
    if not record:
        return Position()
    return Position(int(record["term"]), int(record["lsn"]))


class LogCapture:
    """Which segment bytes a batch added (leader side, loop thread)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        # segment path -> size already shipped (or present at start-up)
        self._shipped: dict[str, int] = {}

    def seed(self, log: StreamLog) -> None:
        """A log that existed before this node led: its bytes are on the
        followers already (they were in sync), ship only what follows."""
        for segment in log.segments:
            self._shipped[self._rel(segment.path)] = segment.size

    def capture(self, batch: WriteBatch) -> list[LogRange]:
        ranges: list[LogRange] = []
        for owner, mark in batch.log_marks:
            log = owner.log if isinstance(owner, StreamQueue) else owner
            if not isinstance(log, StreamLog):
                continue
            for segment in getattr(mark, "segments", ()):
                rel = self._rel(segment.path)
                start = self._shipped.get(rel, 0)
                end = segment.size
                if end > start:
                    ranges.append(LogRange(rel, start, end))
                    self._shipped[rel] = end
        return ranges

    def floors(self, batch: WriteBatch) -> list[tuple[str, int]]:
        found: list[tuple[str, int]] = []
        for owner, _ in batch.log_marks:
            log = owner.log if isinstance(owner, StreamQueue) else owner
            if isinstance(log, StreamLog) and log.segments:
                found.append((self._rel(log.directory), log.segments[0].first_offset))
        return found

    def forget(self, rel: str) -> None:
        self._shipped.pop(rel, None)

    def _rel(self, path: Path) -> str:
        return str(path.relative_to(self.data_dir))


def read_ranges(data_dir: Path, ranges: list[LogRange]) -> list[LogRange]:
    """Worker thread: fill in the bytes; a range whose segment is gone (the
    stream was deleted meanwhile) is left out."""
    out: list[LogRange] = []
    for item in ranges:
        try:
            with open(data_dir / item.path, "rb") as f:
                f.seek(item.start)
                item.data = f.read(item.end - item.start)
        except FileNotFoundError:
            continue
        if len(item.data) == item.end - item.start:
            out.append(item)
    return out


# ------------------------------------------------------------------ codec

def encode(record: Record) -> bytes:
    batch = record.batch
    raw: bytes = msgpack.packb(
        [
            record.term,
            record.lsn,
            [[i, None if m is None else [m.exchange, m.routing_key, m.properties, m.body]]
             for i, m in batch.messages.items()],
            [[q, s, None if e is None else
              [e.msg_id, e.delivery_count, e.redelivered, e.size, e.expires_at]]
             for (q, s), e in batch.entries.items()],
            [[k, n, r] for (k, n), r in batch.definitions.items()],
            sorted(batch.dropped_queues),
            [[r.path, r.start, r.data] for r in record.ranges],
            [[d, first] for d, first in record.floors],
        ],
        use_bin_type=True,
    )
    return raw


def decode(raw: bytes) -> Record:
    term, lsn, messages, entries, definitions, dropped, ranges, floors = msgpack.unpackb(
        raw, raw=False, strict_map_key=False
    )
    batch = WriteBatch(epoch=0)
    for msg_id, m in messages:
        batch.messages[msg_id] = None if m is None else StoredMessage(m[0], m[1], m[2], m[3])
    for queue, seq, e in entries:
        batch.entries[(queue, seq)] = (
            None if e is None else StoredEntry(seq, e[0], e[1], e[2], e[3], e[4])
        )
    for kind, name, record in definitions:
        batch.definitions[(kind, name)] = record
    batch.dropped_queues = set(dropped)
    return Record(
        term, lsn, batch, [LogRange(p, s, s + len(d), d) for p, s, d in ranges],
        [(d, first) for d, first in floors],
    )


# ------------------------------------------------------------ follower side

class GapError(Exception):
    """A range does not continue what this node has: resynchronise."""


def apply_ranges(data_dir: Path, record: Record) -> None:
    """Worker thread: write the record's log bytes where the leader has
    them, cut anything after (bytes no confirm ever covered), and fsync;
    a stream deleted on the leader goes here too. Logs before the store,
    as on the leader: a store record never points past a log."""
    for name, record_value in record.batch.definitions.items():
        if name[0] == "queue" and record_value is None:
            _remove_stream_dir(data_dir, name[1])
    new_dirs: set[Path] = set()
    for item in record.ranges:
        path = data_dir / item.path
        if not path.parent.exists():
            path.parent.mkdir(parents=True)
            new_dirs.add(path.parent)
        if item.start == 0 and path.name == "0".zfill(20) + ".seg":
            _clear_log_dir(path.parent)  # a new stream under an old name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size < item.start:
                raise GapError(f"{item.path}: have fewer than {item.start} bytes")
            os.pwrite(fd, item.data, item.start)
            os.ftruncate(fd, item.end)
            os.fsync(fd)
        finally:
            os.close(fd)
        new_dirs.add(path.parent)
    for rel, first in record.floors:
        _drop_below(data_dir / rel, first)
    for directory in new_dirs:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def stream_dir(data_dir: Path, vhost: str, name: str) -> Path:
    return data_dir / "streams" / quote(vhost, safe="") / quote(name, safe="")


def _remove_stream_dir(data_dir: Path, key: str) -> None:
    length, _, rest = key.partition(":")
    if not length.isdigit():
        return
    vhost, name = rest[: int(length)], rest[int(length) + 1:]
    if store_key(vhost, name) != key:
        return
    shutil.rmtree(stream_dir(data_dir, vhost, name), ignore_errors=True)


def _drop_below(directory: Path, first: int) -> None:
    """Retention on the leader dropped every segment below ``first``."""
    if not directory.is_dir():
        return
    for path in directory.iterdir():
        if path.suffix in (".seg", ".idx") and path.stem.isdigit() and int(path.stem) < first:
            path.unlink(missing_ok=True)


def _clear_log_dir(directory: Path) -> None:
    for path in directory.iterdir():
        if path.suffix in (".seg", ".idx") and path.stem != "0".zfill(20):
            path.unlink(missing_ok=True)
