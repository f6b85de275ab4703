"""Group commit: one task turns everything written meanwhile into one
durable transaction, then releases the confirms that waited on it.

Strategy (LavinMQ's persister loop, architecture.md rule 10): writers call
``notify()`` (a flag, nothing more). The task wakes, takes the store's
current batch and writes it in a worker thread; while that write and its
fsync run, new changes pile up in the next batch. So batches grow with the
load by themselves: one sync per batch, no timer, no latency added when idle.

Urgent and lazy writes: ``notify()`` means somebody waits for the write (a
publisher confirm, a tx.commit-ok, the management API), so the batch is
taken at once. ``notify_lazy()`` is for writes nobody waits for (acks,
delivery marks, persistent publishes without confirms): they are committed
within ``lazy_delay`` or with the next urgent batch, whichever comes first.
Without the distinction, a commit of acks would often be in flight when a
publisher's window arrived, and its confirms would wait for two syncs
instead of one (docs/performance.md, step 3, has the timeline).
A crash may then bring back messages acked in the last ``lazy_delay``:
at-least-once, as in RabbitMQ, which does not sync acks either.

Contract of ``on_committed(epoch)``: called on the loop thread, with epochs
strictly increasing; it means every batch with an epoch <= ``epoch`` is
durable (epochs may be skipped, see below).

Failures: ``StoreFullError`` leaves the batch unwritten and unconfirmed;
``on_error(exc)`` lets the broker raise its disk alarm, and after
``retry_delay`` the write is retried with whatever was changed meanwhile
merged in. Merging matters: the acks that free space arrive *after* the
failed batch, and with them merged in, bodies acked before they were ever
written are not written at all. ``on_recovered()`` is called after the first
successful write following errors. Any other exception propagates and ends
the task: the broker must stop rather than confirm data that is not on disk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import trio

from .errors import StoreFullError
from .store import Replicator, Store, WriteBatch

# Batches written locally and still being replicated, at most (each holds
# its encoded record until its followers acknowledged it).
REPLICATION_PIPELINE = 4


def merge_batches(parts: Sequence[WriteBatch]) -> WriteBatch:
    """One batch with the effect of writing ``parts`` in order.

    Every change in a batch is "last writer wins" per key, except that a
    dropped queue loses the entries written before the drop."""
    merged = WriteBatch(epoch=parts[-1].epoch)
    for part in parts:
        if part.dropped_queues:
            dropped = part.dropped_queues
            merged.entries = {
                key: entry for key, entry in merged.entries.items()
                if key[0] not in dropped
            }
            merged.dropped_queues |= dropped
        merged.entries.update(part.entries)
        merged.messages.update(part.messages)
        merged.definitions.update(part.definitions)
        merged.log_marks.extend(part.log_marks)
    return merged


class GroupCommitter:
    def __init__(
        self,
        store: Store,
        on_committed: Callable[[int], None],
        on_error: Callable[[Exception], None] | None = None,
        *,
        on_recovered: Callable[[], None] | None = None,
        retry_delay: float = 0.5,
        lazy_delay: float = 0.02,
        replicator: Replicator | None = None,
    ) -> None:
        self._store = store
        self._replicator = replicator
        self._on_committed = on_committed
        self._on_error = on_error
        self._on_recovered = on_recovered
        self._retry_delay = retry_delay
        self._lazy_delay = lazy_delay
        self._wakeup = trio.Event()
        self._hurry = trio.Event()
        # A "cycle" is one take_batch() and its write. flush() waits for the
        # first cycle that starts after it was called.
        self._cycles_started = 0
        self._cycles_finished = 0
        self._cycle_done = trio.Event()
        self._failing = False
        self.batches_written = 0
        self._unwritten: list[WriteBatch] = []

    def notify(self) -> None:
        """Somebody waits for what was written: commit it now (loop
        thread; cheap, idempotent)."""
        self._wakeup.set()
        self._hurry.set()

    def notify_lazy(self) -> None:
        """Something was written that nobody waits for: commit it within
        ``lazy_delay`` (or sooner, with the next urgent write)."""
        self._wakeup.set()

    async def flush(self) -> None:
        """Return once everything written before the call is durable."""
        target = self._cycles_started + 1
        self.notify()
        while self._cycles_finished < target:
            await self._cycle_done.wait()

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        if self._replicator is None:
            task_status.started()
            await self._loop()
            return
        send, receive = trio.open_memory_channel[tuple[list[WriteBatch], int]](REPLICATION_PIPELINE)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._replicate_in_order, self._replicator, receive)
            task_status.started()
            await self._loop(send)

    async def _replicate_in_order(
        self,
        replicator: Replicator,
        receive: trio.MemoryReceiveChannel[tuple[list[WriteBatch], int]],
    ) -> None:
        """A cluster's leader: batches written here are replicated in the
        order they were written, and their confirms released in that order,
        while the next batches are already being written (pipelining)."""
        async for parts, epoch in receive:
            for part in parts:
                await replicator.wait(part)
            self._on_committed(epoch)

    async def _loop(
        self, replicate: trio.MemorySendChannel[tuple[list[WriteBatch], int]] | None = None
    ) -> None:
        parts: list[WriteBatch] = []  # taken, not yet durable
        self._unwritten = parts
        while True:
            if not parts:
                await self._wakeup.wait()
                if not self._hurry.is_set():
                    with trio.move_on_after(self._lazy_delay):
                        await self._hurry.wait()
            # No checkpoint from here to take_batch(): a notify() that lands
            # before the reset is covered by this very take.
            self._wakeup = trio.Event()
            self._hurry = trio.Event()
            self._cycles_started += 1
            cycle = self._cycles_started
            batch = self._store.take_batch()
            if batch is not None:
                if self._replicator is not None:
                    self._replicator.prepare(batch)
                parts.append(batch)
            if parts:
                if not await self._write(parts):
                    await trio.sleep(self._retry_delay)
                    continue
                for part in parts:
                    self._store.batch_done(part)
                epoch = parts[-1].epoch
                written, parts = parts, []
                self._unwritten = parts
                if replicate is None or self._replicator is None:
                    self._on_committed(epoch)
                else:
                    for part in written:
                        self._replicator.ship(part)
                    # waits when REPLICATION_PIPELINE batches are in flight
                    await replicate.send((written, epoch))
            self._cycles_finished = cycle
            self._cycle_done.set()
            self._cycle_done = trio.Event()

    def write_remaining(self) -> None:
        """At shutdown, after ``run()`` stopped: write (in this thread) the
        batches it had taken but not written (cancelled before its worker
        thread started) and whatever the store still holds."""
        parts = list(self._unwritten)
        self._unwritten = []
        batch = self._store.take_batch()
        if batch is not None:
            parts.append(batch)
        if not parts:
            return
        merged = parts[0] if len(parts) == 1 else merge_batches(parts)
        self._store.write_batch(merged)
        for part in parts:
            self._store.batch_done(part)

    def _write_sync(self, batch: WriteBatch, parts: list[WriteBatch]) -> None:
        self._store.write_batch(batch)
        if self._replicator is not None:
            for part in parts:  # idempotent: a retried part is encoded once
                self._replicator.encode(part)

    async def _write(self, parts: list[WriteBatch]) -> bool:
        batch = parts[0] if len(parts) == 1 else merge_batches(parts)
        try:
            if self._store.durable:
                await trio.to_thread.run_sync(self._write_sync, batch, parts)
            else:
                self._write_sync(batch, parts)
        except StoreFullError as exc:
            self._failing = True
            if self._on_error is not None:
                self._on_error(exc)
            return False
        self.batches_written += 1
        if self._failing:
            self._failing = False
            if self._on_recovered is not None:
                self._on_recovered()
        return True
