"""Hand-rolled AMQP 0-9-1 frames for the load generator's hot path.

Only what a publisher and a consumer do per message is encoded or parsed
here: basic.publish + content header + body (pre-encoded once, with the
sequence number and timestamp patched in place per message), basic.ack,
and the parse of basic.deliver / basic.ack / basic.nack.  Everything else
(handshake, declarations, errors) goes through pamqp in ``client.py``.
``tests/perf/test_perf_tool.py`` checks the encoders byte-for-byte against
pamqp.

Message body layout (big-endian, first 16 bytes, the rest zero padding)::

    u64 ident = producer_id << 48 | sequence number
    u64 timestamp = time.monotonic_ns() at send (machine-wide clock)
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE
FRAME_END_BYTE = b"\xce"

BASIC = 60
BASIC_PUBLISH = 40
BASIC_DELIVER = 60
BASIC_ACK = 80
BASIC_NACK = 120
BASIC_RETURN = 50

MIN_BODY = 16
PRODUCER_SHIFT = 48
SEQ_MASK = (1 << PRODUCER_SHIFT) - 1
NULL_PRODUCER = 0xFFFF  # the null server's synthetic deliveries

FRAME_HDR = struct.Struct(">BHI")
BODY_STAMP = struct.Struct(">QQ")
METHOD_IDS = struct.Struct(">HH")
U64 = struct.Struct(">Q")
ACK_FRAME = struct.Struct(">BHIHHQBB")  # a whole basic.ack frame (21 bytes)
DELIVERY_MODE_FLAG = 0x1000


def frame(frame_type: int, channel: int, payload: bytes) -> bytes:
    return FRAME_HDR.pack(frame_type, channel, len(payload)) + payload + FRAME_END_BYTE


def shortstr(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    if len(raw) > 255:
        raise ValueError("shortstr longer than 255 bytes")
    return bytes((len(raw),)) + raw


def publish_method(channel: int, exchange: str, routing_key: str,
                   mandatory: bool = False) -> bytes:
    payload = (METHOD_IDS.pack(BASIC, BASIC_PUBLISH) + b"\x00\x00"
               + shortstr(exchange) + shortstr(routing_key)
               + bytes((1 if mandatory else 0,)))
    return frame(FRAME_METHOD, channel, payload)


def content_header(channel: int, body_size: int, *, persistent: bool = False,
                   class_id: int = BASIC) -> bytes:
    if persistent:
        props = struct.pack(">HB", DELIVERY_MODE_FLAG, 2)
    else:
        props = b"\x00\x00"
    payload = struct.pack(">HHQ", class_id, 0, body_size) + props
    return frame(FRAME_HEADER, channel, payload)


def body_frames(channel: int, body: bytes, frame_max: int) -> bytes:
    """The body split as pamqp clients split it: chunks of frame_max - 8."""
    chunk = frame_max - 8
    if not body:
        return b""
    return b"".join(frame(FRAME_BODY, channel, body[i:i + chunk])
                    for i in range(0, len(body), chunk))


def message_frames(channel: int, exchange: str, routing_key: str, size: int,
                   *, persistent: bool = False, frame_max: int = 131072,
                   body: bytes | None = None) -> tuple[bytes, int]:
    """One message (publish + header + body frames) and the offset of the
    body's first byte in it, where the ident/timestamp stamp goes."""
    if body is None:
        body = bytes(size)
    method = publish_method(channel, exchange, routing_key)
    header = content_header(channel, len(body), persistent=persistent)
    return method + header + body_frames(channel, body, frame_max), \
        len(method) + len(header) + 7


class PublishBatch:
    """``count`` pre-encoded messages in one buffer; ``fill(n, ...)`` patches
    the first ``n`` with consecutive sequence numbers and one timestamp and
    returns a memoryview ready for ``socket.send``.  Routing keys cycle
    through ``routing_keys`` (position in the batch modulo their number);
    they must all have the same length so every message has the same
    size."""

    def __init__(self, channel: int, exchange: str, routing_keys: Sequence[str],
                 size: int, count: int, *, persistent: bool = False,
                 frame_max: int = 131072, producer_id: int = 0) -> None:
        if size < MIN_BODY:
            raise ValueError(f"message size must be >= {MIN_BODY} bytes")
        if not routing_keys:
            raise ValueError("at least one routing key")
        parts = [message_frames(channel, exchange, rk, size,
                                persistent=persistent, frame_max=frame_max)
                 for rk in routing_keys]
        lengths = {len(p[0]) for p in parts}
        if len(lengths) != 1:
            raise ValueError("routing keys must all have the same length")
        self.message_len = lengths.pop()
        self.body_offset = parts[0][1]
        self.count = count
        self.buffer = bytearray(b"".join(parts[i % len(parts)][0]
                                         for i in range(count)))
        self.view = memoryview(self.buffer)
        self.producer_base = producer_id << PRODUCER_SHIFT
        self._offsets = [i * self.message_len + self.body_offset
                         for i in range(count)]

    def fill(self, n: int, first_seq: int, timestamp_ns: int) -> memoryview:
        pack = BODY_STAMP.pack_into
        buf = self.buffer
        ident = self.producer_base | first_seq
        for off in self._offsets[:n]:
            pack(buf, off, ident, timestamp_ns)
            ident += 1
        return self.view[:n * self.message_len]


def ack_frame(channel: int, delivery_tag: int, multiple: bool = False) -> bytes:
    return ACK_FRAME.pack(FRAME_METHOD, channel, 13, BASIC, BASIC_ACK,
                          delivery_tag, 1 if multiple else 0, FRAME_END)


def deliver_method(channel: int, consumer_tag: str, delivery_tag: int,
                   exchange: str, routing_key: str,
                   redelivered: bool = False) -> bytes:
    payload = (METHOD_IDS.pack(BASIC, BASIC_DELIVER) + shortstr(consumer_tag)
               + U64.pack(delivery_tag) + bytes((1 if redelivered else 0,))
               + shortstr(exchange) + shortstr(routing_key))
    return frame(FRAME_METHOD, channel, payload)


class DeliverBatch:
    """Pre-encoded basic.deliver + header + body messages for the null
    server: ``fill`` patches delivery tags and body stamps."""

    def __init__(self, channel: int, consumer_tag: str, size: int, count: int,
                 *, frame_max: int = 131072,
                 producer_id: int = NULL_PRODUCER) -> None:
        method = deliver_method(channel, consumer_tag, 0, "", "perf")
        header = content_header(channel, size)
        body = body_frames(channel, bytes(size), frame_max)
        one = method + header + body
        self.message_len = len(one)
        self.tag_offset = 7 + 4 + 1 + len(consumer_tag.encode())
        self.body_offset = len(method) + len(header) + 7
        self.buffer = bytearray(one * count)
        self.view = memoryview(self.buffer)
        self.count = count
        self.producer_base = producer_id << PRODUCER_SHIFT

    def fill(self, n: int, first_tag: int, first_seq: int,
             timestamp_ns: int) -> memoryview:
        buf = self.buffer
        u64 = U64.pack_into
        stamp = BODY_STAMP.pack_into
        ident = self.producer_base | first_seq
        tag = first_tag
        base = 0
        step = self.message_len
        t_off = self.tag_offset
        b_off = self.body_offset
        for _ in range(n):
            u64(buf, base + t_off, tag)
            stamp(buf, base + b_off, ident, timestamp_ns)
            tag += 1
            ident += 1
            base += step
        return self.view[:n * step]
