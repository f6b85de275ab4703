"""One contract for every ``Store``: the memory and the LMDB store must
behave the same through the interface; LMDB-only tests cover what only a
disk has (reopen, format version, map growth, corruption)."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import msgpack  # type: ignore[import-untyped]
import pytest

from mqbroker.persistence import (
    LmdbStore,
    MemoryStore,
    Store,
    StoreCorruptionError,
    StoredEntry,
    StoredMessage,
    StoreFormatError,
    StoreFullError,
    merge_batches,
    open_store,
)
from mqbroker.persistence.body_cache import BodyCache

KiB = 1024


def msg(n: int, size: int = 8) -> StoredMessage:
    return StoredMessage(
        "ex", f"rk.{n}", b"\x90\x00" + bytes([n % 256]),
        bytes([n % 256]) * size,
    )


class Harness:
    """Opens, commits and reopens one store of either kind."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind = kind
        self.path = path
        self.store: Any = self.open()

    def open(self, **kw: Any) -> Any:
        if self.kind == "memory":
            return MemoryStore()
        kw.setdefault("sync", False)  # reopen in-process needs no fsync
        return LmdbStore(self.path, **kw)

    def commit(self) -> int | None:
        batch = self.store.take_batch()
        if batch is None:
            return None
        self.store.write_batch(batch)
        self.store.batch_done(batch)
        return int(batch.epoch)

    def reopen(self, **kw: Any) -> None:
        """LMDB: close and open again; memory: nothing to reopen."""
        if self.kind == "lmdb":
            self.store.close()
            self.store = self.open(**kw)

    def entries(self, queue: str) -> list[tuple[int, int, int, bool]]:
        return [
            (e.seq, e.msg_id, e.delivery_count, e.redelivered)
            for e in self.store.load_entries(queue)
        ]


@pytest.fixture(params=["memory", "lmdb"])
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(request.param, tmp_path / "data")
    yield harness
    harness.store.close()


@pytest.fixture
def lm(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness("lmdb", tmp_path / "data")
    yield harness
    harness.store.close()


def raw_keys(path: Path, db: bytes) -> list[bytes]:
    env = lmdb.open(str(path), readonly=True, max_dbs=8, lock=False)
    try:
        with env.begin(db=env.open_db(db, create=False)) as txn:
            return [bytes(k) for k, _ in txn.cursor()]
    finally:
        env.close()


# --- both stores ------------------------------------------------------
def test_store_protocol_is_satisfied(h: Harness) -> None:
    store: Store = h.store
    assert store.durable is (h.kind == "lmdb")


def test_enqueue_get_load(h: Harness) -> None:
    h.store.enqueue("q", StoredEntry(2, 7), msg(7))
    h.store.enqueue("q", StoredEntry(1, 6), msg(6))
    assert h.store.get_message(7) == msg(7)
    h.commit()
    h.reopen()
    assert h.entries("q") == [(1, 6, 0, False), (2, 7, 0, False)]
    assert h.store.get_message(6) == msg(6)
    assert h.store.queues_with_entries() == ["q"]
    assert h.store.max_msg_id() == 7


def test_unknown_message_is_key_error(h: Harness) -> None:
    with pytest.raises(KeyError):
        h.store.get_message(12345)


def test_shared_message_stored_once_deleted_with_last_ref(h: Harness) -> None:
    h.store.enqueue("q1", StoredEntry(1, 5), msg(5))
    h.store.enqueue("q2", StoredEntry(1, 5), msg(5))
    h.commit()
    h.store.remove_entry("q1", 1, 5)
    h.commit()
    h.reopen()
    assert h.store.get_message(5) == msg(5)
    assert h.entries("q1") == []
    h.store.remove_entry("q2", 1, 5)
    h.commit()
    h.reopen()
    with pytest.raises(KeyError):
        h.store.get_message(5)
    if h.kind == "lmdb":
        h.store.close()
        assert raw_keys(h.path, b"messages") == []
        assert raw_keys(h.path, b"refs") == []
        assert raw_keys(h.path, b"entries") == []
        h.store = h.open()


def test_message_acked_in_same_batch_is_never_written(h: Harness) -> None:
    h.store.enqueue("q", StoredEntry(1, 9), msg(9))
    h.store.remove_entry("q", 1, 9)
    h.commit()
    h.reopen()
    with pytest.raises(KeyError):
        h.store.get_message(9)
    assert h.store.max_msg_id() == 9  # ids are never reused


def test_update_entry(h: Harness) -> None:
    h.store.enqueue("q", StoredEntry(1, 3), msg(3))
    h.commit()
    h.store.update_entry("q", StoredEntry(1, 3, 2, True))
    h.commit()
    h.reopen()
    assert h.entries("q") == [(1, 3, 2, True)]


def test_entry_is_copied_not_shared(h: Harness) -> None:
    entry = StoredEntry(1, 3)
    h.store.enqueue("q", entry, msg(3))
    entry.delivery_count = 99  # without update_entry: must not persist
    h.commit()
    assert h.entries("q") == [(1, 3, 0, False)]


def test_update_after_remove_is_ignored(h: Harness) -> None:
    h.store.enqueue("q", StoredEntry(1, 3), msg(3))
    h.commit()
    h.store.remove_entry("q", 1, 3)
    h.store.update_entry("q", StoredEntry(1, 3, 1, True))
    h.commit()
    h.store.update_entry("q", StoredEntry(1, 3, 2, True))  # later batch
    h.commit()
    h.reopen()
    assert h.entries("q") == []
    with pytest.raises(KeyError):
        h.store.get_message(3)


def test_drop_queue_keeps_bodies_other_queues_hold(h: Harness) -> None:
    h.store.enqueue("q1", StoredEntry(1, 1), msg(1))
    h.store.enqueue("q2", StoredEntry(1, 1), msg(1))
    h.store.enqueue("q1", StoredEntry(2, 2), msg(2))
    h.commit()
    h.store.enqueue("q1", StoredEntry(3, 3), msg(3))  # pending when dropped
    h.store.drop_queue("q1")
    h.commit()
    h.reopen()
    assert h.entries("q1") == []
    assert h.entries("q2") == [(1, 1, 0, False)]
    assert h.store.get_message(1) == msg(1)
    for gone in (2, 3):
        with pytest.raises(KeyError):
            h.store.get_message(gone)
    # A late ack of a dropped entry must not take q2's body away.
    h.store.remove_entry("q1", 1, 1)
    h.commit()
    h.reopen()
    assert h.store.get_message(1) == msg(1)
    assert h.store.queues_with_entries() == ["q2"]


def test_drop_then_enqueue_in_same_batch(h: Harness) -> None:
    h.store.enqueue("q", StoredEntry(1, 1), msg(1))
    h.commit()
    h.store.enqueue("q", StoredEntry(2, 2), msg(2))
    h.store.drop_queue("q")
    h.store.update_entry("q", StoredEntry(1, 1, 1, True))  # dropped: ignored
    h.store.enqueue("q", StoredEntry(1, 3), msg(3))  # seq restarts
    h.commit()
    h.reopen()
    assert h.entries("q") == [(1, 3, 0, False)]
    assert h.store.get_message(3) == msg(3)
    for gone in (1, 2):
        with pytest.raises(KeyError):
            h.store.get_message(gone)


def test_queue_names_and_seq_order(h: Harness) -> None:
    names = ["a", "ab", "a\x01", "a b", "é", "日本", "x" * 255]
    seqs = [0, 1, 255, 256, 65536, 2**40, 2**64 - 1]
    ops = [(q, s) for q in names for s in seqs]
    random.Random(4).shuffle(ops)
    for i, (q, s) in enumerate(ops):
        h.store.enqueue(q, StoredEntry(s, i), msg(i))
    h.commit()
    h.reopen()
    for q in names:
        assert [e[0] for e in h.entries(q)] == seqs
    assert sorted(h.store.queues_with_entries()) == sorted(names)


def test_load_entries_spans_many_chunks(h: Harness) -> None:
    for seq in range(3000):
        h.store.enqueue("big", StoredEntry(seq, seq + 1), msg(seq))
    h.store.enqueue("big2", StoredEntry(0, 1), msg(0))
    h.commit()
    assert [e[0] for e in h.entries("big")] == list(range(3000))
    assert [e[0] for e in h.entries("big2")] == [0]


def test_definitions(h: Harness) -> None:
    h.store.put_definition("queue", "/|q1", {"durable": True, "args": {}})
    h.store.put_definition("queue", "/|q2", {"durable": True})
    h.store.put_definition("exchange", "/|x", {"type": "topic"})
    assert [k for k, _ in h.store.definitions("queue")] == ["/|q1", "/|q2"]
    h.commit()
    h.store.delete_definition("queue", "/|q1")
    h.store.put_definition("queue", "/|q2", {"durable": False})  # pending
    assert list(h.store.definitions("queue")) == [
        ("/|q2", {"durable": False})
    ]
    h.commit()
    h.reopen()
    assert list(h.store.definitions("queue")) == [
        ("/|q2", {"durable": False})
    ]
    assert list(h.store.definitions("exchange")) == [
        ("/|x", {"type": "topic"})
    ]
    assert list(h.store.definitions("binding")) == []


def test_long_definition_keys(h: Harness) -> None:
    long_a = "/|" + "a" * 255 + "|" + "q" * 255 + "|" + "k" * 255
    long_b = long_a[:-1] + "z"
    h.store.put_definition("binding", long_a, {"n": 1})
    h.store.put_definition("binding", long_b, {"n": 2})
    h.commit()
    h.reopen()
    assert dict(h.store.definitions("binding")) == {
        long_a: {"n": 1}, long_b: {"n": 2}
    }
    h.store.delete_definition("binding", long_a)
    h.commit()
    h.reopen()
    assert dict(h.store.definitions("binding")) == {long_b: {"n": 2}}


def test_take_batch_epochs(h: Harness) -> None:
    assert h.store.take_batch() is None
    first = h.store.current_epoch
    h.store.enqueue("q", StoredEntry(1, 1), msg(1))
    batch = h.store.take_batch()
    assert batch is not None and batch.epoch == first
    assert h.store.take_batch() is None
    assert h.store.current_epoch == first + 1
    h.store.put_definition("vhost", "/", {})
    second = h.store.take_batch()
    assert second is not None and second.epoch == first + 1
    for b in (batch, second):
        h.store.write_batch(b)
        h.store.batch_done(b)


def test_in_flight_batches_stay_visible(h: Harness) -> None:
    h.store.enqueue("q", StoredEntry(1, 1), msg(1))
    h.store.put_definition("queue", "q", {"v": 1})
    first = h.store.take_batch()
    h.store.enqueue("q", StoredEntry(2, 2), msg(2))
    second = h.store.take_batch()
    h.store.delete_definition("queue", "q")
    assert h.store.get_message(1) == msg(1)
    assert h.store.get_message(2) == msg(2)
    assert list(h.store.definitions("queue")) == []
    h.store.write_batch(first)
    assert h.store.get_message(1) == msg(1)
    h.store.batch_done(first)
    assert h.store.get_message(1) == msg(1)  # now from disk
    assert h.store.get_message(2) == msg(2)  # still in flight
    h.store.write_batch(second)
    h.store.batch_done(second)
    h.commit()
    h.reopen()
    assert h.entries("q") == [(1, 1, 0, False), (2, 2, 0, False)]
    assert list(h.store.definitions("queue")) == []


def test_merged_batches_equal_sequential_writes(h: Harness) -> None:
    h.store.enqueue("q", StoredEntry(1, 1), msg(1))
    h.store.enqueue("r", StoredEntry(1, 1), msg(1))
    b1 = h.store.take_batch()
    h.store.drop_queue("q")
    h.store.enqueue("q", StoredEntry(5, 2), msg(2))
    h.store.remove_entry("r", 1, 1)
    b2 = h.store.take_batch()
    assert b1 is not None and b2 is not None
    merged = merge_batches([b1, b2])
    assert merged.epoch == b2.epoch
    h.store.write_batch(merged)
    h.store.batch_done(b1)
    h.store.batch_done(b2)
    h.reopen()
    assert h.entries("q") == [(5, 2, 0, False)]
    assert h.entries("r") == []
    with pytest.raises(KeyError):
        h.store.get_message(1)


def test_open_store_factory(tmp_path: Path) -> None:
    assert isinstance(open_store(None, backend="memory"), MemoryStore)
    store = open_store(tmp_path / "d", sync=False)
    assert isinstance(store, LmdbStore)
    store.close()
    with pytest.raises(ValueError):
        open_store(None)
    with pytest.raises(ValueError):
        open_store(tmp_path, backend="sqlite")


# --- LMDB only --------------------------------------------------------
def test_reopen_shows_exactly_the_committed_state(lm: Harness) -> None:
    lm.store.enqueue("q", StoredEntry(1, 1), msg(1))
    lm.store.put_definition("queue", "q", {})
    lm.commit()
    lm.store.enqueue("q", StoredEntry(2, 2), msg(2))
    lm.store.take_batch()  # taken but never written
    lm.store.remove_entry("q", 1, 1)  # pending
    lm.store.put_definition("queue", "r", {})
    lm.reopen()
    assert lm.entries("q") == [(1, 1, 0, False)]
    assert lm.store.get_message(1) == msg(1)
    with pytest.raises(KeyError):
        lm.store.get_message(2)
    assert [k for k, _ in lm.store.definitions("queue")] == ["q"]
    assert lm.store.max_msg_id() == 1


def test_load_entries_sees_committed_only(lm: Harness) -> None:
    lm.store.enqueue("q", StoredEntry(1, 1), msg(1))
    assert lm.entries("q") == []
    lm.commit()
    assert lm.entries("q") == [(1, 1, 0, False)]


def test_max_msg_id_survives_deleting_the_newest(lm: Harness) -> None:
    lm.store.enqueue("q", StoredEntry(1, 1), msg(1))
    lm.store.enqueue("q", StoredEntry(2, 40), msg(40))
    lm.commit()
    lm.store.remove_entry("q", 2, 40)
    lm.commit()
    lm.reopen()
    assert lm.store.max_msg_id() == 40


def test_data_dir_is_created(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "a" / "b" / "c", sync=False)
    store.close()
    assert (tmp_path / "a" / "b" / "c" / "data.mdb").exists()


def _put_raw(path: Path, db: bytes, key: bytes, value: bytes) -> None:
    env = lmdb.open(str(path), max_dbs=8)
    with env.begin(write=True) as txn:
        txn.put(key, value, db=env.open_db(db, txn=txn))
    env.close()


def test_other_format_version_is_refused(lm: Harness) -> None:
    lm.store.close()
    _put_raw(lm.path, b"meta", b"format", msgpack.packb(2))
    with pytest.raises(StoreFormatError, match=r"version 2.*format 1"):
        lm.store = lm.open()
    lm.store = MemoryStore()


def test_foreign_lmdb_env_is_refused(tmp_path: Path) -> None:
    _put_raw(tmp_path, b"something", b"k", b"v")
    with pytest.raises(StoreFormatError, match="not an mqbroker store"):
        LmdbStore(tmp_path)


def test_garbage_data_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data.mdb").write_bytes(b"\x01" * 20000)
    with pytest.raises(StoreFormatError):
        LmdbStore(tmp_path)


def test_map_grows_from_a_tiny_map(lm: Harness) -> None:
    lm.store.close()
    lm.store = lm.open(map_size=64 * KiB)
    for n in range(200):
        for i in range(10):
            mid = n * 10 + i + 1
            lm.store.enqueue("q", StoredEntry(mid, mid), msg(mid, 1 * KiB))
        lm.commit()
    assert lm.store.map_size > 64 * KiB
    lm.reopen(map_size=64 * KiB)
    assert len(lm.entries("q")) == 2000
    assert lm.store.get_message(1999) == msg(1999, 1 * KiB)


def test_store_full_at_max_map_size(lm: Harness) -> None:
    lm.store.close()
    lm.store = lm.open(map_size=64 * KiB, max_map_size=256 * KiB)
    lm.store.enqueue("q", StoredEntry(1, 1), msg(1))
    lm.commit()
    for mid in range(2, 50):
        lm.store.enqueue("q", StoredEntry(mid, mid), msg(mid, 16 * KiB))
    big = lm.store.take_batch()
    with pytest.raises(StoreFullError, match="maximum map size"):
        lm.store.write_batch(big)
    assert lm.store.get_message(30) == msg(30, 16 * KiB)  # still in flight
    # The acks that follow, merged in, make the retry fit.
    for mid in range(2, 50):
        lm.store.remove_entry("q", mid, mid)
    acks = lm.store.take_batch()
    lm.store.write_batch(merge_batches([big, acks]))
    lm.store.batch_done(big)
    lm.store.batch_done(acks)
    lm.reopen(map_size=64 * KiB, max_map_size=256 * KiB)
    assert lm.entries("q") == [(1, 1, 0, False)]


def test_reads_are_safe_while_the_map_grows(lm: Harness) -> None:
    lm.store.close()
    lm.store = lm.open(map_size=64 * KiB)
    lm.store.enqueue("q", StoredEntry(0, 1), msg(1, 4 * KiB))
    lm.commit()
    batches = []
    for n in range(60):
        for i in range(20):
            mid = 2 + n * 20 + i
            lm.store.enqueue("w", StoredEntry(mid, mid), msg(mid, 2 * KiB))
        batches.append(lm.store.take_batch())

    def writer() -> None:
        for batch in batches:
            lm.store.write_batch(batch)

    thread = threading.Thread(target=writer)
    thread.start()
    reads = 0
    while thread.is_alive() or reads < 100:
        lm.store._cache.discard(1)  # force a disk read each time
        assert lm.store.get_message(1) == msg(1, 4 * KiB)
        assert lm.entries("q") == [(0, 1, 0, False)]
        reads += 1
    thread.join()
    for batch in batches:
        lm.store.batch_done(batch)
    assert lm.store.map_size > 64 * KiB
    assert len(lm.entries("w")) == 1200


def _corrupt(path: Path, db: bytes) -> None:
    env = lmdb.open(str(path), max_dbs=8)
    with env.begin(write=True) as txn:
        handle = env.open_db(db, txn=txn)
        key, value = next(iter(txn.cursor(db=handle)))
        flipped = bytearray(value)
        flipped[-1] ^= 0x40
        txn.put(key, bytes(flipped), db=handle)
    env.close()


def test_corrupt_records_are_reported_not_misread(lm: Harness) -> None:
    lm.store.enqueue("q", StoredEntry(1, 1), msg(1))
    lm.commit()
    lm.store.close()
    _corrupt(lm.path, b"entries")
    _corrupt(lm.path, b"messages")
    lm.store = lm.open()
    with pytest.raises(StoreCorruptionError, match="entry"):
        lm.entries("q")
    with pytest.raises(StoreCorruptionError, match="message"):
        lm.store.get_message(1)
    lm.store.drop_queue("q")  # dropping a damaged queue still works
    lm.commit()
    assert lm.entries("q") == []


def test_body_cache_is_bounded_and_evicts_deleted(lm: Harness) -> None:
    cache = BodyCache(max_bytes=10 * KiB)
    for mid in range(20):
        cache.put(mid, msg(mid, KiB))
    assert cache.size_bytes <= 10 * KiB and len(cache) < 20
    assert cache.get(19) is not None and cache.get(0) is None
    cache.put(99, msg(99, 20 * KiB))  # larger than the whole budget
    assert cache.get(99) is None

    lm.store.enqueue("q", StoredEntry(1, 1), msg(1))
    lm.commit()
    lm.store._cache.discard(1)
    assert lm.store.get_message(1) == msg(1)
    assert lm.store._cache.get(1) is not None
    lm.store.remove_entry("q", 1, 1)
    lm.commit()
    assert lm.store._cache.get(1) is None
