"""Message operations of the management API: publish, get, browse.

Strategy: every function is synchronous, does no I/O and runs on the
broker's loop thread, so each call is atomic with respect to all other
broker work; the HTTP layer only awaits *after* a call (for the commit it
produced: the returned epoch). Publishing is the publish pipeline's
(``publish.py``), so an HTTP publish gets the same permission checks,
TTL, delay and deduplication as ``basic.publish``. The one place that
turns a queue entry into its ``Message`` is ``message_of``: entries of
persisted messages may stop carrying their body in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pamqp import commands

from mqbroker import errors
from mqbroker.model.message import Message
from mqbroker.protocol import codec
from mqbroker.queues.entry import QueueEntry
from mqbroker.queues.queue import Queue

if TYPE_CHECKING:
    from mqbroker.broker.broker import Broker
    from mqbroker.broker.channel import Channel, Delivery
    from mqbroker.broker.vhost import VHost

ACKMODES = (
    "ack_requeue_true",
    "reject_requeue_true",
    "ack_requeue_false",
    "reject_requeue_false",
)


def message_of(queue: Queue, entry: QueueEntry) -> Message:
    """The message an entry refers to, read back if it is paged out."""
    return queue.message_of(entry)


def entry_size(queue: Queue, entry: QueueEntry) -> int:
    return entry.size


def entries(queue: Queue) -> Iterator[QueueEntry]:
    """Ready entries in delivery order, read-only."""
    return queue.entries()


def head(queue: Queue) -> QueueEntry | None:
    return queue.ready.peek() if queue.ready else None


def get_vhost(broker: Broker, name: str) -> VHost:
    vhost = broker.vhosts.get(name)
    if vhost is None:
        raise errors.NotFound(f"no vhost '{name}'")
    return vhost


def get_queue(broker: Broker, vhost: str, name: str) -> Queue:
    return get_vhost(broker, vhost).get_queue(name)


def unacked_of(broker: Broker, queue: Queue) -> list[tuple[Channel, int, Delivery]]:
    """Deliveries of ``queue`` waiting for an ack, on every channel."""
    found = []
    for session in broker.sessions:
        for chan in session.channels.values():
            for tag, delivery in chan.unacked.items():
                if delivery.queue is queue:
                    found.append((chan, tag, delivery.at_tag(tag)))
    return found


# ---------------------------------------------------------------- publish


@dataclass
class Published:
    routed: bool
    queues: list[str]
    epoch: int  # durable once broker.committed_epoch >= epoch (0: now)


def publish(
    broker: Broker,
    vhost_name: str,
    exchange_name: str,
    routing_key: str,
    props: commands.Basic.Properties,
    body: bytes,
    user: str | None = None,
) -> Published:
    """Publish one message through the broker's publish pipeline, with the
    same checks, hooks (delay, dedup) and routing as ``basic.publish``;
    ``user`` None is the broker itself (no permission check)."""
    vhost = get_vhost(broker, vhost_name)
    outcome = broker.publisher.publish(
        user, vhost, exchange_name, routing_key, codec.encode_properties(props), body
    )
    broker.run_dispatch()
    return Published(outcome.routed, list(outcome.queues), outcome.epoch)


def _commit(broker: Broker, wrote: bool) -> int:
    """Ask for a commit; the epoch to wait for (0: nothing to wait for)."""
    if not wrote:
        return 0
    broker.request_commit()
    return broker.write_epoch if broker.store.durable else 0


# -------------------------------------------------------------------- get


@dataclass
class Got:
    message: Message
    redelivered: bool
    message_count: int  # left in the queue after this one was taken


def get_messages(
    broker: Broker, queue: Queue, count: int, ackmode: str
) -> tuple[list[Got], int]:
    """RabbitMQ's management ``get``: take up to ``count`` messages, then
    requeue them (``*_requeue_true``, which marks them redelivered), ack
    them or reject them (dead-lettering). Returns (messages, epoch)."""
    if ackmode not in ACKMODES:
        raise errors.PreconditionFailed(f"unknown ackmode '{ackmode}'")
    taken: list[QueueEntry] = []
    got: list[Got] = []
    for _ in range(max(0, count)):
        entry = broker.take_for_get(queue)
        if entry is None:
            break
        taken.append(entry)
        got.append(Got(message_of(queue, entry), entry.redelivered, queue.message_count))
    wrote = any(e.persisted for e in taken)
    if ackmode.endswith("requeue_true"):
        queue.requeue(taken)
    else:
        for entry in taken:
            if ackmode.startswith("reject"):
                queue.reject(entry, "rejected")  # dead-letters it, if configured
            else:
                queue.settle(entry)
    broker.mark_dirty(queue)
    epoch = _commit(broker, wrote or ackmode.startswith("reject"))
    broker.run_dispatch()
    return got, epoch


# ----------------------------------------------------------------- browse


@dataclass
class Browsed:
    seq: int
    state: str  # "ready" | "unacked"
    message: Message
    redelivered: bool
    delivery_count: int
    consumer_tag: str | None = None
    channel: str | None = None


def _seq(entry: Any) -> int:
    return int(entry.seq)


def browse(
    broker: Broker,
    queue: Queue,
    *,
    after: int = 0,
    limit: int = 50,
    state: str = "ready",
) -> tuple[list[Browsed], int | None]:
    """Messages in seq order after the cursor ``after``, without touching
    them (order, ``redelivered`` and counters stay as they are). Returns
    the page and the cursor for the next page (None at the end)."""
    if state not in ("ready", "unacked", "all"):
        raise errors.PreconditionFailed(f"unknown state '{state}'")
    limit = max(1, limit)
    items: list[Browsed] = []
    if state in ("ready", "all"):
        for entry in entries(queue):
            if entry.seq <= after:
                continue
            if len(items) > limit:
                break
            items.append(
                Browsed(
                    entry.seq,
                    "ready",
                    message_of(queue, entry),
                    entry.redelivered,
                    entry.delivery_count,
                )
            )
    if state in ("unacked", "all"):
        for chan, _tag, delivery in unacked_of(broker, queue):
            entry = delivery.entry
            if entry.seq <= after:
                continue
            consumer = delivery.consumer
            items.append(
                Browsed(
                    entry.seq,
                    "unacked",
                    message_of(queue, entry),
                    entry.redelivered,
                    entry.delivery_count,
                    consumer.tag if consumer is not None else None,
                    f"{chan.session.peer} ({chan.id})",
                )
            )
    items.sort(key=lambda b: b.seq)
    more = len(items) > limit
    items = items[:limit]
    cursor = items[-1].seq if more and items else None
    return items, cursor
