"""The router's per-vhost cache of (exchange, routing key) -> queues.

Every change that can change where a message goes must drop the cache:
declaring and deleting queues and exchanges, binding, unbinding, and a
policy that sets an alternate exchange. Answers that depend on headers are
never cached, and unique routing keys cannot grow the cache without bound.
Each test routes once first, so a stale cached answer would be returned if
the invalidation were missing.
"""

from __future__ import annotations

from mqbroker.broker.broker import Broker
from mqbroker.broker.router import ROUTE_CACHE_MAX, route
from mqbroker.broker.vhost import VHost
from mqbroker.config import Config
from mqbroker.exchanges.base import Destination
from mqbroker.persistence.memory import MemoryStore


def _vhost() -> tuple[Broker, VHost]:
    broker = Broker(Config(), MemoryStore())
    return broker, broker.vhosts["/"]


def _names(vhost: VHost, exchange: str, key: str, headers: dict | None = None) -> list[str]:
    return [q.name for q in route(vhost, vhost.exchanges[exchange], [key], headers)]


def _queue(vhost: VHost, name: str) -> None:
    vhost.declare_queue(name, owner=None)


def test_bind_and_unbind_change_the_answer() -> None:
    _, vhost = _vhost()
    vhost.declare_exchange("ex", "direct")
    _queue(vhost, "a")
    _queue(vhost, "b")
    vhost.bind("ex", Destination("queue", "a"), "k", None)
    assert _names(vhost, "ex", "k") == ["a"]
    assert ("ex", "k") in vhost.routes
    vhost.bind("ex", Destination("queue", "b"), "k", None)
    assert sorted(_names(vhost, "ex", "k")) == ["a", "b"]
    vhost.unbind("ex", Destination("queue", "a"), "k", None)
    assert _names(vhost, "ex", "k") == ["b"]


def test_deleted_and_redeclared_queue_is_not_served_from_the_cache() -> None:
    _, vhost = _vhost()
    _queue(vhost, "q")
    first = route(vhost, vhost.exchanges[""], ["q"], None)
    vhost.delete_queue("q", owner=None)
    assert _names(vhost, "", "q") == []
    _queue(vhost, "q")
    again = route(vhost, vhost.exchanges[""], ["q"], None)
    assert [q.name for q in again] == ["q"] and again[0] is not first[0]


def test_exchange_to_exchange_and_alternate_exchange_changes() -> None:
    _, vhost = _vhost()
    vhost.declare_exchange("src", "topic")
    vhost.declare_exchange("dst", "fanout")
    _queue(vhost, "q")
    assert _names(vhost, "src", "a.b") == []
    vhost.bind("dst", Destination("queue", "q"), "", None)
    vhost.bind("src", Destination("exchange", "dst"), "a.*", None)
    assert _names(vhost, "src", "a.b") == ["q"]
    vhost.delete_exchange("dst")
    assert _names(vhost, "src", "a.b") == []
    # an alternate exchange declared after the first (unroutable) answer
    vhost.declare_exchange("ae-src", "direct", arguments={"alternate-exchange": "ae"})
    assert _names(vhost, "ae-src", "x") == []
    vhost.declare_exchange("ae", "fanout")
    vhost.bind("ae", Destination("queue", "q"), "", None)
    assert _names(vhost, "ae-src", "x") == ["q"]


def test_alternate_exchange_set_by_policy_applies_at_once() -> None:
    broker, vhost = _vhost()
    vhost.declare_exchange("ex", "direct")
    vhost.declare_exchange("ae", "fanout")
    _queue(vhost, "q")
    vhost.bind("ae", Destination("queue", "q"), "", None)
    assert _names(vhost, "ex", "nowhere") == []
    broker.policies.set_policy("/", "ae", "^ex$", {"alternate-exchange": "ae"})
    assert _names(vhost, "ex", "nowhere") == ["q"]


def test_headers_exchange_answers_are_never_cached() -> None:
    _, vhost = _vhost()
    vhost.declare_exchange("h", "headers")
    _queue(vhost, "q")
    vhost.bind("h", Destination("queue", "q"), "", {"x-match": "all", "kind": "a"})
    assert _names(vhost, "h", "", {"kind": "a"}) == ["q"]
    assert _names(vhost, "h", "", {"kind": "b"}) == []
    assert vhost.routes == {}
    # also when reached through an exchange-to-exchange binding
    vhost.declare_exchange("front", "fanout")
    vhost.bind("front", Destination("exchange", "h"), "", None)
    assert _names(vhost, "front", "", {"kind": "a"}) == ["q"]
    assert _names(vhost, "front", "", {"kind": "b"}) == []
    assert vhost.routes == {}


def test_unique_keys_cannot_grow_the_cache_without_bound() -> None:
    _, vhost = _vhost()
    vhost.declare_exchange("t", "topic")
    _queue(vhost, "q")
    vhost.bind("t", Destination("queue", "q"), "#", None)
    for n in range(ROUTE_CACHE_MAX * 2 + 10):
        assert _names(vhost, "t", f"reply.{n}") == ["q"]
        assert len(vhost.routes) <= ROUTE_CACHE_MAX
