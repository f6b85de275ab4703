"""What ``mqbrokerctl --amqp`` must understand of a message on its own:
the dead-letter history (``x-death``, ``x-*-death-*``), where a move sends
a message, and the JSON shapes the HTTP API uses for the same rows.

Strategy: ctl is a client and imports nothing of the broker, so the small
part of the broker's x-death readers a client needs lives here too, over
the header dicts pika decodes (``model/deaths.py`` is the broker's side).
"""

from __future__ import annotations

import base64
import datetime as _dt
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol


class Dead(Protocol):
    routing_key: str
    headers: dict[str, Any] | None


@dataclass(frozen=True)
class MoveTarget:
    """mode "queue" | "exchange" | "origin" (last death's queue) |
    "first-death" (the exchange and keys of the first death: replay)."""

    mode: str
    queue: str | None = None
    exchange: str | None = None
    routing_key: str | None = None


@dataclass(frozen=True)
class MoveFilter:
    reason: str | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def matches(self, message: Dead) -> bool:
        if self.reason is not None and last_death_reason(message) != self.reason:
            return False
        headers = message.headers or {}
        return all(name in headers and text(headers[name]) == value for name, value in self.headers)


def text(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return "" if value is None else str(value)


def _stamp(when: Any) -> int | None:
    if isinstance(when, _dt.datetime):
        return int(when.replace(tzinfo=when.tzinfo or _dt.UTC).timestamp())
    return int(when) if isinstance(when, int | float) else None


def x_death(message: Dead) -> list[dict[str, Any]]:
    """``x-death`` as plain dicts, most recent death first."""
    raw = (message.headers or {}).get("x-death")
    if not isinstance(raw, list):
        return []
    deaths = []
    for item in raw:
        if not isinstance(item, dict):
            continue
        keys = item.get("routing-keys")
        death = {
            "reason": text(item.get("reason")),
            "queue": text(item.get("queue")),
            "exchange": text(item.get("exchange")),
            "routing-keys": [text(k) for k in keys] if isinstance(keys, list) else [],
            "count": int(item.get("count") or 0),
            "time": _stamp(item.get("time")),
        }
        if "original-expiration" in item:
            death["original-expiration"] = text(item["original-expiration"])
        deaths.append(death)
    return deaths


def _latest(message: Dead, field: str) -> str | None:
    headers = message.headers or {}
    for source in (f"x-last-death-{field}", None, f"x-first-death-{field}"):
        if source is None:
            deaths = x_death(message)
            if deaths:
                return str(deaths[0][field]) or None
        elif headers.get(source) is not None:
            return text(headers[source])
    return None


def last_death_queue(message: Dead) -> str | None:
    return _latest(message, "queue")


def last_death_reason(message: Dead) -> str | None:
    return _latest(message, "reason")


def first_death_route(message: Dead) -> tuple[str, list[str]] | None:
    """(exchange, routing keys) the message had when it first died."""
    headers = message.headers or {}
    deaths = x_death(message)
    queue, reason = headers.get("x-first-death-queue"), headers.get("x-first-death-reason")
    entry = next(
        (
            d for d in deaths
            if queue is not None and d["queue"] == text(queue)
            and (reason is None or d["reason"] == text(reason))
        ),
        deaths[-1] if deaths else None,
    )
    if headers.get("x-first-death-exchange") is not None:
        exchange = text(headers["x-first-death-exchange"])
    elif entry is not None:
        exchange = entry["exchange"]
    else:
        return None
    keys = entry["routing-keys"] if entry is not None and entry["routing-keys"] else []
    return exchange, keys or [message.routing_key]


def jsonable(value: Any) -> Any:
    """AMQP values as the HTTP API shows them (bytes as text, times as s)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, _dt.datetime):
        return _stamp(value)
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def payload_json(body: bytes, encoding: str, truncate: int | None) -> dict[str, Any]:
    size = len(body)
    if truncate is not None and truncate >= 0:
        body = body[:truncate]
    if encoding == "auto":
        try:
            return {"payload": body.decode("utf-8"), "payload_bytes": size, "payload_encoding": "string"}
        except UnicodeDecodeError:
            pass
    return {
        "payload": base64.b64encode(body).decode("ascii"),
        "payload_bytes": size,
        "payload_encoding": "base64",
    }
