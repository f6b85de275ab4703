"""A client for driving ``ServerConnection`` in tests, with no sockets.

Like h11's ``ConnectionPair`` (house rule 8): the client side is plain pamqp
(frames from tests/support/frames.py), the server side is the sans-I/O
``ServerConnection``, and the link is two method calls. What the server
writes is decoded with ``pamqp.frame.unmarshal`` so tests assert on methods,
not bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pamqp import body as pamqp_body
from pamqp import commands
from pamqp import header as pamqp_header

from mqbroker.protocol import codec
from mqbroker.protocol.connection import ServerConnection, State
from mqbroker.protocol.events import (
    ChannelOpened,
    Event,
    OpenRequested,
    PublishRun,
    StartOk,
)
from support.frames import (
    PROTOCOL_HEADER,
    channel_open,
    connection_open,
    decode_frames,
    split_frames,
    start_ok,
    tune_ok,
)

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


def content_frames(
    channel: int, properties: bytes, body: bytes, frame_max: int
) -> list[bytes]:
    """``codec.write_content``'s output cut into its frames."""
    out = bytearray()
    codec.write_content(out, channel, properties, body, frame_max)
    return split_frames(bytes(out))


def attrs(m: Any) -> dict[str, Any]:
    return dict(iter(m))


def flatten(event: Event) -> list[Event]:
    """A ``PublishRun`` as the single publishes it stands for."""
    if isinstance(event, PublishRun):
        return list(event.events())
    return [event]


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
            out.extend(flatten(event))
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
            events.extend(normalize(e) for e in flatten(event))
            if isinstance(event, StartOk):
                pair.conn.accept_auth()
            elif isinstance(event, OpenRequested):
                pair.conn.accept_open()
        output += pair.output()
    return events, bytes(output)
