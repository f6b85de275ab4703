"""LMDB-backed ``Store``: one environment, five named sub-databases.

Strategy:

- Loop thread: a mutation is a couple of dict operations on the current
  ``WriteBatch``. A read looks at the current batch, then the batches in
  flight (newest first), then a byte-bounded body cache, and only then
  opens a short LMDB read transaction. LMDB readers never block the writer,
  and py-lmdb opens environments with ``MDB_NOTLS``, so a read transaction
  on the loop thread is fine while a worker thread writes. Scans read in
  chunks of short transactions: a long-lived reader would pin old pages and
  make the file grow.
- Worker thread: ``write_batch`` applies a whole batch in one write
  transaction (``lmdb_apply``; a write transaction never leaves the thread
  that began it) and commits. With ``sync=True`` the commit fsyncs data and
  meta pages before it returns, so a confirm sent afterwards survives a
  power cut; the commit also releases the GIL while it syncs.
- Map full: the transaction is aborted, the map doubled (up to
  ``max_map_size``) and the transaction retried; past the maximum (or on
  ENOSPC) ``StoreFullError`` says "raise the disk alarm". ``set_mapsize``
  invalidates every open transaction in the process, so loop-thread reads
  and the resize share one lock; nothing else is locked.
- Reference counts are kept on disk by the worker (see ``lmdb_apply``).
- The "meta" sub-db holds ``b"format"`` as a bare msgpack int (no record
  framing, so any future version can read it) and refuses other versions.
"""

from __future__ import annotations

import errno
import mmap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import msgpack  # type: ignore[import-untyped]

from . import records as rec
from .body_cache import BodyCache
from .errors import StoreFormatError, StoreFullError
from .lmdb_apply import Dbs, apply_batch, read_high_water
from .resident import release_map
from .store import LogSync, StoredEntry, StoredMessage, WriteBatch

MiB = 1 << 20
GiB = 1 << 30
_DB_NAMES = (b"meta", b"messages", b"refs", b"entries", b"defs")
_FORMAT_KEY = b"format"
# Entries read per read transaction: short enough not to pin pages for
# long, big enough that the per-transaction cost (~2 us) is amortised.
_SCAN_CHUNK = 1024


class LmdbStore:
    def __init__(
        self,
        path: Path,
        *,
        map_size: int = 256 * MiB,
        max_map_size: int = 64 * GiB,
        sync: bool = True,
        cache_bytes: int = 64 * MiB,
        max_readers: int = 126,
    ) -> None:
        page = mmap.PAGESIZE
        max_map_size -= max_map_size % page
        if not page <= map_size <= max_map_size:
            raise ValueError("need PAGESIZE <= map_size <= max_map_size")
        self._path = Path(path)
        self._path.mkdir(parents=True, exist_ok=True)
        self._max_map_size = max_map_size
        try:
            self._env = lmdb.open(
                str(self._path), map_size=map_size, subdir=True,
                max_dbs=len(_DB_NAMES), sync=sync, metasync=True,
                readahead=False, lock=True, max_readers=max_readers,
            )
        except (lmdb.InvalidError, lmdb.VersionMismatchError,
                lmdb.IncompatibleError, lmdb.CorruptedError) as exc:
            raise StoreFormatError(
                f"{self._path} is not a readable LMDB environment: {exc}"
            ) from exc
        try:
            self._dbs = self._open_dbs()
            with self._env.begin() as txn:
                self._max_id = read_high_water(txn, self._dbs)
        except BaseException:
            self._env.close()
            raise
        self._map_size: int = self._env.info()["map_size"]
        self._map_lock = threading.Lock()
        self._batch = WriteBatch(epoch=1)
        self._in_flight: list[WriteBatch] = []
        self._cache = BodyCache(cache_bytes)
        # Body ids the worker deleted; the cache drops them in batch_done.
        self._deleted: list[int] = []
        self._closed = False

    def _open_dbs(self) -> Dbs:
        with self._env.begin() as txn:
            names = {bytes(key) for key, _ in txn.cursor()}
        if names and _DB_NAMES[0] not in names:
            raise StoreFormatError(
                f"{self._path} holds an LMDB environment that is not an "
                f"mqbroker store (no 'meta' database; found {sorted(names)})"
            )
        with self._env.begin(write=True) as txn:
            dbs = Dbs(*(self._env.open_db(n, txn=txn) for n in _DB_NAMES))
            raw = txn.get(_FORMAT_KEY, db=dbs.meta)
            if raw is None and names:
                raise StoreFormatError(
                    f"{self._path}: store has no format version record; "
                    f"expected format {rec.FORMAT_VERSION}"
                )
            if raw is None:
                txn.put(_FORMAT_KEY, msgpack.packb(rec.FORMAT_VERSION),
                        db=dbs.meta)
            else:
                self._check_format(raw)
        return dbs

    def _check_format(self, raw: bytes) -> None:
        try:
            found: Any = msgpack.unpackb(raw)
        except Exception:
            found = raw
        if found != rec.FORMAT_VERSION or isinstance(found, bool):
            raise StoreFormatError(
                f"{self._path} has store format version {found!r}, this "
                f"broker reads format {rec.FORMAT_VERSION} only; refusing to "
                f"open it (use the matching broker version or another "
                f"data dir)"
            )

    # --- definitions --------------------------------------------------
    def put_definition(
        self, kind: str, key: str, record: dict[str, Any]
    ) -> None:
        rec.def_key(kind, key)  # validate now, not in the worker
        self._batch.definitions[(kind, key)] = dict(record)

    def delete_definition(self, kind: str, key: str) -> None:
        rec.def_key(kind, key)
        self._batch.definitions[(kind, key)] = None

    def definitions(self, kind: str) -> Iterator[tuple[str, dict[str, Any]]]:
        prefix = rec.def_prefix(kind)
        found: dict[str, dict[str, Any]] = {}
        with self._map_lock, self._env.begin(db=self._dbs.defs) as txn:
            cursor = txn.cursor()
            raws: list[tuple[bytes, bytes]] = []
            if cursor.set_range(prefix):
                for key, raw in cursor:
                    if not key.startswith(prefix):
                        break
                    raws.append((key, raw))
        for key, raw in raws:
            name, stored = rec.unpack_definition(raw, key)
            found[name] = stored
        # Re-applying a batch that has meanwhile been committed is harmless:
        # every change in a batch is "last writer wins".
        for batch in (*self._in_flight, self._batch):
            for (batch_kind, name), record in batch.definitions.items():
                if batch_kind != kind:
                    continue
                if record is None:
                    found.pop(name, None)
                else:
                    found[name] = dict(record)
        return iter(sorted(found.items()))

    # --- messages and queue entries -----------------------------------
    def enqueue(
        self, queue: str, entry: StoredEntry, message: StoredMessage
    ) -> None:
        batch = self._batch
        batch.entries[(queue, entry.seq)] = rec.copy_entry(entry)
        msg_id = entry.msg_id
        if msg_id not in batch.messages:
            batch.messages[msg_id] = message
            if msg_id > self._max_id:
                self._max_id = msg_id

    def update_entry(self, queue: str, entry: StoredEntry) -> None:
        batch = self._batch
        key = (queue, entry.seq)
        pending = batch.entries.get(key, batch)  # batch: "not in this one"
        if pending is None:
            return  # removed in this batch
        if pending is batch and queue in batch.dropped_queues:
            return  # dropped in this batch and not enqueued since
        batch.entries[key] = rec.copy_entry(entry)

    def remove_entry(self, queue: str, seq: int, msg_id: int) -> None:
        self._batch.entries[(queue, seq)] = None

    def drop_queue(self, queue: str) -> None:
        rec.queue_prefix(queue)
        batch = self._batch
        for key in [k for k in batch.entries if k[0] == queue]:
            del batch.entries[key]
        batch.dropped_queues.add(queue)

    def get_message(self, msg_id: int) -> StoredMessage:
        message = self._batch.messages.get(msg_id)
        if message is not None:
            return message
        for batch in reversed(self._in_flight):
            message = batch.messages.get(msg_id)
            if message is not None:
                return message
        message = self._cache.get(msg_id)
        if message is not None:
            return message
        key = rec.id_key(msg_id)
        with self._map_lock, self._env.begin(db=self._dbs.messages) as txn:
            raw = txn.get(key)
        if raw is None:
            raise KeyError(msg_id)
        message = rec.unpack_message(raw, key)
        self._cache.put(msg_id, message)
        return message

    def load_entries(self, queue: str) -> Iterator[StoredEntry]:
        """Committed entries in seq order, read in chunks of short read
        transactions (a batch not yet written is not included)."""
        prefix = rec.queue_prefix(queue)
        start = prefix
        while True:
            chunk = self._scan(self._dbs.entries, start, prefix)
            for key, raw in chunk:
                yield rec.unpack_entry(raw, key)
            if len(chunk) < _SCAN_CHUNK:
                return
            start = chunk[-1][0] + b"\x00"  # the smallest key after it

    def _scan(
        self, db: lmdb._Database, start: bytes, prefix: bytes
    ) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        with self._map_lock, self._env.begin(db=db) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(start):
                return out
            for key, raw in cursor:
                if not key.startswith(prefix):
                    break
                out.append((key, raw))
                if len(out) == _SCAN_CHUNK:
                    break
        return out

    def queues_with_entries(self) -> list[str]:
        """Names of the queues with committed entries, in key order (one
        cursor jump per queue, not a scan of every entry)."""
        names: list[str] = []
        with self._map_lock, self._env.begin(db=self._dbs.entries) as txn:
            cursor = txn.cursor()
            start = b""
            while cursor.set_range(start):
                queue, _ = rec.split_entry_key(cursor.key())
                names.append(queue)
                start = queue.encode() + b"\x01"  # past every "queue\0..."
        return names

    def max_msg_id(self) -> int:
        return self._max_id

    # --- group commit -------------------------------------------------
    @property
    def current_epoch(self) -> int:
        return self._batch.epoch

    def add_log(self, log: LogSync) -> None:
        self._batch.logs[id(log)] = log

    def take_batch(self) -> WriteBatch | None:
        batch = self._batch
        if not batch:
            return None
        batch.mark_logs()
        self._in_flight.append(batch)
        self._batch = WriteBatch(epoch=batch.epoch + 1)
        return batch

    def write_batch(self, batch: WriteBatch) -> None:
        # Logs first: a record that points into a log (a committed group
        # offset) must never be durable before the entries it points at.
        batch.sync_logs()
        if not batch.has_records:
            return
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    deleted = apply_batch(txn, self._dbs, batch)
            except lmdb.MapFullError as exc:
                self._grow(exc)
                continue
            except lmdb.Error as exc:
                if isinstance(exc, lmdb.DiskError) or getattr(
                    exc, "code", 0
                ) in (errno.ENOSPC, errno.EDQUOT):
                    raise StoreFullError(
                        f"no space left for the store in {self._path}"
                    ) from exc
                raise
            self._deleted.extend(deleted)
            return

    def _grow(self, exc: Exception) -> None:
        if self._map_size >= self._max_map_size:
            raise StoreFullError(
                f"store {self._path} reached its maximum map size of "
                f"{self._max_map_size} bytes"
            ) from exc
        new_size = min(self._map_size * 2, self._max_map_size)
        with self._map_lock:  # no read transaction may be open meanwhile
            self._env.set_mapsize(new_size)
        self._map_size = new_size

    def batch_done(self, batch: WriteBatch) -> None:
        batch.logs_committed()
        for i, pending in enumerate(self._in_flight):
            if pending is batch:
                del self._in_flight[i]
                break
        if self._deleted:
            deleted, self._deleted = self._deleted, []
            for msg_id in deleted:
                self._cache.discard(msg_id)

    @property
    def durable(self) -> bool:
        return True

    @property
    def map_size(self) -> int:
        """The current size of the memory map in bytes."""
        return self._map_size

    def release_resident(self) -> int:
        """Unmap the resident pages of the memory map (see resident.py).

        Called from the loop thread between reads; the writer thread may
        be reading pages at the same time, which is safe: a shared file
        mapping faults the same bytes back in from the page cache."""
        return release_map(self._path / "data.mdb")

    def copy_to(self, directory: Path) -> None:
        """A consistent copy of the committed store into ``directory`` (one
        read transaction: a cluster's snapshot). Any thread. Not under the
        map lock: a big copy must not stall the loop's reads; a map resize
        meanwhile fails the copy (lmdb.Error), and the caller retries."""
        self._env.copy(str(directory), compact=True)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._env.close()
