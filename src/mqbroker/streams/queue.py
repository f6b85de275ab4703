"""The stream queue type: a queue whose messages are a log, not a list.

Strategy: ``StreamQueue`` answers the broker through the same interface as
a classic ``Queue`` (offer, dispatch, settle, consumers, counters), so the
publish pipeline, channels and management need no stream branches; what
differs is behind it. A publish appends a record to the ``StreamLog`` (its
own storage, group-committed with the store); every consumer has its own
cursor and reads from the files at its own offset, so nothing is removed
on ack: an ack only returns prefetch credit (and moves a group's committed
offset, ``groups.py``). Entries become readable only once durable, so a
consumer never sees a message whose publish could still be lost.

Operations RabbitMQ refuses on a stream (basic.get, purge, nack/reject,
automatic acks, consuming without a prefetch) raise its errors here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from mqbroker import errors
from mqbroker.model.headers import with_header
from mqbroker.model.message import Message
from mqbroker.persistence.store import Store
from mqbroker.protocol.batch import Record
from mqbroker.queues.consumer import Consumer
from mqbroker.queues.entry import QueueEntry
from mqbroker.queues.queue import Queue
from mqbroker.queues.settings import QueueSettings
from mqbroker.streams import arguments as sargs
from mqbroker.streams.groups import GroupEntry, GroupRegistry, PartitionState
from mqbroker.streams.log import CommitMark, StreamLog
from mqbroker.streams.reader import Entry, LogReader
from mqbroker.streams.record import (
    ENTRY_HEAD,
    FILTER_KEY,
    HEADER_SIZE,
    SUFFIXES,
    RecordTemplates,
    decode_record,
    route_suffix,
)

READ_AHEAD = 128  # entries a cursor holds at most
BLOCK_ENTRIES = 256  # entries a plain consumer is handed per block


class Cursor:
    """One consumer's position: a reader and what it has read ahead."""

    def __init__(self, reader: LogReader, flt: sargs.StreamFilter | None) -> None:
        self.reader = reader
        self.filter = flt
        self.ahead: deque[Entry] = deque()

    def next_entry(self) -> Entry | None:
        if not self.ahead:
            self.ahead.extend(self.reader.read(READ_AHEAD))
        return self.ahead.popleft() if self.ahead else None


class StreamQueue(Queue):
    kind = "stream"
    # New entries are readable only once committed (``committed`` wakes
    # the consumers), so a publish does not make the stream dirty.
    dispatch_on_offer = False
    early_confirms = 0
    takes_runs = True

    def __init__(
        self,
        vhost: str,
        name: str,
        *,
        arguments: dict[str, Any],
        store: Store,
        directory: Path,
        policy: dict[str, Any] | None = None,
        now_ms: int = 0,
    ) -> None:
        super().__init__(
            vhost, name, durable=True, exclusive_owner=None, auto_delete=False,
            arguments=arguments, store=store, settings=QueueSettings.build({}), now_ms=now_ms,
        )
        self.retention = sargs.retention(arguments, policy or {})
        self.log = StreamLog(directory, max_segment_bytes=self.retention.segment_bytes)
        self.cursors: dict[Consumer, Cursor] = {}
        self.now_ms: Callable[[], int] = lambda: now_ms
        # Set by the broker: new entries became readable (dispatch us).
        self.on_ready: Callable[[Queue], None] = lambda q: None
        self._rolled = False
        self._in_batch = False  # added to the store's current batch
        self._templates = RecordTemplates()
        # consumer groups reading this stream (streams/groups.py)
        self.groups: GroupRegistry | None = None
        self.group_states: list[PartitionState] = []

    # ----------------------------------------------------- the interface

    @property
    def message_count(self) -> int:
        return self.log.stats().messages

    def check_consumer(self, *, no_ack: bool, prefetch: int) -> None:
        where = f"queue '{self.name}' in vhost '{self.vhost}'"
        if no_ack:
            raise errors.NotImplemented_(
                f"automatic acknowledgement not supported by stream queues {where}"
            )
        if not prefetch:
            raise errors.PreconditionFailed(f"consumer prefetch count is not set for '{where}'")

    def refuse(self, operation: str) -> errors.AMQPError:
        return errors.NotImplemented_(
            f"{operation} not supported by stream queues queue '{self.name}' in vhost '{self.vhost}'"
        )

    def offer(
        self, message: Message, now_ms: int, ttl_ms: int | None = None
    ) -> tuple[bool, bool]:
        value = None
        raw = message.properties_raw
        if FILTER_KEY in raw:  # decode only when it can be there
            found = (message.headers or {}).get("x-stream-filter-value")
            if isinstance(found, bytes | bytearray):
                found = bytes(found).decode("utf-8", "replace")
            value = found if isinstance(found, str) else None
        template = self._templates.get(message.exchange, message.routing_key, raw, value)
        log = self.log
        # the record with x-stream-offset stamped into its properties
        payload = b"".join(
            (template[0], log.next_offset.to_bytes(8, "big", signed=True), template[1], message.body)
        )
        if log.append(payload, now_ms)[1]:
            self._rolled = True
        if not self._in_batch:  # once per store batch (commit_mark resets)
            self._in_batch = True
            self.store.add_log(self)
        self.published += 1
        return True, True

    def offer_run(
        self, exchange: str, routing_key: str, items: list[tuple[bytes, bytes]], now_ms: int
    ) -> None:
        """Plain messages of one publish run (no headers, so no filter
        value), appended in one pass: the same records ``offer`` writes."""
        get = self._templates.get
        pieces = []
        last_raw: bytes | None = None
        before = after = b""
        for raw, body in items:
            if raw != last_raw:
                before, after = get(exchange, routing_key, raw, None)
                last_raw = raw
            pieces.append((before, after, body))
        if self.log.append_stamped(pieces, now_ms):
            self._rolled = True
        if not self._in_batch:
            self._in_batch = True
            self.store.add_log(self)
        self.published += len(items)

    # LogSync: the store commits our log with its batch.
    def commit_mark(self) -> CommitMark:
        self._in_batch = False
        return self.log.commit_mark()

    def sync(self, mark: CommitMark) -> None:
        self.log.sync(mark)

    def committed(self, mark: CommitMark) -> None:
        news = self.log.committed(mark)
        if self._rolled:
            self._rolled = False
            self.apply_retention(self.now_ms())
        if news and self.consumers:
            self.on_ready(self)

    def apply_policy(self, definition: dict[str, Any]) -> None:
        """Policies win over arguments (RabbitMQ); new segments take the
        new size, retention applies from the next check on."""
        self.retention = sargs.retention(self.arguments, definition)
        self.log.max_segment_bytes = self.retention.segment_bytes
        self.apply_retention(self.now_ms())

    def apply_retention(self, now_ms: int) -> int:
        r = self.retention
        if r.max_bytes is None and r.max_age_ms is None:
            return 0
        return self.log.apply_retention(max_bytes=r.max_bytes, max_age_ms=r.max_age_ms, now_ms=now_ms)

    def expire(self, now_ms: int) -> int:
        """The broker's timer: age retention (RabbitMQ checks it on a timer
        and on segment roll)."""
        return self.apply_retention(now_ms)

    def next_deadline(self) -> int | None:
        age = self.retention.max_age_ms
        if age is None or len(self.log.segments) < 2:
            return None
        return self.log.segments[0].last_ts + age + 1

    def idle_expired(self, now_ms: int) -> bool:
        return False

    # --------------------------------------------------------- consumers

    def start_offset(self, spec: sargs.StartSpec) -> int:
        log = self.log
        first, nxt = log.first_offset, log.committed_next
        if spec.kind == "first":
            return first
        if spec.kind == "last":
            return max(first, nxt - 1)
        if spec.kind == "offset":
            return min(max(spec.value, first), nxt)
        if spec.kind == "timestamp":
            return log.offset_for_timestamp(spec.value)
        return nxt

    def new_cursor(self, offset: int, flt: sargs.StreamFilter | None) -> Cursor:
        return Cursor(self.log.reader(offset), flt)

    def add_consumer(self, consumer: Consumer) -> None:
        args = consumer.arguments
        spec = sargs.start_spec(args.get("x-stream-offset"), self.now_ms())
        flt = sargs.consume_filter(args)
        self.cursors[consumer] = self.new_cursor(self.start_offset(spec), flt)
        super().add_consumer(consumer)

    def remove_consumer(self, consumer: Consumer) -> None:
        if self.groups is not None and consumer in self.groups.member_of:
            self.groups.leave(consumer)
            return
        cursor = self.cursors.pop(consumer, None)
        if cursor is not None:
            cursor.reader.close()
        super().remove_consumer(consumer)

    def dispatch(self, now_ms: int) -> None:
        for consumer, cursor in list(self.cursors.items()):
            if cursor.filter is None and not cursor.ahead:
                self._feed_plain(consumer, cursor)
            else:
                self._feed(consumer, cursor, None)
        for state in self.group_states:
            if state.owner is not None and state.cursor is not None:
                self._feed(state.owner, state.cursor, state)

    def _feed(self, consumer: Consumer, cursor: Cursor, state: PartitionState | None) -> None:
        flt = cursor.filter
        while consumer.has_credit():
            entry = cursor.next_entry()
            if entry is None:
                return
            exchange, key, value, props, body = decode_record(entry.payload)
            if flt is not None and not flt.passes(value):
                continue
            message = Message(0, exchange, key, props, body)
            self.unacked += 1
            self.delivered += 1
            if state is None:
                consumer.deliver(self, QueueEntry(entry.offset, 0, len(body), message))
                continue
            if state.group.super_stream is not None:
                message = with_header(message, "x-stream-partition", self.name)
            delivery = GroupEntry(entry.offset, 0, len(body), message)
            delivery.state, delivery.generation = state, state.generation
            state.delivered(entry.offset)
            consumer.deliver(self, delivery)

    def _feed_plain(self, consumer: Consumer, cursor: Cursor) -> None:
        """A consumer with no filter and no group: blocks of entries,
        sliced out of one read each (one unpack per entry covers its
        header and its record's head), handed over in one call."""
        reader = cursor.reader
        unpack = ENTRY_HEAD.unpack_from
        suffixes = SUFFIXES
        while True:
            room = consumer.credit()
            if room <= 0:
                return
            data, count = reader.read_raw(min(room, BLOCK_ENTRIES))
            if not count:
                return
            view = memoryview(data)
            records: list[Record] = []
            pos, end, taken = 0, len(data), 0
            while taken < count and end - pos >= ENTRY_HEAD.size:
                length, _crc, offset, _ts, elen, klen, flen, plen = unpack(data, pos)
                stop = pos + HEADER_SIZE + length
                if stop > end:
                    break
                at = pos + ENTRY_HEAD.size
                route = data[at : at + elen + klen]
                suffix = suffixes.get(route)
                if suffix is None or suffix[0] != elen:
                    suffix = route_suffix(route, elen)
                at += elen + klen + (flen - 1 if flen else 0)
                records.append((offset, suffix, view[at : at + plen], view[at + plen : stop]))
                pos = stop
                taken += 1
            reader.advance(pos, taken)
            if not taken:  # nothing whole to read (a torn file): wait
                return
            self.unacked += taken
            self.delivered += taken
            consumer.deliver_records(self, records)

    def message_of(self, entry: QueueEntry) -> Message:
        """A delivery handed over as a record (``_feed_plain``) carries no
        message: read it back from the log (browsing unacked deliveries)."""
        if entry.message is not None:
            return entry.message
        reader = self.log.reader(entry.seq)
        try:
            found = reader.read(1)
        finally:
            reader.close()
        if not found or found[0].offset != entry.seq:  # retention dropped it
            return Message(0, "", "", b"\x00\x00", b"")
        exchange, key, _value, props, body = decode_record(found[0].payload)
        return Message(0, exchange, key, props, body)

    def settle(self, entry: QueueEntry) -> None:
        self.unacked -= 1
        self.acked += 1
        if isinstance(entry, GroupEntry):
            state = entry.state
            state.acked(entry)
            # The member's credit is shared by every partition it owns:
            # wake them all, or the first would starve the others.
            for other in state.group.states:
                if other.owner is state.owner and other is not state:
                    other.partition.on_ready(other.partition)

    def requeue(self, entries: Iterable[QueueEntry]) -> None:
        """A channel closed with deliveries unacked: a stream keeps every
        message anyway; a new consumer chooses where to start."""
        self.unacked -= sum(1 for _ in entries)

    def check_reject(self) -> None:
        raise self.refuse("basic.nack and basic.reject")

    def reject(self, entry: QueueEntry, reason: str = "rejected") -> None:
        raise self.refuse("basic.nack and basic.reject")

    def take(self, now_ms: int) -> QueueEntry | None:
        raise self.refuse("basic.get")

    def purge(self) -> int:
        raise self.refuse("queue.purge")

    def drop_all(self) -> None:
        self.deleted = True
        if self.groups is not None:
            self.groups.forget_partition(self)
        for cursor in self.cursors.values():
            cursor.reader.close()
        self.cursors.clear()
        self.log.destroy()

    def close(self) -> None:
        self.log.close()
