"""Start-up: rebuild the durable topology and queue contents from the store.

Strategy: definitions first (vhosts, exchanges, queues, bindings), in that
order so every binding finds both ends, then each durable queue's entries in
seq order. Nothing recovered is written back (``persist=False``): the store
already holds it.
"""

from __future__ import annotations

from typing import Any

from mqbroker.broker.broker import Broker
from mqbroker.broker.vhost import VHost
from mqbroker.exchanges.base import Destination
from mqbroker.exchanges.delayed import (
    DELAYED_TYPE,
    HELD_PREFIX,
    DelayedExchange,
    is_held_key,
)
from mqbroker.exchanges.exchange import Exchange
from mqbroker.model.keys import store_key
from mqbroker.model.message import Message


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def recover(broker: Broker) -> dict[str, int]:
    store = broker.store
    # Users, permissions and vhosts (with their limits); seeds the defaults
    # on first boot.
    broker.access.recover()
    for _, record in store.definitions("vhost"):
        broker.add_vhost(record["name"])
    counts = {"exchanges": 0, "queues": 0, "bindings": 0, "messages": 0}
    # Policies first: queues and exchanges pick theirs as they are declared.
    counts["policies"] = broker.policies.recover()
    for _, record in store.definitions("exchange"):
        vhost = broker.add_vhost(record["vhost"])
        vhost.declare_exchange(
            record["name"],
            record["type"],
            durable=True,
            auto_delete=record.get("auto_delete", False),
            internal=record.get("internal", False),
            arguments=record.get("arguments") or {},
            persist=False,
        )
        counts["exchanges"] += 1
    for _, record in store.definitions("queue"):
        vhost = broker.add_vhost(record["vhost"])
        queue = vhost.declare_queue(
            record["name"],
            owner=None,
            durable=True,
            auto_delete=record.get("auto_delete", False),
            arguments=record.get("arguments") or {},
            persist=False,
        )
        counts["queues"] += 1
        release = getattr(store, "release_resident", None)
        for stored in store.load_entries(queue.key):
            queue.restore(stored)
            counts["messages"] += 1
            # Reading a large store maps it in; hand the pages back as we
            # go so recovery's RSS stays the broker's own (resident.py).
            if release is not None and counts["messages"] % 100_000 == 0:
                release()
        if release is not None:
            release()
        broker.schedule(queue)
    for _, record in store.definitions("binding"):
        bound_in = broker.vhosts.get(record["vhost"])
        if bound_in is None:
            continue
        vhost = bound_in
        dest = Destination(record["destination_type"], record["destination"])
        try:
            vhost.bind(
                record["source"],
                dest,
                record["routing_key"],
                record.get("arguments") or {},
                persist=False,
            )
            counts["bindings"] += 1
        except Exception:  # an end vanished (non-durable): skip the binding
            continue
    # Length limits, now that dead-letter targets exist again.
    for vhost in broker.vhosts.values():
        for queue in list(vhost.queues.values()):
            queue.recovered()
    # Messages held by durable x-delayed-message exchanges.
    counts["delayed"] = recover_delayed(broker)
    broker.next_msg_id = max(broker.next_msg_id, store.max_msg_id() + 1)
    return counts


def recover_delayed(broker: Broker) -> int:
    """Rebuild the held messages of durable delayed exchanges, and drop
    stored ones whose exchange no longer exists."""
    store = broker.store
    wanted: dict[str, tuple[VHost, Exchange]] = {}
    for vhost in broker.vhosts.values():
        for exchange in vhost.exchanges.values():
            if exchange.type_name == DELAYED_TYPE and exchange.durable:
                wanted[store_key(vhost.name, HELD_PREFIX + exchange.name)] = (vhost, exchange)
    count = 0
    for key in store.queues_with_entries():
        if HELD_PREFIX not in key:
            continue
        target = wanted.get(key)
        if target is None:
            if is_held_key(key):
                store.drop_queue(key)
            continue
        _, exchange = target
        impl = exchange.impl
        assert isinstance(impl, DelayedExchange)
        held = impl.held_messages(broker.publisher, exchange)
        for stored in store.load_entries(key):
            body = store.get_message(stored.msg_id)
            message = Message(
                stored.msg_id, body.exchange, body.routing_key, body.properties, body.body
            )
            held.restore(stored, message)
            count += 1
        broker.schedule(held)
    return count
