"""In-memory ``Store``: transient brokers and tests.

Strategy: apply every change at once to plain dicts; there is nothing to
make durable, so ``write_batch`` does nothing and ``durable`` is False.
``take_batch`` still hands out empty batches with increasing epochs whenever
something changed, so the confirm logic above the store is the same for
both backends.

This store is on the hot path of transient traffic, so each call is a few
dict operations: messages are reference-counted (stored once however many
queues hold them), entries live in one dict per queue keyed by seq.
Removing or updating an entry that is not there is ignored, which makes a
late ack after a purge harmless.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .records import copy_entry
from .store import LogSync, StoredEntry, StoredMessage, WriteBatch


class MemoryStore:
    def __init__(self) -> None:
        self._messages: dict[int, StoredMessage] = {}
        self._refs: dict[int, int] = {}
        self._queues: dict[str, dict[int, StoredEntry]] = {}
        self._defs: dict[str, dict[str, dict[str, Any]]] = {}
        self._epoch = 1
        self._dirty = False
        self._logs: dict[int, LogSync] = {}
        self._max_id = 0

    # --- definitions --------------------------------------------------
    def put_definition(
        self, kind: str, key: str, record: dict[str, Any]
    ) -> None:
        self._defs.setdefault(kind, {})[key] = dict(record)
        self._dirty = True

    def delete_definition(self, kind: str, key: str) -> None:
        self._defs.get(kind, {}).pop(key, None)
        self._dirty = True

    def definitions(self, kind: str) -> Iterator[tuple[str, dict[str, Any]]]:
        records = self._defs.get(kind, {})
        for key in sorted(records):
            yield key, dict(records[key])

    # --- messages and queue entries -----------------------------------
    def enqueue(
        self, queue: str, entry: StoredEntry, message: StoredMessage
    ) -> None:
        entries = self._queues.get(queue)
        if entries is None:
            entries = self._queues[queue] = {}
        old = entries.get(entry.seq)
        entries[entry.seq] = copy_entry(entry)
        msg_id = entry.msg_id
        count = self._refs.get(msg_id, 0)
        if count == 0:
            self._messages[msg_id] = message
            if msg_id > self._max_id:
                self._max_id = msg_id
        self._refs[msg_id] = count + 1
        if old is not None:  # same (queue, seq) enqueued twice: replace
            self._unref(old.msg_id)
        self._dirty = True

    def update_entry(self, queue: str, entry: StoredEntry) -> None:
        entries = self._queues.get(queue)
        if entries is None:
            return
        old = entries.get(entry.seq)
        if old is None or old.msg_id != entry.msg_id:
            return
        entries[entry.seq] = copy_entry(entry)
        self._dirty = True

    def remove_entry(self, queue: str, seq: int, msg_id: int) -> None:
        entries = self._queues.get(queue)
        if entries is None:
            return
        old = entries.pop(seq, None)
        if old is None:
            return
        if not entries:
            del self._queues[queue]
        self._unref(old.msg_id)
        self._dirty = True

    def drop_queue(self, queue: str) -> None:
        entries = self._queues.pop(queue, None)
        if entries:
            for entry in entries.values():
                self._unref(entry.msg_id)
        self._dirty = True

    def _unref(self, msg_id: int) -> None:
        count = self._refs[msg_id] - 1
        if count:
            self._refs[msg_id] = count
        else:
            del self._refs[msg_id]
            del self._messages[msg_id]

    def get_message(self, msg_id: int) -> StoredMessage:
        return self._messages[msg_id]

    def load_entries(self, queue: str) -> Iterator[StoredEntry]:
        entries = self._queues.get(queue, {})
        for seq in sorted(entries):
            yield copy_entry(entries[seq])

    def queues_with_entries(self) -> list[str]:
        """Names of the queues holding at least one entry (start-up)."""
        return sorted(self._queues)

    def max_msg_id(self) -> int:
        return self._max_id

    # --- group commit -------------------------------------------------
    @property
    def current_epoch(self) -> int:
        return self._epoch

    def add_log(self, log: LogSync) -> None:
        self._logs[id(log)] = log
        self._dirty = True

    def take_batch(self) -> WriteBatch | None:
        if not self._dirty:
            return None
        self._dirty = False
        batch = WriteBatch(epoch=self._epoch, logs=self._logs)
        self._logs = {}
        batch.mark_logs()
        self._epoch += 1
        return batch

    def write_batch(self, batch: WriteBatch) -> None:
        pass

    def batch_done(self, batch: WriteBatch) -> None:
        # In memory nothing is synced: entries become readable at once.
        batch.logs_committed()

    @property
    def durable(self) -> bool:
        return False

    def close(self) -> None:
        pass
