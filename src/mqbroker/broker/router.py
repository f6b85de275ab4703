"""The exchange graph walk: from one exchange to a set of queues.

Strategy: each exchange type answers only for its own bindings; this module
follows exchange-to-exchange edges (with a visited set, so cycles end), uses
an exchange's alternate exchange when that exchange itself routed nowhere
(also when it was reached through an e2e binding, as RabbitMQ does), routes
once per sender-selected key (CC/BCC) and de-duplicates the queues.
"""

from __future__ import annotations

from typing import Any

from mqbroker.broker.vhost import VHost
from mqbroker.exchanges.exchange import Exchange
from mqbroker.queues.queue import Queue

# Bound on a vhost's route cache: unique routing keys (one per RPC reply,
# say) must not grow it without limit; when full it simply starts over.
ROUTE_CACHE_MAX = 4096


def route(
    vhost: VHost,
    exchange: Exchange,
    routing_keys: list[str],
    headers: dict[str, Any] | None,
) -> tuple[Queue, ...]:
    """Queues the message reaches, each once, in a stable order.

    With one routing key the answer is cached per (exchange, key) when
    every exchange the walk visited routes on the key alone; the vhost
    drops the cache whenever its topology or policies change.
    """
    if len(routing_keys) == 1:
        key = (exchange.name, routing_keys[0])
        cached = vhost.routes.get(key)
        if cached is not None:
            return cached
        found, key_only = _walk(vhost, exchange, routing_keys, headers)
        if key_only:
            routes = vhost.routes
            if len(routes) >= ROUTE_CACHE_MAX:
                routes.clear()
            routes[key] = found
        return found
    return _walk(vhost, exchange, routing_keys, headers)[0]


def _walk(
    vhost: VHost,
    exchange: Exchange,
    routing_keys: list[str],
    headers: dict[str, Any] | None,
) -> tuple[tuple[Queue, ...], bool]:
    """-> (queues, whether the answer depended on the routing key only)."""
    found: dict[str, Queue] = {}
    visited: set[str] = set()
    pending = [exchange]
    queues = vhost.queues
    exchanges = vhost.exchanges
    key_only = True
    while pending:
        current = pending.pop()
        if current.name in visited:
            continue
        visited.add(current.name)
        impl = current.impl
        key_only = key_only and impl.key_only
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
    return tuple(found.values()), key_only
