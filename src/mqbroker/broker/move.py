"""Moving messages between queues: DLQ move and replay.

Strategy: ``move_batch`` decides where each message goes (a queue, an
exchange, back to the queue it died in, or where it was first published),
routes the copies through the publish pipeline's ``route`` and ``offer``
steps, and removes the originals in the same call, so both land in the
same store write batch (one LMDB transaction): a crash sees all of it or
none of it. Messages that do not match, reach no queue or would loop stay
in place, in order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mqbroker import errors
from mqbroker.broker.messages import (
    _commit,
    entries,
    entry_size,
    get_vhost,
    message_of,
)
from mqbroker.broker.router import route
from mqbroker.broker.vhost import VHost
from mqbroker.model.deaths import (
    first_death_route,
    last_death_queue,
    last_death_reason,
    text,
)
from mqbroker.model.message import Message
from mqbroker.protocol import codec
from mqbroker.queues.entry import QueueEntry
from mqbroker.queues.queue import Queue

if TYPE_CHECKING:
    from mqbroker.broker.broker import Broker


@dataclass(frozen=True)
class MoveTarget:
    """Where moved messages go.

    mode "queue": straight to ``queue`` (through the default exchange);
    "exchange": published to ``exchange`` with ``routing_key`` (None: the
    message's own routing key); "origin": back to the queue each message
    last died in; "first-death": to the exchange and routing keys each
    message was published with when it first died (replay)."""

    mode: str
    queue: str | None = None
    exchange: str | None = None
    routing_key: str | None = None


@dataclass(frozen=True)
class MoveFilter:
    reason: str | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def matches(self, message: Message) -> bool:
        if self.reason is not None and last_death_reason(message) != self.reason:
            return False
        if self.headers:
            headers = message.headers or {}
            for name, value in self.headers:
                if name not in headers or text(headers[name]) != value:
                    return False
        return True


@dataclass
class MoveResult:
    moved: int = 0
    skipped: int = 0  # did not match the filter
    unroutable: int = 0  # the target reached no queue (left in place)
    looped: int = 0  # the target is the source queue (left in place)
    examined: int = 0
    cursor: int = 0  # seq of the last examined entry
    done: bool = False  # no entry left after the cursor
    remaining: int = 0  # ready messages left in the source
    epoch: int = 0
    plan: list[dict[str, Any]] = field(default_factory=list)


def _resolve(
    vhost: VHost, target: MoveTarget, message: Message
) -> tuple[str, list[str]] | None:
    if target.mode == "queue":
        return "", [target.queue or ""]
    if target.mode == "exchange":
        key = target.routing_key if target.routing_key is not None else message.routing_key
        return target.exchange or "", [key]
    if target.mode == "origin":
        name = last_death_queue(message)
        return ("", [name]) if name else None
    if target.mode == "first-death":
        return first_death_route(message)
    raise errors.PreconditionFailed(f"unknown move target '{target.mode}'")


def _stamped(message: Message, msg_id: int, exchange: str, key: str, now_ms: int) -> Message:
    props = codec.decode_properties(message.properties_raw)
    headers = dict(props.headers) if isinstance(props.headers, dict) else {}
    count = headers.get("x-replayed-count")
    headers["x-replayed-count"] = (count if isinstance(count, int) else 0) + 1
    headers["x-replayed-at"] = now_ms
    props.headers = headers
    return Message(msg_id, exchange, key, codec.encode_properties(props), message.body, props)


def move_batch(
    broker: Broker,
    vhost_name: str,
    queue_name: str,
    target: MoveTarget,
    *,
    count: int,
    after: int = 0,
    filter: MoveFilter | None = None,
    dry_run: bool = False,
    stamp: bool = True,
    scan_limit: int = 10_000,
    plan_limit: int = 100,
    replayed_at_ms: int | None = None,
) -> MoveResult:
    """Move up to ``count`` ready messages (seq > ``after``) out of a queue.

    Atomic: the source entries are removed and their copies enqueued in the
    destinations within this call, so they share one store write batch.
    Messages that do not match the filter, reach no queue, or would come
    back to the source stay where they are, in order."""
    vhost = get_vhost(broker, vhost_name)
    source = vhost.get_queue(queue_name)
    if target.mode == "queue":
        vhost.get_queue(target.queue or "")
        if target.queue == queue_name:
            raise errors.PreconditionFailed("source and destination are the same queue")
    elif target.mode == "exchange":
        vhost.get_exchange(target.exchange or "")
    stamp_ms = int(time.time() * 1000) if replayed_at_ms is None else replayed_at_ms
    result = MoveResult(cursor=after)
    ready = source.ready
    examined: list[QueueEntry] = []
    last_pos = -1
    moves: list[tuple[QueueEntry, Message, str, str, tuple[Queue, ...]]] = []
    result.done = True
    for pos, entry in enumerate(entries(source)):
        if entry.seq <= after:
            continue
        if len(moves) >= count or len(examined) >= scan_limit:
            result.done = False
            break
        examined.append(entry)
        last_pos = pos
        message = message_of(source, entry)
        if filter is not None and not filter.matches(message):
            result.skipped += 1
            continue
        where = _resolve(vhost, target, message)
        queues: tuple[Queue, ...] = ()
        if where is not None:
            exchange = vhost.exchanges.get(where[0])
            if exchange is not None:
                queues = route(vhost, exchange, where[1], message.headers)
        if not queues:
            result.unroutable += 1
            continue
        if any(q is source for q in queues):
            result.looped += 1
            continue
        assert where is not None
        moves.append((entry, message, where[0], where[1][0], queues))
        if len(result.plan) < plan_limit:
            result.plan.append(
                {
                    "seq": entry.seq,
                    "exchange": where[0],
                    "routing_key": where[1][0],
                    "routing_keys": where[1],
                    "queues": [q.name for q in queues],
                }
            )
    result.examined = len(examined)
    if examined:
        result.cursor = examined[-1].seq
    if dry_run:
        result.moved = len(moves)
        result.remaining = source.message_count
        return result
    if not moves:
        result.remaining = source.message_count
        return result
    # Take the stretch up to the last examined entry off the head (iteration
    # order is delivery order), enqueue the copies, then put back, each to
    # its place, every entry that stays (skipped, or refused by a full
    # destination).
    popped = [ready.popleft() for _ in range(last_pos + 1)]
    staying = {id(e) for e in popped}
    wrote = False
    moved = 0
    for entry, message, exchange_name, key, queues in moves:
        msg_id = broker.next_msg_id
        broker.next_msg_id += 1
        if stamp:
            copy = _stamped(message, msg_id, exchange_name, key, stamp_ms)
        else:
            copy = Message(
                msg_id, exchange_name, key, message.properties_raw, message.body
            )
        outcome = broker.publisher.offer(queues, copy, None)
        wrote |= outcome.durable
        if not outcome.routed:
            result.unroutable += 1
            continue
        staying.discard(id(entry))
        moved += 1
        source.ready_bytes -= entry_size(source, entry)
        if entry.persisted:
            source.store.remove_entry(source.key, entry.seq, message.msg_id)
            wrote = True
    for entry in reversed(popped):
        if id(entry) in staying:
            ready.put_back(entry)
    result.moved = moved
    result.remaining = source.message_count
    result.epoch = _commit(broker, wrote)
    broker.run_dispatch()
    return result
