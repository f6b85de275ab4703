"""Reading the dead-letter history (``x-death`` and ``x-*-death-*``).

Strategy: pure functions over a message's decoded headers, shared by the
management API (DLQ views, replay) and ``mqbrokerctl``'s AMQP mode input;
writing the history is ``queues/deadletter.py``'s job. Values come back
plain (type tags unwrapped, bytes decoded), times as epoch seconds.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

from mqbroker.model.message import Message


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
