"""Storage: the ``Store`` interface, its memory and LMDB implementations,
and the group-commit task that makes batches durable.

``open_store`` is the one place that maps a configuration to a backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import (
    StoreCorruptionError,
    StoreError,
    StoreFormatError,
    StoreFullError,
)
from .group_commit import GroupCommitter, merge_batches
from .lmdb_store import LmdbStore
from .memory import MemoryStore
from .store import Replicator, Store, StoredEntry, StoredMessage, WriteBatch

__all__ = [
    "GroupCommitter",
    "LmdbStore",
    "MemoryStore",
    "Replicator",
    "Store",
    "StoreCorruptionError",
    "StoreError",
    "StoreFormatError",
    "StoreFullError",
    "StoredEntry",
    "StoredMessage",
    "WriteBatch",
    "merge_batches",
    "open_store",
]


def open_store(
    data_dir: Path | None, *, backend: str = "lmdb", **kw: Any
) -> Store:
    """``backend="lmdb"`` (needs ``data_dir``; ``kw`` goes to ``LmdbStore``)
    or ``backend="memory"``."""
    if backend == "memory":
        if kw:
            raise TypeError(f"memory store takes no options: {sorted(kw)}")
        return MemoryStore()
    if backend == "lmdb":
        if data_dir is None:
            raise ValueError("the lmdb store needs a data dir")
        return LmdbStore(Path(data_dir), **kw)
    raise ValueError(f"unknown store backend {backend!r} (lmdb, memory)")
