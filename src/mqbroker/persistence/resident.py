"""Give back the resident pages of LMDB's memory map.

Strategy: reading a backlog through LMDB's read-only shared mapping makes
every page touched count in the process's RSS, so draining a 2 GB store
shows 2 GB of RSS although those are clean page-cache pages the kernel can
drop at will. ``madvise(MADV_DONTNEED)`` on a shared file mapping only
unmaps them from this process (the next access faults them back in from the
page cache, unchanged), so calling it periodically keeps RSS to what the
broker itself holds. Linux only; elsewhere it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from pathlib import Path

MADV_DONTNEED = 4

_libc = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    except OSError:
        _libc = None


def _mappings(path: str) -> list[tuple[int, int]]:
    ranges = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                if line.rstrip().endswith(path):
                    start, end = line.split()[0].split("-")
                    ranges.append((int(start, 16), int(end, 16)))
    except OSError:
        return []
    return ranges


def release_map(data_file: Path) -> int:
    """Drop this process's resident pages of ``data_file``'s mappings;
    returns the bytes advised (0 when unsupported)."""
    if _libc is None:
        return 0
    path = os.path.realpath(data_file)
    total = 0
    for start, end in _mappings(path):
        if _libc.madvise(ctypes.c_void_p(start), end - start, MADV_DONTNEED) == 0:
            total += end - start
    return total
