"""Property tests: the bookkeeping of length limits, TTLs, delivery limits
and dead-lettering, driven on ``Queue`` objects directly (no sockets).

A hypothesis state machine publishes, takes (basic.get), acks, nacks with
and without requeue, lets the clock run (expiry at the head), changes the
policy and -- on an LMDB store -- restarts (the store is committed, closed,
reopened and the queue rebuilt from it, unacked messages coming back).
A model tracks what must have happened to every message; after each step:

- each published message is in exactly one state: ready, unacked, acked,
  dead-lettered (with a reason), or refused at publish (reject-publish);
- no message is both acked and dead-lettered, or dead-lettered twice;
- nothing disappears without a reason: the queue holds exactly the model's
  ready messages, in its order, and counts (message_count, ready_bytes,
  unacked) match;
- reasons are possible ones: maxlen only with a length limit, expired only
  with a TTL, delivery_limit only with a limit;
- with drop-head the ready count never exceeds x-max-length, and after an
  expiry pass no expired message is left at the head.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from pamqp import commands

from mqbroker.model.message import Message
from mqbroker.persistence import LmdbStore, MemoryStore
from mqbroker.protocol.table import encode_properties
from mqbroker.queues.entry import QueueEntry
from mqbroker.queues.queue import Queue
from mqbroker.queues.settings import QueueSettings

REASONS = {"expired", "maxlen", "rejected", "delivery_limit"}


def _props(expiration: int | None, priority: int) -> bytes:
    props = commands.Basic.Properties(
        delivery_mode=2,
        expiration=str(expiration) if expiration is not None else None,
        priority=priority,
    )
    return encode_properties(props)


class QueueMachine(RuleBasedStateMachine):
    restartable = False

    def __init__(self) -> None:
        super().__init__()
        self.tmp: str | None = None
        self.clock = 1_000_000
        self.next_id = 1
        self.state: dict[int, str] = {}  # msg_id -> ready/unacked/acked/dead/refused
        self.reasons: dict[int, str] = {}
        self.sizes: dict[int, int] = {}
        self.unacked: dict[int, QueueEntry] = {}
        self.dead_log: list[tuple[int, str]] = []
        self.expected_order: list[int] | None = None

    # ------------------------------------------------------------ set-up

    def _new_store(self) -> Any:
        if not self.restartable:
            return MemoryStore()
        self.tmp = tempfile.mkdtemp(prefix="mqb-prop-")
        return LmdbStore(Path(self.tmp) / "data")

    def _queue(self, store: Any) -> Queue:
        queue = Queue(
            "/", "q", durable=True, exclusive_owner=None, auto_delete=False,
            arguments=dict(self.arguments), store=store,
            settings=QueueSettings.build(self.arguments, self.policy_name, self.policy),
            now_ms=self.clock,
        )
        queue.on_dead_letter = self._dead
        return queue

    @initialize(
        max_length=st.none() | st.integers(0, 4),
        max_bytes=st.none() | st.integers(0, 12),
        overflow=st.sampled_from(["drop-head", "reject-publish", "reject-publish-dlx"]),
        ttl=st.none() | st.sampled_from([0, 20, 100]),
        limit=st.none() | st.integers(0, 2),
        quorum=st.booleans(),
        max_priority=st.none() | st.just(3),
    )
    def setup(
        self,
        max_length: int | None,
        max_bytes: int | None,
        overflow: str,
        ttl: int | None,
        limit: int | None,
        quorum: bool,
        max_priority: int | None,
    ) -> None:
        args: dict[str, Any] = {"x-overflow": overflow}
        if max_length is not None:
            args["x-max-length"] = max_length
        if max_bytes is not None:
            args["x-max-length-bytes"] = max_bytes
        if ttl is not None:
            args["x-message-ttl"] = ttl
        if limit is not None:
            args["x-delivery-limit"] = limit
        if quorum:
            args["x-queue-type"] = "quorum"
        if max_priority is not None:
            args["x-max-priority"] = max_priority
        self.arguments = args
        self.policy_name: str | None = None
        self.policy: dict[str, Any] = {}
        self.store = self._new_store()
        self.queue = self._queue(self.store)

    def teardown(self) -> None:
        store = getattr(self, "store", None)
        if store is not None:
            store.close()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ------------------------------------------------------------- hooks

    def _dead(self, queue: Queue, message: Message, reason: str) -> None:
        self.dead_log.append((message.msg_id, reason))

    def _settle_dead(self) -> None:
        for msg_id, reason in self.dead_log:
            assert reason in REASONS
            assert self.state.get(msg_id) not in ("acked", "dead"), (
                f"message {msg_id} dead-lettered while {self.state.get(msg_id)}"
            )
            self.state[msg_id] = "dead"
            self.reasons[msg_id] = reason
            self.unacked.pop(msg_id, None)
        self.dead_log.clear()

    # ------------------------------------------------------------- rules

    @rule(
        size=st.integers(0, 6),
        expiration=st.none() | st.sampled_from([0, 10, 50, 1000]),
        priority=st.integers(0, 5),
    )
    def publish(self, size: int, expiration: int | None, priority: int) -> None:
        msg_id = self.next_id
        self.next_id += 1
        message = Message(msg_id, "", "q", _props(expiration, priority), b"x" * size)
        self.sizes[msg_id] = size
        self.state[msg_id] = "ready"
        accepted, _ = self.queue.offer(message, self.clock, expiration)
        if not accepted:
            self.state[msg_id] = "refused"
        self._settle_dead()
        if not accepted and self.reasons.get(msg_id) is None:
            assert self.queue.settings.overflow != "drop-head"

    @rule()
    def take(self) -> None:
        entry = self.queue.take(self.clock)
        self._settle_dead()
        if entry is None:
            return
        assert self.state[entry.msg_id] == "ready"
        self.state[entry.msg_id] = "unacked"
        self.unacked[entry.msg_id] = entry

    @precondition(lambda self: bool(self.unacked))
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        msg_id = data.draw(st.sampled_from(sorted(self.unacked)))
        entry = self.unacked.pop(msg_id)
        self.queue.settle(entry)
        self.state[msg_id] = "acked"

    @precondition(lambda self: bool(self.unacked))
    @rule(data=st.data(), requeue=st.booleans(), several=st.booleans())
    def nack(self, data: st.DataObject, requeue: bool, several: bool) -> None:
        ids = sorted(self.unacked)
        chosen = ids if several else [data.draw(st.sampled_from(ids))]
        entries = [self.unacked.pop(i) for i in chosen]
        if requeue:
            for i in chosen:
                self.state[i] = "ready"
            self.queue.requeue(entries)
        else:
            for entry in entries:
                self.queue.reject(entry)
        self._settle_dead()
        if not requeue:
            for i in chosen:
                assert self.state[i] == "dead" and self.reasons[i] == "rejected"

    @rule(ms=st.sampled_from([1, 15, 60, 500]))
    def advance(self, ms: int) -> None:
        self.clock += ms
        self.queue.expire(self.clock)
        self._settle_dead()
        ready = self.queue.ready
        if ready:
            head = ready.peek()
            assert not head.expires_at or head.expires_at >= self.clock

    @rule(length=st.none() | st.integers(0, 3), ttl=st.none() | st.sampled_from([10, 50]))
    def change_policy(self, length: int | None, ttl: int | None) -> None:
        definition: dict[str, Any] = {}
        if length is not None:
            definition["max-length"] = length
        if ttl is not None:
            definition["message-ttl"] = ttl
        self.policy_name = "p" if definition else None
        self.policy = definition
        self.queue.apply_settings(
            QueueSettings.build(self.arguments, self.policy_name, definition)
        )
        self._settle_dead()

    @precondition(lambda self: self.restartable)
    @rule()
    def restart(self) -> None:
        store = self.store
        batch = store.take_batch()
        if batch is not None:
            store.write_batch(batch)
            store.batch_done(batch)
        store.close()
        assert self.tmp is not None
        self.store = LmdbStore(Path(self.tmp) / "data")
        order_before = [e.msg_id for e in self.queue.entries()]
        self.queue = self._queue(self.store)
        for stored in self.store.load_entries(self.queue.key):
            self.queue.restore(stored)
        # unacked messages come back (redelivered); ready ones keep order
        for msg_id in list(self.unacked):
            self.state[msg_id] = "ready"
        self.unacked.clear()
        restored = [e.msg_id for e in self.queue.entries()]
        assert [i for i in restored if i in order_before] == order_before or (
            self.queue.settings.max_priority or self.queue.settings.quorum
        )
        self.queue.recovered()  # over a drop-head limit: the head goes
        self._settle_dead()
        self.next_id = max(self.next_id, self.store.max_msg_id() + 1)

    # -------------------------------------------------------- invariants

    @invariant()
    def every_message_accounted_for(self) -> None:
        if not hasattr(self, "queue"):
            return
        queue = self.queue
        ready_ids = [e.msg_id for e in queue.entries()]
        assert len(ready_ids) == len(set(ready_ids)), "a message is ready twice"
        model_ready = {i for i, s in self.state.items() if s == "ready"}
        assert set(ready_ids) == model_ready, (
            f"queue has {sorted(set(ready_ids))}, model {sorted(model_ready)}"
        )
        assert queue.message_count == len(model_ready)
        assert queue.ready_bytes == sum(self.sizes[i] for i in model_ready)
        assert queue.unacked == len(self.unacked)
        assert set(self.unacked) == {i for i, s in self.state.items() if s == "unacked"}
        for msg_id, state in self.state.items():
            assert state in ("ready", "unacked", "acked", "dead", "refused")
            if state == "dead":
                assert self.reasons[msg_id] in REASONS

    @invariant()
    def reasons_are_possible(self) -> None:
        if not hasattr(self, "queue"):
            return
        settings = self.queue.settings
        used = set(self.reasons.values())
        if "delivery_limit" in used:
            assert "x-delivery-limit" in self.arguments or settings.quorum
        if settings.overflow == "drop-head" and settings.max_length is not None:
            assert self.queue.message_count <= settings.max_length

    @invariant()
    def durable_store_matches(self) -> None:
        if not hasattr(self, "queue") or not self.restartable:
            return
        # every ready or unacked message is still in the store's batch view
        for entry in self.queue.entries():
            assert self.store.get_message(entry.msg_id).body == b"x" * self.sizes[entry.msg_id]


class RestartingQueueMachine(QueueMachine):
    restartable = True


_SETTINGS = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

TestQueueBookkeeping = QueueMachine.TestCase
TestQueueBookkeeping.settings = _SETTINGS

TestQueueBookkeepingWithRestarts = RestartingQueueMachine.TestCase
TestQueueBookkeepingWithRestarts.settings = settings(
    _SETTINGS, max_examples=40, stateful_step_count=30
)


def test_reasons_cover_all_kinds() -> None:
    """A deterministic walk through every reason, as a smoke test."""
    store = MemoryStore()
    seen: list[str] = []
    args = {"x-max-length": 1, "x-message-ttl": 50, "x-delivery-limit": 0}
    queue = Queue("/", "q", durable=True, exclusive_owner=None, auto_delete=False,
                  arguments=args, store=store, settings=QueueSettings.build(args))
    queue.on_dead_letter = lambda q, m, r: seen.append(r)

    def msg(i: int) -> Message:
        return Message(i, "", "q", _props(None, 0), b"b")

    queue.offer(msg(1), 0)
    queue.offer(msg(2), 0)  # maxlen drops 1
    entry = queue.take(0)
    assert entry is not None
    queue.requeue([entry])  # delivery limit 0: dead at once
    queue.offer(msg(3), 0)
    entry = queue.take(0)
    assert entry is not None
    queue.reject(entry)
    queue.offer(msg(4), 0)
    queue.expire(100)
    assert seen == ["maxlen", "delivery_limit", "rejected", "expired"]


pytestmark = pytest.mark.timeout(300)
