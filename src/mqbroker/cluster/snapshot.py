"""Full resynchronisation: the leader's whole data dir, consistent.

Strategy: LMDB copies itself from one read transaction (``env.copy``), so
the copy is one committed state, with its replication position inside it.
The stream segments are read after that copy, so they hold at least every
byte that state refers to; bytes beyond are a prefix of what later records
write again (followers write ranges at their positions, idempotently).
The follower receives into a fresh folder beside its data dir and swaps
it in whole, so a crash mid-transfer leaves its old store as it was.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from mqbroker.persistence import LmdbStore

from .records import Position, read_position

CHUNK = 1 << 20


def take_snapshot(store: LmdbStore, data_dir: Path, work: Path) -> tuple[Position, list[tuple[str, Path]]]:
    """Worker thread: copy the store into ``work``; return its position and
    the files to send as (name relative to the data dir, where to read)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    store.copy_to(work)
    copy = LmdbStore(work, map_size=store.map_size)
    try:
        position = read_position(dict(copy.definitions("cluster")))
    finally:
        copy.close()
    files: list[tuple[str, Path]] = [("data.mdb", work / "data.mdb")]
    streams = data_dir / "streams"
    if streams.exists():
        for path in sorted(streams.rglob("*.seg")):
            files.append((str(path.relative_to(data_dir)), path))
    return position, files


def read_chunks(path: Path) -> Iterator[bytes]:
    try:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk
    except FileNotFoundError:
        return  # a segment retention dropped meanwhile


def incoming_dir(data_dir: Path) -> Path:
    return data_dir.with_name(data_dir.name + ".incoming")


def write_chunk(incoming: Path, name: str, data: bytes) -> None:
    path = incoming / name
    if not path.resolve().is_relative_to(incoming.resolve()):
        raise ValueError(f"snapshot file outside the data dir: {name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        f.write(data)


def install(data_dir: Path, incoming: Path) -> None:
    """Replace the store and the streams of ``data_dir`` with the received
    ones (the follower's store must be closed)."""
    for path in incoming.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for name in ("data.mdb", "lock.mdb"):
        (data_dir / name).unlink(missing_ok=True)
    shutil.rmtree(data_dir / "streams", ignore_errors=True)
    os.replace(incoming / "data.mdb", data_dir / "data.mdb")
    if (incoming / "streams").exists():
        os.replace(incoming / "streams", data_dir / "streams")
    shutil.rmtree(incoming, ignore_errors=True)
    fd = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
