"""The broker: vhosts, users, sessions, and the publish and dispatch loops.

Strategy: all broker state is touched from one thread (the trio loop), so
nothing here locks. Work is batched per loop pass: a publish only marks its
queues dirty, and ``run_dispatch()`` (called by the server after it handled
a read) delivers from each dirty queue once and then wakes the writers of
the sessions that got output. Store writes accumulate into the current
write epoch; ``on_committed()`` releases the confirms that waited for it.
"""

from __future__ import annotations

import datetime
import heapq
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from pamqp import commands

from mqbroker import errors
from mqbroker.config import Config
from mqbroker.core.access import AccessControl
from mqbroker.core.auth import UserStore
from mqbroker.core.direct_reply import PREFIX as REPLY_PREFIX
from mqbroker.core.direct_reply import PSEUDO_QUEUE, DirectReply
from mqbroker.core.message import Message
from mqbroker.core.router import route, sender_keys
from mqbroker.core.vhost import VHost
from mqbroker.exchanges.delayed import DELAYED_TYPE, hold_if_delayed
from mqbroker.persistence.store import Store
from mqbroker.protocol import codec
from mqbroker.protocol.events import ContentReceived
from mqbroker.queues.deadletter import (
    dead_letter_keys,
    dead_letter_properties,
    is_cycle,
)
from mqbroker.queues.dedup import exchange_duplicate
from mqbroker.queues.policies import PolicyStore
from mqbroker.queues.queue import Queue, QueueEntry

if TYPE_CHECKING:
    from mqbroker.core.channel import Channel
    from mqbroker.core.session import Session

_FLAG_HEADERS = 0x2000
_FLAG_USER_ID = 0x0010
_FLAG_REPLY_TO = 0x0200
_FLAG_EXPIRATION = 0x0100


# Publisher flow control (RabbitMQ's credit flow, simplified): a connection
# that publishes into a queue whose consumers are falling behind stops being
# read while that queue holds more than FLOW_HIGH_READY ready messages, and
# resumes below FLOW_LOW_READY. Queues without consumers (backlogs) never
# throttle: they page to disk instead.
FLOW_HIGH_READY = 4000
FLOW_LOW_READY = 1000


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
        # Named policies per vhost (queues/policies.py): set_policy & co.
        self.policies = PolicyStore(self)
        self.add_vhost(config.default_vhost)
        self.sessions: set[Session] = set()
        # Users, vhosts, permissions and limits (core/access.py).
        self.access = AccessControl(self)
        # The active resource alarm's reason ("low on memory"/"low on
        # disk"), set by server/alarms.py; None when no alarm is raised.
        self.alarm: str | None = None
        self.direct_reply = DirectReply()
        self.dirty: dict[Queue, None] = {}
        self.to_flush: set[Session] = set()
        self.confirm_waiters: set[Channel] = set()
        # msg_id -> [channel, publish seq, persisted entries not yet
        # consumed] for confirm-mode publishes still waiting for a commit
        self.unconfirmed: dict[int, list[Any]] = {}
        # Everything up to ``committed_epoch`` is durable; writes made now
        # belong to ``write_epoch`` (the store's current batch).
        self.committed_epoch = 0
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
        self._deadlines: list[tuple[int, int, Queue]] = []
        # queue -> the earliest deadline it has in the heap
        self._scheduled_at: dict[Queue, int] = {}
        self._deadline_seq = 0

    def add_vhost(self, name: str) -> VHost:
        vhost = self.vhosts.get(name)
        if vhost is None:
            vhost = VHost(name, self.store)
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
            session = consumer.channel.session
            consumer.channel.consumers.pop(consumer.tag, None)
            if session.cancel_notify and not consumer.channel.closed:
                session.conn.send_method(
                    consumer.channel.id,
                    commands.Basic.Cancel(consumer_tag=consumer.tag, nowait=True),
                )
                session.output_ready()
        queue.consumers.clear()

    # ----------------------------------------------------------- dispatch

    def mark_dirty(self, queue: Queue) -> None:
        self.dirty[queue] = None

    def run_dispatch(self) -> None:
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
        queue.on_dead_letter = self.dead_letter
        queue.on_unused = self._queue_unused
        self.policies.refresh_queue(queue)  # apply-to by queue type
        self.schedule(queue)

    def _queue_unused(self, queue: Queue) -> None:
        """The last consumer left: x-expires counts from now."""
        queue.last_used_ms = self.wall_ms()
        self.schedule(queue)

    def schedule(self, queue: Queue) -> None:
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
        due: dict[Queue, None] = {}
        while heap and heap[0][0] <= now:
            deadline, _, queue = heapq.heappop(heap)
            if self._scheduled_at.get(queue) == deadline:
                del self._scheduled_at[queue]
            due[queue] = None
        for queue in due:
            if queue.deleted:
                continue
            if queue.idle_expired(now):
                vhost = self.vhosts.get(queue.vhost)
                if vhost is not None:
                    vhost.remove_queue(queue)
                continue
            queue.expire(now)
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

    # ------------------------------------------------------------ publish

    def publish_event(self, session: Session, chan: Channel, event: ContentReceived) -> bool:
        """Route one publish; True when it wrote to the durable store."""
        method = event  # carries exchange, routing_key, mandatory, immediate
        if method.immediate:
            raise errors.NotImplemented_("immediate=true")
        vhost = session.vh
        try:
            self.access.check(session.user, vhost.name, "write", "exchange", method.exchange)
            exchange = vhost.get_exchange(method.exchange)
            if exchange.internal:
                raise errors.AccessRefused(
                    f"cannot publish to internal exchange '{exchange.name}' in "
                    f"vhost '{vhost.name}'"
                )
            raw = event.properties
            flags = (raw[0] << 8 | raw[1]) if len(raw) >= 2 else 0
            message = Message(
                self.next_msg_id, method.exchange, method.routing_key, raw, event.body
            )
            self.next_msg_id += 1
            headers = None
            keys = [method.routing_key]
            if flags & (_FLAG_USER_ID | _FLAG_REPLY_TO) or flags & 1:
                props = message.props
                user_id = props.user_id
                if user_id and user_id != session.user:
                    raise errors.PreconditionFailed(
                        f"user_id property set to '{user_id}' but authenticated "
                        f"user was '{session.user}'"
                    )
                if props.reply_to == PSEUDO_QUEUE:
                    props.reply_to = self.direct_reply.reply_address(chan)
                    message = message.with_properties(props)
            ttl = None
            if flags & _FLAG_EXPIRATION or flags & 1:
                try:
                    ttl = message.expiration_ms()
                except ValueError as exc:
                    raise errors.PreconditionFailed(str(exc)) from None
            if not method.exchange and method.routing_key.startswith(REPLY_PREFIX):
                return self._direct_reply(session, chan, method, message)
            if flags & _FLAG_HEADERS:
                headers = message.headers
                if headers:
                    cc = sender_keys(headers, "CC")
                    bcc = sender_keys(headers, "BCC")
                    keys += cc + bcc
                    if "BCC" in headers:
                        props = message.props
                        stripped = dict(headers)
                        del stripped["BCC"]
                        props.headers = stripped
                        message = message.with_properties(props)
            if exchange.type_name == DELAYED_TYPE:
                held = hold_if_delayed(self, vhost, exchange, message, keys, headers)
                if held is not None:  # x-delay > 0: routed when due
                    if held:
                        self.request_commit()
                    if chan.confirm:
                        chan.add_confirm(self.write_epoch if held else 0)
                    return held
            if exchange.dedup is not False and exchange_duplicate(
                exchange, message, self.wall_ms()
            ):
                queues: tuple[Queue, ...] = ()  # a duplicate: still confirmed
            else:
                queues = route(vhost, exchange, keys, headers)
        except errors.AMQPError as exc:
            raise exc.with_method(60, 40)
        durable = False
        refused = False
        written = 0
        if not queues:
            if method.mandatory:
                self._return(session, chan, method, message)
        else:
            now = self.wall_ms()
            for queue in queues:
                accepted, wrote = queue.offer(message, now, ttl)
                durable |= wrote
                written += wrote
                refused |= not accepted
                self.dirty[queue] = None
                if queue.consumers and len(queue.ready) > FLOW_HIGH_READY:
                    session.flow.add(queue)
        if durable:
            if chan.confirm:
                self.request_commit()
            else:
                self.request_lazy_commit()
        if chan.confirm:
            if refused:
                chan.nack_publish()
            elif durable:
                seq = chan.add_confirm(self.write_epoch, message.msg_id)
                self.unconfirmed[message.msg_id] = [chan, seq, written]
            else:
                chan.add_confirm(0)
        return durable

    def consumed(self, msg_id: int) -> None:
        """A persisted entry of ``msg_id`` was acked (or delivered with
        auto-ack). Once every queue it was written to has done so, its
        publisher confirm need not wait for the commit: RabbitMQ confirms
        a persistent message "when it is persisted to disk, or when it is
        consumed on every queue". With fast consumers this is what makes
        confirms come back before the fsync."""
        pending = self.unconfirmed.get(msg_id)
        if pending is None:
            return
        pending[2] -= 1
        if pending[2] <= 0:
            del self.unconfirmed[msg_id]
            pending[0].confirm_consumed(pending[1])

    def _direct_reply(
        self, session: Session, chan: Channel, method: Any, message: Message
    ) -> bool:
        target = self.direct_reply.target(method.routing_key)
        if target is not None and not target[0].closed:
            target[0].deliver_direct(target[1], message)
        elif method.mandatory:
            self._return(session, chan, method, message)
        if chan.confirm:
            chan.add_confirm(0)
        return False

    def _return(self, session: Session, chan: Channel, method: Any, message: Message) -> None:
        out = session.conn.out
        out += codec.return_method(
            chan.id, 312, "NO_ROUTE", method.exchange, method.routing_key
        )
        codec.write_content(
            out, chan.id, message.properties_raw, message.body, session.conn.frame_max
        )
        session.output_ready()

    # ------------------------------------------------------ dead letters

    def dead_letter(self, queue: Queue, message: Message, reason: str) -> None:
        """Publish a message that left ``queue`` for ``reason`` to the
        queue's dead-letter exchange (dropped if there is none)."""
        settings = queue.settings
        dlx_name = settings.dead_letter_exchange
        if dlx_name is None:
            return
        vhost = self.vhosts.get(queue.vhost)
        if vhost is None:
            return
        dlx = vhost.exchanges.get(dlx_name)
        if dlx is None:
            return
        override = settings.dead_letter_routing_key
        raw, deaths = dead_letter_properties(
            message, queue.name, reason, datetime.datetime.now(datetime.UTC), override
        )
        keys = dead_letter_keys(message, override)
        copy = Message(self.next_msg_id, dlx_name, keys[0], raw, message.body)
        self.next_msg_id += 1
        targets = route(vhost, dlx, keys, copy.headers)
        now = self.wall_ms()
        wrote = False
        for target in targets:
            if reason != "rejected" and is_cycle(deaths, target.name):
                continue
            wrote |= target.offer(copy, now)[1]
            self.dirty[target] = None
        if wrote:
            self.request_commit()

    # ----------------------------------------------------------- commits

    @property
    def write_epoch(self) -> int:
        return self.store.current_epoch

    def on_committed(self, epoch: int) -> None:
        if epoch <= self.committed_epoch:
            return
        self.committed_epoch = epoch
        for chan in list(self.confirm_waiters):
            if chan.flush_confirms(epoch):
                self.confirm_waiters.discard(chan)
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
