"""Bytes <-> frames, and the one place message-carrying frames are encoded.

Strategy: ``FrameReader`` only ever looks at the 7-byte frame header before
it buffers a payload, so a peer announcing a frame larger than ``frame_max``
is refused (501) before we hold its bytes, and a partial frame is simply
"need more data" (pamqp alone cannot tell a partial frame from garbage).
The buffer is consumed by offset and compacted once per ``feed()``: reads
are O(n) in the bytes received, never O(n^2).

Inbound methods are decoded by pamqp except ``basic.publish`` and
``basic.ack``, which come once per message and get a struct fast path.
Outbound frames that name exchanges (deliver, get-ok, return) are packed
here with struct: pamqp validates names when it *builds* those methods and
would refuse UTF-8 names RabbitMQ accepts, breaking delivery of a message
the broker already took. Content-header properties travel as the raw bytes
the publisher sent, so an unchanged message goes out without re-encoding.
"""

from __future__ import annotations

import struct
from typing import Any

from pamqp import commands, decode
from pamqp import exceptions as pamqp_exceptions
from pamqp import frame as pamqp_frame
from pamqp.base import Frame as PamqpMethod

from mqbroker import errors
from mqbroker.protocol.framing import (
    _CONTENT_HEAD,
    _HEADER,
    FRAME_BODY,
    FRAME_END,
    FRAME_END_BYTE,
    FRAME_HEADER,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
    FRAME_MIN_SIZE,
    FRAME_OVERHEAD,
    FrameReader,
    iter_frames,
)
from mqbroker.protocol.table import mark_typed_arrays

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"

HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"

_METHOD_ID = struct.Struct(">HH")
_CONTENT_HEADER = struct.Struct(">HHQ")
_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")
_DELIVER_TAIL = struct.Struct(">QB")
# frame end of the frame before + the next frame's header (8 bytes)
_END_HEADER = struct.Struct(">BBHI")
# deliver's tail (delivery tag, redelivered) + its exchange/routing key,
# then frame end and the content header frame (10 + 20 bytes)
_END_CONTENT_HEAD = struct.Struct(">BBHIHHQ")

PUBLISH_INDEX = 0x003C0028
ACK_INDEX = 0x003C0050


# --------------------------------------------------------------- decoding


def _shortstr(data: bytes, offset: int) -> tuple[str, int]:
    length = data[offset]
    end = offset + 1 + length
    if end > len(data):
        raise ValueError("short string runs past the end of the frame")
    return data[offset + 1 : end].decode("utf-8"), end


def _fast_publish(payload: bytes) -> commands.Basic.Publish:
    exchange, offset = _shortstr(payload, 6)
    routing_key, offset = _shortstr(payload, offset)
    bits = payload[offset]
    method = commands.Basic.Publish.__new__(commands.Basic.Publish)
    (method.ticket,) = _U16.unpack_from(payload, 4)
    method.exchange = exchange
    method.routing_key = routing_key
    method.mandatory = bool(bits & 1)
    method.immediate = bool(bits & 2)
    return method


def _fast_ack(payload: bytes) -> commands.Basic.Ack:
    (tag,) = _U64.unpack_from(payload, 4)
    method = commands.Basic.Ack.__new__(commands.Basic.Ack)
    method.delivery_tag = tag
    method.multiple = bool(payload[12] & 1)
    return method


def decode_method(payload: bytes) -> PamqpMethod:
    """A method frame's payload -> pamqp method object.

    Raises 501 FRAME_ERROR for fields that do not decode (as RabbitMQ
    does: "cannot decode ...") and 540
    NOT_IMPLEMENTED for class/method ids outside AMQP 0-9-1.
    """
    if len(payload) < 4:
        raise errors.SyntaxError_("method frame too short")
    class_id, method_id = _METHOD_ID.unpack_from(payload)
    index = (class_id << 16) | method_id
    try:
        if index == PUBLISH_INDEX:
            return _fast_publish(payload)
        if index == ACK_INDEX and len(payload) == 13:
            return _fast_ack(payload)
    except (IndexError, ValueError, struct.error) as exc:
        raise errors.FrameError(
            f"cannot decode basic.publish: {exc}", class_id, method_id
        ) from exc
    cls = commands.INDEX_MAPPING.get(index)
    if cls is None:
        raise errors.NotImplemented_(
            f"unknown method class {class_id} method {method_id}"
        )
    method: PamqpMethod = cls()
    name = method.name
    try:
        method.unmarshal(payload[4:])
    except (
        struct.error,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        RecursionError,  # pamqp recurses into nested tables/arrays
    ) as exc:
        if "Unknown type" in str(exc):  # a field table with a bad type tag
            raise errors.SyntaxError_(
                f"cannot decode {name}: {exc}", class_id, method_id
            ) from exc
        raise errors.FrameError(
            f"cannot decode {name}: {exc}", class_id, method_id
        ) from exc
    bits = _BIND_BITS.get(index)
    if bits is not None:
        arguments = getattr(method, "arguments", None)
        if arguments and any(isinstance(v, list) for v in arguments.values()):
            offset = 6  # class, method, reserved short
            for _ in range(3):  # three short strings, then the flag octet
                offset += 1 + payload[offset]
            mark_typed_arrays(arguments, payload, offset + bits)
    return method


# bind/unbind methods whose arguments may hold typed arrays -> the number
# of flag octets before the arguments table (queue.unbind has no nowait)
_BIND_BITS = {
    (50 << 16) | 20: 1,  # queue.bind
    (50 << 16) | 50: 0,  # queue.unbind
    (40 << 16) | 30: 1,  # exchange.bind
    (40 << 16) | 40: 1,  # exchange.unbind
}


def split_content_header(payload: bytes) -> tuple[int, int, bytes]:
    """-> (class_id, body_size, raw property bytes)."""
    if len(payload) < 14:
        raise errors.SyntaxError_("content header frame too short")
    class_id, _weight, body_size = _CONTENT_HEADER.unpack_from(payload)
    return class_id, body_size, payload[12:]


def decode_properties(raw: bytes) -> commands.Basic.Properties:
    """Raw property bytes (flag words + list) -> pamqp Properties."""
    props = commands.Basic.Properties.__new__(commands.Basic.Properties)
    for name in commands.Basic.Properties.__slots__:
        setattr(props, name, None)
    props.cluster_id = ""
    try:
        flags, offset, word_index = 0, 0, 0
        while True:
            (word,) = _U16.unpack_from(raw, offset)
            offset += 2
            flags |= (word & 0xFFFE) << (word_index * 16)
            if not word & 1:
                break
            word_index += 1
        props.unmarshal(flags, raw[offset:])
        headers = props.headers
        if headers and flags & 0x2000 and any(isinstance(v, list) for v in headers.values()):
            pos = offset
            for bit in (0x8000, 0x4000):  # content type, content encoding
                if flags & bit:
                    pos += 1 + raw[pos]
            mark_typed_arrays(headers, raw, pos)
    except (
        struct.error,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        RecursionError,  # pamqp recurses into nested tables/arrays
    ) as exc:
        raise errors.SyntaxError_(
            f"cannot decode content header properties: {exc}", 60, 0
        ) from exc
    return props


def encode_properties(props: commands.Basic.Properties) -> bytes:
    from mqbroker.protocol.table import encode_properties as _encode

    return _encode(props)


def decode_table(data: bytes) -> dict[str, Any]:
    _, table = decode.field_table(data)
    return table


# --------------------------------------------------------------- encoding


def method_frame(channel: int, method: PamqpMethod) -> bytes:
    return pamqp_frame.marshal(method, channel)


def _pack_shortstr(value: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > 255:  # cut on a character boundary: stay valid UTF-8
        raw = raw[:255].decode("utf-8", "ignore").encode("utf-8")
    return bytes((len(raw),)) + raw


def _frame(ftype: int, channel: int, payload: bytes) -> bytes:
    return _HEADER.pack(ftype, channel, len(payload)) + payload + FRAME_END_BYTE


def write_content(
    out: bytearray, channel: int, properties: bytes, body: bytes, frame_max: int
) -> None:
    """Append the content header and body frames straight to ``out``: the
    body is copied once, into the output buffer, and never concatenated
    into an intermediate frame (a 64 KB body used to be copied three
    times on its way out)."""
    size = len(body)
    out += _CONTENT_HEAD.pack(FRAME_HEADER, channel, 12 + len(properties), 60, 0, size)
    out += properties
    if not size:
        out += FRAME_END_BYTE
        return
    chunk = frame_max - FRAME_OVERHEAD
    if size <= chunk:
        out += _END_HEADER.pack(FRAME_END, FRAME_BODY, channel, size)
        out += body
        out += FRAME_END_BYTE
        return
    view = memoryview(body)
    for start in range(0, size, chunk):
        piece = view[start : start + chunk]
        out += _END_HEADER.pack(FRAME_END, FRAME_BODY, channel, len(piece))
        out += piece
    out += FRAME_END_BYTE


def deliver_prefix(consumer_tag: str) -> bytes:
    """basic.deliver's bytes up to the delivery tag, once per consumer."""
    return b"\x00\x3c\x00\x3c" + _pack_shortstr(consumer_tag)


_SUFFIXES: dict[tuple[str, str], bytes] = {}


def route_suffix(exchange: str, routing_key: str) -> bytes:
    """basic.deliver's exchange and routing key fields. Cached: a broker
    sees few distinct (exchange, key) pairs, and fanout encodes each
    message's pair once for all its queues. The cache is dropped when it
    grows past 4,096 pairs, so unique keys cannot grow it."""
    key = (exchange, routing_key)
    suffix = _SUFFIXES.get(key)
    if suffix is None:
        if len(_SUFFIXES) >= 4096:
            _SUFFIXES.clear()
        suffix = _SUFFIXES[key] = _pack_shortstr(exchange) + _pack_shortstr(routing_key)
    return suffix


# Bodies at least this large are not copied into the output buffer: the
# connection queues them as buffers of their own (ServerConnection.add_body)
# and the writer hands the socket a list of buffers.
LARGE_BODY = 16 * 1024


def write_delivery(
    out: bytearray,
    channel: int,
    prefix: bytes,
    delivery_tag: int,
    redelivered: bool,
    suffix: bytes,
    properties: bytes,
    body: bytes,
    frame_max: int,
    *,
    body_separately: bool = False,
) -> bool:
    """Append basic.deliver + content header + body frames to ``out``,
    byte-for-byte what pamqp would marshal, in a handful of appends:
    ``prefix`` (``deliver_prefix``) and ``suffix`` (``route_suffix``) are
    pre-encoded, only the tag is packed per message.

    With ``body_separately`` a body that fits one frame is left out: the
    function stops before it and returns True, and the caller queues the
    body itself and then ``FRAME_END_BYTE`` (no copy of a large body)."""
    size = len(body)
    out += _HEADER.pack(FRAME_METHOD, channel, len(prefix) + 9 + len(suffix))
    out += prefix
    out += _DELIVER_TAIL.pack(delivery_tag, 1 if redelivered else 0)
    out += suffix
    if size and size <= frame_max - FRAME_OVERHEAD:
        out += _END_CONTENT_HEAD.pack(
            FRAME_END, FRAME_HEADER, channel, 12 + len(properties), 60, 0, size
        )
        out += properties
        out += _END_HEADER.pack(FRAME_END, FRAME_BODY, channel, size)
        if body_separately:
            return True
        out += body
        out += FRAME_END_BYTE
        return False
    out += FRAME_END_BYTE
    write_content(out, channel, properties, body, frame_max)
    return False


def deliver_method(
    channel: int,
    consumer_tag: str,
    delivery_tag: int,
    redelivered: bool,
    exchange: str,
    routing_key: str,
) -> bytes:
    payload = b"".join(
        (
            deliver_prefix(consumer_tag),
            _DELIVER_TAIL.pack(delivery_tag, 1 if redelivered else 0),
            route_suffix(exchange, routing_key),
        )
    )
    return _frame(FRAME_METHOD, channel, payload)


def get_ok_method(
    channel: int,
    delivery_tag: int,
    redelivered: bool,
    exchange: str,
    routing_key: str,
    message_count: int,
) -> bytes:
    payload = b"".join(
        (
            b"\x00\x3c\x00\x47",
            _DELIVER_TAIL.pack(delivery_tag, 1 if redelivered else 0),
            _pack_shortstr(exchange),
            _pack_shortstr(routing_key),
            struct.pack(">I", message_count),
        )
    )
    return _frame(FRAME_METHOD, channel, payload)


def return_method(
    channel: int,
    reply_code: int,
    reply_text: str,
    exchange: str,
    routing_key: str,
) -> bytes:
    payload = b"".join(
        (
            b"\x00\x3c\x00\x32",
            _U16.pack(reply_code),
            _pack_shortstr(reply_text),
            _pack_shortstr(exchange),
            _pack_shortstr(routing_key),
        )
    )
    return _frame(FRAME_METHOD, channel, payload)


def queue_declare_ok(
    channel: int, queue: str, message_count: int, consumer_count: int
) -> bytes:
    payload = (
        b"\x00\x32\x00\x0b"
        + _pack_shortstr(queue)
        + struct.pack(">II", message_count, consumer_count)
    )
    return _frame(FRAME_METHOD, channel, payload)


__all__ = [
    "FRAME_BODY",
    "FRAME_END",
    "FRAME_END_BYTE",
    "FRAME_HEADER",
    "FRAME_HEARTBEAT",
    "FRAME_METHOD",
    "FRAME_MIN_SIZE",
    "FRAME_OVERHEAD",
    "FrameReader",
    "iter_frames",
    "PROTOCOL_HEADER",
    "HEARTBEAT_FRAME",
    "decode_method",
    "decode_properties",
    "encode_properties",
    "split_content_header",
    "method_frame",
    "write_content",
    "write_delivery",
    "LARGE_BODY",
    "deliver_prefix",
    "route_suffix",
    "deliver_method",
    "get_ok_method",
    "return_method",
    "queue_declare_ok",
    "pamqp_exceptions",
]
