"""Dead-lettering: the ``x-death`` history and where a dead letter goes.

Strategy: a dead-lettered message is a new message (new id, new properties)
published to the queue's dead-letter exchange; this module only computes its
properties and routing keys, exactly as RabbitMQ writes them:
- ``x-death`` is a list of tables, one per (queue, reason), newest first; a
  repeat death increments ``count`` (a long-long) and moves to the front;
- ``original-expiration`` is recorded and the ``expiration`` property
  removed, so the copy does not expire again on the way;
- ``x-first-death-*`` are set once, ``x-last-death-*`` every time;
- routing keys are the original key plus CC, unless the queue sets
  ``x-dead-letter-routing-key``, which replaces them all;
- a cycle (the message already died in the target queue and nobody ever
  rejected it) drops the message for that queue, as RabbitMQ does.
"""

from __future__ import annotations

import datetime
from typing import Any

from pamqp import commands

from mqbroker.core.message import Message
from mqbroker.core.router import sender_keys
from mqbroker.protocol.table import Typed


def _text(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return value


def prior_deaths(message: Message) -> list[dict[str, Any]]:
    headers = message.headers or {}
    deaths = headers.get("x-death")
    if not isinstance(deaths, list):
        return []
    return [d for d in deaths if isinstance(d, dict)]


def is_cycle(deaths: list[dict[str, Any]], target_queue: str, reason: str) -> bool:
    if reason == "rejected":
        return False
    seen = False
    for death in deaths:
        if _text(death.get("reason")) == "rejected":
            return False
        if _text(death.get("queue")) == target_queue:
            seen = True
    return seen


def dead_letter_properties(
    message: Message,
    queue: str,
    reason: str,
    now: datetime.datetime,
) -> tuple[commands.Basic.Properties, list[dict[str, Any]]]:
    """-> (properties of the dead-lettered copy, deaths before this one)."""
    props = message.props
    headers = dict(message.headers or {})
    previous = prior_deaths(message)
    keys = [message.routing_key] + sender_keys(headers, "CC")
    headers.pop("x-delivery-count", None)
    deaths: list[Any] = []
    found = None
    for death in previous:
        if (
            found is None
            and _text(death.get("queue")) == queue
            and _text(death.get("reason")) == reason
        ):
            found = death
        else:
            deaths.append(death)
    if found is not None:
        entry = dict(found)
        count = entry.get("count", 0)
        entry["count"] = Typed("l", (int(count) if isinstance(count, int) else 0) + 1)
        entry["time"] = Typed("T", now)
    else:
        entry = {
            "count": Typed("l", 1),
            "reason": reason,
            "queue": queue,
            "time": Typed("T", now),
            "exchange": message.exchange,
            "routing-keys": keys,
        }
        if props.expiration is not None:
            entry["original-expiration"] = props.expiration
    deaths.insert(0, entry)
    headers["x-death"] = deaths
    headers.setdefault("x-first-death-reason", reason)
    headers.setdefault("x-first-death-queue", queue)
    headers.setdefault("x-first-death-exchange", message.exchange)
    headers["x-last-death-reason"] = reason
    headers["x-last-death-queue"] = queue
    headers["x-last-death-exchange"] = message.exchange
    new = commands.Basic.Properties.__new__(commands.Basic.Properties)
    for name in commands.Basic.Properties.__slots__:
        setattr(new, name, getattr(props, name, None))
    new.cluster_id = ""
    new.headers = headers
    new.expiration = None
    return new, previous


def dead_letter_keys(message: Message, override: str | None) -> list[str]:
    if override is not None:
        return [override]
    return [message.routing_key] + sender_keys(message.headers, "CC")
