"""One node of a cluster: a follower until it wins the election, then the
leader until its lease lapses (then the process exits; its supervisor
restarts it and it comes back as a follower).

As a follower the node keeps a standby store (cluster/follower.py) and
relays its AMQP and HTTP clients to the leader (cluster/proxy.py). It
campaigns only while etcd's in-sync set names it (or names nobody yet: a
new cluster), so a node that may miss confirmed data never leads. When
it wins it closes the standby store and starts the ordinary broker on the
same data dir and the same ports, with the leader's replicator in its
group committer (server/app.py ``role``).
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import trio

from mqbroker.broker.broker import Broker
from mqbroker.cluster.election import Election
from mqbroker.cluster.etcd import EtcdClient, EtcdError
from mqbroker.cluster.feed import Feed
from mqbroker.cluster.follower import Follower, led_marker
from mqbroker.cluster.leader import Leader
from mqbroker.cluster.proxy import serve_proxy
from mqbroker.cluster.records import read_position
from mqbroker.cluster.ring import Ring
from mqbroker.config import Config
from mqbroker.log import get_logger
from mqbroker.persistence import LmdbStore, Replicator, Store
from mqbroker.server.app import ServerInfo, serve
from mqbroker.server.tls import tls_enabled
from mqbroker.streams.queue import StreamQueue

log = get_logger("mqbroker.cluster")

POLL = 0.25


@dataclass
class ClusterView:
    """What this node knows of the cluster, refreshed from etcd."""

    node: str
    leader: dict[str, Any] | None = None
    isr: set[str] = field(default_factory=set)
    members: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_leader: str | None = None  # the latest leader seen

    @property
    def eligible(self) -> bool:
        return not self.isr or self.node in self.isr

    def leader_address(self, key: str) -> tuple[str, int] | None:
        if self.leader is None or self.leader.get("name") == self.node:
            return None
        value = self.leader.get(key)
        if not value:
            return None
        host, _, port = str(value).rpartition(":")
        return host, int(port)


class LeaderRole:
    """The leader's additions to the broker (server/app.py ClusterRole)."""

    def __init__(self, config: Config, view: ClusterView, election: Election,
                 term: int, ring: Ring) -> None:
        self.config = config
        self.view = view
        self.election = election
        self.term = term
        self.ring = ring
        self.leader: Leader | None = None
        self.feed: Feed | None = None

    def attach(self, broker: Broker, store: Store) -> Replicator:
        assert isinstance(store, LmdbStore) and self.config.data_dir is not None
        data_dir = Path(self.config.data_dir)
        marker = led_marker(data_dir)
        marker.write_text(f"{self.term}\n")
        _fsync(marker)

        async def write_isr(members: set[str]) -> bool:
            return await self.election.write_isr(members, self.term)

        self.leader = Leader(
            node=self.view.node, data_dir=data_dir, term=self.term,
            start=read_position(dict(store.definitions("cluster"))), ring=self.ring,
            cluster_size=self.config.cluster_size, isr=self.view.isr, write_isr=write_isr,
            ack_timeout=self.config.cluster_ack_timeout_s,
        )
        self.leader.seed_logs([
            queue.log for vhost in broker.vhosts.values()
            for queue in vhost.queues.values() if isinstance(queue, StreamQueue)
        ])
        self.feed = Feed(self.leader, store, data_dir, self.config.cluster_secret)
        broker.cluster_status = self.status
        return self.leader

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        assert self.feed is not None
        await self.feed.serve(self.config.host, self.config.cluster_port, task_status=task_status)

    def status(self) -> dict[str, Any]:
        """GET /api/cluster."""
        assert self.leader is not None
        state = self.leader.status()
        nodes = []
        for name in sorted(set(self.view.members) | {self.view.node}):
            member = self.view.members.get(name, {})
            link = state["followers"].get(name)
            is_leader = name == self.view.node
            nodes.append({
                "name": name,
                "role": "leader" if is_leader else "follower",
                "in_sync": name in state["isr"],
                "connected": is_leader or link is not None,
                "lag_bytes": 0 if is_leader else (link["lag_bytes"] if link else None),
                "acked_lsn": state["lsn"] if is_leader else (link["acked_lsn"] if link else None),
                "amqp": member.get("amqp"),
                "http": member.get("http"),
            })
        return {"leader": self.view.node, "term": self.term, "lsn": state["lsn"], "nodes": nodes}


async def serve_node(
    config: Config, *, task_status: trio.TaskStatus[ServerInfo] = trio.TASK_STATUS_IGNORED
) -> None:
    if config.data_dir is None or config.storage != "lmdb":
        raise ValueError("a cluster node needs the lmdb storage and a data dir")
    node = config.node_name or socket.gethostname()
    client = EtcdClient(list(config.cluster_etcd), prefix=config.cluster_prefix)
    election = Election(client, node, ttl=config.cluster_lease_ttl_s)
    view = ClusterView(node)
    ring = Ring()
    amqp = await trio.open_tcp_listeners(config.port, host=config.host)
    amqp_port = amqp[0].socket.getsockname()[1]
    http: list[trio.SocketListener] = []
    http_port = None
    if config.management_port is not None:
        http = await trio.open_tcp_listeners(config.management_port, host=config.host)
        http_port = http[0].socket.getsockname()[1]
    amqps: list[trio.SocketListener] = []
    tls_port = None
    if tls_enabled(config):  # relayed as bytes: TLS ends at the leader
        amqps = await trio.open_tcp_listeners(config.tls_port, host=config.host)
        tls_port = amqps[0].socket.getsockname()[1]
    host = config.cluster_advertise_host or (
        socket.gethostname() if config.host in ("0.0.0.0", "::", "") else config.host
    )
    me = {
        "name": node,
        "amqp": f"{host}:{amqp_port}",
        "http": f"{host}:{http_port}" if http_port else None,
        "amqps": f"{host}:{tls_port}" if tls_port else None,
        "repl": f"{host}:{config.cluster_port}",
    }
    await _register(client, node, me)
    follower = Follower(node, Path(config.data_dir), config.cluster_secret, ring)
    log.info("cluster.follower", node=node, position=follower.position.as_list())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch, election, client, view)
        term = 0
        with trio.CancelScope() as following:
            async with trio.open_nursery() as standby:
                standby.start_soon(follower.run, lambda: view.leader_address("repl"))
                await standby.start(serve_proxy, amqp, lambda: view.leader_address("amqp"))
                if amqps:
                    await standby.start(serve_proxy, amqps, lambda: view.leader_address("amqps"))
                if http:
                    await standby.start(serve_proxy, http, lambda: view.leader_address("http"))
                task_status.started(ServerInfo(config.host, amqp_port, http_port, None))  # type: ignore[arg-type]
                term = await _win(election, view, json.dumps(me).encode())
                following.cancel()
        # The leader whose lease lapsed is gone: confirms need not wait for
        # it (the new ISR is committed to etcd before any confirm).
        if view.last_leader not in (None, node):
            view.isr.discard(str(view.last_leader))
        for listener in (*amqp, *http, *amqps):
            await listener.aclose()
        follower.close()
        log.info("cluster.leader", node=node, term=term)
        view.leader = me
        role = LeaderRole(config, view, election, term, ring)
        leading = replace(config, port=amqp_port, management_port=http_port,
                          tls_port=tls_port or config.tls_port)
        nursery.start_soon(election.keep_alive)
        nursery.start_soon(_step_down_when_lost, election, nursery.cancel_scope)
        await serve(leading, role=role)
    if election.lost.is_set():
        raise SystemExit(3)  # a supervisor restarts the node: a follower


def _fsync(path: Path) -> None:
    for target in (path, path.parent):
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


async def _win(election: Election, view: ClusterView, value: bytes) -> int:
    """Campaign until elected while in sync. The view of the ISR may be a
    poll old, so once the key is ours the ISR is read again (it cannot
    change now: every ISR write is fenced by the leader key) and a node
    that is not in it gives the key back (reliability.md, rule 7)."""
    while True:
        term = await election.campaign(value, eligible=lambda: view.eligible)
        try:
            isr = await election.read_isr()
        except EtcdError:
            await election.resign()
            continue
        if not isr or view.node in isr:
            view.isr = isr
            return term
        log.warning("cluster.not_in_sync", node=view.node, isr=sorted(isr))
        view.isr = isr
        await election.resign()


async def _register(client: EtcdClient, node: str, me: dict[str, Any]) -> None:
    while True:
        try:
            await client.put(f"members/{node}", json.dumps(me).encode())
            return
        except EtcdError as exc:
            log.warning("cluster.etcd_unreachable", error=str(exc))
            await trio.sleep(1.0)


async def _watch(election: Election, client: EtcdClient, view: ClusterView) -> None:
    """Keep the view of the leader, the in-sync set and the members fresh."""
    rounds = 0
    while True:
        try:
            current = await election.leader()
            view.leader = json.loads(current[0]) if current else None
            if view.leader is not None:
                view.last_leader = str(view.leader.get("name"))
            view.isr = await election.read_isr()
            if rounds % 8 == 0:
                view.members = {
                    key.rsplit("/", 1)[-1]: json.loads(value)
                    for key, value in await client.get_prefix("members/")
                }
        except (EtcdError, ValueError) as exc:
            log.debug("cluster.watch_failed", error=str(exc))
        rounds += 1
        await trio.sleep(POLL)


async def _step_down_when_lost(election: Election, scope: trio.CancelScope) -> None:
    await election.lost.wait()
    log.error("cluster.lease_lost", reason="the leader lease lapsed: stop serving")
    scope.cancel()
