"""The server side of one AMQP 0-9-1 connection, without I/O.

Strategy (h11/wsproto style): the server feeds received bytes with
``receive_data()``, pulls events with ``next_event()`` until it returns None,
and sends whatever ``data_to_send()`` returns. ``next_event()`` handles one
frame per call, so when it raises an ``AMQPError`` the frame is already
consumed and the caller can report the error and keep going; a soft error
names its channel in ``error.channel``.

Every transition of the connection and of each channel's content assembly
lives in this file: handshake (header -> start-ok -> tune-ok -> open),
channel open/close handshakes, method + header + body assembly, and the
close handshake in both directions. What the broker must decide (credentials,
vhost, what a method means) comes out as an event.
"""

from __future__ import annotations

import enum
from typing import Any, cast

from pamqp import commands
from pamqp.base import Frame as PamqpMethod

from mqbroker import errors
from mqbroker.protocol import codec
from mqbroker.protocol.channel_state import BIG_BODY, ChannelState
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
from mqbroker.protocol.output import Output


def _ids(method: PamqpMethod) -> tuple[int, int]:
    index = getattr(method, "index", 0)
    return index >> 16, index & 0xFFFF


class State(enum.Enum):
    AWAIT_HEADER = "await-header"
    AWAIT_START_OK = "await-start-ok"
    AUTHENTICATING = "authenticating"
    AWAIT_TUNE_OK = "await-tune-ok"
    AWAIT_OPEN = "await-open"
    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"  # we sent connection.close, waiting for close-ok
    CLOSED = "closed"


# Publishes handed to the broker as one ``PublishRun`` at most: bounds the
# work (and the broker's per-run lists) of one event.
PUBLISH_RUN_MAX = 256

CAPABILITIES = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "consumer_priorities": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
    "direct_reply_to": True,
}


class ServerConnection(Output):
    def __init__(
        self,
        *,
        frame_max: int,
        channel_max: int,
        heartbeat: int,
        max_message_size: int,
        server_properties: dict[str, Any],
        mechanisms: str = "PLAIN AMQPLAIN",
    ) -> None:
        self.state = State.AWAIT_HEADER
        self._server_frame_max = frame_max
        self._server_channel_max = channel_max
        self._server_heartbeat = heartbeat
        self.frame_max = frame_max
        self.channel_max = channel_max
        self.heartbeat = heartbeat
        self.max_message_size = max_message_size
        self.server_properties = server_properties
        self.mechanisms = mechanisms
        self.client_properties: dict[str, Any] = {}
        self._reader = codec.FrameReader(codec.FRAME_MIN_SIZE)
        self._channels: dict[int, ChannelState] = {}
        Output.__init__(self)
        # Set when the frame reader fails (bad frame-end octet, oversized
        # frame): the reader has not consumed the bad frame and the stream
        # has lost its framing, so nothing after it can be parsed.
        self._broken = False

    # ------------------------------------------------------------ input

    def receive_data(self, data: bytes) -> None:
        self._reader.feed(data)

    def next_event(self) -> Event | None:
        """Handle buffered input up to the next event; None: need data."""
        if self.state is State.OPEN and not self._broken:
            # The hot path: a whole publish + header + body in one pass.
            fast = self._reader.next_publish_run(self.max_message_size, PUBLISH_RUN_MAX)
            if fast is not None:
                channel = fast[0]
                chan = self._channels.get(channel)
                if chan is not None and chan.method is None and not chan.closing:
                    self._reader.consume(fast[5])
                    bits, items = fast[3], fast[4]
                    if len(items) == 1:
                        return ContentReceived(
                            channel, fast[1], fast[2], bool(bits & 1),
                            bool(bits & 2), items[0][0], items[0][1],
                        )
                    return PublishRun(
                        channel, fast[1], fast[2], bool(bits & 1), bool(bits & 2), items
                    )
        while True:
            if self.state is State.CLOSED or self._broken:
                return None
            if self.state is State.AWAIT_HEADER:
                event = self._read_protocol_header()
                if event is not None or self.state is State.AWAIT_HEADER:
                    return event
                continue  # header accepted: frames may already be buffered
            try:
                item = self._reader.next_frame()
                if item is None:
                    return None
                event = self._handle_frame(*item)
            except errors.FrameError:
                self._broken = True
                raise
            if event is not None:
                return event

    def _read_protocol_header(self) -> Event | None:
        header = self._reader.take(8)
        if header is None:
            return None
        if header != codec.PROTOCOL_HEADER:
            self.out += codec.PROTOCOL_HEADER
            self.state = State.CLOSED
            return BadProtocolHeader(header)
        props = dict(self.server_properties)
        props["capabilities"] = dict(CAPABILITIES)
        self._send(
            0,
            commands.Connection.Start(
                version_major=0,
                version_minor=9,
                server_properties=props,
                mechanisms=self.mechanisms,
                locales="en_US",
            ),
        )
        self.state = State.AWAIT_START_OK
        return None

    def _handle_frame(self, ftype: int, channel: int, payload: bytes) -> Event | None:
        if ftype == codec.FRAME_HEARTBEAT:
            if channel != 0:
                raise errors.UnexpectedFrame(
                    f"heartbeat frame on channel {channel}"
                )
            return None
        if self.state is State.CLOSING:
            return self._while_closing(ftype, channel, payload)
        if ftype == codec.FRAME_METHOD:
            method = codec.decode_method(payload)
            if channel == 0:
                return self._connection_method(method)
            if self.state is not State.OPEN:
                raise errors.UnexpectedFrame(
                    f"{method.name} on channel {channel} before connection.open"
                )
            return self._channel_method(channel, method)
        if ftype in (codec.FRAME_HEADER, codec.FRAME_BODY):
            if self.state is not State.OPEN or channel == 0:
                raise errors.UnexpectedFrame(
                    f"content frame on channel {channel} outside a channel"
                )
            return self._content_frame(ftype, channel, payload)
        raise errors.FrameError(f"unknown frame type {ftype}")

    def _while_closing(self, ftype: int, channel: int, payload: bytes) -> Event | None:
        """After our connection.close only close/close-ok matter."""
        if ftype != codec.FRAME_METHOD or channel != 0:
            return None
        try:
            method = codec.decode_method(payload)
        except errors.AMQPError:
            return None
        if isinstance(method, commands.Connection.Close):
            self._send(0, commands.Connection.CloseOk())
        if isinstance(method, commands.Connection.Close | commands.Connection.CloseOk):
            self.state = State.CLOSED
            return ConnectionClosed(self._close_code, self._close_text, False)
        return None

    # ------------------------------------------------- connection class

    def _connection_method(self, method: PamqpMethod) -> Event | None:
        state = self.state
        if isinstance(method, commands.Connection.StartOk):
            if state is not State.AWAIT_START_OK:
                raise errors.CommandInvalid("unexpected connection.start-ok")
            self.client_properties = dict(method.client_properties or {})
            response = method.response
            raw = response.encode("utf-8") if isinstance(response, str) else bytes(response or b"")
            self.state = State.AUTHENTICATING
            return StartOk(method.mechanism or "", raw, self.client_properties)
        if isinstance(method, commands.Connection.TuneOk):
            if state is not State.AWAIT_TUNE_OK:
                raise errors.CommandInvalid("unexpected connection.tune-ok")
            self._negotiate(method)
            self.state = State.AWAIT_OPEN
            return None
        if isinstance(method, commands.Connection.Open):
            if state is not State.AWAIT_OPEN:
                raise errors.CommandInvalid("unexpected connection.open")
            self.state = State.OPENING
            return OpenRequested(method.virtual_host or "/")
        if isinstance(method, commands.Connection.Close):
            self._send(0, commands.Connection.CloseOk())
            self.state = State.CLOSED
            return ConnectionClosed(
                method.reply_code or 0, method.reply_text or "", True
            )
        if isinstance(method, commands.Connection.CloseOk):
            return None
        if isinstance(method, commands.Connection.UpdateSecret):
            self._send(0, commands.Connection.UpdateSecretOk())
            return None
        if isinstance(method, commands.Connection.Blocked | commands.Connection.Unblocked):
            return None
        raise errors.ChannelErrorHard(
            "unexpected method in connection state running"
        ).with_method(*_ids(method))

    def _negotiate(self, tune_ok: commands.Connection.TuneOk) -> None:
        """Accept the client's limits only within what we offered, as
        RabbitMQ does: 0 ("no limit") or more than offered, or a frame_max
        below the spec's minimum, ends the connection (530, reported as
        caused by connection.tune, and the socket closes at once)."""
        offered = (
            ("channel_max", tune_ok.channel_max, self._server_channel_max, 0),
            ("frame_max", tune_ok.frame_max, self._server_frame_max, codec.FRAME_MIN_SIZE),
        )
        for field, client, server, minimum in offered:
            detail = " (no limit)" if client == 0 else ""
            if client != 0 and client < minimum:
                text = (
                    f"negotiated {field} = {client} is lower than the minimum "
                    f"allowed value ({minimum})"
                )
            elif server != 0 and (client == 0 or client > server):
                text = (
                    f"negotiated {field} = {client}{detail} is higher than the "
                    f"maximum allowed value ({server})"
                )
            else:
                continue
            self._broken = True  # nothing after this tune-ok is read
            raise errors.NotAllowed(text).with_method(10, 30)
        self.frame_max = tune_ok.frame_max or self._server_frame_max
        self._reader.frame_max = self.frame_max
        self.channel_max = tune_ok.channel_max or self._server_channel_max
        # The client's heartbeat wins (it may turn them off with 0), as in
        # RabbitMQ, which accepts whatever the client answers in tune-ok.
        self.heartbeat = tune_ok.heartbeat

    def accept_auth(self) -> None:
        """Credentials are good: propose our limits."""
        self._send(
            0,
            commands.Connection.Tune(
                channel_max=self._server_channel_max,
                frame_max=self._server_frame_max,
                heartbeat=self._server_heartbeat,
            ),
        )
        self.state = State.AWAIT_TUNE_OK

    def accept_open(self) -> None:
        self._send(0, commands.Connection.OpenOk())
        self.state = State.OPEN

    # ---------------------------------------------------- channel class

    def _channel_method(self, channel: int, method: PamqpMethod) -> Event | None:
        chan = self._channels.get(channel)
        if chan is None:
            if isinstance(method, commands.Channel.Open):
                return self._open_channel(channel)
            raise errors.ChannelErrorHard(
                f"expected 'channel.open' on channel {channel}"
            ).with_method(*_ids(method))
        if chan.closing:
            if isinstance(method, commands.Channel.CloseOk | commands.Channel.Close):
                if isinstance(method, commands.Channel.Close):
                    self._send(channel, commands.Channel.CloseOk())
                del self._channels[channel]
                return ChannelClosed(channel)
            return None
        if isinstance(method, commands.Channel.Close):
            del self._channels[channel]
            self._send(channel, commands.Channel.CloseOk())
            return ChannelClosed(channel)
        if chan.method is not None:
            raise errors.UnexpectedFrame(
                "expected content header for class 60, got non content "
                "header frame instead"
            ).with_method(60, 40)
        if isinstance(method, commands.Basic.Publish):
            chan.method = method
            return None
        if isinstance(method, commands.Channel.Open):
            raise errors.ChannelErrorHard("second 'channel.open' seen").with_method(20, 10)
        if isinstance(method, commands.Channel.CloseOk):
            return None
        return MethodReceived(channel, method)

    def _open_channel(self, channel: int) -> Event:
        # The limit counts open channels, not ids (RabbitMQ).
        if self.channel_max and len(self._channels) >= self.channel_max:
            raise errors.NotAllowed(
                f"number of channels opened ({len(self._channels)}) has "
                f"reached the negotiated channel_max ({self.channel_max})"
            )
        self._channels[channel] = ChannelState()
        self._send(channel, commands.Channel.OpenOk())
        return ChannelOpened(channel)

    def _content_frame(self, ftype: int, channel: int, payload: bytes) -> Event | None:
        chan = self._channels.get(channel)
        if chan is None:
            raise errors.ChannelErrorHard(
                f"content frame on channel {channel} which is not open"
            )
        if chan.closing:
            return None
        if chan.method is None:
            raise errors.UnexpectedFrame(
                "expected method frame, got non method frame instead"
            )
        if ftype == codec.FRAME_HEADER:
            if chan.body_size >= 0:
                raise errors.UnexpectedFrame(
                    "expected content body, got content header instead"
                )
            class_id, body_size, properties = codec.split_content_header(payload)
            if class_id != 60:
                raise errors.UnexpectedFrame(
                    "expected content header for class 60, got one for class "
                    f"{class_id} instead"
                ).with_method(60, 40)
            if body_size > self.max_message_size:
                chan.reset_content()
                raise errors.PreconditionFailed(
                    f"message size {body_size} is larger than configured max "
                    f"size {self.max_message_size}",
                    60,
                    40,
                ).on_channel(channel)
            chan.body_size = body_size
            chan.properties = properties
            if body_size > BIG_BODY:
                chan.big = bytearray()
            if body_size == 0:
                return self._finish_content(channel, chan, b"")
            return None
        if chan.body_size < 0:
            raise errors.UnexpectedFrame(
                "expected content header for class 60, got non content "
                "header frame instead"
            ).with_method(60, 40)
        chan.received += len(payload)
        if chan.big is not None and chan.received <= chan.body_size:
            chan.big += payload
            if chan.received < chan.body_size:
                return None
            # The buffer is handed on as the body (no bytes() copy): the
            # broker only reads, slices, stores and sends bodies.
            return self._finish_content(channel, chan, cast(bytes, chan.big))
        if chan.received > chan.body_size:
            raise errors.UnexpectedFrame(
                f"content body of {chan.received} bytes exceeds the "
                f"{chan.body_size} announced in its header"
            ).with_method(60, 40)
        if chan.received == chan.body_size:
            if chan.chunks:
                chan.chunks.append(payload)
                body = b"".join(chan.chunks)
            else:
                body = payload
            return self._finish_content(channel, chan, body)
        chan.chunks.append(payload)
        return None

    def _finish_content(self, channel: int, chan: ChannelState, body: bytes) -> Event:
        method = chan.method
        assert method is not None
        event = ContentReceived(
            channel,
            method.exchange,
            method.routing_key,
            bool(method.mandatory),
            bool(method.immediate),
            chan.properties,
            body,
        )
        chan.reset_content()
        return event

    # ----------------------------------------------------------- output

    def _send(self, channel: int, method: PamqpMethod) -> None:
        self.out += codec.method_frame(channel, method)

    def send_method(self, channel: int, method: PamqpMethod) -> None:
        self.out += codec.method_frame(channel, method)

    def send_raw(self, data: bytes) -> None:
        self.out += data

    def drop_without_close(self) -> None:
        """End the connection with no close handshake (RabbitMQ's answer to
        a failed login from a client that did not ask for the 403)."""
        self.state = State.CLOSED

    def is_channel_open(self, channel: int) -> bool:
        chan = self._channels.get(channel)
        return chan is not None and not chan.closing

    @property
    def open_channels(self) -> list[int]:
        return [c for c, chan in self._channels.items() if not chan.closing]

    def close_channel(self, channel: int, error: errors.AMQPError) -> None:
        """Start the channel close handshake for a soft error."""
        chan = self._channels.get(channel)
        if chan is None or chan.closing:
            return
        chan.closing = True
        chan.reset_content()
        self._send(channel, errors.to_close_method(error, channel))

    def close_connection(self, error: errors.AMQPError) -> None:
        """Start the connection close handshake (hard error or shutdown)."""
        if self.state in (State.CLOSING, State.CLOSED):
            return
        if self.state in (State.AWAIT_HEADER,):
            self.state = State.CLOSED
            return
        self._close_code = error.reply_code
        self._close_text = error.reply_text
        self._send(0, errors.to_close_method(error, 0))
        # Framing lost (501) or the tune-ok refused: nothing the peer sends
        # can be read any more, so its close-ok is not awaited either; the
        # socket closes as soon as the close frame is written.
        self.state = State.CLOSED if self._broken else State.CLOSING

    _close_code = 0
    _close_text = ""

    def report(self, error: errors.AMQPError, channel: int) -> None:
        """The one place an error becomes a close: channel or connection."""
        if errors.closes_connection(error, channel):
            self.close_connection(error)
        else:
            self.close_channel(channel, error)
