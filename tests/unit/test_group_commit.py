"""GroupCommitter: batching under load, epoch order, flush, disk-full retry,
and crashing (not confirming) on any other write error."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio
import trio.testing

from mqbroker.persistence import (
    GroupCommitter,
    LmdbStore,
    MemoryStore,
    StoredEntry,
    StoredMessage,
    StoreFullError,
    WriteBatch,
)

KiB = 1024


def msg(n: int, size: int = 16) -> StoredMessage:
    return StoredMessage("ex", "rk", b"", bytes([n % 256]) * size)


class Confirms:
    """What the core would do: remember the highest durable epoch and wake
    the publishers waiting for it."""

    def __init__(self) -> None:
        self.epochs: list[int] = []
        self.changed = trio.Event()

    def __call__(self, epoch: int) -> None:
        self.epochs.append(epoch)
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, epoch: int) -> None:
        while not self.epochs or self.epochs[-1] < epoch:
            await self.changed.wait()


class SlowLmdbStore(LmdbStore):
    """Counts writes and makes each take a while, like a slow disk."""

    writes = 0

    def write_batch(self, batch: WriteBatch) -> None:
        time.sleep(0.01)
        super().write_batch(batch)
        self.writes += 1


async def test_many_publishers_few_commits(tmp_path: Path) -> None:
    store = SlowLmdbStore(tmp_path)
    confirms = Confirms()
    committer = GroupCommitter(store, confirms)

    async def publish(n: int) -> None:
        store.enqueue("q", StoredEntry(n, n), msg(n))
        epoch = store.current_epoch
        committer.notify()
        await confirms.wait_for(epoch)

    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        async with trio.open_nursery() as publishers:
            for n in range(1, 201):
                publishers.start_soon(publish, n)
                if n % 20 == 0:
                    await trio.sleep(0.002)  # publishers keep arriving
        nursery.cancel_scope.cancel()
    assert store.writes == committer.batches_written
    assert 1 <= store.writes <= 40  # 200 publishes, a few syncs
    assert confirms.epochs == sorted(set(confirms.epochs))
    store.close()
    reopened = LmdbStore(tmp_path)
    assert len(list(reopened.load_entries("q"))) == 200
    reopened.close()


async def test_flush_makes_everything_durable(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path)
    confirms = Confirms()
    committer = GroupCommitter(store, confirms)
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        await committer.flush()  # nothing pending: returns at once
        assert confirms.epochs == []
        for n in range(1, 6):
            store.enqueue("q", StoredEntry(n, n), msg(n))  # no notify()
        store.put_definition("queue", "q", {"durable": True})
        await committer.flush()
        assert confirms.epochs == [1]
        nursery.cancel_scope.cancel()
    store.close()
    store = LmdbStore(tmp_path)
    assert [e.seq for e in store.load_entries("q")] == [1, 2, 3, 4, 5]
    assert [k for k, _ in store.definitions("queue")] == ["q"]
    store.close()


async def test_memory_store_commits_inline() -> None:
    store = MemoryStore()
    confirms = Confirms()
    committer = GroupCommitter(store, confirms)
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        store.enqueue("q", StoredEntry(1, 1), msg(1))
        epoch = store.current_epoch
        committer.notify()
        committer.notify()
        await confirms.wait_for(epoch)
        store.remove_entry("q", 1, 1)
        await committer.flush()
        nursery.cancel_scope.cancel()
    assert confirms.epochs == [epoch, epoch + 1]


async def test_store_full_retries_merged_without_losing_data(
    tmp_path: Path,
) -> None:
    store = LmdbStore(tmp_path, map_size=64 * KiB, max_map_size=256 * KiB)
    confirms = Confirms()
    errors: list[Exception] = []
    recovered: list[bool] = []
    committer = GroupCommitter(
        store, confirms, errors.append,
        on_recovered=lambda: recovered.append(True), retry_delay=0.01,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        store.enqueue("keep", StoredEntry(1, 1), msg(1))
        await committer.flush()
        assert confirms.epochs == [1]
        for n in range(2, 50):  # ~770 KiB: more than the map may hold
            store.enqueue("q", StoredEntry(n, n), msg(n, 16 * KiB))
        committer.notify()
        while not errors:
            await trio.sleep(0.01)
        assert isinstance(errors[0], StoreFullError)
        await trio.sleep(0.05)  # a few retries, all failing
        assert confirms.epochs == [1]  # nothing confirmed meanwhile
        assert store.get_message(30) == msg(30, 16 * KiB)  # nor lost
        for n in range(2, 50):  # consumers drain: the alarm worked
            store.remove_entry("q", n, n)
        store.enqueue("keep", StoredEntry(2, 100), msg(100))
        epoch = store.current_epoch
        committer.notify()
        await confirms.wait_for(epoch)
        nursery.cancel_scope.cancel()
    assert confirms.epochs == [1, epoch]  # epochs merged, never repeated
    assert recovered == [True]
    store.close()
    store = LmdbStore(tmp_path, map_size=64 * KiB, max_map_size=256 * KiB)
    assert [e.msg_id for e in store.load_entries("keep")] == [1, 100]
    assert list(store.load_entries("q")) == []
    store.close()


class BrokenStore(MemoryStore):
    @property
    def durable(self) -> bool:
        return True

    def write_batch(self, batch: WriteBatch) -> None:
        raise OSError("EIO")


async def test_other_write_errors_crash_the_committer() -> None:
    store = BrokenStore()
    confirms = Confirms()
    errors: list[Exception] = []
    committer = GroupCommitter(store, confirms, errors.append)
    store.enqueue("q", StoredEntry(1, 1), msg(1))
    committer.notify()
    with pytest.raises(OSError, match="EIO"):
        await committer.run()
    assert confirms.epochs == [] and errors == []


async def test_notify_before_run_is_not_lost() -> None:
    store = MemoryStore()
    confirms = Confirms()
    committer = GroupCommitter(store, confirms)
    store.put_definition("vhost", "/", {})
    committer.notify()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(committer.run)
        await confirms.wait_for(1)
        nursery.cancel_scope.cancel()
    assert confirms.epochs == [1]


async def test_lazy_writes_wait_for_the_delay(mock_clock: trio.testing.MockClock) -> None:
    """Writes nobody waits for (acks, delivery marks) are committed after
    ``lazy_delay``, not at once: a commit of acks in flight would make the
    next publisher confirm wait for two syncs."""
    store = MemoryStore()
    confirms = Confirms()
    committer = GroupCommitter(store, confirms, lazy_delay=0.02)
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        store.put_definition("vhost", "/", {})
        committer.notify_lazy()
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(0.019)
        await trio.testing.wait_all_tasks_blocked()
        assert confirms.epochs == []
        mock_clock.jump(0.002)
        await trio.testing.wait_all_tasks_blocked()
        assert confirms.epochs == [1]
        nursery.cancel_scope.cancel()


async def test_urgent_write_cuts_a_lazy_wait_short(
    mock_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore()
    confirms = Confirms()
    committer = GroupCommitter(store, confirms, lazy_delay=10.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        store.put_definition("vhost", "/", {})  # an ack, say
        committer.notify_lazy()
        await trio.testing.wait_all_tasks_blocked()
        assert confirms.epochs == []
        store.enqueue("q", StoredEntry(1, 1), msg(1))  # a confirm waits
        epoch = store.current_epoch
        committer.notify()
        await trio.testing.wait_all_tasks_blocked()
        assert confirms.epochs == [epoch]  # both, at once, in one batch
        assert trio.current_time() == 0
        nursery.cancel_scope.cancel()
