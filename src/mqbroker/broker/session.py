"""One client connection as the broker sees it: events in, effects out.

Strategy: the protocol core hands over decoded events; each AMQP method
goes to one small handler (``handlers.py``) that calls the command layer
(``commands.py``) or the channel state, and replies through
``ServerConnection`` methods. Every
handler may raise an ``AMQPError``; ``handle()`` is the single place that
turns it into ``channel.close`` or ``connection.close``. Nothing here awaits:
the server layer owns sockets and time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pamqp import commands
from pamqp.base import Frame as PamqpMethod

from mqbroker import errors
from mqbroker.broker import handshake
from mqbroker.broker.channel import Channel, Consumer
from mqbroker.broker.commands import Caller
from mqbroker.broker.handlers import HANDLERS
from mqbroker.broker.publish_run import publish_run
from mqbroker.broker.vhost import VHost
from mqbroker.model.message import Message
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
    PublishRun,
    StartOk,
)

if TYPE_CHECKING:
    from mqbroker.broker.broker import Broker



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
        # broker/publish.py FLOW_HIGH_READY); the server pauses its reads
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
        self._caller: Caller | None = None

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
        publisher = self.broker.publisher
        while True:
            try:
                event = next_event()
            except errors.AMQPError as exc:
                self.report(exc, exc.channel if exc.channel is not None else 0)
                continue
            if event is None:
                break
            kind = type(event)
            if kind is ContentReceived or kind is PublishRun:
                # The hot path, inlined from handle(): most events are
                # publishes, and each saves a call and an isinstance chain.
                chan = channels.get(event.channel)  # type: ignore[union-attr]
                if chan is not None and not chan.tx:
                    self.published = True
                    try:
                        if kind is ContentReceived:
                            publish(self, chan, event)  # type: ignore[arg-type]
                        else:
                            publish_run(publisher, self, chan, event)  # type: ignore[arg-type]
                    except errors.AMQPError as exc:
                        self.report(exc, event.channel)  # type: ignore[union-attr]
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
            if isinstance(event, PublishRun):  # one by one (tx, or no channel)
                for i, single in enumerate(event.events()):
                    if i and single.channel not in self.channels:
                        break  # an earlier one closed the channel
                    self.handle(single)
                return
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
                try:
                    self.user = handshake.authenticate(
                        self.broker.access, self, event.mechanism, event.response
                    )
                except errors.AMQPError as exc:
                    raise exc.with_method(10, 11)  # connection.start-ok
                self.conn.accept_auth()
            elif isinstance(event, OpenRequested):
                try:
                    self.vhost = handshake.open_vhost(self.broker.access, self, event.vhost)
                except errors.AMQPError as exc:
                    raise exc.with_method(10, 40)  # connection.open
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

    def return_message(
        self, chan: Channel, exchange: str, routing_key: str, message: Message
    ) -> None:
        """basic.return 312 NO_ROUTE for a mandatory publish."""
        self.conn.send_return(
            chan.id, 312, "NO_ROUTE", exchange, routing_key,
            message.properties_raw, message.body,
        )
        self.output_ready()

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

    @property
    def caller(self) -> Caller:
        """Who this connection's commands run as (commands.py)."""
        caller = self._caller
        if caller is None:
            caller = self._caller = Caller(self.user, self.vh.name, owner=self)
        return caller


def _ids(method: PamqpMethod) -> tuple[int, int]:
    index = getattr(method, "index", 0)
    return index >> 16, index & 0xFFFF
