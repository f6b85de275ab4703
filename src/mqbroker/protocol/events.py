"""Events the protocol core hands to the broker: frozen, slotted, final.

Connection-level plumbing (tune, heartbeats, close handshakes, content
assembly) never reaches the broker; it sees only what needs a decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


class MethodReceived:
    """Any other method on an open channel (one per ack: a plain slotted
    class, cheaper to build than a frozen dataclass)."""

    __slots__ = ("channel", "method")

    def __init__(self, channel: int, method: PamqpMethod) -> None:
        self.channel = channel
        self.method = method

    def __repr__(self) -> str:
        return f"MethodReceived(channel={self.channel}, method={self.method!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MethodReceived):
            return NotImplemented
        return (self.channel, self.method) == (other.channel, other.method)

    __hash__ = None  # type: ignore[assignment]


class ContentReceived:
    """A basic.publish with its content header and body.

    A plain slotted class, not a frozen dataclass: one is built per
    published message, and a frozen dataclass's ``__init__`` pays an
    ``object.__setattr__`` call per field. The publish's fields are
    carried flat, so the hot path never builds a pamqp method object.
    """

    __slots__ = (
        "channel", "exchange", "routing_key", "mandatory", "immediate",
        "properties", "body",
    )

    def __init__(
        self,
        channel: int,
        exchange: str,
        routing_key: str,
        mandatory: bool,
        immediate: bool,
        properties: bytes,
        body: bytes,
    ) -> None:
        self.channel = channel
        self.exchange = exchange
        self.routing_key = routing_key
        self.mandatory = mandatory
        self.immediate = immediate
        self.properties = properties
        self.body = body

    def __repr__(self) -> str:
        return (
            f"ContentReceived(channel={self.channel}, exchange={self.exchange!r}, "
            f"routing_key={self.routing_key!r}, mandatory={self.mandatory}, "
            f"immediate={self.immediate}, properties={self.properties!r}, "
            f"body={self.body!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ContentReceived):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    __hash__ = None  # type: ignore[assignment]


class PublishRun:
    """Consecutive basic.publishes on one channel with the same exchange,
    routing key and flags, each with its content: ``items`` holds (raw
    properties, body) in order. One event for the run, so the broker
    checks, routes and confirms once per run where it can."""

    __slots__ = ("channel", "exchange", "routing_key", "mandatory", "immediate", "items")

    def __init__(
        self,
        channel: int,
        exchange: str,
        routing_key: str,
        mandatory: bool,
        immediate: bool,
        items: list[tuple[bytes, bytes]],
    ) -> None:
        self.channel = channel
        self.exchange = exchange
        self.routing_key = routing_key
        self.mandatory = mandatory
        self.immediate = immediate
        self.items = items

    def events(self) -> list[ContentReceived]:
        """The run as single publishes (for paths that take one at a time)."""
        return [
            ContentReceived(
                self.channel, self.exchange, self.routing_key, self.mandatory,
                self.immediate, props, body,
            )
            for props, body in self.items
        ]

    def __repr__(self) -> str:
        return (
            f"PublishRun(channel={self.channel}, exchange={self.exchange!r}, "
            f"routing_key={self.routing_key!r}, items={len(self.items)})"
        )


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
    | PublishRun
    | ConnectionClosed
    | BadProtocolHeader
)
