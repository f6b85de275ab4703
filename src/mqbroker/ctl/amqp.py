"""``mqbrokerctl --amqp URL``: peek and move over plain AMQP 0-9-1, for
when the management API is not reachable (or the broker is RabbitMQ).

Strategy: a move takes a batch with ``basic.get`` (unacked), publishes the
copies on a second channel in confirm mode with ``mandatory``, and acks the
originals only after the broker confirmed every copy, so a crash loses
nothing. Ctrl-C is deferred to the end of the batch in flight, so an
interrupted run duplicates nothing either; only a hard kill between the
confirms and the acks can leave a batch in both places (at-least-once, the
best AMQP alone allows; the HTTP path is exactly-once). Messages that are
skipped (filter) or unroutable stay unacked until the run ends and are then
returned in place by closing the channel.

Peeking over AMQP takes messages and returns them, which sets their
``redelivered`` flag (RabbitMQ does the same); the HTTP ``peek`` does not.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from mqbroker.ctl import deaths as dl
from mqbroker.ctl.deaths import MoveFilter, MoveTarget, jsonable, payload_json


class _Shim:
    """What the x-death helpers read from a message."""

    def __init__(self, routing_key: str, headers: dict[str, Any] | None) -> None:
        self.routing_key = routing_key
        self.headers = headers


def _props_json(props: Any) -> dict[str, Any]:
    out = {}
    for name in (
        "content_type", "content_encoding", "headers", "delivery_mode", "priority",
        "correlation_id", "reply_to", "expiration", "message_id", "timestamp",
        "type", "user_id", "app_id",
    ):
        value = getattr(props, name, None)
        if value is not None:
            out[name] = jsonable(value)
    return out


def _connect(url: str) -> Any:
    try:
        import pika  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - pika is a dependency
        raise SystemExit("--amqp needs the 'pika' package") from None
    params = pika.URLParameters(url)
    params.heartbeat = 60
    return pika.BlockingConnection(params)


def peek(url: str, queue: str, count: int, truncate: int) -> dict[str, Any]:
    conn = _connect(url)
    try:
        ch = conn.channel()
        items = []
        for _ in range(count):
            method, props, body = ch.basic_get(queue, auto_ack=False)
            if method is None:
                break
            row: dict[str, Any] = {
                "seq": method.delivery_tag,
                "state": "ready",
                "exchange": method.exchange,
                "routing_key": method.routing_key,
                "redelivered": bool(method.redelivered),
                "properties": _props_json(props),
            }
            row.update(payload_json(body, "auto", truncate))
            deaths = dl.x_death(_Shim(method.routing_key, props.headers))
            if deaths:
                row["x_death"] = deaths
            items.append(row)
        ch.close()  # everything taken goes back, in place
        declared = conn.channel().queue_declare(queue, passive=True)
        return {"items": items, "next": None, "messages_ready": declared.method.message_count}
    finally:
        if conn.is_open:
            conn.close()


@dataclass
class AmqpMoveResult:
    moved: int = 0
    skipped: int = 0
    unroutable: int = 0
    interrupted: bool = False
    plan: list[dict[str, Any]] = field(default_factory=list)


def move(
    url: str,
    queue: str,
    target: MoveTarget,
    *,
    count: int | None,
    filter: MoveFilter | None,
    batch: int,
    dry_run: bool,
    stamp: bool,
    progress: Callable[[int], None] = lambda moved: None,
) -> AmqpMoveResult:
    import time

    from pika.exceptions import (  # type: ignore[import-untyped]
        NackError,
        UnroutableError,
    )

    result = AmqpMoveResult()
    stop = {"asked": False}

    def defer(signum: int, frame: FrameType | None) -> None:
        stop["asked"] = True

    previous = signal.signal(signal.SIGINT, defer)
    conn = _connect(url)
    try:
        source = conn.channel()
        out = conn.channel()
        out.confirm_delivery()
        known: dict[str, bool] = {}
        exhausted = False
        while not exhausted and not stop["asked"] and (count is None or result.moved < count):
            want = batch if count is None else min(batch, count - result.moved)
            taken: list[tuple[Any, Any, bytes, str, str]] = []
            while len(taken) < want:
                method, props, body = source.basic_get(queue, auto_ack=False)
                if method is None:
                    exhausted = True
                    break
                shim = _Shim(method.routing_key, props.headers)
                if filter is not None and not filter.matches(shim):
                    result.skipped += 1  # held unacked until the end
                    continue
                where = _resolve(target, shim)
                if where is None:
                    result.unroutable += 1
                    continue
                taken.append((method, props, body, where[0], where[1]))
            if dry_run:
                for method, _props, _body, exchange, key in taken:
                    if exchange == "" and not _queue_exists(conn, key, known):
                        result.unroutable += 1
                        continue
                    result.plan.append(
                        {"exchange": exchange, "routing_key": key, "delivery_tag": method.delivery_tag}
                    )
                    result.moved += 1
                continue
            done_tags = []
            for method, props, body, exchange, key in taken:
                headers = dict(props.headers or {})
                if stamp:
                    replayed = headers.get("x-replayed-count")
                    headers["x-replayed-count"] = (replayed if isinstance(replayed, int) else 0) + 1
                    headers["x-replayed-at"] = int(time.time() * 1000)
                props.headers = headers or None
                try:
                    out.basic_publish(exchange, key, body, props, mandatory=True)
                except UnroutableError:
                    result.unroutable += 1
                    continue
                except NackError:
                    result.unroutable += 1
                    continue
                done_tags.append(method.delivery_tag)
            for tag in done_tags:  # only after every copy was confirmed
                source.basic_ack(tag)
            result.moved += len(done_tags)
            progress(result.moved)
        result.interrupted = stop["asked"]
        source.close()  # skipped and unroutable messages go back in place
        return result
    finally:
        signal.signal(signal.SIGINT, previous)
        if conn.is_open:
            conn.close()


def _queue_exists(conn: Any, name: str, known: dict[str, bool]) -> bool:
    """Passive declare on a throwaway channel (a 404 closes it)."""
    if name not in known:
        from pika.exceptions import ChannelClosedByBroker

        probe = conn.channel()
        try:
            probe.queue_declare(name, passive=True)
            known[name] = True
            probe.close()
        except ChannelClosedByBroker:
            known[name] = False
    return known[name]


def _resolve(target: MoveTarget, shim: _Shim) -> tuple[str, str] | None:
    if target.mode == "queue":
        return "", target.queue or ""
    if target.mode == "exchange":
        key = target.routing_key if target.routing_key is not None else shim.routing_key
        return target.exchange or "", key
    if target.mode == "origin":
        name = dl.last_death_queue(shim)
        return ("", name) if name else None
    found = dl.first_death_route(shim)
    return (found[0], found[1][0]) if found else None
