"""Micro benchmark of the stream segment log alone (no broker, no AMQP):
``python -m mqbroker.bench.streamlog [--dir D] [--entries N]``.

What it answers: how fast can the storage under a stream queue take
entries when every batch is made durable (append, commit mark, fsync,
committed: the group commit the broker runs), and how fast does a reader
replay it, with how much memory. The batch sizes stand for the number of
publishes one group commit gathers; one fsync is paid per batch, so the
small batches show the fsync cost and the big ones the append path.
Replay RSS is sampled to show that a reader never loads the log.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

from mqbroker.bench import machine_info
from mqbroker.streams.log import StreamLog

SEGMENT_BYTES = 64 * 1024 * 1024


def append_commit(directory: Path, size: int, entries: int, batch: int) -> dict[str, Any]:
    """Entries/s and MB/s of appends made durable ``batch`` at a time."""
    shutil.rmtree(directory, ignore_errors=True)
    log = StreamLog(directory, max_segment_bytes=SEGMENT_BYTES)
    payload = b"m" * size
    now = int(time.time() * 1000)
    t0 = time.perf_counter()
    syncs = 0
    for i in range(entries):
        log.append(payload, now)
        if (i + 1) % batch == 0 or i + 1 == entries:
            mark = log.commit_mark()
            log.sync(mark)
            log.committed(mark)
            syncs += 1
    elapsed = time.perf_counter() - t0
    log.close()
    return {
        "case": f"append+commit {size} B, {batch}/fsync",
        "entries": entries,
        "seconds": round(elapsed, 2),
        "entries_per_s": round(entries / elapsed),
        "mb_per_s": round(entries * size / elapsed / 1e6, 1),
        "fsyncs_per_s": round(syncs / elapsed),
    }


def fill(directory: Path, size: int, entries: int) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    log = StreamLog(directory, max_segment_bytes=SEGMENT_BYTES)
    payload = b"r" * size
    for i in range(entries):
        log.append(payload, i)
        if i % 50_000 == 49_999:
            mark = log.commit_mark()
            log.sync(mark)
            log.committed(mark)
    log.close()


def replay(directory: Path, size: int, entries: int) -> dict[str, Any]:
    """Reopen (recovery time) and read everything back in batches of
    256, sampling the process RSS."""
    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    t0 = time.perf_counter()
    log = StreamLog(directory, max_segment_bytes=SEGMENT_BYTES)
    opened = time.perf_counter() - t0
    reader = log.reader(0)
    count = 0
    peak = rss0
    t1 = time.perf_counter()
    while batch := reader.read(max_entries=256):
        count += len(batch)
        if count % 65_536 < 256:
            peak = max(peak, proc.memory_info().rss)
    elapsed = time.perf_counter() - t1
    reader.close()
    lookup_t = time.perf_counter()
    log.offset_for_timestamp(entries // 2)
    lookup = time.perf_counter() - lookup_t
    seek_t = time.perf_counter()
    log.reader(entries // 3).read(max_entries=1)
    seek = time.perf_counter() - seek_t
    segments = log.stats().segments
    log.close()
    assert count == entries, (count, entries)
    return {
        "case": f"replay {size} B",
        "entries": entries,
        "segments": segments,
        "open_ms": round(opened * 1000, 1),
        "entries_per_s": round(count / elapsed),
        "mb_per_s": round(count * size / elapsed / 1e6, 1),
        "rss_growth_mb": round((peak - rss0) / 1e6, 1),
        "seek_ms": round(seek * 1000, 2),
        "time_lookup_ms": round(lookup * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=None,
                        help="where to write (default: a temp dir)")
    parser.add_argument("--entries", type=int, default=200_000,
                        help="entries per append case")
    parser.add_argument("--replay-entries", type=int, default=2_000_000)
    args = parser.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="streamlog-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    try:
        for size in (64, 1024):
            for batch in (1, 100, 1000):
                n = args.entries if batch > 1 else min(args.entries, 2_000)
                rows.append(append_commit(base / "append", size, n, batch))
                print(json.dumps(rows[-1]))
        for size, n in ((64, args.replay_entries), (1024, args.replay_entries // 4)):
            fill(base / "replay", size, n)
            rows.append(replay(base / "replay", size, n))
            print(json.dumps(rows[-1]))
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
    print(json.dumps({"bench": "streamlog", "machine": machine_info(base.parent),
                      "rows": rows}))


if __name__ == "__main__":
    main()
