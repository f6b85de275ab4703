"""Leadership through etcd: one key on a lease, and the in-sync set.

Strategy (etcd's own election recipe, reduced): the leader key
``<prefix>leader`` is created with a transaction "only if it does not
exist", bound to a lease the leader renews every third of its TTL. The
term is the key's create revision: it grows with every new leader, so
records and ISR writes of an old term can be told apart. Leases are not
mutual exclusion on their own (an old leader may not know yet that its
lease lapsed), so every write that matters is fenced: it is a transaction
that compares the leader key's create revision with the writer's term.

A leader that cannot renew for a whole TTL sets ``lost`` and must stop
serving; etcd has by then (or will shortly have) expired the key, and an
in-sync follower takes over.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import trio

from mqbroker.log import get_logger

from .etcd import EtcdClient, EtcdError

log = get_logger("mqbroker.cluster")

POLL = 0.25


class Election:
    def __init__(self, client: EtcdClient, node: str, *, ttl: int = 5) -> None:
        self.client = client
        self.node = node
        self.ttl = max(2, ttl)
        self.lease = 0
        self.term = 0
        self.lost = trio.Event()

    async def campaign(self, value: bytes, *, eligible: Callable[[], bool]) -> int:
        """Return the term once this node holds the leader key; try only
        while ``eligible()`` (the node is in the in-sync set)."""
        while True:
            try:
                if eligible() and await self.client.get("leader") is None:
                    lease = await self.client.lease_grant(self.ttl)
                    won = await self.client.txn(
                        [self.client.compare_create("leader", 0)],
                        [self.client.op_put("leader", value, lease)],
                    )
                    if won:
                        current = await self.client.get("leader")
                        if current is not None:
                            self.lease, self.term = lease, current[2]
                            return self.term
                    await self.client.lease_revoke(lease)
            except EtcdError as exc:
                log.debug("cluster.campaign_retry", error=str(exc))
            await trio.sleep(POLL)

    async def keep_alive(self) -> None:
        """The leader's lease renewal; sets ``lost`` when it fails for a
        whole TTL (or etcd says the lease is gone) and returns."""
        renewed = trio.current_time()
        while True:
            await trio.sleep(self.ttl / 3)
            try:
                left = await self.client.lease_keepalive(self.lease)
            except EtcdError as exc:
                log.warning("cluster.lease_renew_failed", error=str(exc))
                if trio.current_time() - renewed >= self.ttl:
                    break
                continue
            if left <= 0:
                break
            renewed = trio.current_time()
        self.lost.set()

    async def leader(self) -> tuple[bytes, int] | None:
        """The leader key's value and term, if somebody leads."""
        found = await self.client.get("leader")
        return None if found is None else (found[0], found[2])

    async def read_isr(self) -> set[str]:
        found = await self.client.get("isr")
        if found is None:
            return set()
        return set(json.loads(found[0]))

    async def write_isr(self, members: set[str], term: int) -> bool:
        """Fenced: only while the leader key is still the one of ``term``."""
        return await self.client.txn(
            [self.client.compare_create("leader", term)],
            [self.client.op_put("isr", json.dumps(sorted(members)).encode())],
        )

    async def resign(self) -> None:
        try:
            await self.client.txn(
                [self.client.compare_create("leader", self.term)],
                [self.client.op_delete("leader")],
            )
            if self.lease:
                await self.client.lease_revoke(self.lease)
        except EtcdError as exc:
            log.warning("cluster.resign_failed", error=str(exc))
