"""Per-channel protocol state: open/closing, and the content being
assembled (publish method, header, body frames) until it is whole.

Strategy: plain slots, no behaviour beyond resetting; ``connection.py``
drives it. Bodies over ``BIG_BODY`` grow in one buffer, so a large
message is never held twice (chunks plus their join).
"""

from __future__ import annotations

from pamqp import commands

# Bodies above this are assembled in one growing buffer (no final join).
BIG_BODY = 16 * 1024 * 1024


class ChannelState:
    """Per-channel protocol state: open/closing and content assembly."""

    __slots__ = ("closing", "method", "body_size", "properties", "chunks", "received", "big")

    def __init__(self) -> None:
        self.closing = False
        self.method: commands.Basic.Publish | None = None
        self.body_size = -1  # -1: waiting for the content header
        self.properties = b""
        self.chunks: list[bytes] = []
        self.received = 0
        # A body over BIG_BODY grows in place instead of being joined from
        # chunks at the end, so it is never held twice.
        self.big: bytearray | None = None

    def reset_content(self) -> None:
        self.method = None
        self.body_size = -1
        self.properties = b""
        self.chunks = []
        self.received = 0
        self.big = None
