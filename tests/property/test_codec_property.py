"""The codec and the connection against pamqp, and against themselves under
random cuts of the byte stream (architecture.md, house rule 9).

- Hand-packed outbound frames (deliver, get-ok, return, declare-ok) are
  byte-for-byte pamqp's marshal wherever pamqp can build the method.
- The publish/ack fast paths decode like pamqp; properties decode like
  pamqp's content header.
- ``write_content`` reassembles to the body, every frame within frame_max;
  ``write_delivery`` (pre-encoded prefix and suffix, tag packed per
  message) is byte-for-byte pamqp's deliver + content header + body.
- ``FrameReader.next_publish`` (the one-pass publish decoder) agrees with
  pamqp on every publish it accepts, and declines (None, nothing consumed)
  every truncated or altered stream, leaving it to the general path.
- FrameReader returns every frame of a valid stream exactly once however it
  is cut, and on garbage returns None, frames, or an AMQPError; so does
  ``decode_method`` on random payloads.
- ServerConnection yields the same events whether a client stream arrives
  all at once, cut at random points, or one byte at a time; and on random
  frames it only ever raises AMQPError and always stops.
"""

from __future__ import annotations

import datetime
import random
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp import body as pamqp_body
from pamqp import commands, constants
from pamqp import frame as pamqp_frame
from pamqp import header as pamqp_header

from mqbroker import errors
from mqbroker.protocol import codec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "unit"))
from protocol_helpers import (
    ClientPair,
    attrs,
    content_frames,
    handshake_bytes,
    run_stream,
)

from support.frames import (
    channel_open,
    content_body,
    content_header,
    heartbeat,
    method_frame,
    publish_frames,
    raw_frame,
)

# pamqp warns when it instantiates a deprecated method (basic.recover-async)
# that a random payload named.
pytestmark = pytest.mark.filterwarnings(
    "ignore:This command is deprecated:DeprecationWarning"
)

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FEW = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ------------------------------------------------------------ strategies

# pamqp's own allowed characters for exchange and queue names
# (constants.DOMAIN_REGEX); a superset of [a-zA-Z0-9-_.:].
NAME_CHARS = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:@#,/+ "
)
exchange_names = st.text(alphabet=NAME_CHARS, max_size=127)
queue_names = st.text(alphabet=NAME_CHARS, max_size=255)


def _fits_shortstr(s: str) -> bool:
    return len(s.encode("utf-8")) <= 255


shortstrs = st.text(max_size=100).filter(_fits_shortstr)
long_shortstrs = st.text(min_size=60, max_size=255).filter(_fits_shortstr)
any_shortstr = shortstrs | long_shortstrs
delivery_tags = st.integers(0, 2**63 - 1)  # pamqp encodes longlong signed
uint32 = st.integers(0, 2**32 - 1)

table_keys = st.text(max_size=20).filter(_fits_shortstr)
table_scalars = (
    st.text(max_size=30) | st.integers(-(2**63), 2**63 - 1) | st.booleans()
)
table_values = st.recursive(
    table_scalars,
    lambda inner: (
        st.dictionaries(table_keys, inner, max_size=4)
        | st.lists(inner, max_size=4)
    ),
    max_leaves=12,
)
headers = st.dictionaries(table_keys, table_values, max_size=6)
timestamps = st.integers(0, 4102444800).map(
    lambda s: datetime.datetime.fromtimestamp(s, tz=datetime.UTC)
)


def _opt(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


properties = st.builds(
    commands.Basic.Properties,
    content_type=_opt(shortstrs),
    content_encoding=_opt(shortstrs),
    headers=_opt(headers),
    delivery_mode=_opt(st.sampled_from([1, 2])),
    priority=_opt(st.integers(0, 255)),
    correlation_id=_opt(shortstrs),
    reply_to=_opt(shortstrs),
    expiration=_opt(st.integers(0, 10**9).map(str)),
    message_id=_opt(shortstrs),
    timestamp=_opt(timestamps),
    message_type=_opt(shortstrs),
    user_id=_opt(shortstrs),
    app_id=_opt(shortstrs),
)


# ------------------------------------------- outbound frames vs pamqp


@SETTINGS
@given(
    channel=st.integers(0, 65535),
    consumer_tag=any_shortstr,
    delivery_tag=delivery_tags,
    redelivered=st.booleans(),
    exchange=exchange_names,
    routing_key=any_shortstr,
)
def test_deliver_is_pamqp_marshal(
    channel: int,
    consumer_tag: str,
    delivery_tag: int,
    redelivered: bool,
    exchange: str,
    routing_key: str,
) -> None:
    assert constants.DOMAIN_REGEX["exchange-name"].fullmatch(exchange)
    ref = pamqp_frame.marshal(
        commands.Basic.Deliver(
            consumer_tag=consumer_tag,
            delivery_tag=delivery_tag,
            redelivered=redelivered,
            exchange=exchange,
            routing_key=routing_key,
        ),
        channel,
    )
    got = codec.deliver_method(
        channel, consumer_tag, delivery_tag, redelivered, exchange, routing_key
    )
    assert got == ref


@SETTINGS
@given(
    channel=st.integers(0, 65535),
    delivery_tag=delivery_tags,
    redelivered=st.booleans(),
    exchange=exchange_names,
    routing_key=any_shortstr,
    message_count=uint32,
)
def test_get_ok_is_pamqp_marshal(
    channel: int,
    delivery_tag: int,
    redelivered: bool,
    exchange: str,
    routing_key: str,
    message_count: int,
) -> None:
    ref = pamqp_frame.marshal(
        commands.Basic.GetOk(
            delivery_tag=delivery_tag,
            redelivered=redelivered,
            exchange=exchange,
            routing_key=routing_key,
            message_count=message_count,
        ),
        channel,
    )
    got = codec.get_ok_method(
        channel,
        delivery_tag,
        redelivered,
        exchange,
        routing_key,
        message_count,
    )
    assert got == ref


@SETTINGS
@given(
    channel=st.integers(0, 65535),
    reply_code=st.integers(0, 65535),
    reply_text=any_shortstr,
    exchange=exchange_names,
    routing_key=any_shortstr,
)
def test_return_is_pamqp_marshal(
    channel: int,
    reply_code: int,
    reply_text: str,
    exchange: str,
    routing_key: str,
) -> None:
    ref = pamqp_frame.marshal(
        commands.Basic.Return(
            reply_code=reply_code,
            reply_text=reply_text,
            exchange=exchange,
            routing_key=routing_key,
        ),
        channel,
    )
    got = codec.return_method(
        channel, reply_code, reply_text, exchange, routing_key
    )
    assert got == ref


@SETTINGS
@given(
    channel=st.integers(0, 65535),
    queue=queue_names,
    message_count=uint32,
    consumer_count=uint32,
)
def test_queue_declare_ok_is_pamqp_marshal(
    channel: int, queue: str, message_count: int, consumer_count: int
) -> None:
    ref = pamqp_frame.marshal(
        commands.Queue.DeclareOk(
            queue=queue,
            message_count=message_count,
            consumer_count=consumer_count,
        ),
        channel,
    )
    assert (
        codec.queue_declare_ok(channel, queue, message_count, consumer_count)
        == ref
    )


@SETTINGS
@given(
    exchange=st.text(max_size=300),
    routing_key=st.text(max_size=300),
    consumer_tag=st.text(max_size=300),
)
def test_outbound_names_always_decode(
    exchange: str, routing_key: str, consumer_tag: str
) -> None:
    """Any name (even past pamqp's checks or 255 bytes) gives a frame that
    pamqp decodes, with each string a prefix of what was asked for."""
    for data in (
        codec.deliver_method(1, consumer_tag, 1, False, exchange, routing_key),
        codec.get_ok_method(1, 1, True, exchange, routing_key, 0),
        codec.return_method(1, 312, consumer_tag, exchange, routing_key),
    ):
        consumed, _, m = pamqp_frame.unmarshal(data)
        assert consumed == len(data)
        assert exchange.startswith(m.exchange)
        assert routing_key.startswith(m.routing_key)
        for asked, got in (
            (exchange, m.exchange),
            (routing_key, m.routing_key),
        ):
            # Only what does not fit is cut, at most one character short.
            limit = min(255, len(asked.encode()))
            assert limit - 3 <= len(got.encode()) <= limit


# -------------------------------------------------- fast paths vs pamqp


def _pamqp_decode(payload: bytes) -> Any:
    _, _, m = pamqp_frame.unmarshal(raw_frame(1, 1, payload))
    return m


def _pack_shortstr(raw: bytes) -> bytes:
    return bytes((len(raw),)) + raw


@SETTINGS
@given(
    ticket=st.integers(0, 65535),
    exchange=shortstrs,
    routing_key=any_shortstr,
    bits=st.integers(0, 255),
    trailing=st.binary(max_size=4),
)
def test_fast_publish_equals_pamqp(
    ticket: int, exchange: str, routing_key: str, bits: int, trailing: bytes
) -> None:
    payload = (
        b"\x00\x3c\x00\x28"
        + struct.pack(">H", ticket)
        + _pack_shortstr(exchange.encode())
        + _pack_shortstr(routing_key.encode())
        + bytes((bits,))
        + trailing
    )
    got = codec.decode_method(payload)
    ref = _pamqp_decode(payload)
    assert type(got) is type(ref) is commands.Basic.Publish
    assert attrs(got) == attrs(ref)


@SETTINGS
@given(
    exchange=exchange_names,
    routing_key=any_shortstr,
    mandatory=st.booleans(),
    immediate=st.booleans(),
)
def test_fast_publish_equals_pamqp_built(
    exchange: str, routing_key: str, mandatory: bool, immediate: bool
) -> None:
    m = commands.Basic.Publish(
        exchange=exchange,
        routing_key=routing_key,
        mandatory=mandatory,
        immediate=immediate,
    )
    got = codec.decode_method(method_frame(1, m)[7:-1])
    assert attrs(got) == attrs(m)


@SETTINGS
@given(tag=delivery_tags, bits=st.integers(0, 255))
def test_fast_ack_equals_pamqp(tag: int, bits: int) -> None:
    payload = b"\x00\x3c\x00\x50" + struct.pack(">QB", tag, bits)
    got = codec.decode_method(payload)
    ref = _pamqp_decode(payload)
    assert type(got) is type(ref) is commands.Basic.Ack
    assert attrs(got) == attrs(ref)


# --------------------------------------------------------- properties


@SETTINGS
@given(props=properties)
def test_decode_properties_equals_pamqp(
    props: commands.Basic.Properties,
) -> None:
    raw = props.marshal()
    got = codec.decode_properties(raw)
    data = pamqp_frame.marshal(pamqp_header.ContentHeader(0, 7, props), 1)
    _, _, ref = pamqp_frame.unmarshal(data)
    assert got == ref.properties
    # pamqp does not send empty strings: they come back as None.
    for name in props.__slots__:
        if getattr(props, name) == "" and name != "cluster_id":
            setattr(props, name, None)
    assert got == props
    assert codec.split_content_header(data[7:-1]) == (60, 7, raw)
    # Our encoder keeps value types (doubles, signed RabbitMQ integer tags)
    # rather than pamqp's byte layout, so compare what decodes, not bytes.
    assert codec.decode_properties(codec.encode_properties(got)) == got


# ------------------------------------------------------ content_frames


@SETTINGS
@given(
    size=st.integers(0, 60000)
    | st.sampled_from([4087, 4088, 4089, 8176, 8177]),
    frame_max=st.integers(4096, 70000) | st.just(4096),
    seed=st.integers(0, 2**32),
    channel=st.integers(1, 65535),
)
def test_content_frames_reassemble(
    size: int, frame_max: int, seed: int, channel: int
) -> None:
    body = random.Random(seed).randbytes(size)
    props = commands.Basic.Properties(message_id="m").marshal()
    frames = content_frames(channel, props, body, frame_max)
    chunk = frame_max - 8
    assert len(frames) == 1 + -(-size // chunk)
    assert all(len(f) <= frame_max for f in frames)
    decoded = [pamqp_frame.unmarshal(f) for f in frames]
    assert all(
        consumed == len(f) for (consumed, _, _), f in zip(decoded, frames)
    )
    assert all(ch == channel for _, ch, _ in decoded)
    head = decoded[0][2]
    assert isinstance(head, pamqp_header.ContentHeader)
    assert head.body_size == size and head.properties.message_id == "m"
    assert b"".join(d[2].value for d in decoded[1:]) == body
    assert all(d[2].value for d in decoded[1:])  # no empty body frames


# ------------------------------------------- hot path vs pamqp


def _pamqp_body_frames(channel: int, body: bytes, frame_max: int) -> bytes:
    chunk = frame_max - 8
    return b"".join(
        pamqp_frame.marshal(pamqp_body.ContentBody(body[i : i + chunk]), channel)
        for i in range(0, len(body), chunk)
    )


@SETTINGS
@given(
    channel=st.integers(0, 65535),
    consumer_tag=any_shortstr,
    delivery_tag=delivery_tags,
    redelivered=st.booleans(),
    exchange=exchange_names,
    routing_key=any_shortstr,
    props=properties,
    size=st.integers(0, 9000) | st.sampled_from([4087, 4088, 4089, 8176, 8177]),
    frame_max=st.integers(4096, 10000) | st.just(4096),
    seed=st.integers(0, 2**32),
)
def test_write_delivery_is_pamqp_marshal(
    channel: int,
    consumer_tag: str,
    delivery_tag: int,
    redelivered: bool,
    exchange: str,
    routing_key: str,
    props: commands.Basic.Properties,
    size: int,
    frame_max: int,
    seed: int,
) -> None:
    body = random.Random(seed).randbytes(size)
    ref = (
        pamqp_frame.marshal(
            commands.Basic.Deliver(
                consumer_tag=consumer_tag,
                delivery_tag=delivery_tag,
                redelivered=redelivered,
                exchange=exchange,
                routing_key=routing_key,
            ),
            channel,
        )
        + pamqp_frame.marshal(pamqp_header.ContentHeader(0, size, props), channel)
        + _pamqp_body_frames(channel, body, frame_max)
    )
    head = (
        channel,
        codec.deliver_prefix(consumer_tag),
        delivery_tag,
        redelivered,
        codec.route_suffix(exchange, routing_key),
        props.marshal(),
    )
    out = bytearray(b"before")
    codec.write_delivery(out, *head, body, frame_max)
    assert bytes(out) == b"before" + ref
    # the uncopied large-body path: everything up to a one-frame body,
    # then the body as its own buffer, then the frame end
    out = bytearray()
    if codec.write_delivery(out, *head, body, frame_max, body_separately=True):
        assert 0 < size <= frame_max - 8
        out += body + codec.FRAME_END_BYTE
    assert bytes(out) == ref


def _publish_stream(
    channel: int,
    exchange: str,
    routing_key: str,
    mandatory: bool,
    immediate: bool,
    props: commands.Basic.Properties,
    body: bytes,
    frame_max: int,
) -> bytes:
    return (
        pamqp_frame.marshal(
            commands.Basic.Publish(
                exchange=exchange,
                routing_key=routing_key,
                mandatory=mandatory,
                immediate=immediate,
            ),
            channel,
        )
        + pamqp_frame.marshal(pamqp_header.ContentHeader(0, len(body), props), channel)
        + _pamqp_body_frames(channel, body, frame_max)
    )


publishes = st.fixed_dictionaries(
    {
        "channel": st.integers(1, 65535),
        "exchange": exchange_names,
        "routing_key": any_shortstr,
        "mandatory": st.booleans(),
        "immediate": st.booleans(),
        "props": properties,
        "body": st.binary(max_size=300) | st.binary(min_size=4080, max_size=4200),
    }
)


@SETTINGS
@given(pub=publishes, after=st.binary(max_size=30))
def test_next_publish_equals_pamqp(pub: dict[str, Any], after: bytes) -> None:
    stream = _publish_stream(frame_max=4096, **pub)
    reader = codec.FrameReader(4096)
    reader.feed(stream + after)
    got = reader.next_publish(max_body=2**32)
    body = pub["body"]
    if len(body) > 4096 - 8:  # split over two body frames: general path
        assert got is None
        return
    assert got is not None
    assert got == (
        pub["channel"],
        pub["exchange"],
        pub["routing_key"],
        int(pub["mandatory"]) | int(pub["immediate"]) << 1,
        pub["props"].marshal(),
        body,
        len(stream),
    )
    reader.consume(got[6])
    assert reader.buffered == len(after)
    # a body over the connection's limit is left to the general path
    reader = codec.FrameReader(4096)
    reader.feed(stream)
    if body:
        assert reader.next_publish(max_body=len(body) - 1) is None


@SETTINGS
@given(pub=publishes, cut=st.integers(0, 10**6), flip=st.integers(0, 10**6),
       bit=st.integers(0, 7))
def test_next_publish_declines_partial_or_altered_streams(
    pub: dict[str, Any], cut: int, flip: int, bit: int
) -> None:
    stream = _publish_stream(frame_max=4096, **pub)
    # any strict prefix: nothing yet
    reader = codec.FrameReader(4096)
    reader.feed(stream[: cut % len(stream)])
    assert reader.next_publish(max_body=2**32) is None
    assert reader.buffered == cut % len(stream)
    # one bit flipped anywhere: None, or a publish the general path agrees on
    altered = bytearray(stream)
    altered[flip % len(stream)] ^= 1 << bit
    fast = codec.FrameReader(4096)
    fast.feed(bytes(altered))
    got = fast.next_publish(max_body=2**32)
    if got is None:
        return
    slow = codec.FrameReader(4096)
    slow.feed(bytes(altered))
    frames = [slow.next_frame() for _ in range(3 if got[5] else 2)]
    assert slow.buffered == len(altered) - got[6]
    assert all(f is not None for f in frames)
    publish = codec.decode_method(frames[0][2])  # type: ignore[index]
    class_id, body_size, raw = codec.split_content_header(frames[1][2])  # type: ignore[index]
    assert (got[0], got[1], got[2], got[3] & 3) == (
        frames[0][1],  # type: ignore[index]
        publish.exchange,
        publish.routing_key,
        int(publish.mandatory) | int(publish.immediate) << 1,
    )
    assert class_id == 60 and body_size == len(got[5]) and raw == got[4]
    if got[5]:
        assert frames[2][2] == got[5]  # type: ignore[index]


# --------------------------------------------------------- FrameReader


frames_strategy = st.lists(
    st.tuples(
        st.sampled_from([1, 2, 3, 8]),
        st.integers(0, 65535),
        st.binary(max_size=300),
    ),
    max_size=20,
)


def _cuts(data: bytes, points: list[int]) -> list[bytes]:
    bounds = sorted({p % (len(data) + 1) for p in points})
    chunks, last = [], 0
    for b in bounds:
        chunks.append(data[last:b])
        last = b
    chunks.append(data[last:])
    return chunks


@SETTINGS
@given(
    frames=frames_strategy, points=st.lists(st.integers(0, 10**6), max_size=30)
)
def test_reader_returns_every_frame_once_however_cut(
    frames: list[tuple[int, int, bytes]], points: list[int]
) -> None:
    data = b"".join(raw_frame(t, c, p) for t, c, p in frames)
    reader = codec.FrameReader(4096)
    got = []
    for chunk in _cuts(data, points):
        reader.feed(chunk)
        while (item := reader.next_frame()) is not None:
            got.append(item)
        assert reader.next_frame() is None
    assert got == frames
    assert reader.buffered == 0


@SETTINGS
@given(
    data=st.binary(max_size=2000),
    points=st.lists(st.integers(0, 10**6), max_size=10),
    frame_max=st.sampled_from([4096, 131072]),
)
def test_reader_on_garbage_only_raises_amqp_errors(
    data: bytes, points: list[int], frame_max: int
) -> None:
    reader = codec.FrameReader(frame_max)
    consumed = 0
    try:
        for chunk in _cuts(data, points):
            reader.feed(chunk)
            while (item := reader.next_frame()) is not None:
                consumed += 8 + len(item[2])
    except errors.AMQPError as exc:
        assert exc.reply_code == 501
    assert consumed <= len(data)


method_indexes = st.sampled_from(sorted(commands.INDEX_MAPPING)) | st.integers(
    0, 2**32 - 1
)


@settings(max_examples=200, deadline=None)
@given(index=method_indexes, rest=st.binary(max_size=80))
def test_decode_method_on_random_bytes_raises_only_amqp_errors(
    index: int, rest: bytes
) -> None:
    try:
        codec.decode_method(struct.pack(">I", index) + rest)
    except errors.AMQPError as exc:
        assert exc.hard and exc.reply_code in (501, 502, 540)


@SETTINGS
@given(raw=st.binary(max_size=120))
def test_decode_properties_on_random_bytes_raises_only_amqp_errors(
    raw: bytes,
) -> None:
    try:
        codec.decode_properties(raw)
    except errors.AMQPError as exc:
        assert exc.reply_code == 502


# ----------------------------------------------- connection, cut anyhow


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("publish"),
            st.sampled_from([1, 2]),
            st.integers(0, 10000) | st.sampled_from([0, 4088, 4089, 9000]),
            _opt(properties),
        ),
        st.tuples(
            st.just("ack"),
            st.sampled_from([1, 2]),
            delivery_tags,
            st.booleans(),
        ),
        st.tuples(st.just("heartbeat")),
        st.tuples(
            st.just("qos"), st.sampled_from([1, 2]), st.integers(0, 65535)
        ),
    ),
    max_size=8,
)


def _client_stream(
    operations: list[tuple[Any, ...]], close: bool
) -> tuple[bytes, list[bytes]]:
    """Handshake (frame_max 4096, so bodies span frames), two channels, the
    operations, and optionally channel and connection close."""
    out = [handshake_bytes(frame_max=4096), channel_open(1), channel_open(2)]
    bodies = []
    for i, op in enumerate(operations):
        if op[0] == "publish":
            _, ch, size, props = op
            body = bytes((i + n) % 256 for n in range(size))
            bodies.append(body)
            out.append(
                publish_frames(
                    ch,
                    body,
                    routing_key=f"k{i}",
                    properties=props,
                    frame_max=4096,
                )
            )
        elif op[0] == "ack":
            out.append(
                method_frame(
                    op[1],
                    commands.Basic.Ack(delivery_tag=op[2], multiple=op[3]),
                )
            )
        elif op[0] == "heartbeat":
            out.append(heartbeat(0))
        else:
            out.append(method_frame(op[1], commands.Basic.Qos(prefetch_count=op[2])))
    if close:
        out.append(method_frame(2, commands.Channel.Close(200, "", 0, 0)))
        out.append(method_frame(0, commands.Connection.Close(200, "bye", 0, 0)))
    return b"".join(out), bodies


def _check(events: list[Any], bodies: list[bytes], close: bool) -> None:
    assert [e[0] for e in events[:4]] == [
        "StartOk",
        "OpenRequested",
        "ChannelOpened",
        "ChannelOpened",
    ]
    assert [e[7] for e in events if e[0] == "ContentReceived"] == bodies
    if close:
        assert events[-2:] == [
            ("ChannelClosed", 2),
            ("ConnectionClosed", 200, "bye", True),
        ]


@SETTINGS
@given(
    operations=ops,
    close=st.booleans(),
    points=st.lists(st.integers(0, 10**6), max_size=40),
)
def test_connection_same_events_however_cut(
    operations: list[tuple[Any, ...]], close: bool, points: list[int]
) -> None:
    data, bodies = _client_stream(operations, close)
    whole_events, whole_out = run_stream([data])
    _check(whole_events, bodies, close)
    cut_events, cut_out = run_stream(_cuts(data, points))
    assert cut_events == whole_events
    assert cut_out == whole_out


small_ops = st.lists(
    st.tuples(
        st.just("publish"),
        st.sampled_from([1, 2]),
        st.integers(0, 5000),
        _opt(properties),
    )
    | st.tuples(st.just("heartbeat")),
    max_size=3,
)


@FEW
@given(operations=small_ops, close=st.booleans())
def test_connection_same_events_one_byte_at_a_time(
    operations: list[tuple[Any, ...]], close: bool
) -> None:
    data, bodies = _client_stream(operations, close)
    whole_events, whole_out = run_stream([data])
    _check(whole_events, bodies, close)
    byte_events, byte_out = run_stream(
        data[i : i + 1] for i in range(len(data))
    )
    assert byte_events == whole_events
    assert byte_out == whole_out


# ------------------------------------------- connection under garbage


def _garbage_frame(draw: Any) -> bytes:
    kind = draw(st.integers(0, 5))
    channel = draw(st.sampled_from([0, 1, 2, 3, 2048]))
    if kind == 0:  # a method with a real index and random fields
        index = draw(st.sampled_from(sorted(commands.INDEX_MAPPING)))
        return raw_frame(
            1, channel, struct.pack(">I", index) + draw(st.binary(max_size=40))
        )
    if kind == 1:
        return content_header(channel, draw(st.integers(0, 3000)))
    if kind == 2:
        return content_body(channel, draw(st.binary(min_size=1, max_size=50)))
    if kind == 3:
        return raw_frame(
            draw(st.integers(0, 255)), channel, draw(st.binary(max_size=20))
        )
    if kind == 4:
        return publish_frames(channel, draw(st.binary(max_size=50)))
    return draw(st.binary(max_size=30))  # raw garbage, framing lost


@st.composite
def garbage_streams(draw: Any) -> list[bytes]:
    return [_garbage_frame(draw) for _ in range(draw(st.integers(1, 12)))]


@SETTINGS
@given(
    chunks=garbage_streams(), max_message_size=st.sampled_from([10, 1 << 20])
)
def test_connection_on_random_frames_only_raises_amqp_errors_and_stops(
    chunks: list[bytes], max_message_size: int
) -> None:
    """What core.session does with every error: report it, then carry on
    calling next_event(). It must always come back to None (no spinning)."""
    pair = ClientPair(max_message_size=max_message_size)
    pair.handshake()
    pair.open_channel(1)
    for chunk in chunks:
        pair.send(chunk)
        for _ in range(1000):
            try:
                event = pair.next_event()
            except errors.AMQPError as exc:
                channel = exc.channel if exc.channel is not None else 0
                pair.conn.report(exc, channel)
                continue
            if event is None:
                break
        else:
            raise AssertionError("next_event() never returned None")
        # Whatever the server wrote is well-formed AMQP.
        for consumed_channel, frame in _decode_all(pair.output()):
            assert frame is not None and consumed_channel >= 0


def _decode_all(data: bytes) -> list[tuple[int, Any]]:
    out = []
    while data:
        consumed, channel, frame = pamqp_frame.unmarshal(data)
        out.append((channel, frame))
        data = data[consumed:]
    return out
