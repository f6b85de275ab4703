"""Deleting a queue finds its bindings through the per-destination index,
never by scanning an exchange's bindings: a connection that closes with
thousands of exclusive queues once blocked the loop for half a second
(O(queues x bindings) through the default exchange), and aio-pika clients
reconnecting meanwhile saw "Connection was not opened" for that long."""

from __future__ import annotations

from typing import Any

from mqbroker.broker.broker import Broker
from mqbroker.config import Config
from mqbroker.exchanges.base import Destination
from mqbroker.persistence.memory import MemoryStore


def _no_scan(*_: Any) -> Any:
    raise AssertionError("bindings() scanned while deleting a queue")


def test_deleting_queues_uses_the_destination_index() -> None:
    broker = Broker(Config(), MemoryStore())
    vhost = broker.vhosts["/"]
    owner = object()
    names = [vhost.declare_queue("", owner=owner, exclusive=True).name for _ in range(500)]
    vhost.declare_exchange("logs", "fanout")
    vhost.bind("logs", Destination("queue", names[0]), "", None, owner=owner)
    for exchange in vhost.exchanges.values():
        exchange.impl.bindings = _no_scan  # type: ignore[method-assign]
    for name in names:
        vhost.remove_queue(vhost.queues[name])
    assert not vhost.queues
    for exchange in vhost.exchanges.values():
        for name in names:
            assert exchange.impl.bindings_to(Destination("queue", name)) == []
    assert vhost.exchanges[""].impl.route(names[1], None) == []


def test_bindings_to_follows_bind_and_unbind() -> None:
    broker = Broker(Config(), MemoryStore())
    vhost = broker.vhosts["/"]
    q = vhost.declare_queue("q", owner=None)
    vhost.declare_exchange("x", "direct")
    dest = Destination("queue", q.name)
    impl = vhost.exchanges["x"].impl
    impl.bind(dest, "a")
    impl.bind(dest, "b", {"k": 1})
    assert sorted(b.routing_key for b in impl.bindings_to(dest)) == ["a", "b"]
    impl.unbind(dest, "a")
    assert [b.routing_key for b in impl.bindings_to(dest)] == ["b"]
    assert impl.remove_destination(dest) == 1
    assert impl.bindings_to(dest) == [] and len(impl) == 0
