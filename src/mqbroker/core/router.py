"""The exchange graph walk: from one exchange to a set of queues.

Strategy: each exchange type answers only for its own bindings; this module
follows exchange-to-exchange edges (with a visited set, so cycles end), uses
an exchange's alternate exchange when that exchange itself routed nowhere
(also when it was reached through an e2e binding, as RabbitMQ does), routes
once per sender-selected key (CC/BCC) and de-duplicates the queues.
"""

from __future__ import annotations

from typing import Any

from mqbroker import errors
from mqbroker.core.exchange import Exchange
from mqbroker.core.vhost import VHost
from mqbroker.queues.queue import Queue


def sender_keys(headers: dict[str, Any] | None, name: str) -> list[str]:
    """CC or BCC routing keys; a non-array value is a 406 (RabbitMQ)."""
    if not headers or name not in headers:
        return []
    value = headers[name]
    if not isinstance(value, list):
        raise errors.PreconditionFailed(
            f"Invalid header '{name}': expected an array of strings"
        )
    keys = []
    for item in value:
        if isinstance(item, bytes | bytearray):
            item = bytes(item).decode("utf-8", "replace")
        if isinstance(item, str):
            keys.append(item)
    return keys


def route(
    vhost: VHost,
    exchange: Exchange,
    routing_keys: list[str],
    headers: dict[str, Any] | None,
) -> list[Queue]:
    """Queues the message reaches, each once, in a stable order."""
    found: dict[str, Queue] = {}
    visited: set[str] = set()
    pending = [exchange]
    queues = vhost.queues
    exchanges = vhost.exchanges
    while pending:
        current = pending.pop()
        if current.name in visited:
            continue
        visited.add(current.name)
        impl = current.impl
        routed = False
        for key in routing_keys:
            for dest in impl.route(key, headers):
                if dest.kind == "queue":
                    queue = queues.get(dest.name)
                    if queue is not None:
                        found.setdefault(dest.name, queue)
                        routed = True
                else:
                    target = exchanges.get(dest.name)
                    if target is not None:
                        pending.append(target)
                        routed = True
        if not routed:
            alternate = current.alternate
            if alternate is not None:
                target = exchanges.get(alternate)
                if target is not None:
                    pending.append(target)
    return list(found.values())
