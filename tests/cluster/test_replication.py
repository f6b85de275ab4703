"""Replication without etcd: a leader broker (the real one, in-process)
with the cluster's replicator, and a follower's standby store fed over
TCP. What the leader confirmed is on the follower, and a broker started
on the follower's data dir (a promotion) serves it: queue messages in
order, stream entries at the same offsets, consumer-group offsets."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pika
import trio

from mqbroker.broker.broker import Broker
from mqbroker.cluster.feed import Feed
from mqbroker.cluster.follower import Follower
from mqbroker.cluster.leader import Leader
from mqbroker.cluster.records import read_position
from mqbroker.cluster.ring import Ring
from mqbroker.config import Config
from mqbroker.persistence import LmdbStore, Replicator, Store
from mqbroker.server.app import ServerInfo, serve
from mqbroker.streams.queue import StreamQueue


class LocalRole:
    """The leader's role with the in-sync set kept here, not in etcd."""

    def __init__(self, data_dir: Path, cluster_size: int) -> None:
        self.data_dir = data_dir
        self.cluster_size = cluster_size
        self.isr_history: list[set[str]] = []
        self.leader: Leader | None = None
        self.feed: Feed | None = None
        self.port = 0

    def attach(self, broker: Broker, store: Store) -> Replicator:
        assert isinstance(store, LmdbStore)

        async def write_isr(members: set[str]) -> bool:
            self.isr_history.append(set(members))
            return True

        self.leader = Leader(
            node="a", data_dir=self.data_dir, term=7,
            start=read_position(dict(store.definitions("cluster"))), ring=Ring(),
            cluster_size=self.cluster_size, isr=set(), write_isr=write_isr,
        )
        self.leader.seed_logs([
            q.log for v in broker.vhosts.values() for q in v.queues.values()
            if isinstance(q, StreamQueue)
        ])
        self.feed = Feed(self.leader, store, self.data_dir, "s3cret")
        return self.leader

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        assert self.feed is not None
        async with trio.open_nursery() as nursery:
            self.port = await nursery.start(self.feed.serve, "127.0.0.1", 0)
            task_status.started(self.port)


def _config(data_dir: Path) -> Config:
    return Config(port=0, data_dir=data_dir, management_port=None, disk_free_limit_bytes=None)


def _publish(port: int, n: int) -> None:
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    ch = conn.channel()
    ch.queue_declare("jobs", durable=True)
    ch.queue_declare("events", durable=True, arguments={
        "x-queue-type": "stream", "x-stream-max-segment-size-bytes": 4000})
    ch.confirm_delivery()
    props = pika.BasicProperties(delivery_mode=2)
    for i in range(n):
        ch.basic_publish("", "jobs", b"job-%d" % i, props)
        ch.basic_publish("", "events", b"event-%d" % i, props)
    conn.close()


def _drain(port: int) -> tuple[list[bytes], list[tuple[int, bytes]]]:
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    ch = conn.channel()
    jobs = []
    while (got := ch.basic_get("jobs", auto_ack=True))[0] is not None:
        jobs.append(got[2])
    ch.basic_qos(prefetch_count=100)
    events: list[tuple[int, bytes]] = []

    def on(c: Any, m: Any, p: Any, b: bytes) -> None:
        events.append((p.headers["x-stream-offset"], b))
        c.basic_ack(m.delivery_tag)

    ch.basic_consume("events", on, arguments={"x-stream-offset": "first"})
    for _ in range(50):
        conn.process_data_events(time_limit=0.1)
    conn.close()
    return jobs, events


async def _start_leader(nursery: trio.Nursery, role: LocalRole, data_dir: Path) -> ServerInfo:
    return await nursery.start(lambda task_status: serve(  # type: ignore[misc]
        _config(data_dir), role=role, task_status=task_status))


async def test_confirmed_batches_reach_the_follower_and_survive_promotion(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    role = LocalRole(a, cluster_size=2)
    ring = Ring()
    async with trio.open_nursery() as nursery:
        info = await _start_leader(nursery, role, a)
        assert role.feed is not None and role.leader is not None
        feed_port = role.port
        follower = Follower("b", b, "s3cret", ring)
        nursery.start_soon(follower.run, lambda: ("127.0.0.1", feed_port))
        # with two nodes a confirm needs the follower: these publishes
        # complete only because it acknowledges
        await trio.to_thread.run_sync(_publish, info.port, 300)
        assert follower.position.lsn == role.leader.replicated.lsn
        assert {"a", "b"} in role.isr_history
        nursery.cancel_scope.cancel()
    follower.close()
    shutil.rmtree(a)  # the leader's machine is gone
    async with trio.open_nursery() as nursery:
        promoted = await nursery.start(lambda task_status: serve(  # type: ignore[misc]
            _config(b), task_status=task_status))
        jobs, events = await trio.to_thread.run_sync(_drain, promoted.port)
        nursery.cancel_scope.cancel()
    assert jobs == [b"job-%d" % i for i in range(300)]
    assert events == [(i, b"event-%d" % i) for i in range(300)]


async def test_a_late_follower_gets_a_snapshot_then_the_tail(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    role = LocalRole(a, cluster_size=1)  # confirms need nobody else
    async with trio.open_nursery() as nursery:
        info = await _start_leader(nursery, role, a)
        assert role.feed is not None and role.leader is not None
        feed_port = role.port
        await trio.to_thread.run_sync(_publish, info.port, 200)
        follower = Follower("b", b, "s3cret", Ring())
        nursery.start_soon(follower.run, lambda: ("127.0.0.1", feed_port))
        with trio.fail_after(10):
            while follower.position.lsn < role.leader.replicated.lsn:
                await trio.sleep(0.05)
        await trio.to_thread.run_sync(_publish, info.port, 50)
        with trio.fail_after(10):
            while follower.position.lsn < role.leader.replicated.lsn:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    follower.close()
    async with trio.open_nursery() as nursery:
        promoted = await nursery.start(lambda task_status: serve(  # type: ignore[misc]
            _config(b), task_status=task_status))
        jobs, events = await trio.to_thread.run_sync(_drain, promoted.port)
        nursery.cancel_scope.cancel()
    expected = [b"job-%d" % i for i in range(200)] + [b"job-%d" % i for i in range(50)]
    assert jobs == expected
    assert [o for o, _ in events] == list(range(250))


async def test_a_node_that_led_resyncs_from_a_snapshot(tmp_path: Path) -> None:
    """Its segment files may hold bytes of a batch its store never
    recorded (a crash between the log fsync and the store write), which
    the new leader's records would never overwrite: a snapshot replaces
    them, even when its position is in the new leader's history."""
    from mqbroker.cluster.follower import led_marker

    a, b = tmp_path / "a", tmp_path / "b"
    role = LocalRole(a, cluster_size=1)
    async with trio.open_nursery() as nursery:
        info = await _start_leader(nursery, role, a)
        assert role.feed is not None and role.leader is not None
        await trio.to_thread.run_sync(_publish, info.port, 20)
        b.mkdir()
        stale = b / "streams" / "%2F" / "events" / ("9".zfill(20) + ".seg")
        stale.parent.mkdir(parents=True)
        stale.write_bytes(b"never confirmed")
        led_marker(b).write_text("3\n")
        follower = Follower("b", b, "s3cret", Ring())
        nursery.start_soon(follower.run, lambda: ("127.0.0.1", role.port))
        with trio.fail_after(10):
            while follower.position.lsn < role.leader.replicated.lsn:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    follower.close()
    assert role.feed._snapshots == 1
    assert not stale.exists() and not led_marker(b).exists()


async def test_followers_drop_the_segments_retention_dropped(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    role = LocalRole(a, cluster_size=2)
    async with trio.open_nursery() as nursery:
        info = await _start_leader(nursery, role, a)
        assert role.leader is not None
        follower = Follower("b", b, "s3cret", Ring())
        nursery.start_soon(follower.run, lambda: ("127.0.0.1", role.port))

        def publish() -> None:
            conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", info.port))
            ch = conn.channel()
            ch.queue_declare("capped", durable=True, arguments={
                "x-queue-type": "stream", "x-max-length-bytes": 6000,
                "x-stream-max-segment-size-bytes": 2000})
            ch.confirm_delivery()
            for i in range(300):
                ch.basic_publish("", "capped", b"entry-%04d" % i + b"." * 40)
            conn.close()

        await trio.to_thread.run_sync(publish)
        nursery.cancel_scope.cancel()
    follower.close()
    rel = Path("streams") / "%2F" / "capped"
    leader_segments = sorted(p.name for p in (a / rel).glob("*.seg"))
    follower_segments = sorted(p.name for p in (b / rel).glob("*.seg"))
    assert len(leader_segments) <= 5  # retention ran on the leader
    # the follower holds what the leader held one batch ago, no older segment
    assert set(follower_segments) >= set(leader_segments[1:])
    assert len(follower_segments) <= len(leader_segments) + 1
