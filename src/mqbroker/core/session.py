"""One client connection as the broker sees it: events in, effects out.

Strategy: the protocol core hands over decoded events; this module maps each
AMQP method to one small handler that calls into the vhost, queues and
channel state, and writes replies to the connection's output buffer. Every
handler may raise an ``AMQPError``; ``handle()`` is the single place that
turns it into ``channel.close`` or ``connection.close``. Nothing here awaits:
the server layer owns sockets and time.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pamqp import commands
from pamqp.base import Frame as PamqpMethod

from mqbroker import errors
from mqbroker.core.channel import Channel, Consumer
from mqbroker.core.direct_reply import PSEUDO_QUEUE
from mqbroker.core.vhost import VHost
from mqbroker.exchanges.base import Destination
from mqbroker.protocol import codec
from mqbroker.protocol.connection import ServerConnection, State
from mqbroker.protocol.events import (
    BadProtocolHeader,
    ChannelClosed,
    ChannelOpened,
    ConnectionClosed,
    ContentReceived,
    Event,
    MethodReceived,
    OpenRequested,
    StartOk,
)

if TYPE_CHECKING:
    from mqbroker.core.broker import Broker

Handler = Callable[["Session", Channel, Any], None]
HANDLERS: dict[type, Handler] = {}


def handles(method_type: type) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        HANDLERS[method_type] = fn
        return fn

    return register


def _ctag() -> str:
    return "amq.ctag-" + base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")


class Session:
    def __init__(self, broker: Broker, conn: ServerConnection, peer: str) -> None:
        self.broker = broker
        self.conn = conn
        self.peer = peer
        self.user: str | None = None
        self.vhost: VHost | None = None
        self.channels: dict[int, Channel] = {}
        self.inflight = 0  # bytes handed to the socket writer, not yet sent
        self.closed = False
        self.close_reason: str | None = None
        self.blocked = False
        self.wake: Callable[[], None] = lambda: None
        self.last_error: errors.AMQPError | None = None
        # queues this connection pushed past the flow threshold (see
        # core/broker.py FLOW_HIGH_READY); the server pauses its reads
        self.flow: set[Any] = set()
        self._flow_progress: dict[Any, tuple[int, float]] = {}
        # Resource alarms (server/alarms.py): ``alarm`` is the broker's
        # active alarm; ``blocked`` means reads are paused because this
        # connection published while it was raised; ``resume_reading`` is
        # set by the connection task to restart its reader.
        self.alarm: str | None = None
        self.published = False
        self.blocked_sent = False
        self.resume_reading: Callable[[], None] = lambda: None
        # CN of the verified TLS client certificate (SASL EXTERNAL).
        self.tls_peer_cn: str | None = None

    # ------------------------------------------------------ flow control

    @property
    def writable(self) -> bool:
        return self.conn.output_size + self.inflight < self.broker.config.output_high_water_bytes

    def output_ready(self) -> None:
        self.broker.to_flush.add(self)

    @property
    def cancel_notify(self) -> bool:
        caps = self.conn.client_properties.get("capabilities") or {}
        return bool(isinstance(caps, dict) and caps.get("consumer_cancel_notify"))

    # ------------------------------------------------------------ input

    def receive(self, data: bytes) -> None:
        """Feed bytes and handle every complete event (one loop pass)."""
        conn = self.conn
        conn.receive_data(data)
        next_event = conn.next_event
        channels = self.channels
        publish = self.broker.publish_event
        while True:
            try:
                event = next_event()
            except errors.AMQPError as exc:
                self.report(exc, exc.channel if exc.channel is not None else 0)
                continue
            if event is None:
                break
            if type(event) is ContentReceived:
                # The hot path, inlined from handle(): most events are
                # publishes, and each saves a call and an isinstance chain.
                chan = channels.get(event.channel)
                if chan is not None and not chan.tx:
                    self.published = True
                    try:
                        publish(self, chan, event)
                    except errors.AMQPError as exc:
                        self.report(exc, event.channel)
                    continue
            self.handle(event)
        if self.alarm is not None and self.published and not self.blocked:
            self.set_blocked(self.alarm)
        self.output_ready()

    def set_blocked(self, reason: str | None) -> None:
        """A resource alarm was raised (``reason``) or every one cleared
        (None). As in RabbitMQ only a connection that has published is
        blocked: it gets ``connection.blocked`` (if it advertised the
        capability) and its reads pause; consumers keep receiving."""
        self.alarm = reason
        caps = self.conn.client_properties.get("capabilities")
        notify = isinstance(caps, dict) and bool(caps.get("connection.blocked"))
        if reason is not None:
            if self.blocked or not self.published or self.conn.state is not State.OPEN:
                return
            self.blocked = True
            if notify:
                self.conn.send_method(0, commands.Connection.Blocked(reason=reason))
                self.blocked_sent = True
        else:
            if not self.blocked:
                return
            self.blocked = False
            if self.blocked_sent and self.conn.state is State.OPEN:
                self.conn.send_method(0, commands.Connection.Unblocked())
            self.blocked_sent = False
            self.resume_reading()
        self.output_ready()

    def report(self, error: errors.AMQPError, channel: int) -> None:
        self.last_error = error
        if errors.closes_connection(error, channel):
            self.close_reason = error.reply_text
            self.conn.close_connection(error)
            self.output_ready()
            return
        self.conn.close_channel(channel, error)
        chan = self.channels.pop(channel, None)
        if chan is not None:
            chan.close()
        self.output_ready()

    def handle(self, event: Event) -> None:
        channel_id = getattr(event, "channel", 0)
        try:
            if isinstance(event, ContentReceived):
                self.published = True
                chan = self.channels[event.channel]
                if chan.tx:
                    chan.tx_publishes.append(event)
                else:
                    self.broker.publish_event(self, chan, event)
            elif isinstance(event, MethodReceived):
                method = event.method
                handler = HANDLERS.get(type(method))
                if handler is None:
                    raise errors.NotImplemented_(f"{method.name} is not supported")
                try:
                    handler(self, self.channels[event.channel], method)
                except errors.AMQPError as exc:
                    raise exc.with_method(*_ids(method))
            elif isinstance(event, ChannelOpened):
                self.channels[event.channel] = Channel(self, event.channel)
            elif isinstance(event, ChannelClosed):
                closed = self.channels.pop(event.channel, None)
                if closed is not None:
                    closed.close()
            elif isinstance(event, StartOk):
                self.user = self.broker.access.authenticate(self, event.mechanism, event.response)
                self.conn.accept_auth()
            elif isinstance(event, OpenRequested):
                self.vhost = self.broker.access.open_vhost(self, event.vhost)
                self.conn.accept_open()
                self.broker.session_opened(self)
            elif isinstance(event, ConnectionClosed):
                if self.close_reason is None:
                    self.close_reason = (
                        "client closed" if event.by_peer else event.reply_text
                    )
            elif isinstance(event, BadProtocolHeader):
                self.close_reason = "bad protocol header"
        except errors.AMQPError as exc:
            self.report(exc, channel_id)

    def in_flow(self, low: int, now: float, stall_s: float) -> bool:
        """True while a queue this connection flooded is above the low mark
        and its consumers are draining it. A queue whose consumers made no
        progress for ``stall_s`` (stalled, out of credit) releases the
        publisher: it then only accumulates, bounded by the memory alarm."""
        if not self.flow:
            return False
        progress = self._flow_progress
        keep = set()
        for q in self.flow:
            if q.deleted or not q.consumers or len(q.ready) <= low:
                progress.pop(q, None)
                continue
            seen = progress.get(q)
            if seen is None or seen[0] != q.delivered:
                progress[q] = (q.delivered, now)
                keep.add(q)
            elif now - seen[1] < stall_s:
                keep.add(q)
            else:
                progress.pop(q, None)
        self.flow = keep
        return bool(keep)

    # --------------------------------------------------------- teardown

    def connection_lost(self) -> None:
        """The socket is gone: release everything this connection held."""
        if self.closed:
            return
        self.closed = True
        for chan in list(self.channels.values()):
            chan.close()
        self.channels.clear()
        self.broker.session_closed(self)

    def remove_consumer(self, consumer: Consumer) -> None:
        consumer.channel.consumers.pop(consumer.tag, None)
        queue = consumer.queue
        queue.remove_consumer(consumer)
        if queue.auto_delete and queue.had_consumers and not queue.consumers:
            vhost = self.broker.vhosts.get(queue.vhost)
            if vhost is not None:
                vhost.remove_queue(queue)

    # ----------------------------------------------------------- helpers

    def reply(self, chan: Channel, method: PamqpMethod) -> None:
        self.conn.send_method(chan.id, method)

    def queue_name(self, chan: Channel, name: str) -> str:
        if name:
            return name
        if not chan.last_queue:
            raise errors.NotFound("no previously declared queue")
        return chan.last_queue

    @property
    def vh(self) -> VHost:
        assert self.vhost is not None
        return self.vhost


def _ids(method: PamqpMethod) -> tuple[int, int]:
    index = getattr(method, "index", 0)
    return index >> 16, index & 0xFFFF


# ---------------------------------------------------------------- channel


@handles(commands.Channel.Flow)
def _flow(s: Session, chan: Channel, m: commands.Channel.Flow) -> None:
    if not m.active:
        raise errors.NotImplemented_("active=false")
    s.reply(chan, commands.Channel.FlowOk(active=True))


@handles(commands.Channel.FlowOk)
def _flow_ok(s: Session, chan: Channel, m: commands.Channel.FlowOk) -> None:
    pass


# --------------------------------------------------------------- exchange


@handles(commands.Exchange.Declare)
def _exchange_declare(s: Session, chan: Channel, m: commands.Exchange.Declare) -> None:
    if not m.passive:
        s.broker.access.check_exchange_declare(s.user, s.vh.name, m.exchange, m.arguments)
    s.vh.declare_exchange(
        m.exchange,
        m.exchange_type,
        passive=m.passive,
        durable=m.durable,
        auto_delete=m.auto_delete,
        internal=m.internal,
        arguments=m.arguments,
    )
    if not m.nowait:
        s.reply(chan, commands.Exchange.DeclareOk())


@handles(commands.Exchange.Delete)
def _exchange_delete(s: Session, chan: Channel, m: commands.Exchange.Delete) -> None:
    s.broker.access.check(s.user, s.vh.name, "configure", "exchange", m.exchange)
    s.vh.delete_exchange(m.exchange, if_unused=m.if_unused)
    if not m.nowait:
        s.reply(chan, commands.Exchange.DeleteOk())


@handles(commands.Exchange.Bind)
def _exchange_bind(s: Session, chan: Channel, m: commands.Exchange.Bind) -> None:
    s.broker.access.check(s.user, s.vh.name, "write", "exchange", m.destination)
    s.broker.access.check(s.user, s.vh.name, "read", "exchange", m.source)
    s.vh.get_exchange(m.destination)
    s.vh.bind(m.source, Destination("exchange", m.destination), m.routing_key, m.arguments)
    if not m.nowait:
        s.reply(chan, commands.Exchange.BindOk())


@handles(commands.Exchange.Unbind)
def _exchange_unbind(s: Session, chan: Channel, m: commands.Exchange.Unbind) -> None:
    s.broker.access.check(s.user, s.vh.name, "write", "exchange", m.destination)
    s.broker.access.check(s.user, s.vh.name, "read", "exchange", m.source)
    s.vh.unbind(m.source, Destination("exchange", m.destination), m.routing_key, m.arguments)
    if not m.nowait:
        s.reply(chan, commands.Exchange.UnbindOk())


# ------------------------------------------------------------------ queue


@handles(commands.Queue.Declare)
def _queue_declare(s: Session, chan: Channel, m: commands.Queue.Declare) -> None:
    if m.queue == PSEUDO_QUEUE:
        s.conn.send_raw(codec.queue_declare_ok(chan.id, PSEUDO_QUEUE, 0, 0))
        return
    if not m.passive:
        s.broker.access.check_queue_declare(s.user, s.vh, m.queue, m.arguments)
    queue = s.vh.declare_queue(
        m.queue,
        owner=s,
        passive=m.passive,
        durable=m.durable,
        exclusive=m.exclusive,
        auto_delete=m.auto_delete,
        arguments=m.arguments,
    )
    if not m.queue and not m.passive:  # server-named: check the name it got
        s.broker.access.check_server_named_queue(s.user, s.vh, queue, m.arguments)
    chan.last_queue = queue.name
    if not m.nowait:
        s.conn.send_raw(
            codec.queue_declare_ok(chan.id, queue.name, queue.message_count, queue.consumer_count)
        )


@handles(commands.Queue.Bind)
def _queue_bind(s: Session, chan: Channel, m: commands.Queue.Bind) -> None:
    name = s.queue_name(chan, m.queue)
    s.broker.access.check(s.user, s.vh.name, "write", "queue", name)
    s.broker.access.check(s.user, s.vh.name, "read", "exchange", m.exchange)
    s.vh.bind(m.exchange, Destination("queue", name), m.routing_key, m.arguments, owner=s)
    if not m.nowait:
        s.reply(chan, commands.Queue.BindOk())


@handles(commands.Queue.Unbind)
def _queue_unbind(s: Session, chan: Channel, m: commands.Queue.Unbind) -> None:
    name = s.queue_name(chan, m.queue)
    s.broker.access.check(s.user, s.vh.name, "write", "queue", name)
    s.broker.access.check(s.user, s.vh.name, "read", "exchange", m.exchange)
    s.vh.unbind(m.exchange, Destination("queue", name), m.routing_key, m.arguments, owner=s)
    s.reply(chan, commands.Queue.UnbindOk())


@handles(commands.Queue.Purge)
def _queue_purge(s: Session, chan: Channel, m: commands.Queue.Purge) -> None:
    name = s.queue_name(chan, m.queue)
    s.broker.access.check(s.user, s.vh.name, "read", "queue", name)
    queue = s.vh.get_queue(name, owner=s)
    count = queue.purge()
    if not m.nowait:
        s.reply(chan, commands.Queue.PurgeOk(message_count=count))


@handles(commands.Queue.Delete)
def _queue_delete(s: Session, chan: Channel, m: commands.Queue.Delete) -> None:
    name = s.queue_name(chan, m.queue)
    s.broker.access.check(s.user, s.vh.name, "configure", "queue", name)
    count = s.vh.delete_queue(
        name, owner=s, if_unused=m.if_unused, if_empty=m.if_empty
    )
    if not m.nowait:
        s.reply(chan, commands.Queue.DeleteOk(message_count=count))


# ------------------------------------------------------------------ basic


@handles(commands.Basic.Qos)
def _qos(s: Session, chan: Channel, m: commands.Basic.Qos) -> None:
    if m.prefetch_size:
        raise errors.NotImplemented_(f"prefetch_size!=0 ({m.prefetch_size})")
    if m.global_:
        chan.global_prefetch = m.prefetch_count
    else:
        chan.consumer_prefetch = m.prefetch_count
    for consumer in chan.consumers.values():
        s.broker.mark_dirty(consumer.queue)
    s.reply(chan, commands.Basic.QosOk())


@handles(commands.Basic.Consume)
def _consume(s: Session, chan: Channel, m: commands.Basic.Consume) -> None:
    tag = m.consumer_tag or _ctag()
    if tag in chan.consumers or tag == chan.reply_tag:
        raise errors.NotAllowed(f"attempt to reuse consumer tag '{tag}'")
    if m.queue == PSEUDO_QUEUE:
        s.broker.direct_reply.consume(chan, tag, m.no_ack)
        if not m.nowait:
            s.reply(chan, commands.Basic.ConsumeOk(consumer_tag=tag))
        return
    name = s.queue_name(chan, m.queue)
    s.broker.access.check(s.user, s.vh.name, "read", "queue", name)
    queue = s.vh.get_queue(name, owner=s)
    if queue.consumers and (m.exclusive or any(c.exclusive for c in queue.consumers)):
        raise errors.AccessRefused(
            f"queue '{queue.name}' in vhost '{queue.vhost}' in exclusive use"
        )
    consumer = Consumer(
        chan,
        tag,
        queue,
        no_ack=m.no_ack,
        exclusive=m.exclusive,
        prefetch=chan.consumer_prefetch,
        arguments=dict(m.arguments or {}),
    )
    chan.consumers[tag] = consumer
    queue.add_consumer(consumer)
    queue.last_used_ms = s.broker.wall_ms()
    if not m.nowait:
        s.reply(chan, commands.Basic.ConsumeOk(consumer_tag=tag))
    s.broker.mark_dirty(queue)


@handles(commands.Basic.Cancel)
def _cancel(s: Session, chan: Channel, m: commands.Basic.Cancel) -> None:
    consumer = chan.consumers.get(m.consumer_tag or "")
    if consumer is not None:
        s.remove_consumer(consumer)
    elif m.consumer_tag == chan.reply_tag:
        s.broker.direct_reply.cancel(chan)
    if not m.nowait:
        s.reply(chan, commands.Basic.CancelOk(consumer_tag=m.consumer_tag))


@handles(commands.Basic.Get)
def _get(s: Session, chan: Channel, m: commands.Basic.Get) -> None:
    name = s.queue_name(chan, m.queue)
    s.broker.access.check(s.user, s.vh.name, "read", "queue", name)
    queue = s.vh.get_queue(name, owner=s)
    entry = s.broker.take_for_get(queue)
    if entry is None:
        s.reply(chan, commands.Basic.GetEmpty())
        return
    chan.send_get_ok(queue, entry, m.no_ack)


def _settle(s: Session, chan: Channel, kind: str, tag: int, multiple: bool, requeue: bool) -> None:
    if chan.tx:
        chan.tx_acks.append((kind, tag, multiple, requeue))
        return
    if kind == "ack":
        chan.ack(tag, multiple)
    else:
        chan.reject(tag, multiple, requeue)


@handles(commands.Basic.Ack)
def _ack(s: Session, chan: Channel, m: commands.Basic.Ack) -> None:
    _settle(s, chan, "ack", m.delivery_tag, m.multiple, False)


@handles(commands.Basic.Nack)
def _nack(s: Session, chan: Channel, m: commands.Basic.Nack) -> None:
    _settle(s, chan, "nack", m.delivery_tag, m.multiple, m.requeue)


@handles(commands.Basic.Reject)
def _reject(s: Session, chan: Channel, m: commands.Basic.Reject) -> None:
    _settle(s, chan, "nack", m.delivery_tag or 0, False, m.requeue)


@handles(commands.Basic.Recover)
def _recover(s: Session, chan: Channel, m: commands.Basic.Recover) -> None:
    if not m.requeue:
        raise errors.NotImplemented_("requeue=false")
    chan.recover()
    s.reply(chan, commands.Basic.RecoverOk())


@handles(commands.Basic.RecoverAsync)
def _recover_async(s: Session, chan: Channel, m: commands.Basic.RecoverAsync) -> None:
    if not m.requeue:
        raise errors.NotImplemented_("requeue=false")
    chan.recover()


# ------------------------------------------------------- confirm and tx


@handles(commands.Confirm.Select)
def _confirm_select(s: Session, chan: Channel, m: commands.Confirm.Select) -> None:
    if chan.tx:
        raise errors.PreconditionFailed("cannot switch from tx to confirm mode")
    chan.confirm = True
    if not m.nowait:
        s.reply(chan, commands.Confirm.SelectOk())


@handles(commands.Tx.Select)
def _tx_select(s: Session, chan: Channel, m: commands.Tx.Select) -> None:
    if chan.confirm:
        raise errors.PreconditionFailed("cannot switch from confirm to tx mode")
    chan.tx = True
    s.reply(chan, commands.Tx.SelectOk())


@handles(commands.Tx.Commit)
def _tx_commit(s: Session, chan: Channel, m: commands.Tx.Commit) -> None:
    if not chan.tx:
        raise errors.PreconditionFailed("channel is not transactional")
    publishes, chan.tx_publishes = chan.tx_publishes, []
    acks, chan.tx_acks = chan.tx_acks, []
    durable = False
    for event in publishes:
        durable |= s.broker.publish_event(s, chan, event)
    for kind, tag, multiple, requeue in acks:
        if kind == "ack":
            durable |= chan.ack(tag, multiple)
        else:
            durable |= chan.reject(tag, multiple, requeue)
    epoch = s.broker.write_epoch if durable and s.broker.store.durable else 0
    if epoch <= s.broker.committed_epoch and not chan.tx_commit_epochs:
        s.reply(chan, commands.Tx.CommitOk())
    else:
        chan.tx_commit_epochs.append(epoch)
        s.broker.confirm_waiters.add(chan)
        s.broker.request_commit()


@handles(commands.Tx.Rollback)
def _tx_rollback(s: Session, chan: Channel, m: commands.Tx.Rollback) -> None:
    if not chan.tx:
        raise errors.PreconditionFailed("channel is not transactional")
    chan.tx_publishes.clear()
    chan.tx_acks.clear()
    s.reply(chan, commands.Tx.RollbackOk())
