"""What a queue needs from a consumer: the interface, not the class.

Strategy: consumers live in the broker layer (a channel's consumer, with
its prefetch credit and output buffer); queues only pick one and hand it an
entry. A ``Protocol`` keeps the dependency pointing down: the queue calls
these members and imports nothing of the broker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from mqbroker.queues.queue import Queue, QueueEntry


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

    def cancelled_by_server(self) -> None:
        """The queue is gone: the consumer ends (``basic.cancel``)."""
