"""Store operations against a dict model (architecture.md, house rule 9).

Random sequences of enqueues (message ids shared between queues), removes
(also stale ones: late acks after a drop), updates, queue drops and
definition changes, with batches taken, written in order or merged, and
(LMDB) reopened. After every write the disk must hold exactly the model as
of that batch's ``take_batch()``: the entries, one body per referenced id
(none leaked), and the right reference counts; after a reopen the store is
that state and nothing else.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from mqbroker.persistence import (
    LmdbStore,
    MemoryStore,
    StoredEntry,
    StoredMessage,
    WriteBatch,
    merge_batches,
)
from mqbroker.persistence import records as rec

QUEUES = ["a", "ab", "a\x01"]  # "a" must not see the others' keys
KINDS = ["queue", "binding"]
DEF_KEYS = ["k1", "k2", "k3"]

Entry = tuple[int, int, bool]  # msg_id, delivery_count, redelivered
State = dict[str, dict[int, Entry]]


def message(msg_id: int) -> StoredMessage:
    return StoredMessage("x", f"rk{msg_id}", b"\x01", b"b" * (msg_id % 7))


class Snapshot:
    def __init__(self, machine: StoreMachine) -> None:
        self.queues: State = copy.deepcopy(machine.queues)
        self.defs = dict(machine.defs)
        self.max_id = machine.max_id


class StoreMachine(RuleBasedStateMachine):
    kind = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="store-prop-"))
        self.store: Any = self._open()
        self.queues: State = {q: {} for q in QUEUES}
        self.defs: dict[tuple[str, str], int] = {}
        self.next_seq = dict.fromkeys(QUEUES, 0)
        self.used_keys: set[tuple[str, int]] = set()
        self.next_id = 1
        self.max_id = 0
        self.in_flight: list[tuple[WriteBatch, Snapshot]] = []
        self.committed = Snapshot(self)

    def _open(self) -> Any:
        if self.kind == "memory":
            return MemoryStore()
        return LmdbStore(self.dir, map_size=64 * 1024, sync=False)

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @initialize()
    def start(self) -> None:
        pass

    # --- helpers ------------------------------------------------------
    def live_ids(self) -> list[int]:
        return sorted({e[0] for q in self.queues.values() for e in q.values()})

    def live_keys(self) -> list[tuple[str, int]]:
        return [(q, s) for q, es in self.queues.items() for s in sorted(es)]

    # --- mutations ----------------------------------------------------
    @rule(queue=st.sampled_from(QUEUES), share=st.booleans(), data=st.data())
    def enqueue(self, queue: str, share: bool, data: st.DataObject) -> None:
        live = self.live_ids()
        if share and live:
            self._enqueue(queue, data.draw(st.sampled_from(live), label="id"))
        else:
            self._enqueue(queue, self._new_id())

    def _new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def _enqueue(self, queue: str, msg_id: int) -> None:
        seq = self.next_seq[queue]
        self.next_seq[queue] += 1
        self.store.enqueue(queue, StoredEntry(seq, msg_id), message(msg_id))
        self.queues[queue][seq] = (msg_id, 0, False)
        self.used_keys.add((queue, seq))
        self.max_id = max(self.max_id, msg_id)

    @precondition(lambda self: any(self.queues.values()))
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        queue, seq = data.draw(st.sampled_from(self.live_keys()))
        msg_id = self.queues[queue].pop(seq)[0]
        self.store.remove_entry(queue, seq, msg_id)

    @precondition(lambda self: self.used_keys)
    @rule(data=st.data())
    def remove_any(self, data: st.DataObject) -> None:
        """Also a late ack of an entry already removed or dropped."""
        queue, seq = data.draw(st.sampled_from(sorted(self.used_keys)))
        old = self.queues[queue].pop(seq, None)
        self.store.remove_entry(queue, seq, old[0] if old else 1)

    @precondition(lambda self: any(self.queues.values()))
    @rule(data=st.data(), count=st.integers(0, 5), flag=st.booleans())
    def update(self, data: st.DataObject, count: int, flag: bool) -> None:
        queue, seq = data.draw(st.sampled_from(self.live_keys()))
        msg_id = self.queues[queue][seq][0]
        self.store.update_entry(queue, StoredEntry(seq, msg_id, count, flag))
        self.queues[queue][seq] = (msg_id, count, flag)

    @rule(queue=st.sampled_from(QUEUES), restart_seq=st.booleans())
    def drop_queue(self, queue: str, restart_seq: bool) -> None:
        self._drop(queue, restart_seq)

    @rule(queue=st.sampled_from(QUEUES), n=st.integers(1, 3),
          restart_seq=st.booleans())
    def purge_then_publish(
        self, queue: str, n: int, restart_seq: bool
    ) -> None:
        """Drop and refill within one batch: the refill must survive."""
        self._drop(queue, restart_seq)
        for _ in range(n):
            self._enqueue(queue, self._new_id())

    def _drop(self, queue: str, restart_seq: bool) -> None:
        self.store.drop_queue(queue)
        self.queues[queue] = {}
        if restart_seq:  # a queue deleted and declared again
            self.next_seq[queue] = 0

    @rule(kind=st.sampled_from(KINDS), key=st.sampled_from(DEF_KEYS),
          value=st.none() | st.integers(0, 9))
    def definition(self, kind: str, key: str, value: int | None) -> None:
        if value is None:
            self.store.delete_definition(kind, key)
            self.defs.pop((kind, key), None)
        else:
            self.store.put_definition(kind, key, {"v": value})
            self.defs[(kind, key)] = value

    # --- group commit -------------------------------------------------
    @rule()
    def take(self) -> None:
        batch = self.store.take_batch()
        if batch is not None:
            self.in_flight.append((batch, Snapshot(self)))

    @precondition(lambda self: self.in_flight)
    @rule()
    def write_oldest(self) -> None:
        batch, snapshot = self.in_flight.pop(0)
        self.store.write_batch(batch)
        self.store.batch_done(batch)
        self.committed = snapshot
        self.check_disk()

    @precondition(lambda self: len(self.in_flight) > 1)
    @rule()
    def write_merged(self) -> None:
        parts = [batch for batch, _ in self.in_flight]
        self.store.write_batch(merge_batches(parts))
        for batch in parts:
            self.store.batch_done(batch)
        self.committed = self.in_flight[-1][1]
        self.in_flight = []
        self.check_disk()

    @precondition(lambda self: self.kind == "lmdb")
    @rule()
    def reopen(self) -> None:
        """Crash-like: the current batch and unwritten batches are lost."""
        self.store.close()
        self.store = self._open()
        self.in_flight = []
        self.queues = copy.deepcopy(self.committed.queues)
        self.defs = dict(self.committed.defs)
        assert self.store.max_msg_id() == self.committed.max_id
        self.max_id = self.committed.max_id
        self.next_id = self.store.max_msg_id() + 1
        assert sorted(self.store.queues_with_entries()) == sorted(
            q for q, es in self.queues.items() if es
        )
        self.check_disk()

    # --- checks -------------------------------------------------------
    @invariant()
    def messages_readable(self) -> None:
        for msg_id in self.live_ids():
            assert self.store.get_message(msg_id) == message(msg_id)

    @invariant()
    def definitions_match(self) -> None:
        for kind in KINDS:
            want = sorted(
                (key, {"v": v}) for (k, key), v in self.defs.items()
                if k == kind
            )
            assert list(self.store.definitions(kind)) == want

    @invariant()
    def entries_match(self) -> None:
        # load_entries is the committed state (LMDB) / the state (memory).
        state = self.queues if self.kind == "memory" else self.committed.queues
        for queue in QUEUES:
            got = [
                (e.seq, (e.msg_id, e.delivery_count, e.redelivered))
                for e in self.store.load_entries(queue)
            ]
            assert got == sorted(state[queue].items())

    def check_disk(self) -> None:
        """The LMDB file holds one body and one count per referenced id."""
        if self.kind != "lmdb":
            return
        refs = Counter(
            e[0] for es in self.committed.queues.values() for e in es.values()
        )
        store = self.store
        with store._env.begin() as txn:
            bodies = {
                rec.id_from_key(k): rec.unpack_message(v, k)
                for k, v in txn.cursor(db=store._dbs.messages)
            }
            counts = {
                rec.id_from_key(k): rec.unpack_count(v, k)
                for k, v in txn.cursor(db=store._dbs.refs)
            }
        assert bodies == {msg_id: message(msg_id) for msg_id in refs}
        assert counts == dict(refs)


_settings = settings(
    max_examples=50, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@_settings
class MemoryStoreMachine(StoreMachine):
    kind = "memory"


@_settings
class LmdbStoreMachine(StoreMachine):
    kind = "lmdb"


TestMemoryStoreModel = MemoryStoreMachine.TestCase
TestLmdbStoreModel = LmdbStoreMachine.TestCase
