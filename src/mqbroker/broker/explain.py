"""Explaining routing: which bindings a message would match, and the
dead-letter graph of a vhost.

Strategy: read-only walks over the same exchange types the router uses
(a probe exchange holding one binding answers "does this binding match"),
so an explanation can never disagree with real routing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mqbroker.broker.messages import get_vhost
from mqbroker.broker.router import route
from mqbroker.broker.vhost import VHost
from mqbroker.exchanges.base import Binding
from mqbroker.exchanges.registry import exchange_type
from mqbroker.model.deaths import text
from mqbroker.model.headers import sender_keys

if TYPE_CHECKING:
    from mqbroker.broker.broker import Broker


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
