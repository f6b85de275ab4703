"""Start-up: rebuild the durable topology and queue contents from the store.

Strategy: definitions first (vhosts, exchanges, queues, bindings), in that
order so every binding finds both ends, then each durable queue's entries in
seq order. Nothing recovered is written back (``persist=False``): the store
already holds it.
"""

from __future__ import annotations

from typing import Any

from mqbroker.core.broker import Broker
from mqbroker.exchanges.base import Destination
from mqbroker.exchanges.delayed import recover as recover_delayed


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
