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
from collections.abc import Iterator
from typing import Any

from pamqp import commands, decode
from pamqp import exceptions as pamqp_exceptions
from pamqp import frame as pamqp_frame
from pamqp.base import Frame as PamqpMethod

from mqbroker import errors

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE
FRAME_END_BYTE = b"\xce"
FRAME_OVERHEAD = 8  # 7-byte header + frame-end octet
FRAME_MIN_SIZE = 4096
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"

HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"

_HEADER = struct.Struct(">BHI")
_METHOD_ID = struct.Struct(">HH")
_CONTENT_HEADER = struct.Struct(">HHQ")
_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")
_DELIVER_TAIL = struct.Struct(">QB")

PUBLISH_INDEX = 0x003C0028
ACK_INDEX = 0x003C0050


class FrameReader:
    """Splits a byte stream into (frame type, channel, payload) triples."""

    __slots__ = ("_buf", "_pos", "frame_max")

    def __init__(self, frame_max: int) -> None:
        self._buf = bytearray()
        self._pos = 0
        self.frame_max = frame_max

    def feed(self, data: bytes) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def take(self, n: int) -> bytes | None:
        """Raw bytes (the protocol header), or None until n are buffered."""
        if self.buffered < n:
            return None
        data = bytes(self._buf[self._pos : self._pos + n])
        self._pos += n
        return data

    def next_frame(self) -> tuple[int, int, bytes] | None:
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 7:
            return None
        ftype, channel, size = _HEADER.unpack_from(buf, pos)
        if size + FRAME_OVERHEAD > self.frame_max:
            raise errors.FrameError(
                f"frame size {size + FRAME_OVERHEAD} exceeds frame_max "
                f"{self.frame_max}"
            )
        end = pos + 7 + size
        if len(buf) <= end:
            return None
        if buf[end] != FRAME_END:
            raise errors.FrameError(
                f"invalid frame end octet {buf[end]:#04x} (expected 0xce)"
            )
        payload = bytes(buf[pos + 7 : end])
        self._pos = end + 1
        return ftype, channel, payload


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
    method = cls()
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
                f"cannot decode {cls.name}: {exc}", class_id, method_id
            ) from exc
        raise errors.FrameError(
            f"cannot decode {cls.name}: {exc}", class_id, method_id
        ) from exc
    return method


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


def content_frames(
    channel: int, properties: bytes, body: bytes, frame_max: int
) -> list[bytes]:
    """Content header + body frames, the body split to fit ``frame_max``."""
    frames = [
        _frame(
            FRAME_HEADER,
            channel,
            _CONTENT_HEADER.pack(60, 0, len(body)) + properties,
        )
    ]
    chunk = frame_max - FRAME_OVERHEAD
    if len(body) <= chunk:
        if body:
            frames.append(_frame(FRAME_BODY, channel, body))
    else:
        view = memoryview(body)
        for start in range(0, len(body), chunk):
            frames.append(
                _frame(FRAME_BODY, channel, bytes(view[start : start + chunk]))
            )
    return frames


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
            b"\x00\x3c\x00\x3c",
            _pack_shortstr(consumer_tag),
            _DELIVER_TAIL.pack(delivery_tag, 1 if redelivered else 0),
            _pack_shortstr(exchange),
            _pack_shortstr(routing_key),
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


def iter_frames(reader: FrameReader) -> Iterator[tuple[int, int, bytes]]:
    while (item := reader.next_frame()) is not None:
        yield item


__all__ = [
    "FrameReader",
    "PROTOCOL_HEADER",
    "HEARTBEAT_FRAME",
    "decode_method",
    "decode_properties",
    "encode_properties",
    "split_content_header",
    "method_frame",
    "content_frames",
    "deliver_method",
    "get_ok_method",
    "return_method",
    "queue_declare_ok",
    "pamqp_exceptions",
]
