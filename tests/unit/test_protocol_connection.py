"""ServerConnection driven by a pamqp client: handshake, content assembly,
frame errors and both close handshakes (house rule 8: no sockets)."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from pamqp import commands
from protocol_helpers import ClientPair, handshake_bytes, run_stream

from mqbroker import errors
from mqbroker.protocol import codec
from mqbroker.protocol.connection import ServerConnection, State
from mqbroker.protocol.events import (
    BadProtocolHeader,
    ChannelClosed,
    ConnectionClosed,
    ContentReceived,
    MethodReceived,
    OpenRequested,
    PublishRun,
    StartOk,
)
from support.frames import (
    PLAIN_RESPONSE,
    PROTOCOL_HEADER,
    channel_open,
    connection_open,
    content_body,
    content_header,
    decode_frames,
    heartbeat,
    method_frame,
    publish_frames,
    raw_frame,
    start_ok,
    tune_ok,
)


def opened(**server: Any) -> ClientPair:
    pair = ClientPair(**server)
    # Tune-ok within the offer (more than offered is refused, as RabbitMQ).
    pair.handshake(
        channel_max=server.get("channel_max", 2047), frame_max=server.get("frame_max", 131072)
    )
    pair.open_channel(1)
    return pair


def authenticating(pair: ClientPair) -> None:
    """Header, then start-ok, each in its own read."""
    assert pair.exchange(PROTOCOL_HEADER) == []
    (event,) = pair.exchange(start_ok())
    assert isinstance(event, StartOk)


def raises(
    pair: ClientPair, cls: type[errors.AMQPError], code: int
) -> errors.AMQPError:
    with pytest.raises(cls) as info:
        pair.events()
    assert info.value.reply_code == code
    return info.value


# ------------------------------------------------------------ handshake


def test_nothing_happens_before_the_whole_header() -> None:
    pair = ClientPair()
    assert pair.exchange(PROTOCOL_HEADER[:7]) == []
    assert pair.output() == b""
    assert pair.state is State.AWAIT_HEADER


def test_start_sent_after_header_with_capabilities_and_product() -> None:
    pair = ClientPair()
    assert pair.exchange(PROTOCOL_HEADER) == []
    ((channel, start),) = pair.frames()
    assert channel == 0
    assert isinstance(start, commands.Connection.Start)
    assert (start.version_major, start.version_minor) == (0, 9)
    props = start.server_properties
    assert props["product"] == "mqbroker"
    assert props["version"] == "0.1.0"
    caps = props["capabilities"]
    for cap in (
        "publisher_confirms",
        "consumer_cancel_notify",
        "basic.nack",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
        "exchange_exchange_bindings",
    ):
        assert caps[cap] is True, cap
    assert "PLAIN" in start.mechanisms.split()
    assert "en_US" in start.locales.split()
    assert pair.state is State.AWAIT_START_OK


def test_server_properties_are_not_mutated() -> None:
    props = {"product": "mqbroker"}
    pair = ClientPair(server_properties=props)
    pair.exchange(PROTOCOL_HEADER)
    assert props == {"product": "mqbroker"}


def test_start_ok_event_carries_mechanism_response_and_properties() -> None:
    pair = ClientPair()
    pair.exchange(PROTOCOL_HEADER)
    pair.output()
    client_props = {"product": "pika", "capabilities": {"basic.nack": True}}
    (event,) = pair.exchange(start_ok("PLAIN", PLAIN_RESPONSE, client_props))
    assert isinstance(event, StartOk)
    assert event.mechanism == "PLAIN"
    assert event.response == PLAIN_RESPONSE
    assert isinstance(event.response, bytes)
    assert event.client_properties == client_props
    assert pair.conn.client_properties == client_props
    assert pair.state is State.AUTHENTICATING
    assert pair.output() == b""  # nothing until the broker decides


def test_accept_auth_sends_tune_with_server_limits() -> None:
    pair = ClientPair(channel_max=100, frame_max=65536, heartbeat=30)
    authenticating(pair)
    pair.output()
    pair.conn.accept_auth()
    ((channel, tune),) = pair.frames()
    assert channel == 0 and isinstance(tune, commands.Connection.Tune)
    assert (tune.channel_max, tune.frame_max, tune.heartbeat) == (
        100,
        65536,
        30,
    )
    assert pair.state is State.AWAIT_TUNE_OK


def test_header_and_start_ok_in_one_read() -> None:
    """After the header is accepted, frames already buffered are handled
    without waiting for more bytes ("None" means "need data")."""
    pair = ClientPair()
    events = pair.exchange(PROTOCOL_HEADER + start_ok())
    assert [type(e) for e in events] == [StartOk]


def test_whole_handshake_in_one_read() -> None:
    events, output = run_stream([handshake_bytes() + channel_open(1)])
    assert [e[0] for e in events] == [
        "StartOk",
        "OpenRequested",
        "ChannelOpened",
    ]
    pair_frames = [f for _, f in decode_frames(output)]
    assert [type(f).__name__ for f in pair_frames] == [
        "Start",
        "Tune",
        "OpenOk",
        "OpenOk",
    ]


def _tuned(
    client: tuple[int, int, int], server: tuple[int, int, int]
) -> ServerConnection:
    pair = ClientPair(
        channel_max=server[0], frame_max=server[1], heartbeat=server[2]
    )
    authenticating(pair)
    pair.conn.accept_auth()
    assert pair.exchange(tune_ok(*client)) == []
    assert pair.state is State.AWAIT_OPEN
    return pair.conn


@pytest.mark.parametrize(
    ("client", "server", "expected"),
    [
        # (channel_max, frame_max, heartbeat): within the offer, or 0
        # where the server has no limit either
        ((2047, 131072, 0), (2047, 131072, 60), (2047, 131072, 0)),
        ((100, 8192, 10), (2047, 131072, 60), (100, 8192, 10)),
        ((10, 4096, 600), (2047, 4096, 60), (10, 4096, 600)),
        ((0, 4096, 5), (0, 131072, 60), (0, 4096, 5)),
    ],
)
def test_tune_ok_negotiation(
    client: tuple[int, int, int],
    server: tuple[int, int, int],
    expected: tuple[int, int, int],
) -> None:
    conn = _tuned(client, server)
    assert (conn.channel_max, conn.frame_max, conn.heartbeat) == expected


def test_negotiated_frame_max_applies_to_the_reader() -> None:
    pair = ClientPair()
    authenticating(pair)
    pair.conn.accept_auth()
    pair.exchange(tune_ok(2047, 8192, 60), connection_open())
    pair.conn.accept_open()
    pair.exchange(channel_open(1))
    # 8192 is allowed (header + payload + end == frame_max) ...
    ok = raw_frame(3, 1, b"x" * (8192 - 8))
    assert len(ok) == 8192
    # ... 8193 is not, and it is refused from the 7-byte header alone.
    pair.send(struct.pack(">BHI", 3, 1, 8192 - 7))
    raises(pair, errors.FrameError, 501)


@pytest.mark.parametrize(
    ("channel_max", "frame_max"),
    [(0, 131072), (4000, 131072), (2047, 0), (2047, 1 << 20)],
)
def test_tune_ok_beyond_the_offer_is_530_and_closes_at_once(
    channel_max: int, frame_max: int
) -> None:
    """RabbitMQ refuses 0 ("no limit") or more than offered; we say so
    (530, caused by connection.tune) and stop reading."""
    pair = ClientPair()
    authenticating(pair)
    pair.conn.accept_auth()
    pair.send(tune_ok(channel_max, frame_max, 60))
    err = raises(pair, errors.NotAllowed, 530)
    assert (err.class_id, err.method_id) == (10, 30)
    pair.conn.report(err, 0)
    assert pair.state is State.CLOSED


@pytest.mark.parametrize("frame_max", [1, 512, 4095])
def test_tune_ok_frame_max_below_minimum_is_530(frame_max: int) -> None:
    pair = ClientPair()
    authenticating(pair)
    pair.conn.accept_auth()
    pair.send(tune_ok(2047, frame_max, 60))
    raises(pair, errors.NotAllowed, 530)


def test_open_requested_then_open_ok() -> None:
    pair = ClientPair()
    authenticating(pair)
    pair.conn.accept_auth()
    pair.exchange(tune_ok())
    pair.output()
    assert pair.exchange(connection_open("prod")) == [OpenRequested("prod")]
    assert pair.state is State.OPENING
    assert pair.output() == b""
    pair.conn.accept_open()
    ((channel, ok),) = pair.frames()
    assert channel == 0 and isinstance(ok, commands.Connection.OpenOk)
    assert pair.state is State.OPEN


def test_handshake_helper_end_to_end() -> None:
    pair = ClientPair()
    pair.handshake()
    pair.open_channel(1)
    assert pair.conn.open_channels == [1]


def test_tune_ok_before_accept_auth_is_503() -> None:
    pair = ClientPair()
    authenticating(pair)
    pair.send(tune_ok())
    raises(pair, errors.CommandInvalid, 503)


def test_second_start_ok_is_503() -> None:
    pair = ClientPair()
    pair.handshake()
    pair.send(start_ok())
    raises(pair, errors.CommandInvalid, 503)


def test_channel_method_before_open_is_505() -> None:
    pair = ClientPair()
    authenticating(pair)
    pair.conn.accept_auth()
    pair.exchange(tune_ok())
    pair.send(channel_open(1))
    raises(pair, errors.UnexpectedFrame, 505)


def test_non_connection_method_on_channel_0_is_504() -> None:
    """RabbitMQ: 504 "unexpected method in connection state running"."""
    pair = ClientPair()
    pair.handshake()
    pair.send(method_frame(0, commands.Basic.Qos(prefetch_count=1)))
    error = raises(pair, errors.ChannelErrorHard, 504)
    assert (error.class_id, error.method_id) == (60, 10)


def test_heartbeat_on_channel_0_is_silent() -> None:
    pair = opened()
    assert pair.exchange(heartbeat(0), heartbeat(0)) == []
    assert pair.output() == b""


def test_update_secret_is_answered() -> None:
    pair = opened()
    assert (
        pair.exchange(
            method_frame(
                0, commands.Connection.UpdateSecret(new_secret="x", reason="r")
            )
        )
        == []
    )
    ((channel, ok),) = pair.frames()
    assert channel == 0 and isinstance(ok, commands.Connection.UpdateSecretOk)


# ------------------------------------------------------ protocol header


@pytest.mark.parametrize(
    "header",
    [
        b"AMQP\x00\x00\x08\x00",
        b"GET / HTTP/1.1\r\n",
        b"AMQP\x01\x01\x00\x09",
        b"AMQP\x00\x00\x09\x00",
        b"\x00" * 8,
    ],
)
def test_bad_protocol_header(header: bytes) -> None:
    pair = ClientPair()
    (event,) = pair.exchange(header)
    assert event == BadProtocolHeader(header[:8])
    assert pair.output() == b"AMQP\x00\x00\x09\x01"
    assert pair.state is State.CLOSED
    # Nothing more is parsed, whatever follows.
    assert pair.exchange(handshake_bytes()) == []
    assert pair.output() == b""


# ------------------------------------------------------ content assembly


def test_publish_header_body_becomes_one_event() -> None:
    pair = opened()
    props = commands.Basic.Properties(
        content_type="text/plain", delivery_mode=2
    )
    (event,) = pair.exchange(
        publish_frames(
            1,
            b"hello",
            exchange="amq.direct",
            routing_key="rk",
            properties=props,
            mandatory=True,
        )
    )
    assert isinstance(event, ContentReceived)
    assert event.channel == 1
    assert event.exchange == "amq.direct"
    assert event.routing_key == "rk"
    assert event.mandatory is True
    assert event.immediate is False
    assert event.body == b"hello"
    assert event.properties == props.marshal()
    assert codec.decode_properties(event.properties) == props
    assert pair.output() == b""


def test_publish_frames_one_at_a_time() -> None:
    pair = opened()
    data = publish_frames(1, b"abc")
    pieces = []
    pos = 0
    while pos < len(data):
        size = struct.unpack_from(">I", data, pos + 3)[0]
        pieces.append(data[pos : pos + size + 8])
        pos += size + 8
    assert len(pieces) == 3
    assert pair.exchange(pieces[0]) == []
    assert pair.exchange(pieces[1]) == []
    (event,) = pair.exchange(pieces[2])
    assert event.body == b"abc"


def test_body_split_across_many_frames() -> None:
    pair = opened()
    body = bytes(range(256)) * 100  # 25600 bytes
    data = publish_frames(1, body, frame_max=4096)
    assert data.count(b"\xce\x03\x00\x01") >= 6  # many body frames
    (event,) = pair.exchange(data)
    assert event.body == body


def test_body_in_tiny_frames() -> None:
    pair = opened()
    body = b"0123456789"
    frames = [
        method_frame(1, commands.Basic.Publish(routing_key="q")),
        content_header(1, len(body)),
        *(content_body(1, body[i : i + 1]) for i in range(len(body))),
    ]
    events = []
    for frame in frames:
        events += pair.exchange(frame)
    (event,) = events
    assert event.body == body


def test_zero_size_body_needs_no_body_frame() -> None:
    pair = opened()
    (event,) = pair.exchange(
        method_frame(1, commands.Basic.Publish(routing_key="q")),
        content_header(1, 0),
    )
    assert isinstance(event, ContentReceived)
    assert event.body == b""
    # The next publish is independent.
    (event,) = pair.exchange(publish_frames(1, b"x"))
    assert event.body == b"x"


def test_publishes_interleaved_on_two_channels() -> None:
    pair = opened()
    pair.open_channel(2)
    events = pair.exchange(
        method_frame(1, commands.Basic.Publish(routing_key="a")),
        method_frame(2, commands.Basic.Publish(routing_key="b")),
        content_header(2, 2),
        content_header(1, 2),
        content_body(1, b"1"),
        content_body(2, b"22"),
        content_body(1, b"1"),
    )
    assert [(e.channel, e.routing_key, e.body) for e in events] == [
        (2, "b", b"22"),
        (1, "a", b"11"),
    ]


def test_many_publishes_in_one_read() -> None:
    pair = opened()
    data = b"".join(publish_frames(1, str(i).encode()) for i in range(50))
    events = pair.exchange(data)
    assert [e.body for e in events] == [str(i).encode() for i in range(50)]


def test_other_methods_become_method_received() -> None:
    pair = opened()
    (event,) = pair.exchange(
        method_frame(1, commands.Basic.Ack(delivery_tag=7, multiple=True))
    )
    assert isinstance(event, MethodReceived) and event.channel == 1
    assert isinstance(event.method, commands.Basic.Ack)
    assert (event.method.delivery_tag, event.method.multiple) == (7, True)


def test_header_without_method_is_505() -> None:
    pair = opened()
    pair.send(content_header(1, 3))
    raises(pair, errors.UnexpectedFrame, 505)


def test_body_without_method_is_505() -> None:
    pair = opened()
    pair.send(content_body(1, b"abc"))
    raises(pair, errors.UnexpectedFrame, 505)


def test_body_without_header_is_505() -> None:
    pair = opened()
    pair.send(
        method_frame(1, commands.Basic.Publish(routing_key="q")),
        content_body(1, b"abc"),
    )
    raises(pair, errors.UnexpectedFrame, 505)


def test_method_after_publish_before_header_is_505() -> None:
    pair = opened()
    pair.send(
        method_frame(1, commands.Basic.Publish(routing_key="q")),
        method_frame(1, commands.Basic.Qos(prefetch_count=1)),
    )
    raises(pair, errors.UnexpectedFrame, 505)


def test_method_in_the_middle_of_the_body_is_505() -> None:
    pair = opened()
    pair.send(
        method_frame(1, commands.Basic.Publish(routing_key="q")),
        content_header(1, 10),
        content_body(1, b"12345"),
        method_frame(1, commands.Basic.Publish(routing_key="q")),
    )
    raises(pair, errors.UnexpectedFrame, 505)


def test_second_header_is_505() -> None:
    pair = opened()
    pair.send(
        method_frame(1, commands.Basic.Publish(routing_key="q")),
        content_header(1, 10),
        content_header(1, 10),
    )
    raises(pair, errors.UnexpectedFrame, 505)


def test_header_for_another_class_is_505() -> None:
    pair = opened()
    payload = struct.pack(">HHQH", 50, 0, 3, 0)
    pair.send(
        method_frame(1, commands.Basic.Publish(routing_key="q")),
        raw_frame(2, 1, payload),
    )
    raises(pair, errors.UnexpectedFrame, 505)


def test_content_frames_on_channel_0_are_505() -> None:
    pair = opened()
    pair.send(content_header(0, 3))
    raises(pair, errors.UnexpectedFrame, 505)


def test_content_on_channel_never_opened_is_504() -> None:
    pair = opened()
    pair.send(content_header(5, 3))
    raises(pair, errors.ChannelErrorHard, 504)


def test_body_larger_than_declared_is_505() -> None:
    pair = opened()
    pair.send(
        method_frame(1, commands.Basic.Publish(routing_key="q")),
        content_header(1, 3),
        content_body(1, b"abcd"),
    )
    err = raises(pair, errors.UnexpectedFrame, 505)
    assert (err.class_id, err.method_id) == (60, 40)
    assert pair.events() == []


def test_body_larger_than_declared_over_two_frames_is_505() -> None:
    pair = opened()
    pair.send(
        method_frame(1, commands.Basic.Publish(routing_key="q")),
        content_header(1, 3),
        content_body(1, b"ab"),
        content_body(1, b"cd"),
    )
    raises(pair, errors.UnexpectedFrame, 505)


def test_truncated_content_header_is_502() -> None:
    pair = opened()
    pair.send(
        method_frame(1, commands.Basic.Publish(routing_key="q")),
        raw_frame(2, 1, struct.pack(">HHQ", 60, 0, 3)),
    )
    raises(pair, errors.SyntaxError_, 502)


def test_message_over_max_size_is_406_and_the_connection_goes_on() -> None:
    pair = opened(max_message_size=100)
    pair.open_channel(2)
    pair.send(publish_frames(1, b"x" * 101))
    error = raises(pair, errors.PreconditionFailed, 406)
    assert error.channel == 1
    assert not error.hard
    assert (error.class_id, error.method_id) == (60, 40)
    assert "101" in error.text and "100" in error.text
    # The broker reports it: channel.close on channel 1 only.
    pair.conn.report(error, error.channel)
    ((channel, close),) = pair.methods()
    assert channel == 1 and isinstance(close, commands.Channel.Close)
    assert close.reply_code == 406
    assert close.reply_text.startswith("PRECONDITION_FAILED - ")
    assert (close.class_id, close.method_id) == (60, 40)
    assert pair.state is State.OPEN
    # The rest of the refused message (its body frame) is discarded ...
    assert pair.events() == []
    # ... and channel 2 still works.
    (event,) = pair.exchange(publish_frames(2, b"y" * 100))
    assert (event.channel, event.body) == (2, b"y" * 100)
    # Close-ok frees channel 1, which can be opened again.
    assert pair.exchange(method_frame(1, commands.Channel.CloseOk())) == [
        ChannelClosed(1)
    ]
    pair.open_channel(1)
    (event,) = pair.exchange(publish_frames(1, b"z"))
    assert event.body == b"z"


def test_message_of_exactly_max_size_is_accepted() -> None:
    pair = opened(max_message_size=100)
    (event,) = pair.exchange(publish_frames(1, b"x" * 100))
    assert len(event.body) == 100


# --------------------------------------------------------- frame errors


def test_bad_frame_end_is_501_and_parsing_stops() -> None:
    pair = opened()
    pair.send(raw_frame(1, 1, b"\x00\x3c\x00\x50" + b"\x00" * 9, end=0xCD))
    raises(pair, errors.FrameError, 501)
    # The stream is unusable: no re-raise loop, no parsing of what follows.
    assert pair.next_event() is None
    assert pair.next_event() is None
    pair.send(publish_frames(1, b"after"))
    assert pair.events() == []


def test_bad_frame_end_with_error_reported_does_not_spin() -> None:
    """What core.session does: report, then call next_event() again."""
    pair = opened()
    pair.send(
        raw_frame(1, 1, b"\x00" * 4, end=0x00),
        method_frame(0, commands.Connection.CloseOk()),
    )
    with pytest.raises(errors.FrameError) as info:
        pair.next_event()
    pair.conn.report(info.value, 0)
    ((_, close),) = pair.methods()
    assert (
        isinstance(close, commands.Connection.Close)
        and close.reply_code == 501
    )
    # Framing is lost: the socket closes once the close is written.
    assert pair.state is State.CLOSED
    for _ in range(3):
        assert pair.next_event() is None


def test_oversized_frame_refused_from_its_header_alone() -> None:
    pair = opened()
    # Only the 7-byte header, announcing ~2 GiB: must raise right away.
    pair.send(struct.pack(">BHI", 3, 1, 0x7FFFFFF0))
    raises(pair, errors.FrameError, 501)
    assert pair.conn._reader.buffered <= 7
    assert pair.next_event() is None
    pair.send(b"\x00" * 10000)
    assert pair.next_event() is None


def test_oversized_frame_before_tune_uses_min_frame_size() -> None:
    pair = ClientPair()
    pair.exchange(PROTOCOL_HEADER)
    pair.send(struct.pack(">BHI", 1, 0, 4096 - 7))
    raises(pair, errors.FrameError, 501)


def test_frame_of_exactly_frame_max_is_accepted() -> None:
    pair = opened(frame_max=4096)
    body = b"b" * (4096 - 8)
    frame = content_body(1, body)
    assert len(frame) == 4096
    (event,) = pair.exchange(
        method_frame(1, commands.Basic.Publish(routing_key="q")),
        content_header(1, len(body)),
        frame,
    )
    assert event.body == body


@pytest.mark.parametrize("ftype", [0, 4, 5, 7, 9, 255])
def test_unknown_frame_type_is_501(ftype: int) -> None:
    pair = opened()
    pair.send(raw_frame(ftype, 1, b"abc"))
    raises(pair, errors.FrameError, 501)
    assert pair.next_event() is None


def test_heartbeat_on_a_channel_is_505() -> None:
    pair = opened()
    pair.send(heartbeat(1))
    raises(pair, errors.UnexpectedFrame, 505)


def test_method_on_channel_never_opened_is_504() -> None:
    pair = opened()
    pair.send(method_frame(3, commands.Basic.Qos(prefetch_count=1)))
    error = raises(pair, errors.ChannelErrorHard, 504)
    assert error.hard


def test_second_channel_open_is_504() -> None:
    pair = opened()
    pair.send(channel_open(1))
    raises(pair, errors.ChannelErrorHard, 504)


def test_more_channels_than_channel_max_is_530() -> None:
    pair = ClientPair()
    pair.handshake(channel_max=2)
    assert pair.conn.channel_max == 2
    pair.open_channel(1)
    pair.open_channel(2)
    pair.send(channel_open(3))
    raises(pair, errors.NotAllowed, 530)


def test_channel_max_counts_open_channels() -> None:
    pair = ClientPair()
    pair.handshake(channel_max=2)
    pair.open_channel(1)
    pair.open_channel(2)
    assert pair.exchange(method_frame(2, commands.Channel.Close(200, "", 0, 0))) == [
        ChannelClosed(2)
    ]
    pair.output()
    pair.open_channel(2)
    pair.send(channel_open(1))
    raises(pair, errors.ChannelErrorHard, 504)


def test_channel_ids_above_channel_max_are_fine_while_few_are_open() -> None:
    """The limit counts open channels, not ids (rabbitmq-traps.md)."""
    pair = ClientPair()
    pair.handshake(channel_max=2)
    pair.open_channel(1)
    pair.open_channel(65535)
    pair.send(channel_open(7))
    raises(pair, errors.NotAllowed, 530)


@pytest.mark.parametrize(
    ("class_id", "method_id"),
    [(60, 99), (99, 10), (0, 0), (10, 12), (65535, 65535)],
)
def test_unknown_class_or_method_is_540(class_id: int, method_id: int) -> None:
    pair = opened()
    pair.send(
        raw_frame(1, 1, struct.pack(">HH", class_id, method_id) + b"\x00" * 8)
    )
    raises(pair, errors.NotImplemented_, 540)


def test_method_shorter_than_its_ids_is_502() -> None:
    pair = opened()
    pair.send(raw_frame(1, 1, b"\x00\x3c"))
    raises(pair, errors.SyntaxError_, 502)


@pytest.mark.parametrize(
    "payload",
    [
        b"\x00\x3c\x00\x28\x00\x00\x05ab",  # basic.publish, exchange cut short
        b"\x00\x3c\x00\x28\x00\x00\x02\xff\xfe\x00\x00",  # not UTF-8
        b"\x00\x3c\x00\x28\x00\x00\x00\x00",  # no flag octet
        b"\x00\x32\x00\x0a\x00\x00\x03abc\x00\x00\x00\x00\x10",  # table cut
        b"\x00\x3c\x00\x50\x00\x00",  # basic.ack cut
        b"\x00\x14\x00\x28\x00\x00\x10",  # channel.close cut
    ],
)
def test_undecodable_method_fields_are_501(payload: bytes) -> None:
    """RabbitMQ: 501 FRAME_ERROR "cannot decode ..." naming the method;
    like every 501, the socket closes right after the close (no close-ok
    wait)."""
    pair = opened()
    pair.send(raw_frame(1, 1, payload))
    error = raises(pair, errors.FrameError, 501)
    assert "cannot decode" in error.text
    assert (error.class_id, error.method_id) == struct.unpack(
        ">HH", payload[:4]
    )
    pair.conn.report(error, 0)
    ((_, close),) = pair.methods()
    assert close.reply_code == 501
    assert pair.state is State.CLOSED
    assert pair.exchange(method_frame(0, commands.Connection.CloseOk())) == []


def test_unknown_field_table_type_is_502() -> None:
    pair = opened()
    table = b"\x01kZ\x00"
    payload = (
        struct.pack(">HHH", 50, 10, 0)
        + b"\x00\x04"
        + struct.pack(">I", len(table))
        + table
    )
    pair.send(raw_frame(1, 1, payload))
    raises(pair, errors.SyntaxError_, 502)


def test_errors_are_amqp_errors_with_a_connection_close() -> None:
    pair = opened()
    pair.send(heartbeat(1))
    with pytest.raises(errors.AMQPError) as info:
        pair.next_event()
    assert info.value.channel is None
    pair.conn.report(info.value, 0)
    ((channel, close),) = pair.methods()
    assert channel == 0 and isinstance(close, commands.Connection.Close)
    assert close.reply_code == 505
    assert close.reply_text.startswith("UNEXPECTED_FRAME - ")


# ------------------------------------------------------ close handshakes


def test_peer_connection_close() -> None:
    pair = opened()
    (event,) = pair.exchange(
        method_frame(0, commands.Connection.Close(200, "bye", 0, 0))
    )
    assert event == ConnectionClosed(200, "bye", True)
    ((channel, ok),) = pair.methods()
    assert channel == 0 and isinstance(ok, commands.Connection.CloseOk)
    assert pair.state is State.CLOSED
    assert pair.exchange(publish_frames(1, b"late")) == []


def test_peer_connection_close_during_handshake() -> None:
    pair = ClientPair()
    pair.exchange(PROTOCOL_HEADER)
    pair.output()
    (event,) = pair.exchange(
        method_frame(0, commands.Connection.Close(320, "gone", 0, 0))
    )
    assert event == ConnectionClosed(320, "gone", True)
    assert pair.state is State.CLOSED


def test_our_connection_close_discards_until_close_ok() -> None:
    pair = opened()
    pair.conn.close_connection(errors.NotFound("no queue 'q' in vhost '/'"))
    ((channel, close),) = pair.methods()
    assert channel == 0 and isinstance(close, commands.Connection.Close)
    assert close.reply_code == 404
    assert close.reply_text == "NOT_FOUND - no queue 'q' in vhost '/'"
    assert pair.state is State.CLOSING
    # Everything but close/close-ok is dropped, errors included.
    assert (
        pair.exchange(
            publish_frames(1, b"x"),
            method_frame(1, commands.Basic.Qos(prefetch_count=1)),
            method_frame(7, commands.Basic.Qos(prefetch_count=1)),
            content_body(3, b"junk"),
            heartbeat(0),
            raw_frame(1, 0, b"\x00\x0a\x00\x99"),
            method_frame(0, commands.Connection.Open()),
        )
        == []
    )
    assert pair.output() == b""
    (event,) = pair.exchange(method_frame(0, commands.Connection.CloseOk()))
    assert event == ConnectionClosed(
        404, "NOT_FOUND - no queue 'q' in vhost '/'", False
    )
    assert pair.state is State.CLOSED
    assert pair.output() == b""


def test_peer_close_crossing_ours() -> None:
    pair = opened()
    pair.conn.close_connection(errors.ConnectionForced("shutdown"))
    pair.output()
    (event,) = pair.exchange(
        method_frame(0, commands.Connection.Close(200, "", 0, 0))
    )
    assert event.by_peer is False and event.reply_code == 320
    ((_, ok),) = pair.methods()
    assert isinstance(ok, commands.Connection.CloseOk)
    assert pair.state is State.CLOSED


def test_close_connection_twice_sends_one_close() -> None:
    pair = opened()
    pair.conn.close_connection(errors.ConnectionForced("a"))
    pair.conn.close_connection(errors.ConnectionForced("b"))
    assert len(pair.methods()) == 1


def test_close_connection_before_header_sends_nothing() -> None:
    pair = ClientPair()
    pair.conn.close_connection(errors.ConnectionForced("shutdown"))
    assert pair.state is State.CLOSED
    assert pair.output() == b""


def test_report_soft_error_on_channel_0_closes_connection() -> None:
    pair = opened()
    pair.conn.report(errors.NotFound("x"), 0)
    ((channel, close),) = pair.methods()
    assert channel == 0 and isinstance(close, commands.Connection.Close)
    assert pair.state is State.CLOSING


def test_report_hard_error_on_channel_closes_connection() -> None:
    pair = opened()
    pair.conn.report(errors.CommandInvalid("x"), 1)
    ((channel, close),) = pair.methods()
    assert channel == 0 and close.reply_code == 503


def test_peer_channel_close() -> None:
    pair = opened()
    (event,) = pair.exchange(
        method_frame(1, commands.Channel.Close(200, "ok", 0, 0))
    )
    assert event == ChannelClosed(1)
    ((channel, ok),) = pair.methods()
    assert channel == 1 and isinstance(ok, commands.Channel.CloseOk)
    assert not pair.conn.is_channel_open(1)
    pair.send(method_frame(1, commands.Basic.Qos(prefetch_count=1)))
    raises(pair, errors.ChannelErrorHard, 504)


def test_peer_channel_close_mid_content_then_reopen() -> None:
    pair = opened()
    pair.send(
        method_frame(1, commands.Basic.Publish(routing_key="q")),
        content_header(1, 10),
    )
    assert pair.events() == []
    assert pair.exchange(method_frame(1, commands.Channel.Close(200, "", 0, 0))) == [
        ChannelClosed(1)
    ]
    pair.output()
    pair.open_channel(1)
    (event,) = pair.exchange(publish_frames(1, b"fresh"))
    assert event.body == b"fresh"


def test_our_channel_close_discards_until_close_ok() -> None:
    pair = opened()
    pair.open_channel(2)
    pair.send(
        method_frame(1, commands.Basic.Publish(routing_key="q")),
        content_header(1, 10),
    )
    assert pair.events() == []
    pair.conn.close_channel(1, errors.NotFound("no exchange 'x' in vhost '/'"))
    ((channel, close),) = pair.methods()
    assert channel == 1 and isinstance(close, commands.Channel.Close)
    assert close.reply_code == 404
    assert close.reply_text == "NOT_FOUND - no exchange 'x' in vhost '/'"
    assert not pair.conn.is_channel_open(1)
    assert pair.conn.open_channels == [2]
    assert (
        pair.exchange(
            content_body(1, b"0123456789"),
            publish_frames(1, b"dropped"),
            method_frame(1, commands.Basic.Qos(prefetch_count=1)),
            channel_open(1),
            content_body(1, b"stray"),
        )
        == []
    )
    assert pair.output() == b""
    # Channel 2 is unaffected meanwhile.
    (event,) = pair.exchange(publish_frames(2, b"two"))
    assert event.channel == 2
    assert pair.exchange(method_frame(1, commands.Channel.CloseOk())) == [
        ChannelClosed(1)
    ]
    assert pair.output() == b""
    pair.open_channel(1)
    (event,) = pair.exchange(publish_frames(1, b"again"))
    assert (event.channel, event.body) == (1, b"again")


def test_our_channel_close_crossing_peer_close() -> None:
    pair = opened()
    pair.conn.close_channel(1, errors.NotFound("x"))
    pair.output()
    assert pair.exchange(method_frame(1, commands.Channel.Close(200, "", 0, 0))) == [
        ChannelClosed(1)
    ]
    ((channel, ok),) = pair.methods()
    assert channel == 1 and isinstance(ok, commands.Channel.CloseOk)
    pair.open_channel(1)


def test_close_channel_twice_sends_one_close() -> None:
    pair = opened()
    pair.conn.close_channel(1, errors.NotFound("a"))
    pair.conn.close_channel(1, errors.NotFound("b"))
    pair.conn.close_channel(9, errors.NotFound("not open"))
    assert len(pair.methods()) == 1


def test_reply_text_is_cut_to_255_bytes() -> None:
    pair = opened()
    pair.conn.close_channel(1, errors.NotFound("é" * 300))
    ((_, close),) = pair.methods()
    assert len(close.reply_text.encode("utf-8")) <= 255
    assert close.reply_text.startswith("NOT_FOUND - é")


# ------------------------------------------------------------ output


def test_send_helpers_and_data_to_send_drains() -> None:
    pair = opened()
    pair.conn.send_heartbeat()
    pair.conn.send_method(1, commands.Basic.QosOk())
    pair.conn.send_raw(codec.deliver_method(1, "ctag", 1, False, "", "q"))
    frames = pair.frames()
    assert [type(f).__name__ for _, f in frames] == [
        "Heartbeat",
        "QosOk",
        "Deliver",
    ]
    assert pair.output() == b""


def test_large_bodies_are_queued_in_order_without_a_copy() -> None:
    pair = opened()
    conn = pair.conn
    conn.send_raw(b"a")
    body = b"B" * 20000
    conn.add_body(body)
    conn.send_raw(b"c")
    conn.add_body(b"D" * 5)
    assert conn.output_size == 1 + 20000 + 1 + 5
    chunks = conn.take_output()
    assert chunks[1] is body  # the very object: not copied
    assert b"".join(chunks) == b"a" + body + b"c" + b"D" * 5
    assert conn.output_size == 0 and conn.take_output() == []
    conn.add_body(body)
    conn.send_raw(b"e")
    assert conn.data_to_send() == body + b"e"
    assert conn.output_size == 0


def test_publishes_to_one_destination_come_as_one_run() -> None:
    """Consecutive publishes whose method frames are identical (channel,
    exchange, key, flags) are one PublishRun, in order; a different key,
    channel or flag, or another frame between them, ends the run."""
    pair = opened()
    pair.open_channel(2)
    data = b"".join(
        [publish_frames(1, b"a%d" % i) for i in range(5)]
        + [publish_frames(2, b"b0")]
        + [method_frame(1, commands.Basic.Publish(routing_key="other")), content_header(1, 1),
           content_body(1, b"c")]
        + [publish_frames(1, b"d%d" % i) for i in range(3)]
    )
    pair.send(data)
    events = []
    while (event := pair.conn.next_event()) is not None:
        events.append(event)
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["PublishRun", "ContentReceived", "ContentReceived", "PublishRun"]
    first, last = events[0], events[3]
    assert isinstance(first, PublishRun) and isinstance(last, PublishRun)
    assert [body for _props, body in first.items] == [b"a%d" % i for i in range(5)]
    assert [body for _props, body in last.items] == [b"d%d" % i for i in range(3)]
    assert events[2].routing_key == "other"  # type: ignore[union-attr]


def test_a_run_stops_at_a_partial_message_and_resumes() -> None:
    pair = opened()
    data = b"".join(publish_frames(1, b"%03d" % i) for i in range(10))
    cut = len(data) - 5  # the last body frame is incomplete
    pair.send(data[:cut])
    got = pair.events()
    assert [e.body for e in got] == [b"%03d" % i for i in range(9)]  # type: ignore[union-attr]
    got = pair.exchange(data[cut:])
    assert [e.body for e in got] == [b"009"]  # type: ignore[union-attr]


def test_runs_are_bounded() -> None:
    from mqbroker.protocol.connection import PUBLISH_RUN_MAX

    pair = opened()
    pair.send(b"".join(publish_frames(1, b"x") for _ in range(PUBLISH_RUN_MAX + 3)))
    first = pair.conn.next_event()
    assert isinstance(first, PublishRun) and len(first.items) == PUBLISH_RUN_MAX
