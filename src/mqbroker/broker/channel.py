"""Per-channel delivery state: consumers, unacked deliveries, prefetch
credit, publisher-confirm sequence numbers and the transaction buffer.

Strategy: unacked deliveries sit in an OrderedDict keyed by delivery tag, so
``ack(multiple=True)`` pops from the front in O(acked) and a single ack is
O(1) (a plain dict degrades when its front is deleted over and over).
Publisher confirms and tx commit-oks are ``confirms.py``'s; a channel
only owns its ``Confirms``. Frames go out through ``ServerConnection``
methods, never into its buffer directly.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from itertools import repeat
from typing import TYPE_CHECKING, Any

from pamqp import commands
from pamqp.base import Frame as PamqpMethod

from mqbroker import errors
from mqbroker.broker.confirms import Confirms
from mqbroker.model.headers import with_header
from mqbroker.model.message import Message
from mqbroker.protocol import codec
from mqbroker.protocol.batch import Record
from mqbroker.protocol.table import Typed
from mqbroker.queues.entry import QueueEntry
from mqbroker.queues.queue import Queue

if TYPE_CHECKING:
    from mqbroker.broker.session import Session


class Consumer:
    __slots__ = (
        "channel",
        "tag",
        "queue",
        "no_ack",
        "exclusive",
        "prefetch",
        "unacked",
        "arguments",
        "priority",
        "prefix",
    )

    def __init__(
        self,
        channel: Channel,
        tag: str,
        queue: Queue,
        *,
        no_ack: bool,
        exclusive: bool,
        prefetch: int,
        arguments: dict[str, Any],
    ) -> None:
        self.channel = channel
        self.tag = tag
        self.queue = queue
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.prefetch = prefetch
        self.unacked = 0
        self.arguments = arguments
        value = arguments.get("x-priority", 0)
        self.priority = value if isinstance(value, int) and not isinstance(value, bool) else 0
        # basic.deliver up to the delivery tag, encoded once (codec.py)
        self.prefix = codec.deliver_prefix(tag)

    def has_credit(self) -> bool:
        channel = self.channel
        if not channel.session.writable or not channel.active:
            return False
        if self.no_ack:
            return True
        if self.prefetch and self.unacked >= self.prefetch:
            return False
        if channel.global_prefetch and channel.unacked_count() >= channel.global_prefetch:
            return False
        return True

    def credit(self) -> int:
        """How many deliveries it may take now (``has_credit`` as a count,
        for queues that hand over a block at once)."""
        channel = self.channel
        if not channel.session.writable or not channel.active:
            return 0
        room = 1 << 20
        if not self.no_ack:
            if self.prefetch:
                room = self.prefetch - self.unacked
            if channel.global_prefetch:
                room = min(room, channel.global_prefetch - channel.unacked_count())
        return max(room, 0)

    def deliver(self, queue: Queue, entry: QueueEntry) -> None:
        self.channel.deliver(self, queue, entry)

    def deliver_records(self, queue: Queue, records: Sequence[Record]) -> None:
        self.channel.deliver_records(self, queue, records)

    def cancelled_by_server(self) -> None:
        """Its queue was deleted: forget it, and tell a client that asked
        for ``consumer_cancel_notify``."""
        chan = self.channel
        chan.consumers.pop(self.tag, None)
        if chan.session.cancel_notify:
            chan.session.broker.pending_cancels.append(self._notify_cancel)

    def _notify_cancel(self) -> None:
        chan = self.channel
        if not chan.closed and chan.session.conn.is_channel_open(chan.id):
            chan.send(commands.Basic.Cancel(consumer_tag=self.tag, nowait=True))


class Delivery:
    """An unacked delivery. A block of stored records (``deliver_records``:
    consecutive offsets under consecutive tags) shares one Delivery whose
    entry is the block's first offset and ``first_tag`` its first tag;
    ``at_tag`` gives one tag's own view."""

    __slots__ = ("queue", "entry", "consumer", "at", "first_tag")

    def __init__(
        self, queue: Queue, entry: QueueEntry, consumer: Consumer | None, at: float,
        first_tag: int = 0,
    ) -> None:
        self.queue = queue
        self.entry = entry
        self.consumer = consumer
        self.at = at  # monotonic seconds, for the consumer timeout
        self.first_tag = first_tag

    def at_tag(self, tag: int) -> Delivery:
        if not self.first_tag:
            return self
        entry = QueueEntry(self.entry.seq + tag - self.first_tag, 0, 0, None)
        return Delivery(self.queue, entry, self.consumer, self.at)


def with_delivery_count(message: Message, count: int) -> Message:
    """The message as a quorum queue delivers it: ``x-delivery-count``
    (set on the raw headers, so the publisher's value types are kept)."""
    try:
        return with_header(message, "x-delivery-count", Typed("l", count))
    except ValueError:  # multi-word property flags: decode and re-encode
        pass
    props = message.props
    copy = commands.Basic.Properties.__new__(commands.Basic.Properties)
    for name in commands.Basic.Properties.__slots__:
        setattr(copy, name, getattr(props, name, None))
    copy.cluster_id = ""
    headers: dict[str, Any] = dict(props.headers or {})
    headers["x-delivery-count"] = Typed("l", count)
    copy.headers = headers
    return message.with_properties(copy)


class Channel:
    def __init__(self, session: Session, channel_id: int) -> None:
        self.session = session
        self.id = channel_id
        self.active = True
        self.consumers: dict[str, Consumer] = {}
        self.unacked: OrderedDict[int, Delivery] = OrderedDict()
        self.next_tag = 1
        # basic.qos: global=false sets the limit for consumers created
        # later; global=true is one limit shared by the whole channel.
        self.consumer_prefetch = 0
        self.global_prefetch = 0
        self.confirms = Confirms(session.broker.confirms, self.send)
        self.tx = False
        self.tx_publishes: list[Any] = []
        self.tx_acks: list[tuple[str, int, bool, bool]] = []
        self.last_queue = ""
        self.closed = False
        # direct reply-to consumer on this channel, if any
        self.reply_token: str | None = None
        self.reply_tag: str | None = None

    def unacked_count(self) -> int:
        return len(self.unacked)

    def send(self, method: PamqpMethod) -> None:
        self.session.conn.send_method(self.id, method)
        self.session.output_ready()

    # --------------------------------------------------------- delivery

    def deliver(self, consumer: Consumer, queue: Queue, entry: QueueEntry) -> None:
        tag = self.next_tag
        self.next_tag = tag + 1
        message = entry.message or queue.message_of(entry)
        if entry.delivery_count and queue.settings.counts_deliveries:
            message = with_delivery_count(message, entry.delivery_count)
        session = self.session
        session.conn.send_delivery(
            self.id,
            consumer.prefix,
            tag,
            entry.redelivered,
            codec.route_suffix(message.exchange, message.routing_key),
            message.properties_raw,
            message.body,
        )
        if consumer.no_ack:
            queue.settle(entry)
            if entry.persisted:
                session.broker.confirms.consumed(entry.msg_id)
        else:
            consumer.unacked += 1
            self.unacked[tag] = Delivery(queue, entry, consumer, session.broker.clock())
            if entry.persisted and not entry.redelivered:
                queue.delivered_once(entry)
        session.output_ready()

    def deliver_records(self, consumer: Consumer, queue: Queue, records: Sequence[Record]) -> None:
        """A block of stored deliveries (a stream's: consecutive offsets),
        written in one pass and tracked as one ``Delivery`` under each of
        its tags (its message is read back only if someone browses it)."""
        tag = self.next_tag
        self.next_tag = tag + len(records)
        session = self.session
        session.conn.send_deliveries(self.id, consumer.prefix, tag, records)
        entry = QueueEntry(records[0][0], 0, 0, None)
        if consumer.no_ack:
            for _record in records:
                queue.settle(entry)
        else:
            # one Delivery for the block (offsets and tags both consecutive)
            delivery = Delivery(queue, entry, consumer, session.broker.clock(), tag)
            self.unacked.update(zip(range(tag, tag + len(records)), repeat(delivery)))
            consumer.unacked += len(records)
        session.output_ready()

    def deliver_direct(self, consumer_tag: str, message: Message) -> None:
        """A direct reply-to delivery: no queue, no ack, nothing stored."""
        tag = self.next_tag
        self.next_tag = tag + 1
        self.session.conn.send_delivery(
            self.id,
            codec.deliver_prefix(consumer_tag),
            tag,
            False,
            codec.route_suffix(message.exchange, message.routing_key),
            message.properties_raw,
            message.body,
        )
        self.session.output_ready()

    def send_get_ok(self, queue: Queue, entry: QueueEntry, no_ack: bool) -> None:
        tag = self.next_tag
        self.next_tag = tag + 1
        message = queue.message_of(entry)
        if queue.settings.counts_deliveries:
            message = with_delivery_count(message, entry.delivery_count)
        self.session.conn.send_get_ok(
            self.id,
            tag,
            entry.redelivered,
            message.exchange,
            message.routing_key,
            queue.message_count,
            message.properties_raw,
            message.body,
        )
        if no_ack:
            queue.settle(entry)
        else:
            self.unacked[tag] = Delivery(queue, entry, None, self.session.broker.clock())
            queue.delivered_once(entry)
        self.session.output_ready()

    # ------------------------------------------------------------- acks

    def _take(self, tag: int, multiple: bool) -> list[Delivery]:
        unacked = self.unacked
        if multiple:
            if tag == 0:
                taken = list(unacked.values())
                unacked.clear()
                return taken
            if tag not in unacked and (not unacked or tag < next(iter(unacked))):
                raise errors.PreconditionFailed(f"unknown delivery tag {tag}")
            taken = []
            while unacked:
                first = next(iter(unacked))
                if first > tag:
                    break
                taken.append(unacked.popitem(last=False)[1])
            return taken
        delivery = unacked.pop(tag, None)
        if delivery is None:
            raise errors.PreconditionFailed(f"unknown delivery tag {tag}")
        return [delivery]

    def _released(self, delivery: Delivery) -> None:
        consumer = delivery.consumer
        if consumer is not None:
            consumer.unacked -= 1
        self.session.broker.mark_dirty(delivery.queue)

    def ack(self, tag: int, multiple: bool) -> bool:
        """Settle; True when a durable store write resulted."""
        wrote = False
        broker = self.session.broker
        dirty = broker.dirty
        for delivery in self._take(tag, multiple):
            entry = delivery.entry
            queue = delivery.queue
            queue.settle(entry)
            if entry.persisted:
                wrote = True
                broker.confirms.consumed(entry.msg_id)
            consumer = delivery.consumer  # _released, inlined: once per ack
            if consumer is not None:
                consumer.unacked -= 1
            dirty[queue] = None
        return wrote

    def reject(self, tag: int, multiple: bool, requeue: bool) -> bool:
        taken = self._take(tag, multiple)
        for delivery in taken:
            delivery.queue.check_reject()
        if requeue:
            self.requeue(taken)
            return any(d.entry.persisted for d in taken)
        wrote = False
        for delivery in taken:
            delivery.queue.reject(delivery.entry)
            wrote |= delivery.entry.persisted
            self._released(delivery)
        return wrote

    def requeue(self, deliveries: list[Delivery]) -> None:
        by_queue: dict[int, tuple[Queue, list[QueueEntry]]] = {}
        for delivery in deliveries:
            by_queue.setdefault(id(delivery.queue), (delivery.queue, []))[1].append(
                delivery.entry
            )
            self._released(delivery)
        for queue, entries in by_queue.values():
            queue.requeue(entries)

    def recover(self) -> None:
        deliveries = list(self.unacked.values())
        self.unacked.clear()
        self.requeue(deliveries)

    # ------------------------------------------------------------ close

    def close(self) -> None:
        """Channel gone: cancel consumers, requeue what was unacked."""
        self.closed = True
        for consumer in list(self.consumers.values()):
            self.session.remove_consumer(consumer)
        self.consumers.clear()
        self.recover()
        self.confirms.close()
        self.session.broker.direct_reply.cancel(self)
