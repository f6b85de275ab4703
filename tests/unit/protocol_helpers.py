"""A client for driving ``ServerConnection`` in tests, with no sockets.

Like h11's ``ConnectionPair`` (house rule 8): the client side is plain pamqp
(frames built with ``pamqp.frame.marshal``), the server side is the sans-I/O
``ServerConnection``, and the link is two method calls. What the server
writes is decoded with ``pamqp.frame.unmarshal`` so tests assert on methods,
not bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

from pamqp import body as pamqp_body
from pamqp import commands
from pamqp import frame as pamqp_frame
from pamqp import header as pamqp_header
from pamqp import heartbeat as pamqp_heartbeat

from mqbroker.protocol import codec
from mqbroker.protocol.connection import ServerConnection, State
from mqbroker.protocol.events import (
    ChannelOpened,
    Event,
    OpenRequested,
    StartOk,
)

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
PLAIN_RESPONSE = b"\x00guest\x00guest"

SERVER_DEFAULTS: dict[str, Any] = {
    "frame_max": 131072,
    "channel_max": 2047,
    "heartbeat": 60,
    "max_message_size": 1 << 20,
    "server_properties": {
        "product": "mqbroker",
        "version": "0.1.0",
        "platform": "Python",
    },
}


# ------------------------------------------------------ client frames


def method(channel: int, m: Any) -> bytes:
    return pamqp_frame.marshal(m, channel)


def content_header(
    channel: int,
    body_size: int,
    properties: commands.Basic.Properties | None = None,
) -> bytes:
    return pamqp_frame.marshal(
        pamqp_header.ContentHeader(0, body_size, properties), channel
    )


def content_body(channel: int, data: bytes) -> bytes:
    return pamqp_frame.marshal(pamqp_body.ContentBody(data), channel)


def heartbeat(channel: int = 0) -> bytes:
    if channel == 0:
        return pamqp_frame.marshal(pamqp_heartbeat.Heartbeat(), 0)
    return raw_frame(8, channel, b"")


def raw_frame(
    ftype: int, channel: int, payload: bytes, end: int = 0xCE
) -> bytes:
    return (
        struct.pack(">BHI", ftype, channel, len(payload))
        + payload
        + bytes((end,))
    )


def content_frames(
    channel: int, properties: bytes, body: bytes, frame_max: int
) -> list[bytes]:
    """``codec.write_content``'s output cut into its frames."""
    out = bytearray()
    codec.write_content(out, channel, properties, body, frame_max)
    return split_frames(bytes(out))


def split_frames(data: bytes) -> list[bytes]:
    """A byte stream of whole frames -> the frames."""
    frames, pos = [], 0
    while pos < len(data):
        (size,) = struct.unpack_from(">I", data, pos + 3)
        frames.append(data[pos : pos + size + 8])
        pos += size + 8
    return frames


def publish_frames(
    channel: int,
    body: bytes,
    *,
    exchange: str = "",
    routing_key: str = "q",
    properties: commands.Basic.Properties | None = None,
    frame_max: int = 131072,
    mandatory: bool = False,
) -> bytes:
    """basic.publish + content header + body split to fit ``frame_max``."""
    out = [
        method(
            channel,
            commands.Basic.Publish(
                exchange=exchange, routing_key=routing_key, mandatory=mandatory
            ),
        ),
        content_header(channel, len(body), properties),
    ]
    chunk = frame_max - 8
    for start in range(0, len(body), chunk):
        out.append(content_body(channel, body[start : start + chunk]))
    return b"".join(out)


def start_ok(
    mechanism: str = "PLAIN",
    response: bytes = PLAIN_RESPONSE,
    client_properties: dict[str, Any] | None = None,
) -> bytes:
    return method(
        0,
        commands.Connection.StartOk(
            client_properties=client_properties
            or {
                "product": "test",
                "capabilities": {"consumer_cancel_notify": True},
            },
            mechanism=mechanism,
            response=response.decode("latin-1"),
            locale="en_US",
        ),
    )


def tune_ok(
    channel_max: int = 2047, frame_max: int = 131072, heartbeat: int = 60
) -> bytes:
    return method(
        0,
        commands.Connection.TuneOk(
            channel_max=channel_max, frame_max=frame_max, heartbeat=heartbeat
        ),
    )


def connection_open(vhost: str = "/") -> bytes:
    return method(0, commands.Connection.Open(virtual_host=vhost))


def channel_open(channel: int) -> bytes:
    return method(channel, commands.Channel.Open())


# ---------------------------------------------------- server output


def decode_frames(data: bytes) -> list[tuple[int, Any]]:
    """Server bytes -> [(channel, pamqp frame)], asserting nothing is left."""
    frames: list[tuple[int, Any]] = []
    while data:
        consumed, channel, frame = pamqp_frame.unmarshal(data)
        frames.append((channel, frame))
        data = data[consumed:]
    return frames


def attrs(m: Any) -> dict[str, Any]:
    return dict(iter(m))


def normalize(event: Event | None) -> Any:
    """Events hold pamqp objects, which compare by identity: make them
    comparable values."""
    if event is None:
        return None
    fields = []
    for name in type(event).__slots__:
        value = getattr(event, name)
        if (
            hasattr(value, "name")
            and hasattr(value, "__iter__")
            and not isinstance(value, str | bytes | dict)
        ):
            value = (value.name, tuple(sorted(attrs(value).items())))
        elif isinstance(value, dict):
            value = repr(value)
        fields.append(value)
    return (type(event).__name__, *fields)


# ------------------------------------------------------------ driver


class ClientPair:
    """A ``ServerConnection`` with a pamqp client in front of it."""

    def __init__(self, **server: Any) -> None:
        kwargs = dict(SERVER_DEFAULTS)
        kwargs.update(server)
        self.conn = ServerConnection(**kwargs)

    @property
    def state(self) -> State:
        return self.conn.state

    def send(self, *chunks: bytes) -> None:
        for chunk in chunks:
            self.conn.receive_data(chunk)

    def next_event(self) -> Event | None:
        return self.conn.next_event()

    def events(self, limit: int = 10_000) -> list[Event]:
        """Drain events until the server needs data (raises what it raises).

        ``limit`` turns a parser that never stops into a test failure
        instead of a hang.
        """
        out: list[Event] = []
        for _ in range(limit):
            event = self.conn.next_event()
            if event is None:
                return out
            out.append(event)
        raise AssertionError(f"next_event() did not stop after {limit} events")

    def exchange(self, *chunks: bytes) -> list[Event]:
        self.send(*chunks)
        return self.events()

    def output(self) -> bytes:
        return self.conn.data_to_send()

    def frames(self) -> list[tuple[int, Any]]:
        data = self.conn.data_to_send()
        if data.startswith(b"AMQP"):
            return [(0, data)]
        return decode_frames(data)

    def methods(self) -> list[tuple[int, Any]]:
        """Server output as [(channel, method)] (content frames dropped)."""
        return [
            (ch, f)
            for ch, f in self.frames()
            if not isinstance(
                f, pamqp_header.ContentHeader | pamqp_body.ContentBody
            )
        ]

    def only_method(self) -> tuple[int, Any]:
        methods = self.methods()
        assert len(methods) == 1, methods
        return methods[0]

    # --------------------------------------------------------- steps

    def handshake(
        self,
        *,
        vhost: str = "/",
        channel_max: int = 2047,
        frame_max: int = 131072,
        heartbeat: int = 60,
    ) -> None:
        """Run the whole handshake, asserting each step, up to OpenOk."""
        assert self.exchange(PROTOCOL_HEADER) == []
        ((ch, start),) = self.frames()
        assert ch == 0 and isinstance(start, commands.Connection.Start)
        events = self.exchange(start_ok())
        assert len(events) == 1 and isinstance(events[0], StartOk)
        self.conn.accept_auth()
        ((ch, tune),) = self.frames()
        assert isinstance(tune, commands.Connection.Tune)
        assert self.exchange(tune_ok(channel_max, frame_max, heartbeat)) == []
        assert self.output() == b""
        assert self.exchange(connection_open(vhost)) == [OpenRequested(vhost)]
        self.conn.accept_open()
        ((ch, open_ok),) = self.frames()
        assert isinstance(open_ok, commands.Connection.OpenOk)
        assert self.state is State.OPEN

    def open_channel(self, channel: int) -> None:
        assert self.exchange(channel_open(channel)) == [ChannelOpened(channel)]
        ((ch, ok),) = self.frames()
        assert ch == channel and isinstance(ok, commands.Channel.OpenOk)


def handshake_bytes(
    *, channel_max: int = 2047, frame_max: int = 131072, heartbeat: int = 60
) -> bytes:
    """Every byte a client sends from the header up to connection.open."""
    return b"".join(
        (
            PROTOCOL_HEADER,
            start_ok(),
            tune_ok(channel_max, frame_max, heartbeat),
            connection_open("/"),
        )
    )


def run_stream(
    chunks: Iterable[bytes], **server: Any
) -> tuple[list[Any], bytes]:
    """Feed ``chunks`` one by one, draining events after each and accepting
    auth and open as a broker would -> (normalized events, server output)."""
    pair = ClientPair(**server)
    events: list[Any] = []
    output = bytearray()
    for chunk in chunks:
        pair.send(chunk)
        while (event := pair.next_event()) is not None:
            events.append(normalize(event))
            if isinstance(event, StartOk):
                pair.conn.accept_auth()
            elif isinstance(event, OpenRequested):
                pair.conn.accept_open()
        output += pair.output()
    return events, bytes(output)
