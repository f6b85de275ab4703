"""Plain helpers for the security suite: the shared raw AMQP client,
frame builders for malformed input and bounded waits (tests/support)."""

from __future__ import annotations

from support.frames import PROTOCOL_HEADER, method_frame, raw_frame
from support.raw import CAPS, Closed, RawClient, close_code
from support.waits import WAIT, wait_until

__all__ = [
    "CAPS", "PROTOCOL_HEADER", "WAIT", "Closed", "RawClient", "close_code",
    "method_frame", "raw_frame", "wait_until",
]
