"""A queue: ready messages in order, its consumers, and its store writes.

Strategy: ready entries sit in a deque ordered by ``seq``; a requeued entry
keeps its seq and is put back where it was (at the head in the usual case),
which is RabbitMQ's classic-queue behaviour. A consumer is picked
round-robin among those with credit; when none has credit, ``dispatch()``
stops at once and is called again when credit returns (ack, qos, drained
socket). Persistent messages in a durable queue are written through the
``Store``; everything else lives only here.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from mqbroker.core.message import Message
from mqbroker.persistence.store import Store, StoredEntry, StoredMessage

if TYPE_CHECKING:
    from mqbroker.core.channel import Consumer


class QueueEntry:
    """One message's place in one queue.

    ``message`` is None while the body is paged out: persisted entries far
    from the head keep only their ids in RAM and are read back from the
    store when they get near delivery, which is what bounds memory for a
    backlog larger than RAM.
    """

    __slots__ = (
        "seq",
        "msg_id",
        "size",
        "message",
        "delivery_count",
        "redelivered",
        "persisted",
    )

    def __init__(
        self,
        seq: int,
        msg_id: int,
        size: int,
        message: Message | None,
        delivery_count: int = 0,
        redelivered: bool = False,
        persisted: bool = False,
    ) -> None:
        self.seq = seq
        self.msg_id = msg_id
        self.size = size
        self.message = message
        self.delivery_count = delivery_count
        self.redelivered = redelivered
        self.persisted = persisted


# A persisted message keeps its body in RAM only while it is among the first
# HEAD_WINDOW ready entries of its queue (the ones a consumer will want
# next); deeper entries are read back from the store when delivered.
HEAD_WINDOW = 1024


def store_key(vhost: str, name: str) -> str:
    """Unambiguous for any vhost and queue name (both may contain '/')."""
    return f"{len(vhost)}:{vhost}:{name}"


class Queue:
    def __init__(
        self,
        vhost: str,
        name: str,
        *,
        durable: bool,
        exclusive_owner: object | None,
        auto_delete: bool,
        arguments: dict[str, Any],
        store: Store,
    ) -> None:
        self.vhost = vhost
        self.name = name
        self.durable = durable
        self.exclusive_owner = exclusive_owner
        self.auto_delete = auto_delete
        self.arguments = arguments
        self.store = store
        self.key = store_key(vhost, name)
        self.ready: deque[QueueEntry] = deque()
        self.ready_bytes = 0
        self.unacked = 0
        self.consumers: list[Consumer] = []
        self.had_consumers = False
        self.deleted = False
        self.next_seq = 1
        self._rr = 0
        # stats for management
        self.published = 0
        self.delivered = 0
        self.acked = 0

    # ---------------------------------------------------------- counts

    @property
    def message_count(self) -> int:
        return len(self.ready)

    @property
    def consumer_count(self) -> int:
        return len(self.consumers)

    # ---------------------------------------------------------- enqueue

    def enqueue(self, message: Message) -> bool:
        """Append a message; True when it was written to a durable store."""
        seq = self.next_seq
        self.next_seq = seq + 1
        size = len(message.body)
        if self.durable and message.persistent:
            self.store.enqueue(
                self.key,
                StoredEntry(seq, message.msg_id, size=size),
                StoredMessage(
                    message.exchange,
                    message.routing_key,
                    message.properties_raw,
                    message.body,
                ),
            )
            keep = message if len(self.ready) < HEAD_WINDOW else None
            entry = QueueEntry(seq, message.msg_id, size, keep, persisted=True)
        else:
            entry = QueueEntry(seq, message.msg_id, size, message)
        self.ready.append(entry)
        self.ready_bytes += size
        self.published += 1
        return entry.persisted and self.store.durable

    def restore(self, stored: StoredEntry) -> None:
        """Put back an entry recovered from the store at start-up."""
        self.ready.append(
            QueueEntry(
                stored.seq,
                stored.msg_id,
                stored.size,
                None,
                stored.delivery_count,
                stored.redelivered,
                persisted=True,
            )
        )
        self.ready_bytes += stored.size
        if stored.seq >= self.next_seq:
            self.next_seq = stored.seq + 1

    def message_of(self, entry: QueueEntry) -> Message:
        """The entry's message, read back from the store if paged out."""
        message = entry.message
        if message is None:
            stored = self.store.get_message(entry.msg_id)
            message = Message(
                entry.msg_id,
                stored.exchange,
                stored.routing_key,
                stored.properties,
                stored.body,
            )
        return message

    def _persist(self, entry: QueueEntry, redelivered: bool) -> None:
        self.store.update_entry(
            self.key,
            StoredEntry(
                entry.seq,
                entry.msg_id,
                entry.delivery_count,
                redelivered,
                entry.size,
            ),
        )

    def delivered_once(self, entry: QueueEntry) -> None:
        """Record that a persisted entry went out, so that after a crash
        it comes back with ``redelivered`` set (RabbitMQ does the same)."""
        if entry.persisted and not entry.redelivered and not self.deleted:
            self._persist(entry, True)

    def requeue(self, entries: Iterable[QueueEntry]) -> None:
        """Return unacked entries to their original place, redelivered."""
        if self.deleted:
            return
        for entry in sorted(entries, key=lambda e: e.seq, reverse=True):
            self.unacked -= 1
            entry.redelivered = True
            entry.delivery_count += 1
            if entry.persisted:
                self._persist(entry, True)
            ready = self.ready
            if not ready or entry.seq < ready[0].seq:
                ready.appendleft(entry)
            elif entry.seq > ready[-1].seq:
                ready.append(entry)
            else:
                ready.insert(bisect.bisect(ready, entry.seq, key=_seq), entry)
            self.ready_bytes += entry.size

    # ---------------------------------------------------------- dequeue

    def take(self) -> QueueEntry | None:
        """The head entry, now counted as unacked (for basic.get)."""
        if not self.ready:
            return None
        entry = self.ready.popleft()
        self.ready_bytes -= entry.size
        self.unacked += 1
        self.delivered += 1
        return entry

    def settle(self, entry: QueueEntry) -> None:
        """An unacked entry is done (acked, or dropped)."""
        self.unacked -= 1
        self.acked += 1
        if entry.persisted and not self.deleted:
            self.store.remove_entry(self.key, entry.seq, entry.msg_id)

    def purge(self) -> int:
        count = len(self.ready)
        for entry in self.ready:
            if entry.persisted:
                self.store.remove_entry(self.key, entry.seq, entry.msg_id)
        self.ready.clear()
        self.ready_bytes = 0
        return count

    def drop_all(self) -> None:
        """The queue is being deleted: forget everything it holds."""
        self.deleted = True
        self.ready.clear()
        self.ready_bytes = 0
        if self.durable:
            self.store.drop_queue(self.key)

    # -------------------------------------------------------- consumers

    def add_consumer(self, consumer: Consumer) -> None:
        self.consumers.append(consumer)
        self.had_consumers = True

    def remove_consumer(self, consumer: Consumer) -> None:
        try:
            self.consumers.remove(consumer)
        except ValueError:
            pass

    def dispatch(self) -> None:
        """Hand ready entries to consumers with credit, round-robin."""
        consumers = self.consumers
        ready = self.ready
        while ready and consumers:
            count = len(consumers)
            for _ in range(count):
                index = self._rr % count
                self._rr = index + 1
                consumer = consumers[index]
                if consumer.has_credit():
                    break
            else:
                return
            entry = ready.popleft()
            self.ready_bytes -= entry.size
            self.unacked += 1
            self.delivered += 1
            consumer.deliver(self, entry)


def _seq(entry: QueueEntry) -> int:
    return entry.seq
