"""A queue: ready messages in order, its consumers, and its store writes.

Strategy: ready entries sit in a ``Fifo`` (or one per priority) ordered by
``seq``; a requeued entry keeps its seq and goes back to its place, which is
RabbitMQ's classic-queue behaviour (quorum queues requeue at the back). A
consumer is picked round-robin among the highest-priority consumers with
credit; when none has credit, ``dispatch()`` stops at once and is called
again when credit returns (ack, qos, drained socket). Persistent messages in
a durable queue go through the ``Store``; everything else lives only here.

Policies (TTL, length limits, delivery limits, dead-lettering) are read
from one frozen ``QueueSettings``. Removing a message for a reason
("expired", "maxlen", "rejected", "delivery_limit") always goes through
``_discard()``, which hands it to the dead-letter hook first, so no message
leaves a queue without a reason.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from mqbroker.model.dedup import dedup_key
from mqbroker.model.keys import store_key
from mqbroker.model.message import Message
from mqbroker.persistence.store import Store, StoredEntry, StoredMessage
from mqbroker.queues.consumer import Consumer
from mqbroker.queues.dedup import QueueDedup
from mqbroker.queues.entry import QueueEntry
from mqbroker.queues.ready import Fifo, PriorityReady, Ready
from mqbroker.queues.settings import QueueSettings

# A persisted message keeps its body in RAM only while it is among the first
# HEAD_WINDOW ready entries of its queue (the ones a consumer will want
# next); deeper entries are read back from the store when delivered.
HEAD_WINDOW = 1024

# -> True when every target queue took the copy (what at-least-once waits for)
DeadLetterHook = Callable[["Queue", Message, str], bool]


def _no_dead_letter(queue: Queue, message: Message, reason: str) -> bool:
    return False


def _no_hook(queue: Queue) -> None:
    pass


# At-least-once dead letters no target took are offered again this often.
DLX_RETRY_MS = 1000


class Queue:
    # Whether a publish should trigger a dispatch pass (a stream's new
    # entries only become readable once committed).
    dispatch_on_offer = True
    # 1: a durable offer writes a store entry whose ack may confirm the
    # publish before the commit (confirms.py's early confirms); 0 for a
    # queue type whose entries are readable only once committed.
    early_confirms = 1
    # offer_run: a run of plain publishes in one call (durable, always
    # accepted, nothing to dispatch at once: a stream's log)
    takes_runs = False

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
        settings: QueueSettings | None = None,
        now_ms: int = 0,
    ) -> None:
        self.vhost = vhost
        self.name = name
        self.durable = durable
        self.exclusive_owner = exclusive_owner
        self.auto_delete = auto_delete
        self.arguments = arguments
        self.store = store
        self.key = store_key(vhost, name)
        self.settings = settings or QueueSettings.build(arguments)
        self.ready: Ready = (
            PriorityReady(self.settings.max_priority)
            if self.settings.max_priority
            else Fifo()
        )
        self.ready_bytes = 0
        self.unacked = 0
        # x-message-deduplication: keys of the messages held (queues/dedup.py, model/dedup.py)
        self.dedup: QueueDedup | None = QueueDedup() if self.settings.deduplication else None
        self.consumers: list[Consumer] = []
        self.had_consumers = False
        self.deleted = False
        self.next_seq = 1
        self._rr = 0
        self._rr_by_priority: dict[int, int] = {}
        self.on_dead_letter: DeadLetterHook = _no_dead_letter
        # at-least-once dead letters no target took yet: (entry, reason)
        self.dlx_pending: deque[tuple[QueueEntry, str]] = deque()
        # Called when the last consumer goes: x-expires counts from then.
        self.on_unused: Callable[[Queue], None] = _no_hook
        self.last_used_ms = now_ms
        # counters for management and metrics
        self.published = 0
        self.delivered = 0
        self.acked = 0
        self.dead_lettered = 0
        self.expired = 0
        self.rejected_publishes = 0

    # ---------------------------------------------------------- counts

    @property
    def message_count(self) -> int:
        return len(self.ready)

    @property
    def consumer_count(self) -> int:
        return len(self.consumers)

    def entries(self) -> Iterator[QueueEntry]:
        """Ready entries in delivery order (read-only view)."""
        return iter(self.ready)

    def apply_settings(self, settings: QueueSettings) -> None:
        """A policy changed: new limits apply from now on."""
        old = self.settings
        self.settings = settings
        if settings.deduplication != (self.dedup is not None):
            self.dedup = QueueDedup() if settings.deduplication else None
            if self.dedup is not None:
                for entry in self.ready:
                    self.dedup.add(dedup_key(self.message_of(entry)), entry.msg_id)
        if (settings.max_priority or None) != (old.max_priority or None):
            entries = list(self.ready)
            self.ready = (
                PriorityReady(settings.max_priority) if settings.max_priority else Fifo()
            )
            for entry in sorted(entries, key=lambda e: e.seq):
                self.ready.append(entry)
        self._enforce_length()

    # ---------------------------------------------------------- enqueue

    def _would_overflow(self, size: int) -> bool:
        st = self.settings
        if st.max_length is not None and len(self.ready) >= st.max_length:
            return True
        return (
            st.max_length_bytes is not None
            and self.ready_bytes + size > st.max_length_bytes
        )

    def offer(
        self, message: Message, now_ms: int, ttl_ms: int | None = None
    ) -> tuple[bool, bool]:
        """Add a message -> (accepted, wrote to the durable store)."""
        st = self.settings
        size = len(message.body)
        if st.overflow != "drop-head" and st.has_length_limit and self._would_overflow(size):
            self.rejected_publishes += 1
            if st.overflow == "reject-publish-dlx":
                self.dead_lettered += 1
                self.on_dead_letter(self, message, "maxlen")
            return False, False
        dedup = self.dedup
        if dedup is not None:
            duplicate, key = dedup.is_duplicate(message)
            if duplicate:  # dropped, but the publisher gets its ack
                return True, False
            dedup.add(key, message.msg_id)
        ttl = st.message_ttl
        if ttl_ms is not None and (ttl is None or ttl_ms < ttl):
            ttl = ttl_ms
        expires_at = now_ms + ttl if ttl is not None else 0
        priority = 0
        if st.max_priority:
            priority = min(message.priority, st.max_priority)
        seq = self.next_seq
        self.next_seq = seq + 1
        if self.durable and message.persistent:
            self.store.enqueue(
                self.key,
                StoredEntry(seq, message.msg_id, size=size, expires_at=expires_at),
                StoredMessage(
                    message.exchange,
                    message.routing_key,
                    message.properties_raw,
                    message.body,
                ),
            )
            keep = message if len(self.ready) < HEAD_WINDOW else None
            entry = QueueEntry(
                seq, message.msg_id, size, keep, persisted=True,
                expires_at=expires_at, priority=priority,
            )
        else:
            entry = QueueEntry(
                seq, message.msg_id, size, message,
                expires_at=expires_at, priority=priority,
            )
        self.ready.append(entry)
        self.ready_bytes += size
        self.published += 1
        if (ttl == 0 or st.has_length_limit) and self.consumers and len(self.ready) == 1:
            # RabbitMQ hands a message to a waiting consumer before it
            # applies a TTL of 0 or a length limit of 0: deliver it now,
            # whatever its expiry says.
            consumer = self._pick()
            if consumer is not None:
                self._pop()
                self.unacked += 1
                self.delivered += 1
                consumer.deliver(self, entry)
        if ttl == 0:
            # Expiry is "at or before now" (RabbitMQ's rule), so a TTL of 0
            # that found no consumer is gone (or dead-lettered) before the
            # publish is confirmed, and can never reach a later consumer.
            self.expire(now_ms)
        if st.has_length_limit:
            self._enforce_length()
        return True, entry.persisted and self.store.durable

    def enqueue(self, message: Message) -> bool:
        """Add a message with no TTL context (tests, admin); True: durable."""
        return self.offer(message, self.last_used_ms)[1]

    def _enforce_length(self) -> None:
        st = self.settings
        # Only drop-head removes messages to get under the limit: with
        # reject-publish a requeue (or a lowered limit) may leave the queue
        # over it, as in RabbitMQ.
        if not st.has_length_limit or st.overflow != "drop-head":
            return
        ready = self.ready
        while ready and (
            (st.max_length is not None and len(ready) > st.max_length)
            or (st.max_length_bytes is not None and self.ready_bytes > st.max_length_bytes)
        ):
            self._discard(self._pop(), "maxlen")

    def restore(self, stored: StoredEntry) -> QueueEntry:
        """Put back an entry recovered from the store at start-up."""
        entry = QueueEntry(
            stored.seq,
            stored.msg_id,
            stored.size,
            None,
            stored.delivery_count,
            stored.redelivered,
            persisted=True,
            expires_at=stored.expires_at,
        )
        if self.settings.max_priority:
            entry.priority = min(self.message_of(entry).priority, self.settings.max_priority)
        if self.dedup is not None:
            self.dedup.add(dedup_key(self.message_of(entry)), entry.msg_id)
        self.ready.append(entry)
        self.ready_bytes += stored.size
        if stored.seq >= self.next_seq:
            self.next_seq = stored.seq + 1
        return entry

    def recovered(self) -> None:
        """Start-up is over (every queue and binding is back): a queue that
        came back over its drop-head limit (unacked messages return as
        ready) drops its head now, as RabbitMQ does when it starts one."""
        self._enforce_length()

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
                entry.expires_at,
            ),
        )

    def offer_run(
        self, exchange: str, routing_key: str, items: list[tuple[bytes, bytes]], now_ms: int
    ) -> None:
        """Only where ``takes_runs``: (raw properties, body) messages with
        no headers, expiration, user_id or reply_to, all accepted."""
        raise NotImplementedError

    def delivered_once(self, entry: QueueEntry) -> None:
        """Record that a persisted entry went out, so that after a crash
        it comes back with ``redelivered`` set (RabbitMQ does the same)."""
        if entry.persisted and not entry.redelivered and not self.deleted:
            self._persist(entry, True)

    # --------------------------------------------------------- removal

    def _pop(self) -> QueueEntry:
        entry = self.ready.popleft()
        self.ready_bytes -= entry.size
        return entry

    def _forget(self, entry: QueueEntry) -> None:
        if self.dedup is not None:
            self.dedup.release(entry.msg_id)
        if entry.persisted and not self.deleted:
            self.store.remove_entry(self.key, entry.seq, entry.msg_id)

    def _discard(self, entry: QueueEntry, reason: str) -> None:
        """A ready or unacked entry leaves for a reason: dead-letter it."""
        if reason == "expired":
            self.expired += 1
        self.dead_lettered += 1
        if self.deleted:
            self._forget(entry)
            return
        message = self.message_of(entry)
        if self.on_dead_letter(self, message, reason) or not self.settings.at_least_once:
            self._forget(entry)
            return
        # at-least-once: the message stays (stored, not ready) until a
        # dead-letter target takes it; retried on the timer.
        self.dlx_pending.append((entry, reason))

    def retry_dead_letters(self) -> int:
        """At-least-once: offer held dead letters again; how many left."""
        pending, self.dlx_pending = self.dlx_pending, deque()
        for entry, reason in pending:
            if not self.deleted and self.on_dead_letter(self, self.message_of(entry), reason):
                self._forget(entry)
            elif not self.deleted:
                self.dlx_pending.append((entry, reason))
        return len(self.dlx_pending)

    def expire(self, now_ms: int) -> int:
        """Drop expired entries at the head (RabbitMQ expires only there)."""
        if self.dlx_pending:
            self.last_used_ms = now_ms
            self.retry_dead_letters()
        ready = self.ready
        count = 0
        while ready:
            head = ready.peek()
            if not head.expires_at or head.expires_at > now_ms:
                break
            self._discard(self._pop(), "expired")
            count += 1
        return count

    def next_deadline(self) -> int | None:
        """Wall-clock ms at which this queue needs ``on_timer`` again."""
        deadline = self.last_used_ms + DLX_RETRY_MS if self.dlx_pending else None
        if self.ready:
            head = self.ready.peek()
            if head.expires_at:
                deadline = head.expires_at if deadline is None else min(deadline, head.expires_at)
        expires = self.settings.expires
        if expires is not None and not self.consumers:
            idle = self.last_used_ms + expires
            deadline = idle if deadline is None else min(deadline, idle)
        return deadline

    def idle_expired(self, now_ms: int) -> bool:
        expires = self.settings.expires
        return (
            expires is not None
            and not self.consumers
            and now_ms >= self.last_used_ms + expires
        )

    def requeue(self, entries: Iterable[QueueEntry]) -> None:
        """Return unacked entries: back to their place, redelivered, or
        dead-lettered once they have failed more than the delivery limit."""
        if self.deleted:
            for _ in entries:
                self.unacked -= 1
            return
        limit = self.settings.delivery_limit
        quorum = self.settings.quorum
        for entry in sorted(entries, key=lambda e: e.seq, reverse=not quorum):
            self.unacked -= 1
            entry.redelivered = True
            entry.delivery_count += 1
            if limit is not None and entry.delivery_count > limit:
                self._discard(entry, "delivery_limit")
                continue
            if quorum:
                self._to_back(entry)
            else:
                if entry.persisted:
                    self._persist(entry, True)
                self.ready.put_back(entry)
            self.ready_bytes += entry.size
        if self.settings.has_length_limit:
            self._enforce_length()

    def _to_back(self, entry: QueueEntry) -> None:
        """Quorum semantics: a returned message goes to the back."""
        old_seq = entry.seq
        entry.seq = self.next_seq
        self.next_seq += 1
        if entry.persisted:
            message = self.message_of(entry)
            self.store.enqueue(
                self.key,
                StoredEntry(
                    entry.seq, entry.msg_id, entry.delivery_count, True,
                    entry.size, entry.expires_at,
                ),
                StoredMessage(
                    message.exchange, message.routing_key,
                    message.properties_raw, message.body,
                ),
            )
            self.store.remove_entry(self.key, old_seq, entry.msg_id)
        self.ready.append(entry)

    # ---------------------------------------------------------- dequeue

    def take(self, now_ms: int) -> QueueEntry | None:
        """The head entry, now counted as unacked (for basic.get)."""
        self.last_used_ms = now_ms
        self.expire(now_ms)
        if not self.ready:
            return None
        entry = self._pop()
        self.unacked += 1
        self.delivered += 1
        return entry

    def settle(self, entry: QueueEntry) -> None:
        """An unacked entry is done (acked, or dropped)."""
        self.unacked -= 1
        self.acked += 1
        self._forget(entry)

    def reject(self, entry: QueueEntry, reason: str = "rejected") -> None:
        """An unacked entry was rejected without requeue."""
        self.unacked -= 1
        self._discard(entry, reason)

    def purge(self) -> int:
        count = len(self.ready)
        for entry in self.ready:
            self._forget(entry)
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

    def check_consumer(self, *, no_ack: bool, prefetch: int) -> None:
        """Refuse a consumer this queue type cannot serve (streams)."""

    def check_reject(self) -> None:
        """Refuse basic.nack/basic.reject where the type has none."""

    def add_consumer(self, consumer: Consumer) -> None:
        consumers = self.consumers
        index = len(consumers)
        while index and consumers[index - 1].priority < consumer.priority:
            index -= 1
        consumers.insert(index, consumer)
        self.had_consumers = True

    def remove_consumer(self, consumer: Consumer) -> None:
        try:
            self.consumers.remove(consumer)
        except ValueError:
            return
        if not self.consumers:
            self.on_unused(self)

    @property
    def active_consumer(self) -> Consumer | None:
        if self.settings.single_active_consumer and self.consumers:
            return self.consumers[0]
        return None

    def _pick(self) -> Consumer | None:
        consumers = self.consumers
        if self.settings.single_active_consumer:
            first = consumers[0]
            return first if first.has_credit() else None
        count = len(consumers)
        if consumers[0].priority == consumers[-1].priority:
            for _ in range(count):
                index = self._rr % count
                self._rr = index + 1
                consumer = consumers[index]
                if consumer.has_credit():
                    return consumer
            return None
        start = 0
        while start < count:
            priority = consumers[start].priority
            end = start
            while end < count and consumers[end].priority == priority:
                end += 1
            size = end - start
            rr = self._rr_by_priority.get(priority, 0)
            for step in range(size):
                index = start + (rr + step) % size
                if consumers[index].has_credit():
                    self._rr_by_priority[priority] = (rr + step + 1) % size
                    return consumers[index]
            start = end
        return None

    def dispatch(self, now_ms: int) -> None:
        """Hand ready entries to consumers with credit."""
        ready = self.ready
        if not ready or not self.consumers:
            return
        while ready:
            # Per-message TTL can be set on any queue: always check the head.
            head = ready.peek()
            if head.expires_at and head.expires_at <= now_ms:
                self._discard(self._pop(), "expired")
                continue
            consumer = self._pick()
            if consumer is None:
                return
            entry = self._pop()
            self.unacked += 1
            self.delivered += 1
            consumer.deliver(self, entry)
