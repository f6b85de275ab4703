"""Frame builders, well-formed or malformed on purpose: the one set every
suite uses, whether the bytes go to a socket (support.raw, the security
fuzzers) or straight into the sans-I/O ``ServerConnection`` (the unit and
property suites). Built with pamqp, never with the broker's own codec, so
the broker is checked against an independent encoder."""

from __future__ import annotations

import struct
from typing import Any

from pamqp import body as pbody
from pamqp import commands
from pamqp import constants as pconst
from pamqp import frame as pframe
from pamqp import header as pheader
from pamqp import heartbeat as pheartbeat

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
PLAIN_RESPONSE = b"\x00guest\x00guest"


def raw_frame(ftype: int, channel: int, payload: bytes, end: int = pconst.FRAME_END) -> bytes:
    """A frame of any type with any payload (and frame-end octet); the
    channel is cut to 16 bits so fuzzers may draw any integer."""
    return struct.pack(">BHI", ftype, channel & 0xFFFF, len(payload)) + payload + bytes((end,))


def raw_method_frame(channel: int, payload: bytes, frame_end: int = pconst.FRAME_END) -> bytes:
    return raw_frame(pconst.FRAME_METHOD, channel, payload, frame_end)


def method_frame(channel: int, method: Any) -> bytes:
    return pframe.marshal(method, channel)


def method_payload(value: Any) -> bytes:
    """Class id + method id + marshalled arguments of a pamqp method."""
    return pframe.marshal(value, 0)[7:-1]


def content_header(
    channel: int,
    body_size: int,
    properties: commands.Basic.Properties | None = None,
) -> bytes:
    return pframe.marshal(
        pheader.ContentHeader(0, body_size, properties), channel
    )


def content_body(channel: int, data: bytes) -> bytes:
    return pframe.marshal(pbody.ContentBody(data), channel)


def heartbeat(channel: int = 0) -> bytes:
    """A heartbeat frame; on a channel other than 0 it is a protocol error
    pamqp will not build, hence the raw frame."""
    if channel == 0:
        return pframe.marshal(pheartbeat.Heartbeat(), 0)
    return raw_frame(pconst.FRAME_HEARTBEAT, channel, b"")


def split_frames(data: bytes) -> list[bytes]:
    """A byte stream of whole frames -> the frames."""
    frames, pos = [], 0
    while pos < len(data):
        (size,) = struct.unpack_from(">I", data, pos + 3)
        frames.append(data[pos : pos + size + 8])
        pos += size + 8
    return frames


def decode_frames(data: bytes) -> list[tuple[int, Any]]:
    """Server bytes -> [(channel, pamqp frame)], asserting nothing is left."""
    frames: list[tuple[int, Any]] = []
    while data:
        consumed, channel, frame = pframe.unmarshal(data)
        frames.append((channel, frame))
        data = data[consumed:]
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
        method_frame(
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
    return method_frame(
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
    return method_frame(
        0,
        commands.Connection.TuneOk(
            channel_max=channel_max, frame_max=frame_max, heartbeat=heartbeat
        ),
    )


def connection_open(vhost: str = "/") -> bytes:
    return method_frame(0, commands.Connection.Open(virtual_host=vhost))


def channel_open(channel: int) -> bytes:
    return method_frame(channel, commands.Channel.Open())
