"""The broker: vhosts, users, sessions, the dispatch pass and timers.

Strategy: all broker state is touched from one thread (the trio loop), so
nothing here locks. Work is batched per loop pass: a publish (the pipeline
in ``publish.py``) only marks its queues dirty, and ``run_dispatch()`` (called by the server after it handled
a read) delivers from each dirty queue once and then wakes the writers of
the sessions that got output. Store writes accumulate into the current
write epoch; ``on_committed()`` lets ``confirms.py`` release the confirms
that waited for it.
"""

from __future__ import annotations

import heapq
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mqbroker import errors
from mqbroker.broker.access import AccessControl
from mqbroker.broker.auth import UserStore
from mqbroker.broker.confirms import ConfirmHub
from mqbroker.broker.direct_reply import DirectReply
from mqbroker.broker.policies import PolicyStore
from mqbroker.broker.publish import FLOW_HIGH_READY, FLOW_LOW_READY, Publisher
from mqbroker.broker.vhost import VHost
from mqbroker.config import Config
from mqbroker.exchanges.base import TimerTarget
from mqbroker.persistence.store import Store
from mqbroker.queues.entry import QueueEntry
from mqbroker.queues.queue import Queue
from mqbroker.streams.groups import GroupRegistry
from mqbroker.streams.queue import StreamQueue

if TYPE_CHECKING:
    from mqbroker.broker.session import Session

__all__ = ["FLOW_HIGH_READY", "FLOW_LOW_READY", "Broker"]


class Broker:
    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        # Clocks are attributes so tests can drive time by hand.
        self.clock: Callable[[], float] = time.monotonic
        self.wall_ms: Callable[[], int] = lambda: int(time.time() * 1000)
        self.users = UserStore()
        self.users.add(config.default_user, config.default_password, ["administrator"])
        self.vhosts: dict[str, VHost] = {}
        # Set by a cluster's leader: the answer of GET /api/cluster.
        self.cluster_status: Callable[[], dict[str, Any]] | None = None
        # Stream segments live under the data dir (a temp dir when there is
        # none: in-memory brokers keep streams only for their lifetime).
        self.stream_root = (
            Path(config.data_dir) / "streams"
            if config.data_dir is not None
            else Path(tempfile.mkdtemp(prefix="mqbroker-streams-"))
        )
        # Consumer groups of every stream; their offsets are committed
        # with the next (lazy) group commit.
        self.stream_groups = GroupRegistry(store)
        self.stream_groups.on_saved = lambda: self.request_lazy_commit()
        # Named policies per vhost (broker/policies.py): set_policy & co.
        self.policies = PolicyStore(self)
        self.add_vhost(config.default_vhost)
        self.sessions: set[Session] = set()
        # Users, vhosts, permissions and limits (broker/access.py).
        self.access = AccessControl(self)
        # The active resource alarm's reason ("low on memory"/"low on
        # disk"), set by server/alarms.py; None when no alarm is raised.
        self.alarm: str | None = None
        self.direct_reply = DirectReply()
        self.dirty: dict[Queue, None] = {}
        # Server-sent basic.cancel frames of consumers whose queue was just
        # deleted: sent at the start of the next dispatch pass, so a client
        # deleting the queue gets its delete-ok first, as from RabbitMQ.
        self.pending_cancels: list[Callable[[], None]] = []
        self.to_flush: set[Session] = set()
        # Publisher confirms and tx commit-oks (confirms.py); writes made
        # now belong to ``write_epoch`` (the store's current batch).
        self.confirms = ConfirmHub()
        # The one publish pipeline (publish.py); basic.publish is its
        # hottest entry point, bound once here.
        self.publisher = Publisher(self)
        self.publish_event = self.publisher.publish_amqp
        # Somebody waits for the writes made so far: commit them now.
        self.request_commit: Callable[[], None] = lambda: None
        # Nobody waits (acks, delivery marks, publishes without confirms):
        # commit soon, with the next urgent batch or after a short delay.
        self.request_lazy_commit: Callable[[], None] = lambda: None
        self.next_msg_id = store.max_msg_id() + 1
        self.started_at = time.time()
        # The server's timer task sleeps until ``next_deadline()``; this
        # wakes it when a new, earlier deadline appears.
        self.timer_changed: Callable[[], None] = lambda: None
        self._deadlines: list[tuple[int, int, TimerTarget]] = []
        # queue -> the earliest deadline it has in the heap
        self._scheduled_at: dict[TimerTarget, int] = {}
        self._deadline_seq = 0

    def add_vhost(self, name: str) -> VHost:
        vhost = self.vhosts.get(name)
        if vhost is None:
            vhost = VHost(name, self.store, self.stream_root)
            vhost.on_queue_deleted = self._queue_deleted
            vhost.on_queue_created = self._queue_created
            vhost.now_ms = self.wall_ms
            vhost.policy_for = partial(self.policies.lookup, name)
            self.vhosts[name] = vhost
        return vhost

    # ----------------------------------------------------------- sessions

    def session_opened(self, session: Session) -> None:
        self.sessions.add(session)
        if self.alarm is not None:
            session.set_blocked(self.alarm)

    def session_closed(self, session: Session) -> None:
        self.sessions.discard(session)
        self.to_flush.discard(session)
        for vhost in self.vhosts.values():
            for queue in [q for q in vhost.queues.values() if q.exclusive_owner is session]:
                vhost.remove_queue(queue)
        self.run_dispatch()

    def _queue_deleted(self, queue: Queue) -> None:
        self.dirty.pop(queue, None)
        for consumer in list(queue.consumers):
            consumer.cancelled_by_server()
        queue.consumers.clear()

    # ----------------------------------------------------------- dispatch

    def mark_dirty(self, queue: Queue) -> None:
        self.dirty[queue] = None

    def run_dispatch(self) -> None:
        if self.confirms.ready:
            self.confirms.flush_ready()
        if self.pending_cancels:
            cancels, self.pending_cancels = self.pending_cancels, []
            for notify in cancels:
                notify()
        now = self.wall_ms() if self.dirty else 0
        while self.dirty:
            dirty, self.dirty = self.dirty, {}
            for queue in dirty:
                if not queue.deleted:
                    queue.dispatch(now)
                    self.schedule(queue)
        if self.to_flush:
            sessions, self.to_flush = self.to_flush, set()
            for session in sessions:
                session.wake()
        # Acks, delivery marks and declares write to the store too; a
        # commit is asked for after every pass so none waits for the next
        # publish (the committer does nothing when the batch is empty).
        # Writes somebody waits for asked for an urgent commit already.
        self.request_lazy_commit()

    def writable_again(self, session: Session) -> None:
        """A session's socket drained: its consumers may take more."""
        for chan in session.channels.values():
            for consumer in chan.consumers.values():
                self.dirty[consumer.queue] = None
        self.run_dispatch()

    def take_for_get(self, queue: Queue) -> QueueEntry | None:
        entry = queue.take(self.wall_ms())
        self.schedule(queue)
        return entry

    # ------------------------------------------------------------- timers

    def _queue_created(self, queue: Queue) -> None:
        queue.on_dead_letter = self.publisher.dead_letter
        queue.on_unused = self._queue_unused
        if isinstance(queue, StreamQueue):
            queue.on_ready = self.mark_dirty
            queue.groups = self.stream_groups
        self.policies.refresh_queue(queue)  # apply-to by queue type
        self.schedule(queue)

    def _queue_unused(self, queue: Queue) -> None:
        """The last consumer left: x-expires counts from now."""
        queue.last_used_ms = self.wall_ms()
        self.schedule(queue)

    def schedule(self, queue: TimerTarget) -> None:
        """Make sure the timer wakes up for this queue's next deadline."""
        deadline = queue.next_deadline()
        if deadline is None:
            return
        at = self._scheduled_at.get(queue)
        if at is not None and at <= deadline:
            return  # already woken by then
        self._scheduled_at[queue] = deadline
        heap = self._deadlines
        self._deadline_seq += 1
        earliest = heap[0][0] if heap else None
        heapq.heappush(heap, (deadline, self._deadline_seq, queue))
        if earliest is None or deadline < earliest:
            self.timer_changed()

    def next_deadline(self) -> int | None:
        """Wall-clock ms of the earliest queue deadline (TTL, x-expires)."""
        return self._deadlines[0][0] if self._deadlines else None

    def on_timer(self) -> None:
        """Expire messages and idle queues whose time has come."""
        now = self.wall_ms()
        heap = self._deadlines
        due: dict[TimerTarget, None] = {}
        while heap and heap[0][0] <= now:
            deadline, _, queue = heapq.heappop(heap)
            if self._scheduled_at.get(queue) == deadline:
                del self._scheduled_at[queue]
            due[queue] = None
        for queue in due:
            if queue.deleted:
                continue
            if queue.idle_expired(now):
                assert isinstance(queue, Queue)
                vhost = self.vhosts.get(queue.vhost)
                if vhost is not None:
                    vhost.remove_queue(queue)
                continue
            queue.expire(now)
            if isinstance(queue, Queue):
                self.dirty[queue] = None
        self.run_dispatch()
        for queue in due:
            if not queue.deleted:
                self.schedule(queue)
        if due and self.store.durable:
            self.request_commit()

    def check_consumer_timeouts(self, default_ms: int | None) -> None:
        """Close channels holding a delivery longer than the timeout
        (RabbitMQ: 406 on the channel, the delivery is requeued)."""
        now = self.clock()
        for session in list(self.sessions):
            for chan in list(session.channels.values()):
                if not chan.unacked:
                    continue
                delivery = next(iter(chan.unacked.values()))
                timeout = delivery.queue.settings.consumer_timeout or default_ms
                if timeout is None or timeout <= 0:
                    continue
                if (now - delivery.at) * 1000 >= timeout:
                    session.report(
                        errors.PreconditionFailed(
                            f"delivery acknowledgement on channel {chan.id} timed "
                            f"out. Timeout value used: {timeout} ms. This timeout "
                            "value can be configured, see consumers doc guide to "
                            "learn more"
                        ),
                        chan.id,
                    )
        self.run_dispatch()

    # ----------------------------------------------------------- commits

    @property
    def write_epoch(self) -> int:
        return self.store.current_epoch

    @property
    def committed_epoch(self) -> int:
        """Everything written up to this epoch is durable."""
        return self.confirms.committed_epoch

    def on_committed(self, epoch: int) -> None:
        # Streams whose new entries became readable marked themselves dirty.
        if self.confirms.on_committed(epoch) or self.dirty:
            self.run_dispatch()

    def server_properties(self) -> dict[str, Any]:
        return {
            "product": self.config.product,
            "version": self.config.product_version,
            "platform": "Python (mqbroker)",
            "mqbroker_version": __import__("mqbroker").__version__,
            "copyright": "mqbroker contributors",
            "information": "mqbroker: an AMQP 0-9-1 broker in Python",
            "cluster_name": "mqbroker",
        }
