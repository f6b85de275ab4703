"""Operations the management API needs and the AMQP path does not.

Strategy: every function here is synchronous, does no I/O and runs on the
broker's loop thread, so each call is atomic with respect to all other broker
work: a ``move_batch`` removes entries from one queue and enqueues their
copies elsewhere without any await in between, so both land in the same store
write batch (one LMDB transaction) and a crash sees all of it or none of it.
The HTTP layer only awaits *after* a call (for the commit it produced).

The one place that turns a queue entry into its ``Message`` is
``message_of``: entries of persisted messages may stop carrying their body
in memory, and only that function has to learn how to load it.
"""

from __future__ import annotations

import bisect
import datetime as _dt
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pamqp import commands

from mqbroker import errors
from mqbroker.broker.router import route
from mqbroker.broker.vhost import VHost
from mqbroker.exchanges.base import Binding
from mqbroker.exchanges.registry import exchange_type
from mqbroker.model.headers import sender_keys
from mqbroker.model.keys import store_key
from mqbroker.model.message import Message
from mqbroker.protocol import codec
from mqbroker.queues.queue import Queue, QueueEntry

if TYPE_CHECKING:
    from mqbroker.broker.broker import Broker
    from mqbroker.broker.channel import Channel, Delivery
    from mqbroker.broker.session import Session

ACKMODES = (
    "ack_requeue_true",
    "reject_requeue_true",
    "ack_requeue_false",
    "reject_requeue_false",
)


# ------------------------------------------------------------- accessors


def message_of(queue: Queue, entry: Any) -> Message:
    """The message an entry refers to (the single place to adapt)."""
    getter = getattr(queue, "message_of", None)
    if getter is not None:
        return getter(entry)  # type: ignore[no-any-return]
    message = getattr(entry, "message", None)
    if message is not None:
        return message  # type: ignore[no-any-return]
    stored = queue.store.get_message(entry.msg_id)
    return Message(
        entry.msg_id,
        stored.exchange,
        stored.routing_key,
        stored.properties,
        stored.body,
    )


def entry_size(queue: Queue, entry: Any) -> int:
    size = getattr(entry, "size", None)
    return int(size) if size is not None else message_of(queue, entry).size


def entries(queue: Queue) -> Iterator[Any]:
    """Ready entries in delivery order, read-only."""
    return iter(queue.ready)


def head(queue: Queue) -> Any | None:
    ready = queue.ready
    if not ready:
        return None
    peek = getattr(ready, "peek", None)
    if peek is not None:
        return peek()
    return next(iter(ready))


def now_ms(broker: Broker) -> int:
    clock = getattr(broker, "wall_ms", None)
    return int(clock()) if clock is not None else int(time.time() * 1000)


def plain(value: Any) -> Any:
    """Unwrap type-tagged header values (``Typed``) to plain values."""
    inner = getattr(value, "value", None)
    if inner is not None and hasattr(value, "tag"):
        return inner
    return value


def text(value: Any) -> str:
    value = plain(value)
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return "" if value is None else str(value)


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
                    found.append((chan, tag, delivery))
    return found


def session_of(chan: Channel) -> Session:
    return chan.session


# ----------------------------------------------------------- dead letters


def x_death(message: Message) -> list[dict[str, Any]]:
    """The ``x-death`` header as plain dicts (most recent death first)."""
    headers = message.headers or {}
    raw = plain(headers.get("x-death"))
    if not isinstance(raw, list):
        return []
    deaths = []
    for item in raw:
        if not isinstance(item, dict):
            continue
        item = {k: plain(v) for k, v in item.items()}
        keys = item.get("routing-keys")
        when = item.get("time")
        if isinstance(when, _dt.datetime):
            stamp: int | None = int(when.replace(tzinfo=when.tzinfo or _dt.UTC).timestamp())
        elif isinstance(when, int | float):
            stamp = int(when)
        else:
            stamp = None
        deaths.append(
            {
                "reason": text(item.get("reason")),
                "queue": text(item.get("queue")),
                "exchange": text(item.get("exchange")),
                "routing-keys": [text(k) for k in keys] if isinstance(keys, list) else [],
                "count": int(item.get("count") or 0),
                "time": stamp,
                **(
                    {"original-expiration": text(item["original-expiration"])}
                    if "original-expiration" in item
                    else {}
                ),
            }
        )
    return deaths


def last_death_queue(message: Message) -> str | None:
    headers = message.headers or {}
    if headers.get("x-last-death-queue") is not None:
        return text(headers["x-last-death-queue"])
    deaths = x_death(message)
    if deaths:
        return deaths[0]["queue"] or None
    if headers.get("x-first-death-queue") is not None:
        return text(headers["x-first-death-queue"])
    return None


def last_death_reason(message: Message) -> str | None:
    headers = message.headers or {}
    if headers.get("x-last-death-reason") is not None:
        return text(headers["x-last-death-reason"])
    deaths = x_death(message)
    if deaths:
        return deaths[0]["reason"] or None
    if headers.get("x-first-death-reason") is not None:
        return text(headers["x-first-death-reason"])
    return None


def first_death_route(message: Message) -> tuple[str, list[str]] | None:
    """(exchange, routing keys) the message was published with when it
    first died: ``x-first-death-exchange`` and that death's routing keys."""
    headers = message.headers or {}
    deaths = x_death(message)
    first_queue = headers.get("x-first-death-queue")
    first_reason = headers.get("x-first-death-reason")
    entry = None
    if first_queue is not None:
        for death in deaths:
            if death["queue"] == text(first_queue) and (
                first_reason is None or death["reason"] == text(first_reason)
            ):
                entry = death
                break
    if entry is None and deaths:
        entry = deaths[-1]
    if headers.get("x-first-death-exchange") is not None:
        exchange = text(headers["x-first-death-exchange"])
    elif entry is not None:
        exchange = entry["exchange"]
    else:
        return None
    keys = entry["routing-keys"] if entry is not None and entry["routing-keys"] else []
    if not keys:
        keys = [message.routing_key]
    return exchange, keys


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
        reject = getattr(queue, "reject", None)
        for entry in taken:
            if ackmode.startswith("reject") and reject is not None:
                reject(entry, "rejected")  # dead-letters it, if configured
            else:
                queue.settle(entry)
    broker.mark_dirty(queue)
    epoch = _commit(broker, wrote or ackmode.startswith("reject"))
    broker.run_dispatch()
    return got, epoch


def purge(broker: Broker, queue: Queue) -> int:
    count = queue.purge()
    broker.request_commit()
    return count


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


# ------------------------------------------------------------------- move


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


# ---------------------------------------------------------- route explain


def _binding_matches(
    type_name: str, binding: Binding, key: str, headers: dict[str, Any] | None
) -> bool:
    """Does this one binding select its destination for ``key``? (Asks a
    fresh exchange of the same type holding only this binding, so the
    answer comes from the real matching code.)"""
    probe = exchange_type(type_name)()
    probe.bind(binding.destination, binding.routing_key, binding.args_dict())
    return binding.destination in set(probe.route(key, headers))


def explain_route(
    broker: Broker,
    vhost_name: str,
    exchange_name: str,
    routing_key: str,
    headers: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Which queues a publish would reach, and through which bindings."""
    vhost = get_vhost(broker, vhost_name)
    exchange = vhost.get_exchange(exchange_name)
    headers = dict(headers) if headers else None
    keys = [routing_key] + sender_keys(headers, "CC") + sender_keys(headers, "BCC")
    steps: list[dict[str, Any]] = []
    found: dict[str, dict[str, Any]] = {}
    visited: set[str] = set()
    notes: list[str] = []
    if exchange.internal:
        notes.append(
            f"exchange '{exchange_name}' is internal: clients cannot publish to it"
        )
    pending: list[tuple[Any, list[dict[str, Any]]]] = [(exchange, [])]
    while pending:
        current, path = pending.pop()
        if current.name in visited:
            continue
        visited.add(current.name)
        matched: list[dict[str, Any]] = []
        for key in keys:
            dests = set(current.impl.route(key, headers))
            if not dests:
                continue
            for binding in current.impl.bindings():
                if binding.destination not in dests:
                    continue
                if not _binding_matches(current.type_name, binding, key, headers):
                    continue
                dest = binding.destination
                row = {
                    "destination_type": dest.kind,
                    "destination": dest.name,
                    "binding_key": binding.routing_key,
                    "arguments": binding.args_dict(),
                    "routing_key": key,
                }
                if dest.kind == "queue":
                    if dest.name in vhost.queues:
                        hop = {
                            "exchange": current.name,
                            "binding_key": binding.routing_key,
                            "routing_key": key,
                        }
                        found.setdefault(
                            dest.name, {"name": dest.name, "via": path + [hop]}
                        )
                        matched.append(row)
                else:
                    target = vhost.exchanges.get(dest.name)
                    if target is not None:
                        matched.append(row)
                        pending.append(
                            (
                                target,
                                path
                                + [
                                    {
                                        "exchange": current.name,
                                        "binding_key": binding.routing_key,
                                        "routing_key": key,
                                    }
                                ],
                            )
                        )
        step: dict[str, Any] = {
            "exchange": current.name,
            "type": current.type_name,
            "reached_via": [hop["exchange"] for hop in path],
            "bindings_total": len(current.impl),
            "matched": matched,
        }
        if not matched:
            alternate = current.alternate
            if alternate is not None:
                target = vhost.exchanges.get(alternate)
                if target is not None:
                    step["alternate_exchange"] = alternate
                    pending.append(
                        (
                            target,
                            path
                            + [
                                {
                                    "exchange": current.name,
                                    "alternate_exchange": alternate,
                                }
                            ],
                        )
                    )
                else:
                    notes.append(
                        f"alternate exchange '{alternate}' of '{current.name}' "
                        "does not exist"
                    )
        steps.append(step)
    queues = list(found.values())
    if not queues:
        notes.append(
            "unroutable: no binding matched; the message would be dropped "
            "(or returned with mandatory=true)"
        )
    return {
        "exchange": exchange_name,
        "vhost": vhost_name,
        "routing_keys": keys,
        "routed": bool(queues),
        "queues": sorted(queues, key=lambda q: q["name"]),
        "exchanges": steps,
        "notes": notes,
    }


# ------------------------------------------------------- dead-letter graph


def dead_letter_targets(vhost: VHost) -> dict[str, list[str]]:
    """DLQ name -> names of the queues that dead-letter into it."""
    targets: dict[str, list[str]] = {}
    for queue in vhost.queues.values():
        dlx = queue.arguments.get("x-dead-letter-exchange")
        if dlx is None:
            continue
        exchange = vhost.exchanges.get(text(dlx))
        if exchange is None:
            continue
        dlk = queue.arguments.get("x-dead-letter-routing-key")
        if dlk is not None:
            reached = [q.name for q in route(vhost, exchange, [text(dlk)], None)]
        else:
            reached = sorted(
                {
                    b.destination.name
                    for b in exchange.impl.bindings()
                    if b.destination.kind == "queue"
                }
            )
            if not exchange.name:
                reached = []
        for name in reached:
            if name != queue.name:
                targets.setdefault(name, []).append(queue.name)
    return targets


def looks_like_dlq(name: str) -> bool:
    lowered = name.lower()
    return "dlq" in lowered or "dead" in lowered


# ---------------------------------------------------------------- policies
# The policy engine (``broker.policies``, queues/policies.py) owns policies;
# without one they are only recorded as "policy" definitions.


def list_policies(broker: Broker, vhost: str | None = None) -> list[dict[str, Any]]:
    engine = getattr(broker, "policies", None)
    if engine is not None:
        return list(engine.list_policies(vhost))
    return [
        record
        for _, record in broker.store.definitions("policy")
        if vhost is None or record.get("vhost") == vhost
    ]


def set_policy(
    broker: Broker,
    vhost: str,
    name: str,
    pattern: str,
    definition: dict[str, Any],
    *,
    priority: int = 0,
    apply_to: str = "all",
) -> None:
    get_vhost(broker, vhost)
    engine = getattr(broker, "policies", None)
    if engine is not None:
        try:
            engine.set_policy(
                vhost, name, pattern, definition, priority=priority, apply_to=apply_to
            )
        except KeyError as exc:
            raise errors.NotFound(str(exc).strip("'\"")) from None
        except ValueError as exc:  # PolicyError
            raise errors.PreconditionFailed(str(exc)) from None
        broker.run_dispatch()
        return
    record = {
        "vhost": vhost,
        "name": name,
        "pattern": pattern,
        "apply-to": apply_to,
        "definition": definition,
        "priority": priority,
    }
    broker.store.put_definition("policy", store_key(vhost, name), record)
    broker.request_commit()


def clear_policy(broker: Broker, vhost: str, name: str) -> bool:
    engine = getattr(broker, "policies", None)
    if engine is not None:
        cleared = bool(engine.clear_policy(vhost, name))
        broker.run_dispatch()
        return cleared
    key = store_key(vhost, name)
    if not any(k == key for k, _ in broker.store.definitions("policy")):
        return False
    broker.store.delete_definition("policy", key)
    broker.request_commit()
    return True


def effective_policy(
    broker: Broker, vhost: str, kind: str, name: str, queue_type: str | None = None
) -> dict[str, Any] | None:
    """The policy record that applies to a queue or exchange, or None.
    ``kind`` is "queue" or "exchange"."""
    engine = getattr(broker, "policies", None)
    if engine is not None:
        return engine.effective(vhost, kind, name, queue_type)  # type: ignore[no-any-return]
    import re

    best: dict[str, Any] | None = None
    for policy in list_policies(broker, vhost):
        apply_to = policy.get("apply-to") or "all"
        if apply_to not in ("all", kind + "s"):
            continue
        try:
            if not re.search(str(policy.get("pattern", "")), name):
                continue
        except re.error:
            continue
        if best is None or int(policy.get("priority") or 0) > int(best.get("priority") or 0):
            best = policy
    return best


# ---------------------------------------------- vhosts, users, permissions
# Delegated to the access-control object (``broker.access``) when the broker
# has one, so durability and enforcement live in one place.


def add_vhost(broker: Broker, name: str) -> bool:
    if not name:
        raise errors.PreconditionFailed("vhost name must not be empty")
    created = name not in broker.vhosts
    access = getattr(broker, "access", None)
    if access is not None:
        if created:
            access.add_vhost(name)
        return created
    broker.add_vhost(name)
    if created:
        broker.store.put_definition("vhost", name, {"name": name})
        broker.request_commit()
    return created


def delete_vhost(broker: Broker, name: str) -> None:
    vhost = get_vhost(broker, name)
    access = getattr(broker, "access", None)
    if access is not None:
        access.delete_vhost(name)
    else:
        for session in list(broker.sessions):
            if session.vhost is vhost:
                close_session(broker, session, f"vhost '{name}' is deleted")
        for queue in list(vhost.queues.values()):
            vhost.remove_queue(queue)
        for exchange in list(vhost.exchanges.values()):
            if not exchange.builtin:
                vhost.delete_exchange(exchange.name)
        del broker.vhosts[name]
        broker.store.delete_definition("vhost", name)
    engine = getattr(broker, "policies", None)
    if engine is not None:
        engine.clear_vhost(name)
    else:
        for key, record in list(broker.store.definitions("policy")):
            if record.get("vhost") == name:
                broker.store.delete_definition("policy", key)
    broker.request_commit()
    broker.run_dispatch()


def put_user(
    broker: Broker,
    name: str,
    *,
    password: str | None = None,
    password_hash: str | None = None,
    tags: list[str] | None = None,
) -> bool:
    """Create or update a user; True when it was created."""
    if not name:
        raise errors.PreconditionFailed("user name must not be empty")
    users = broker.users
    existing = users.users.get(name)
    tags = list(tags if tags is not None else (existing.tags if existing else []))
    access = getattr(broker, "access", None)
    if password is None and password_hash is None and existing is None:
        raise errors.PreconditionFailed("password or password_hash is required")
    if access is not None:
        if password is not None:
            access.add_user(name, password, tags)
        elif password_hash is not None:
            access.add_user(name, None, tags)
            users.users[name].password_hash = password_hash
            access.set_user_tags(name, tags)  # persists the record, hash too
        else:
            access.set_user_tags(name, tags)
        return existing is None
    if password is not None:
        users.add(name, password, tags)
    elif password_hash is not None:
        users.add(name, "unused", tags).password_hash = password_hash
    else:
        assert existing is not None
        existing.tags = tags
    return existing is None


def delete_user(broker: Broker, name: str) -> bool:
    access = getattr(broker, "access", None)
    if access is not None:
        return bool(access.delete_user(name))
    return broker.users.users.pop(name, None) is not None


def list_permissions(
    broker: Broker, *, user: str | None = None, vhost: str | None = None
) -> list[dict[str, Any]]:
    access = getattr(broker, "access", None)
    if access is not None:
        return [p.record() for p in access.list_permissions(user=user, vhost=vhost)]
    # No access control: every user may do everything everywhere.
    return [
        {"user": u, "vhost": v, "configure": ".*", "write": ".*", "read": ".*"}
        for u in broker.users.users
        for v in broker.vhosts
        if (user is None or u == user) and (vhost is None or v == vhost)
    ]


def set_permissions(
    broker: Broker, user: str, vhost: str, configure: str, write: str, read: str
) -> None:
    access = getattr(broker, "access", None)
    if access is None:
        return  # nothing is enforced without access control
    try:
        access.set_permissions(user, vhost, configure, write, read)
    except (KeyError, ValueError) as exc:
        raise errors.PreconditionFailed(str(exc).strip("'\"")) from None


def clear_permissions(broker: Broker, user: str, vhost: str) -> bool:
    access = getattr(broker, "access", None)
    if access is None:
        return True
    return bool(access.clear_permissions(user, vhost))


def close_session(broker: Broker, session: Session, reason: str) -> None:
    """Close a client connection with 320 CONNECTION_FORCED."""
    session.report(errors.ConnectionForced(reason), 0)
    broker.run_dispatch()


# ------------------------------------------------------------------- stats


class RateTracker:
    """Counters sampled over time -> per-second rates and a short history.

    ``sample(now, counters)`` records cumulative counters per key; a rate is
    the increase over the last ``window_s`` seconds. Keys that disappear
    (a deleted queue) are forgotten.
    """

    def __init__(self, window_s: float = 5.0, history_s: float = 600.0) -> None:
        self.window_s = window_s
        self.history_s = history_s
        self.samples: dict[Any, deque[tuple[float, tuple[int, ...]]]] = {}

    def sample(self, now: float, counters: dict[Any, tuple[int, ...]]) -> None:
        for key in [k for k in self.samples if k not in counters]:
            del self.samples[key]
        keep = max(self.window_s, 1.0) * 2 + 1
        for key, values in counters.items():
            series = self.samples.get(key)
            if series is None:
                series = self.samples[key] = deque()
            series.append((now, values))
            while len(series) > 2 and now - series[1][0] >= keep:
                series.popleft()

    def rates(self, key: Any) -> tuple[float, ...] | None:
        series = self.samples.get(key)
        if not series or len(series) < 2:
            return None
        now, latest = series[-1]
        base_t, base = series[0]
        for t, values in series:
            if now - t <= self.window_s:
                break
            base_t, base = t, values
        dt = now - base_t
        if dt <= 0:
            return None
        return tuple(max(0.0, (a - b) / dt) for a, b in zip(latest, base))


class AgeTracker:
    """When was the message with a given seq enqueued? (No per-message
    timestamp is kept: ``Queue.next_seq`` is sampled with the time, and an
    entry with seq s was enqueued before the first sample whose next_seq
    exceeds s, so its age is at least ``now`` minus that sample's time.)

    Samples are kept only while they can still matter, and thinned (older
    ones at lower resolution) if a queue holds very old messages while new
    ones keep coming."""

    MAX_SAMPLES = 2048

    def __init__(self) -> None:
        self.samples: dict[Any, deque[tuple[int, float]]] = {}

    def sample(self, now: float, queues: Iterable[tuple[Any, Queue]]) -> None:
        seen = set()
        for key, queue in queues:
            seen.add(key)
            series = self.samples.get(key)
            if series is None:
                series = self.samples[key] = deque()
            if not series or series[-1][0] != queue.next_seq:
                series.append((queue.next_seq, now))
            first = head(queue)
            head_seq = first.seq if first is not None else queue.next_seq
            while len(series) > 1 and series[1][0] <= head_seq:
                series.popleft()
            if len(series) > self.MAX_SAMPLES:
                items = list(series)
                half = len(items) // 2
                thinned = items[:half:2] + items[half:]
                self.samples[key] = deque(thinned)
        for key in [k for k in self.samples if k not in seen]:
            del self.samples[key]

    def enqueued_before(self, key: Any, seq: int) -> float | None:
        series = self.samples.get(key)
        if not series:
            return None
        index = bisect.bisect_right(series, seq, key=lambda s: s[0])
        if index >= len(series):
            return None  # enqueued after the last sample
        return series[index][1]

    def oldest_ready_age(self, key: Any, queue: Queue, now: float) -> float:
        first = head(queue)
        if first is None:
            return 0.0
        when = self.enqueued_before(key, first.seq)
        return max(0.0, now - when) if when is not None else 0.0


def queue_counters(queue: Queue) -> tuple[int, int, int]:
    return (queue.published, queue.delivered, queue.acked)


def head_timestamp(queue: Queue) -> int | None:
    """The ``timestamp`` property of the head message (RabbitMQ's
    ``head_message_timestamp``), in seconds."""
    first = head(queue)
    if first is None:
        return None
    props = message_of(queue, first).props
    stamp = props.timestamp
    if isinstance(stamp, _dt.datetime):
        return int(stamp.replace(tzinfo=stamp.tzinfo or _dt.UTC).timestamp())
    if isinstance(stamp, int):
        return stamp
    return None


def sessions_sorted(broker: Broker, key: Callable[[Session], Any]) -> list[Session]:
    return sorted(broker.sessions, key=key)
