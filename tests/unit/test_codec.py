"""codec.py by example: FrameReader, method/property decoding, and the
hand-packed outbound frames against pamqp's marshal."""

from __future__ import annotations

import datetime
import struct

import pytest
from pamqp import body as pamqp_body
from pamqp import commands
from pamqp import frame as pamqp_frame
from pamqp import header as pamqp_header
from protocol_helpers import attrs, content_frames

from mqbroker import errors
from mqbroker.protocol import codec
from support.frames import (
    content_body,
    content_header,
    method_frame,
    raw_frame,
)

# ----------------------------------------------------------- FrameReader


def test_reader_needs_seven_bytes_then_the_whole_frame() -> None:
    frame = method_frame(1, commands.Basic.Qos(prefetch_count=5))
    reader = codec.FrameReader(4096)
    for i in range(len(frame) - 1):
        reader.feed(frame[i : i + 1])
        assert reader.next_frame() is None
    reader.feed(frame[-1:])
    ftype, channel, payload = reader.next_frame()  # type: ignore[misc]
    assert (ftype, channel) == (1, 1)
    assert payload == frame[7:-1]
    assert reader.next_frame() is None
    assert reader.buffered == 0


def test_reader_returns_each_frame_once_in_order() -> None:
    frames = [
        method_frame(1, commands.Basic.Publish(routing_key="a")),
        content_header(1, 3),
        content_body(1, b"abc"),
        raw_frame(8, 0, b""),
    ]
    reader = codec.FrameReader(4096)
    reader.feed(b"".join(frames))
    got = list(codec.iter_frames(reader))
    assert [(t, c) for t, c, _ in got] == [(1, 1), (2, 1), (3, 1), (8, 0)]
    assert [p for _, _, p in got] == [f[7:-1] for f in frames]
    assert reader.next_frame() is None


def test_reader_keeps_a_partial_frame_across_feeds() -> None:
    a = content_body(2, b"x" * 100)
    b = content_body(2, b"y" * 50)
    reader = codec.FrameReader(4096)
    reader.feed(a + b[:20])
    assert reader.next_frame() == (3, 2, b"x" * 100)
    assert reader.next_frame() is None
    reader.feed(b[20:])
    assert reader.next_frame() == (3, 2, b"y" * 50)


def test_reader_take_for_the_protocol_header() -> None:
    reader = codec.FrameReader(4096)
    reader.feed(b"AMQP\x00\x00")
    assert reader.take(8) is None
    reader.feed(b"\x09\x01" + raw_frame(8, 0, b""))
    assert reader.take(8) == codec.PROTOCOL_HEADER
    assert reader.next_frame() == (8, 0, b"")


def test_reader_frame_max_boundary() -> None:
    reader = codec.FrameReader(4096)
    reader.feed(raw_frame(3, 1, b"z" * (4096 - 8)))
    assert reader.next_frame() == (3, 1, b"z" * 4088)
    reader = codec.FrameReader(4096)
    reader.feed(struct.pack(">BHI", 3, 1, 4096 - 7))
    with pytest.raises(errors.FrameError) as info:
        reader.next_frame()
    assert info.value.reply_code == 501


def test_reader_refuses_a_huge_frame_from_its_header() -> None:
    reader = codec.FrameReader(131072)
    reader.feed(b"\x03\x00\x01\xff\xff\xff\xff")
    with pytest.raises(errors.FrameError):
        reader.next_frame()


def test_reader_bad_frame_end() -> None:
    reader = codec.FrameReader(4096)
    reader.feed(raw_frame(1, 0, b"abcd", end=0xCF))
    with pytest.raises(errors.FrameError, match="0xcf"):
        reader.next_frame()


def test_reader_empty_frame() -> None:
    reader = codec.FrameReader(4096)
    reader.feed(raw_frame(3, 1, b""))
    assert reader.next_frame() == (3, 1, b"")


# ----------------------------------------------------------- decoding


def _payload(m: object) -> bytes:
    return method_frame(0, m)[7:-1]


def test_fast_publish_matches_pamqp() -> None:
    m = commands.Basic.Publish(
        exchange="amq.topic",
        routing_key="a.b.ç",
        mandatory=True,
        immediate=False,
    )
    got = codec.decode_method(_payload(m))
    assert isinstance(got, commands.Basic.Publish)
    assert attrs(got) == attrs(m)


def test_fast_publish_keeps_the_ticket_field() -> None:
    payload = b"\x00\x3c\x00\x28\x00\x07\x00\x01q\x03"
    got = codec.decode_method(payload)
    ref = commands.Basic.Publish()
    ref.unmarshal(payload[4:])
    assert attrs(got) == attrs(ref)
    assert (got.ticket, got.mandatory, got.immediate) == (7, True, True)


def test_fast_ack_matches_pamqp() -> None:
    for tag, multiple in [(0, True), (1, False), (2**63 - 1, True)]:
        m = commands.Basic.Ack(delivery_tag=tag, multiple=multiple)
        got = codec.decode_method(_payload(m))
        assert isinstance(got, commands.Basic.Ack)
        assert attrs(got) == attrs(m)


def test_fast_ack_reads_the_tag_unsigned() -> None:
    """AMQP longlong is unsigned; pamqp decodes it signed (``>q``), so here
    (and only for tags >= 2**63, which the broker never issues) the fast
    path deliberately differs from pamqp."""
    payload = b"\x00\x3c\x00\x50" + struct.pack(">QB", 2**64 - 1, 0)
    assert codec.decode_method(payload).delivery_tag == 2**64 - 1


def test_ack_with_a_trailing_byte_takes_the_pamqp_path() -> None:
    payload = (
        _payload(commands.Basic.Ack(delivery_tag=5, multiple=True)) + b"\x00"
    )
    got = codec.decode_method(payload)
    assert (got.delivery_tag, got.multiple) == (5, True)


@pytest.mark.parametrize(
    "m",
    [
        commands.Queue.Declare(
            queue="q", durable=True, arguments={"x-max-length": 10}
        ),
        commands.Basic.Consume(queue="q", consumer_tag="c", no_ack=True),
        commands.Basic.Nack(delivery_tag=3, multiple=False, requeue=True),
        commands.Connection.TuneOk(
            channel_max=10, frame_max=4096, heartbeat=0
        ),
        commands.Exchange.Bind(destination="a", source="b", routing_key="k"),
        commands.Channel.Flow(active=True),
    ],
)
def test_other_methods_decode_like_pamqp(m: object) -> None:
    got = codec.decode_method(_payload(m))
    assert type(got) is type(m)
    assert attrs(got) == attrs(m)


def test_unknown_method_is_540() -> None:
    with pytest.raises(errors.NotImplemented_) as info:
        codec.decode_method(b"\x00\x3c\x00\x63")
    assert info.value.reply_code == 540


def test_method_shorter_than_its_ids_is_502() -> None:
    for payload in (b"", b"\x00\x3c\x00"):
        with pytest.raises(errors.SyntaxError_) as info:
            codec.decode_method(payload)
        assert info.value.reply_code == 502


@pytest.mark.parametrize(
    ("payload", "ids"),
    [
        (b"\x00\x3c\x00\x28", (60, 40)),
        (b"\x00\x3c\x00\x28\x00\x00\x09abc", (60, 40)),
        (b"\x00\x3c\x00\x28\x00\x00\x01\xc3\x00\x00", (60, 40)),  # not UTF-8
        (b"\x00\x3c\x00\x50\x00", (60, 80)),
        (b"\x00\x0a\x00\x0b\x00\x00\x00\x10", (10, 11)),
        (b"\x00\x32\x00\x0a\x00", (50, 10)),
    ],
)
def test_undecodable_fields_are_501_cannot_decode(
    payload: bytes, ids: tuple[int, int]
) -> None:
    """RabbitMQ: 501 FRAME_ERROR "cannot decode ...", naming the method."""
    with pytest.raises(errors.FrameError) as info:
        codec.decode_method(payload)
    assert info.value.reply_code == 501
    assert "cannot decode" in info.value.text
    assert (info.value.class_id, info.value.method_id) == ids


def test_unknown_field_table_type_is_502() -> None:
    table = b"\x01kZ\x00"  # key "k", undefined type tag 'Z'
    payload = (
        struct.pack(">HHH", 50, 10, 0)
        + b"\x00\x04"
        + struct.pack(">I", len(table))
        + table
    )
    with pytest.raises(errors.SyntaxError_) as info:
        codec.decode_method(payload)
    assert info.value.reply_code == 502


def _nested_table(depth: int) -> bytes:
    value = b"F" + struct.pack(">I", 0)
    for _ in range(depth):
        entry = b"\x01k" + value
        value = b"F" + struct.pack(">I", len(entry)) + entry
    return value[1:]


def test_deeply_nested_table_is_an_amqp_error_not_recursion_error() -> None:
    """A 30 KB start-ok whose client_properties nest 5000 tables deep: the
    decoder recurses, and that must surface as an AMQP error."""
    table = _nested_table(5000)
    payload = (
        b"\x00\x0a\x00\x0b"
        + table
        + b"\x05PLAIN"
        + struct.pack(">I", 0)
        + b"\x05en_US"
    )
    assert len(payload) < 131072
    with pytest.raises(errors.AMQPError) as info:
        codec.decode_method(payload)
    assert info.value.hard and info.value.reply_code in (501, 502)
    with pytest.raises(errors.SyntaxError_):
        codec.decode_properties(struct.pack(">H", 0x2000) + table)


def test_split_content_header() -> None:
    props = commands.Basic.Properties(app_id="x")
    payload = content_header(1, 12345, props)[7:-1]
    assert codec.split_content_header(payload) == (60, 12345, props.marshal())
    with pytest.raises(errors.SyntaxError_):
        codec.split_content_header(payload[:13])


def _pamqp_properties(raw: bytes) -> commands.Basic.Properties:
    ch = pamqp_header.ContentHeader()
    ch.unmarshal(struct.pack(">HHQ", 60, 0, 0) + raw)
    return ch.properties


def test_decode_properties_all_fields() -> None:
    props = commands.Basic.Properties(
        content_type="application/json",
        content_encoding="gzip",
        headers={"a": 1, "b": "two", "c": True, "d": {"e": -5}, "f": [1, "x"]},
        delivery_mode=2,
        priority=9,
        correlation_id="corr",
        reply_to="amq.rabbitmq.reply-to",
        expiration="60000",
        message_id="m1",
        timestamp=datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
        message_type="t",
        user_id="guest",
        app_id="app",
    )
    raw = props.marshal()
    got = codec.decode_properties(raw)
    assert got == props
    assert got == _pamqp_properties(raw)
    assert codec.encode_properties(got) == raw


def test_decode_properties_empty() -> None:
    got = codec.decode_properties(b"\x00\x00")
    assert got == commands.Basic.Properties()
    assert got.headers is None and got.cluster_id == ""


def test_decode_properties_with_a_continuation_flag_word() -> None:
    # Word 1 has the continuation bit; word 2 carries no known flags.
    raw = struct.pack(">HH", 0x8000 | 1, 0) + b"\x04text"
    got = codec.decode_properties(raw)
    assert got.content_type == "text"
    assert got == _pamqp_properties(raw)


@pytest.mark.parametrize("raw", [b"", b"\x00", b"\x80\x00", b"\x00\x01"])
def test_decode_properties_truncated_is_502(raw: bytes) -> None:
    with pytest.raises(errors.SyntaxError_):
        codec.decode_properties(raw)


# ----------------------------------------------------------- encoding


def _body_frames(frames: list[bytes]) -> list[tuple[int, object]]:
    return [pamqp_frame.unmarshal(f)[1:] for f in frames]


def test_content_frames_empty_body_has_no_body_frame() -> None:
    props = commands.Basic.Properties(delivery_mode=1).marshal()
    frames = content_frames(3, props, b"", 4096)
    assert len(frames) == 1
    ((channel, head),) = _body_frames(frames)
    assert channel == 3
    assert isinstance(head, pamqp_header.ContentHeader)
    assert head.body_size == 0 and head.properties.delivery_mode == 1


def test_content_frames_header_matches_pamqp() -> None:
    props = commands.Basic.Properties(content_type="a/b", headers={"x": 1})
    frames = content_frames(1, props.marshal(), b"body", 4096)
    assert frames[0] == pamqp_frame.marshal(
        pamqp_header.ContentHeader(0, 4, props), 1
    )
    assert frames[1] == pamqp_frame.marshal(pamqp_body.ContentBody(b"body"), 1)


@pytest.mark.parametrize(
    ("size", "count"), [(1, 1), (4088, 1), (4089, 2), (8176, 2), (8177, 3)]
)
def test_content_frames_split_at_frame_max(size: int, count: int) -> None:
    body = bytes(i % 251 for i in range(size))
    frames = content_frames(1, b"\x00\x00", body, 4096)
    assert len(frames) == 1 + count
    assert all(len(f) <= 4096 for f in frames)
    assert b"".join(f[7:-1] for f in frames[1:]) == body


def test_deliver_matches_pamqp() -> None:
    ref = pamqp_frame.marshal(
        commands.Basic.Deliver(
            consumer_tag="ctag-1",
            delivery_tag=42,
            redelivered=True,
            exchange="amq.topic",
            routing_key="a.b",
        ),
        5,
    )
    assert (
        codec.deliver_method(5, "ctag-1", 42, True, "amq.topic", "a.b") == ref
    )


def test_get_ok_matches_pamqp() -> None:
    ref = pamqp_frame.marshal(
        commands.Basic.GetOk(
            delivery_tag=1,
            redelivered=False,
            exchange="",
            routing_key="q",
            message_count=9,
        ),
        1,
    )
    assert codec.get_ok_method(1, 1, False, "", "q", 9) == ref


def test_return_matches_pamqp() -> None:
    ref = pamqp_frame.marshal(
        commands.Basic.Return(
            reply_code=312,
            reply_text="NO_ROUTE",
            exchange="x",
            routing_key="k",
        ),
        2,
    )
    assert codec.return_method(2, 312, "NO_ROUTE", "x", "k") == ref


def test_queue_declare_ok_matches_pamqp() -> None:
    ref = pamqp_frame.marshal(
        commands.Queue.DeclareOk(
            queue="amq.gen-abc", message_count=3, consumer_count=1
        ),
        1,
    )
    assert codec.queue_declare_ok(1, "amq.gen-abc", 3, 1) == ref


def test_utf8_names_pamqp_would_refuse_still_encode() -> None:
    """pamqp refuses to *build* these (validate()), but RabbitMQ accepts
    them at declare, so delivery must not break; pamqp still decodes."""
    with pytest.raises(ValueError):
        commands.Basic.Deliver(exchange="café")
    data = codec.deliver_method(1, "c", 1, False, "café", "rk")
    _, channel, m = pamqp_frame.unmarshal(data)
    assert channel == 1
    assert (m.exchange, m.routing_key) == ("café", "rk")
    long_name = "x" * 200
    data = codec.get_ok_method(1, 1, False, long_name, "rk", 0)
    assert pamqp_frame.unmarshal(data)[2].exchange == long_name


def test_over_long_shortstr_is_cut_on_a_character_boundary() -> None:
    name = "é" * 200  # 400 bytes
    data = codec.deliver_method(1, "c", 1, False, name, "rk")
    _, _, m = pamqp_frame.unmarshal(data)
    assert name.startswith(m.exchange)
    assert len(m.exchange.encode("utf-8")) <= 255
    assert m.routing_key == "rk"


def test_method_frame_is_pamqp_marshal() -> None:
    m = commands.Basic.ConsumeOk(consumer_tag="t")
    assert codec.method_frame(4, m) == pamqp_frame.marshal(m, 4)


def test_heartbeat_frame() -> None:
    _, channel, frame = pamqp_frame.unmarshal(codec.HEARTBEAT_FRAME)
    assert channel == 0 and type(frame).__name__ == "Heartbeat"


def test_decode_table() -> None:
    from pamqp import encode

    assert codec.decode_table(
        encode.field_table({"a": 1, "b": {"c": "d"}})
    ) == {
        "a": 1,
        "b": {"c": "d"},
    }
