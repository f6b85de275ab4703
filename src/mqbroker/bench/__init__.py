"""Benchmarks (not tests): run each module with ``python -m``.

- ``mqbroker.bench.durability``: confirmed persistent publishing with 1, 4
  and 16 concurrent publishers; messages/s, LMDB commits (= fsyncs)/s and
  confirm latency. Shows the group commit at work.
- ``mqbroker.bench.backlog``: publish a large persistent backlog, restart,
  drain; broker RSS throughout and recovery time.

Both start their own broker subprocess (``mqbroker.testing.BrokerProcess``,
so the dev extras must be installed) on a temporary data dir, print a table
and one JSON line (``{"bench": ...}``) for machines. Figures are recorded
in ``docs/storage.md``.
"""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path
from typing import Any


def machine_info(path: Path | None = None) -> dict[str, Any]:
    """nproc, memory, CPU model, kernel, Python, and the disk under
    ``path``: the context every figure needs."""
    import psutil  # type: ignore[import-untyped]

    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "mem_total_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    if path is not None:
        usage = shutil.disk_usage(path)
        info["disk_free_gib"] = round(usage.free / 2**30, 1)
        info["disk_device"] = _device_of(path)
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _device_of(path: Path) -> str:
    """The mount (device and file system type) holding ``path``."""
    try:
        target = os.path.realpath(path)
        best = ("", "unknown", "")
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, mnt, fstype = line.split()[:3]
            if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) \
                    and len(mnt) >= len(best[0]):
                best = (mnt, dev, fstype)
        return f"{best[1]} ({best[2]}) on {best[0]}"
    except OSError:
        return "unknown"


def lmdb_last_txnid(data_dir: Path) -> int | None:
    """The id of the last committed LMDB write transaction of the broker's
    store, read from another process (LMDB is multi-process: a read-only
    handle sees the live lock file). With ``sync=True`` every write
    transaction is one fsync'd commit, so the difference between two
    readings is the number of group commits in between, without any
    instrumentation in the broker."""
    import lmdb

    try:
        env = lmdb.open(str(data_dir), readonly=True, lock=True, max_dbs=8,
                        subdir=True)
    except lmdb.Error:
        return None
    try:
        return int(env.info()["last_txnid"])
    finally:
        env.close()


def proc_memory(pid: int) -> dict[str, int]:
    """RSS split as the kernel reports it (bytes): ``rss``, ``anon``
    (heap: what the broker itself holds) and ``file`` (mapped file pages:
    LMDB's memory map, reclaimable page cache)."""
    out = {"rss": 0, "anon": 0, "file": 0}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    keys = {"VmRSS:": "rss", "RssAnon:": "anon", "RssFile:": "file"}
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] in keys:
            out[keys[parts[0]]] = int(parts[1]) * 1024
    return out
