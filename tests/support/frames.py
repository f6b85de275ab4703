"""Frame builders, well-formed or malformed on purpose."""

from __future__ import annotations

import struct
from typing import Any

from pamqp import constants as pconst
from pamqp import frame as pframe

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"


def raw_frame(ftype: int, channel: int, payload: bytes, end: int = pconst.FRAME_END) -> bytes:
    """A frame of any type with any payload (and frame-end octet)."""
    return struct.pack(">BHI", ftype, channel, len(payload)) + payload + bytes((end,))


def raw_method_frame(channel: int, payload: bytes, frame_end: int = pconst.FRAME_END) -> bytes:
    return raw_frame(pconst.FRAME_METHOD, channel, payload, frame_end)


def method_frame(channel: int, method: Any) -> bytes:
    return pframe.marshal(method, channel)


def method_payload(value: Any) -> bytes:
    """Class id + method id + marshalled arguments of a pamqp method."""
    return pframe.marshal(value, 0)[7:-1]
