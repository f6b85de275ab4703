"""Hypothesis strategies for AMQP 0-9-1 byte streams, valid and not.

Three families, mixed by the fuzz tests:
- frames that are valid on the wire (pamqp-built methods with random
  fields and tables, publishes with random properties and body splits);
- frames that are wrong on purpose (unknown types and class/method ids,
  bad frame-end octets, sizes past the payload or past frame_max, content
  without a method, heartbeats on a channel, deep nested tables, invalid
  UTF-8 in short strings, truncated method payloads);
- mutations of a valid session (bit flips, truncation, insertion,
  deletion), fed in random chunk sizes.
"""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import strategies as st
from pamqp import body as pbody
from pamqp import commands
from pamqp import frame as pframe
from pamqp import header as pheader

from support.frames import PROTOCOL_HEADER, method_frame, raw_frame
from support.raw import CAPS

HANDSHAKE = (
    PROTOCOL_HEADER
    + method_frame(0, commands.Connection.StartOk(
        client_properties={"product": "fuzz", "capabilities": CAPS},
        mechanism="PLAIN", response="\0guest\0guest", locale="en_US"))
    + method_frame(0, commands.Connection.TuneOk(channel_max=2047, frame_max=131072, heartbeat=0))
    + method_frame(0, commands.Connection.Open(virtual_host="/"))
    + method_frame(1, commands.Channel.Open())
)


def publish(channel: int, exchange: str, key: str, body: bytes,
            props: commands.Basic.Properties | None = None, mandatory: bool = False) -> bytes:
    return (
        method_frame(channel, commands.Basic.Publish(exchange=exchange, routing_key=key, mandatory=mandatory))
        + pframe.marshal(pheader.ContentHeader(0, len(body), props), channel)
        + (pframe.marshal(pbody.ContentBody(body), channel) if body else b"")
    )


# A valid session that does a bit of everything: the seed for mutations.
VALID_SESSION = (
    HANDSHAKE
    + method_frame(1, commands.Confirm.Select())
    + method_frame(1, commands.Exchange.Declare(exchange="fx", exchange_type="topic"))
    + method_frame(1, commands.Queue.Declare(queue="fq", arguments={"x-max-length": 10}))
    + method_frame(1, commands.Queue.Bind(queue="fq", exchange="fx", routing_key="a.#"))
    + publish(1, "fx", "a.b", b"hello", commands.Basic.Properties(
        headers={"h": 1, "t": {"n": [1, "x"]}}, delivery_mode=2, expiration="60000"))
    + publish(1, "", "fq", b"x" * 300)
    + method_frame(1, commands.Basic.Qos(prefetch_count=5))
    + method_frame(1, commands.Basic.Consume(queue="fq", consumer_tag="c1"))
    + method_frame(1, commands.Basic.Get(queue="fq"))
    + method_frame(2, commands.Channel.Open())
    + method_frame(2, commands.Tx.Select())
    + publish(2, "", "fq", b"tx")
    + method_frame(2, commands.Tx.Commit())
    + method_frame(1, commands.Basic.Cancel(consumer_tag="c1"))
    + method_frame(1, commands.Queue.Purge(queue="fq"))
    + method_frame(1, commands.Channel.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0))
    + method_frame(0, commands.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0))
)

# ------------------------------------------------------------- values

channels = st.sampled_from([0, 1, 1, 1, 1, 2, 3, 65535]) | st.integers(0, 65535)
names = st.from_regex(r"[a-zA-Z0-9_.:-]{0,12}", fullmatch=True) | st.sampled_from(
    ["", "q", "fq", "fx", "amq.direct", "amq.topic", "amq.gen-x", "amq.rabbitmq.reply-to", "x" * 127]
)
exchange_types = st.sampled_from(["direct", "fanout", "topic", "headers", "x-bogus", ""])
keys = st.text(max_size=12)
ints32 = st.integers(-(2**31), 2**31 - 1)
u16 = st.integers(0, 65535)
u64 = st.integers(0, 2**64 - 1)
table_keys = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=10
) | st.sampled_from([
    "x-max-length", "x-message-ttl", "x-expires", "x-dead-letter-exchange",
    "x-dead-letter-routing-key", "x-max-priority", "x-queue-type", "x-overflow",
    "x-single-active-consumer", "x-delivery-limit", "x-match", "alternate-exchange",
    "x-max-length-bytes", "x-priority", "CC", "BCC", "x-consumer-timeout",
])
scalars = (
    st.none() | st.booleans() | ints32 | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
    | st.sampled_from(["classic", "quorum", "stream", "drop-head", "reject-publish",
                       "reject-publish-dlx", "all", "any", "", "-1"])
)
tables = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(table_keys, inner, max_size=3),
    max_leaves=8,
)
arg_tables = st.dictionaries(table_keys, tables, max_size=4)


@st.composite
def properties(draw: st.DrawFn) -> commands.Basic.Properties | None:
    if draw(st.booleans()):
        return None
    kw: dict[str, Any] = {}
    if draw(st.booleans()):
        kw["headers"] = draw(arg_tables)
    if draw(st.booleans()):
        kw["delivery_mode"] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        kw["expiration"] = draw(st.sampled_from(["0", "1", "100", "-1", "abc", "", "99999999999"]))
    if draw(st.booleans()):
        kw["priority"] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        kw["user_id"] = draw(st.sampled_from(["guest", "other", ""]))
    if draw(st.booleans()):
        kw["reply_to"] = draw(st.sampled_from(["amq.rabbitmq.reply-to", "q", ""]))
    if draw(st.booleans()):
        kw["correlation_id"] = draw(st.text(max_size=8))
    try:
        return commands.Basic.Properties(**kw)
    except (ValueError, TypeError):
        return None


def _method(draw: st.DrawFn) -> Any:
    b = st.booleans()
    choice = draw(st.integers(0, 24))
    if choice == 0:
        return commands.Queue.Declare(queue=draw(names), passive=draw(b), durable=draw(b),
                                      exclusive=draw(b), auto_delete=draw(b), nowait=draw(b),
                                      arguments=draw(arg_tables))
    if choice == 1:
        return commands.Queue.Bind(queue=draw(names), exchange=draw(names),
                                   routing_key=draw(keys), nowait=draw(b), arguments=draw(arg_tables))
    if choice == 2:
        return commands.Queue.Unbind(queue=draw(names), exchange=draw(names),
                                     routing_key=draw(keys), arguments=draw(arg_tables))
    if choice == 3:
        return commands.Queue.Purge(queue=draw(names), nowait=draw(b))
    if choice == 4:
        return commands.Queue.Delete(queue=draw(names), if_unused=draw(b), if_empty=draw(b),
                                     nowait=draw(b))
    if choice == 5:
        return commands.Exchange.Declare(exchange=draw(names), exchange_type=draw(exchange_types),
                                         passive=draw(b), durable=draw(b), auto_delete=draw(b),
                                         internal=draw(b), nowait=draw(b), arguments=draw(arg_tables))
    if choice == 6:
        return commands.Exchange.Delete(exchange=draw(names), if_unused=draw(b), nowait=draw(b))
    if choice == 7:
        return commands.Exchange.Bind(destination=draw(names), source=draw(names),
                                      routing_key=draw(keys), arguments=draw(arg_tables))
    if choice == 8:
        return commands.Exchange.Unbind(destination=draw(names), source=draw(names),
                                        routing_key=draw(keys), arguments=draw(arg_tables))
    if choice == 9:
        return commands.Basic.Qos(prefetch_size=draw(st.sampled_from([0, 0, 1])),
                                  prefetch_count=draw(u16), global_=draw(b))
    if choice == 10:
        return commands.Basic.Consume(queue=draw(names), consumer_tag=draw(names),
                                      no_local=draw(b), no_ack=draw(b), exclusive=draw(b),
                                      nowait=draw(b), arguments=draw(arg_tables))
    if choice == 11:
        return commands.Basic.Cancel(consumer_tag=draw(names), nowait=draw(b))
    if choice == 12:
        return commands.Basic.Get(queue=draw(names), no_ack=draw(b))
    if choice == 13:
        return commands.Basic.Ack(delivery_tag=draw(st.integers(0, 5) | u64), multiple=draw(b))
    if choice == 14:
        return commands.Basic.Nack(delivery_tag=draw(st.integers(0, 5) | u64),
                                   multiple=draw(b), requeue=draw(b))
    if choice == 15:
        return commands.Basic.Reject(delivery_tag=draw(st.integers(0, 5)), requeue=draw(b))
    if choice == 16:
        return commands.Basic.Recover(requeue=draw(b))
    if choice == 17:
        return draw(st.sampled_from([commands.Channel.Open(), commands.Channel.CloseOk(),
                                     commands.Channel.Close(reply_code=200, reply_text="x", class_id=0, method_id=0),
                                     commands.Channel.Flow(active=True),
                                     commands.Channel.Flow(active=False)]))
    if choice == 18:
        return draw(st.sampled_from([commands.Confirm.Select(), commands.Tx.Select(),
                                     commands.Tx.Commit(), commands.Tx.Rollback()]))
    if choice == 19:
        return draw(st.sampled_from([
            commands.Connection.Close(reply_code=200, reply_text="x", class_id=0, method_id=0),
            commands.Connection.CloseOk(),
            commands.Connection.Blocked(reason="x"),
            commands.Connection.Unblocked(),
            commands.Connection.UpdateSecret(new_secret="s", reason="r"),
            commands.Connection.TuneOk(channel_max=0, frame_max=4096, heartbeat=0),
            commands.Connection.Open(virtual_host="/"),
            commands.Connection.StartOk(client_properties={}, mechanism="PLAIN",
                                        response="\0guest\0guest"),
        ]))
    if choice == 20:
        return commands.Basic.RecoverAsync(requeue=draw(b))
    return commands.Basic.Publish(exchange=draw(names), routing_key=draw(keys), mandatory=draw(b),
                                  immediate=draw(st.sampled_from([False, False, True])))


ENCODE_ERRORS = (ValueError, TypeError, OverflowError, struct.error)


@st.composite
def method_frames(draw: st.DrawFn) -> bytes:
    try:
        return method_frame(draw(channels), _method(draw))
    except ENCODE_ERRORS:  # pamqp refuses to encode some drawn values
        return b""


@st.composite
def publishes(draw: st.DrawFn) -> bytes:
    channel = draw(st.sampled_from([1, 1, 1, 2, 0, 5]))
    body = draw(st.binary(max_size=400))
    try:
        data = publish(channel, draw(names), draw(keys), body, draw(properties()),
                       mandatory=draw(st.booleans()))
    except ENCODE_ERRORS:
        return b""
    # sometimes lie about the size or split the body oddly
    variant = draw(st.integers(0, 4))
    if variant == 1:  # header announces more than is sent, then a new method
        cut = data.rfind(b"\x03\x00")
        return data[:cut] if cut > 0 else data
    if variant == 2:  # body longer than announced
        return data + raw_frame(3, channel, b"extra")
    if variant == 3:  # body without header
        return raw_frame(3, channel, body or b"x")
    return data


def nested_table(depth: int) -> bytes:
    """A field table nested ``depth`` levels deep ({"a": {"a": ...}})."""
    inner = b""
    for _ in range(depth):
        inner = b"\x01aF" + struct.pack(">I", len(inner)) + inner
    return struct.pack(">I", len(inner)) + inner


def _shortstr(raw: bytes) -> bytes:
    return bytes([len(raw)]) + raw


@st.composite
def malformed_frames(draw: st.DrawFn) -> bytes:
    channel = draw(channels)
    kind = draw(st.integers(0, 13))
    if kind == 0:  # unknown frame type
        return raw_frame(draw(st.integers(0, 255).filter(lambda t: t not in (1, 2, 3, 8))),
                         channel, draw(st.binary(max_size=20)))
    if kind == 1:  # bad frame-end octet
        return raw_frame(1, channel, draw(st.binary(max_size=20)),
                         end=draw(st.integers(0, 255).filter(lambda e: e != 0xCE)))
    if kind == 2:  # size larger than frame_max (header only)
        return struct.pack(">BHI", 1, channel, draw(st.integers(131073, 2**32 - 1)))
    if kind == 3:  # heartbeat on a channel
        return raw_frame(8, draw(st.integers(1, 65535)), b"")
    if kind == 4:  # unknown class/method
        return raw_frame(1, channel, struct.pack(">HH", draw(u16), draw(u16))
                         + draw(st.binary(max_size=20)))
    if kind == 5:  # deep nesting in queue.declare arguments
        depth = draw(st.sampled_from([50, 500, 2000, 15000]))
        payload = (struct.pack(">HHH", 50, 10, 0) + _shortstr(b"deep") + b"\x00"
                   + nested_table(depth))
        return raw_frame(1, channel, payload)
    if kind == 6:  # invalid UTF-8 in a short string (queue.declare name)
        bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"q\x80q"]))
        payload = struct.pack(">HHH", 50, 10, 0) + _shortstr(bad) + b"\x00" + struct.pack(">I", 0)
        return raw_frame(1, channel, payload)
    if kind == 7:  # invalid UTF-8 in basic.publish exchange/routing key
        bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"a\x80"]))
        payload = struct.pack(">HHH", 60, 40, 0) + _shortstr(bad) + _shortstr(bad) + b"\x00"
        return raw_frame(1, channel, payload)
    if kind == 8:  # truncated method payload
        try:
            full = method_frame(channel, _method(draw))
        except ENCODE_ERRORS:
            return b""
        payload = full[7:-1]
        cut = draw(st.integers(0, max(len(payload) - 1, 0)))
        return raw_frame(1, channel, payload[:cut])
    if kind == 9:  # content header with a huge body size / wrong class
        return raw_frame(2, channel, struct.pack(">HHQH", draw(st.sampled_from([60, 10, 0])), 0,
                                                 draw(st.sampled_from([0, 5, 2**63, 2**64 - 1])),
                                                 draw(u16)) + draw(st.binary(max_size=10)))
    if kind == 10:  # table whose length runs past the frame (pamqp#63)
        payload = struct.pack(">HHH", 50, 10, 0) + _shortstr(b"q") + b"\x00" + struct.pack(">I", 10) + b"\x03key"
        return raw_frame(1, channel, payload)
    if kind == 11:  # property flags with the continuation bit and nothing after (pamqp#64)
        return raw_frame(2, channel, struct.pack(">HHQH", 60, 0, 0, 0x0001))
    if kind == 12:  # field table with a bad type tag
        payload = (struct.pack(">HHH", 50, 10, 0) + _shortstr(b"q") + b"\x00"
                   + struct.pack(">I", 5) + b"\x01a" + draw(st.sampled_from([b"Z", b"\x00", b"\xff"])) + b"xx")
        return raw_frame(1, channel, payload)
    return raw_frame(draw(st.integers(0, 255)), channel, draw(st.binary(max_size=64)),
                     end=draw(st.sampled_from([0xCE, 0xCE, 0])))


frames = st.one_of(method_frames(), method_frames(), publishes(), malformed_frames())
frame_lists = st.lists(frames, min_size=1, max_size=12)


@st.composite
def mutated_session(draw: st.DrawFn) -> bytes:
    data = bytearray(VALID_SESSION)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.integers(0, 3))
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        if op == 0:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == 1:
            del data[pos:]
        elif op == 2:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[pos:pos + draw(st.integers(1, 8))]
    return bytes(data)


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """Split ``data`` into random chunks (as TCP may)."""
    chunks, pos = [], 0
    while pos < len(data):
        size = draw(st.sampled_from([1, 3, 7, 64, 1000, 1 << 20]))
        chunks.append(data[pos:pos + size])
        pos += size
    return chunks
