"""What a queue needs from a consumer: the interface, not the class.

Strategy: consumers live in the broker layer (a channel's consumer, with
its prefetch credit and output buffer); queues only pick one and hand it an
entry. A ``Protocol`` keeps the dependency pointing down: the queue calls
these members and imports nothing of the broker.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from mqbroker.protocol.batch import Record

if TYPE_CHECKING:
    from mqbroker.queues.entry import QueueEntry
    from mqbroker.queues.queue import Queue


class Consumer(Protocol):
    tag: str
    # Higher priorities are served first (``x-priority``).
    priority: int
    exclusive: bool
    # basic.consume's arguments (a stream reads x-stream-offset & co.)
    arguments: dict[str, Any]

    def has_credit(self) -> bool:
        """It may take one more delivery now (prefetch, socket, flow)."""

    def deliver(self, queue: Queue, entry: QueueEntry) -> None:
        """Send ``entry`` (already taken from the ready list)."""

    def credit(self) -> int:
        """How many deliveries it may take now (0 when ``has_credit`` is
        false)."""

    def deliver_records(self, queue: Queue, records: Sequence[Record]) -> None:
        """Send stored deliveries in one pass: (offset, basic.deliver's
        exchange + routing key fields, raw properties, body) each, at most
        ``credit()`` of them (a stream's block of entries)."""

    def cancelled_by_server(self) -> None:
        """The queue is gone: the consumer ends (``basic.cancel``)."""
