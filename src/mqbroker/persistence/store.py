"""The one storage interface the broker writes through.

Strategy: the broker core is synchronous and runs on the event loop, so every
mutating call here only *records* the change in the current write batch and
returns at once. The server's group-commit task (``persistence/group_commit``)
periodically calls ``take_batch()`` on the loop thread, hands the batch to
``write_batch()`` in a worker thread (one LMDB write transaction plus one
sync for everything many channels did in that tick), and then tells the core
which epoch is durable so publisher confirms and ``tx.commit-ok`` can go out.

Reads (``get_message``) happen on the loop thread and must see writes that are
still pending or in flight, so implementations look in their batches first.

Keys:
- a *definition* is a durable exchange, queue, binding, user, vhost,
  permission or policy, stored as a msgpack-able dict under (kind, key);
- a *message* is stored once under its broker-wide ``msg_id`` however many
  queues hold it, and is deleted when the last queue entry referring to it
  is removed (reference counting is the store's job);
- a *queue entry* is (queue key, seq) -> (msg_id, delivery_count,
  redelivered). ``seq`` orders the queue; a requeued message keeps its seq.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """What is needed to deliver a message again after a restart."""

    exchange: str
    routing_key: str
    # The content-header property bytes exactly as received (flags + list),
    # so the message goes out again byte for byte, unparsed.
    properties: bytes
    body: bytes


@dataclass(slots=True)
class StoredEntry:
    seq: int
    msg_id: int
    delivery_count: int = 0
    redelivered: bool = False
    # body size in bytes: lets recovery rebuild byte counts (length limits,
    # management) without reading a single body
    size: int = 0
    # wall-clock ms after which the message expires (0: never)
    expires_at: int = 0


class LogSync(Protocol):
    """An append-only log committed with the store's batches (a stream):
    ``commit_mark`` on the loop when the batch is taken, ``sync`` in the
    worker thread with the batch's write, ``committed`` on the loop once
    the batch is durable. So one group commit covers queues and logs, and
    a confirm waits for both."""

    def commit_mark(self) -> Any: ...

    def sync(self, mark: Any) -> None: ...

    def committed(self, mark: Any) -> None: ...


@dataclass(slots=True)
class WriteBatch:
    """Everything the core changed since the last ``take_batch()``."""

    epoch: int
    # msg_id -> message (None means: delete the body)
    messages: dict[int, StoredMessage | None] = field(default_factory=dict)
    # (queue, seq) -> entry (None means: delete the entry)
    entries: dict[tuple[str, int], StoredEntry | None] = field(
        default_factory=dict
    )
    # (kind, key) -> record (None means: delete)
    definitions: dict[tuple[str, str], dict[str, Any] | None] = field(
        default_factory=dict
    )
    # queues whose every entry must go (queue deleted or purged)
    dropped_queues: set[str] = field(default_factory=set)
    # logs appended to in this batch; their marks are taken with the batch
    logs: dict[int, LogSync] = field(default_factory=dict)
    log_marks: list[tuple[LogSync, Any]] = field(default_factory=list)
    # what a replicating leader made of this batch (cluster/records.py)
    replica: Any = None

    def __bool__(self) -> bool:
        return bool(
            self.messages
            or self.entries
            or self.definitions
            or self.dropped_queues
            or self.logs
        )

    @property
    def has_records(self) -> bool:
        """Anything for the key-value store itself (not only logs)."""
        return bool(self.messages or self.entries or self.definitions or self.dropped_queues)

    def mark_logs(self) -> None:
        """On the loop, as the batch is taken: each log's commit mark."""
        self.log_marks = [(log, log.commit_mark()) for log in self.logs.values()]
        self.logs = {}

    def sync_logs(self) -> None:
        for log, mark in self.log_marks:
            log.sync(mark)

    def logs_committed(self) -> None:
        marks, self.log_marks = self.log_marks, []
        for log, mark in marks:
            log.committed(mark)


class Replicator(Protocol):
    """Ships committed batches to other nodes (a cluster's leader).

    ``prepare`` on the loop as the batch is taken (it may add records to
    it: they are written locally too), ``encode`` in the worker thread
    right after the local write (the log bytes of the batch are read
    there, before retention can drop a segment), ``ship`` on the loop
    once the batch is durable here (sends it, in write order), ``wait``
    returns when enough followers made it durable too; only then are its
    confirms released. Batches are waited for in the order shipped, while
    the next ones are already written and shipped (a pipeline)."""

    def prepare(self, batch: WriteBatch) -> None: ...

    def encode(self, batch: WriteBatch) -> None: ...

    def ship(self, batch: WriteBatch) -> None: ...

    async def wait(self, batch: WriteBatch) -> None: ...


class Store(Protocol):
    """Durable storage of definitions, messages and queue entries."""

    # --- definitions --------------------------------------------------
    def put_definition(self, kind: str, key: str, record: dict[str, Any]) -> None:
        ...

    def delete_definition(self, kind: str, key: str) -> None:
        ...

    def definitions(self, kind: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """Committed and pending definitions of one kind (pending win)."""
        ...

    def add_log(self, log: LogSync) -> None:
        """``log`` was appended to: commit it with the current batch."""
        ...

    # --- messages and queue entries -----------------------------------
    def enqueue(
        self, queue: str, entry: StoredEntry, message: StoredMessage
    ) -> None:
        """Add an entry; stores the message body the first time its
        ``msg_id`` is seen and counts one more reference to it."""
        ...

    def update_entry(self, queue: str, entry: StoredEntry) -> None:
        """Persist a changed delivery count / redelivered flag."""
        ...

    def remove_entry(self, queue: str, seq: int, msg_id: int) -> None:
        """Ack or drop: one reference less; the body goes with the last.

        Removing an entry that is no longer there (e.g. a late ack after a
        purge) changes nothing."""
        ...

    def drop_queue(self, queue: str) -> None:
        """Remove every entry of a queue (delete or purge of all entries)."""
        ...

    def get_message(self, msg_id: int) -> StoredMessage:
        """The message, from a pending/in-flight batch, cache or disk."""
        ...

    def load_entries(self, queue: str) -> Iterator[StoredEntry]:
        """Committed entries of a queue in seq order (used at start-up)."""
        ...

    def queues_with_entries(self) -> list[str]:
        """Names of the queues with committed entries (used at start-up)."""
        ...

    def max_msg_id(self) -> int:
        """The highest msg_id ever stored (ids are never reused)."""
        ...

    # --- group commit -------------------------------------------------
    @property
    def current_epoch(self) -> int:
        """The epoch of the batch now collecting changes: a change made now
        is durable once the group committer reports an epoch >= this one."""
        ...

    def take_batch(self) -> WriteBatch | None:
        """Detach the current batch (loop thread); None when empty."""
        ...

    def write_batch(self, batch: WriteBatch) -> None:
        """Make a batch durable (worker thread): one txn, one sync."""
        ...

    def batch_done(self, batch: WriteBatch) -> None:
        """Back on the loop thread after ``write_batch`` returned."""
        ...

    @property
    def durable(self) -> bool:
        """False for the in-memory store: confirms need not wait."""
        ...

    def close(self) -> None:
        ...
