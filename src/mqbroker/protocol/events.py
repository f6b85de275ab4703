"""Events the protocol core hands to the broker: frozen, slotted, final.

Connection-level plumbing (tune, heartbeats, close handshakes, content
assembly) never reaches the broker; it sees only what needs a decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pamqp import commands
from pamqp.base import Frame as PamqpMethod


@dataclass(frozen=True, slots=True)
class StartOk:
    """The client's credentials: authenticate, then ``accept_auth()``."""

    mechanism: str
    response: bytes
    client_properties: dict[str, Any]


@dataclass(frozen=True, slots=True)
class OpenRequested:
    """The client asks for a vhost: check it, then ``accept_open()``."""

    vhost: str


@dataclass(frozen=True, slots=True)
class ChannelOpened:
    channel: int


@dataclass(frozen=True, slots=True)
class ChannelClosed:
    """The channel is gone (peer closed it, or acknowledged our close)."""

    channel: int


@dataclass(frozen=True, slots=True)
class MethodReceived:
    channel: int
    method: PamqpMethod


@dataclass(frozen=True, slots=True)
class ContentReceived:
    """A content-bearing method (basic.publish) with its header and body."""

    channel: int
    method: commands.Basic.Publish
    properties: bytes
    body: bytes


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The close handshake is over (either side started it)."""

    reply_code: int
    reply_text: str
    by_peer: bool


@dataclass(frozen=True, slots=True)
class BadProtocolHeader:
    """The peer did not speak AMQP 0-9-1; our header has been queued."""

    received: bytes


Event = (
    StartOk
    | OpenRequested
    | ChannelOpened
    | ChannelClosed
    | MethodReceived
    | ContentReceived
    | ConnectionClosed
    | BadProtocolHeader
)
