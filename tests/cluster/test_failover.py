"""Three nodes on a real etcd: the leader SIGKILLed under confirmed load
published through a follower (issue 15's acceptance), and a follower cut
off from the cluster that must not serve as a leader."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
from pika.exceptions import AMQPError

from mqbroker.testing.cluster import (
    ClusterNode,
    EtcdProcess,
    cluster_status,
    wait_in_sync,
)

TOTAL = 6000


@pytest.fixture
def nodes(etcd_url: str, tmp_path: Path) -> Iterator[list[ClusterNode]]:
    started = [ClusterNode(f"n{i}", tmp_path / f"n{i}", etcd_url) for i in (1, 2, 3)]
    try:
        for node in started:
            node.start()
        wait_in_sync(started, {"n1", "n2", "n3"})
        yield started
    finally:
        for node in started:
            node.kill()


def _connect(candidates: list[ClusterNode], deadline: float) -> pika.BlockingConnection:
    """A client with a host list: the first node that accepts (and whose
    leader answers the handshake through it)."""
    while True:
        for node in candidates:
            try:
                return pika.BlockingConnection(pika.ConnectionParameters(
                    "127.0.0.1", node.amqp_port, connection_attempts=1,
                    socket_timeout=2, blocked_connection_timeout=10, heartbeat=10))
            except AMQPError:
                continue
        if time.monotonic() > deadline:
            raise AssertionError("no node accepted a connection")
        time.sleep(0.1)


def test_leader_killed_under_confirmed_load_loses_nothing(nodes: list[ClusterNode]) -> None:
    status = cluster_status(nodes)
    assert status is not None
    leader = next(n for n in nodes if n.name == status["leader"])
    followers = [n for n in nodes if n is not leader]
    confirmed: list[int] = []
    gaps: list[float] = []  # seconds without a confirm, around the failover
    killed = threading.Event()

    def publish() -> None:
        i = 0
        deadline = time.monotonic() + 180
        conn = _connect(followers, deadline)  # through a follower
        last = time.monotonic()
        while i < TOTAL:
            try:
                ch = conn.channel()
                ch.queue_declare("orders", durable=True)
                ch.confirm_delivery()
                while i < TOTAL:
                    ch.basic_publish("", "orders", b"%d" % i,
                                     pika.BasicProperties(delivery_mode=2), mandatory=True)
                    confirmed.append(i)
                    now = time.monotonic()
                    if killed.is_set():
                        gaps.append(now - last)
                    last = now
                    i += 1
            except AMQPError:
                # unconfirmed: publish it again (at-least-once)
                conn = _connect(followers, deadline)

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    while len(confirmed) < TOTAL // 4 and publisher.is_alive():
        time.sleep(0.01)
    leader.kill()
    killed.set()
    killed_at = time.monotonic()
    publisher.join(240)
    assert not publisher.is_alive(), f"publisher stuck at {len(confirmed)}"
    assert len(confirmed) == TOTAL
    assert max(gaps) < 5.0, f"no confirm for {max(gaps):.1f} s around the failover"
    print(f"failover: longest gap between confirms {max(gaps):.2f} s")

    # the old leader comes back as an in-sync follower
    restarted = time.monotonic()
    leader.start()
    status = wait_in_sync(nodes, {n.name for n in nodes}, timeout=30)
    assert status["leader"] != leader.name
    assert time.monotonic() - restarted < 30
    print(f"old leader in sync {time.monotonic() - restarted:.2f} s after its restart")
    assert killed_at < restarted

    # every confirmed message is there (duplicates allowed: at-least-once)
    conn = _connect(nodes, time.monotonic() + 30)
    ch = conn.channel()
    seen: set[int] = set()
    while True:
        method, _, body = ch.basic_get("orders", auto_ack=True)
        if method is None:
            break
        seen.add(int(body))
    conn.close()
    assert set(confirmed) - seen == set()


def test_every_node_reports_the_cluster(nodes: list[ClusterNode]) -> None:
    """GET /api/cluster, mqbrokerctl cluster and /metrics, asked of a
    follower (relayed to the leader) and of the leader: one answer."""
    import subprocess
    import sys
    import urllib.request

    status = cluster_status(nodes)
    assert status is not None
    leader = status["leader"]
    follower = next(n for n in nodes if n.name != leader)
    via_follower = follower.api("/api/cluster")
    assert via_follower["leader"] == leader
    by_name = {n["name"]: n for n in via_follower["nodes"]}
    assert set(by_name) == {"n1", "n2", "n3"}
    assert by_name[leader]["role"] == "leader"
    assert all(n["in_sync"] and n["lag_bytes"] is not None for n in by_name.values())
    assert by_name[follower.name]["amqp"] == f"127.0.0.1:{follower.amqp_port}"
    out = subprocess.run(
        [sys.executable, "-m", "mqbroker.ctl.cli", "--url",
         f"http://127.0.0.1:{follower.http_port}", "cluster"],
        capture_output=True, text=True, timeout=30, check=True).stdout
    assert f"leader: {leader}" in out and "follower" in out
    with urllib.request.urlopen(f"http://127.0.0.1:{follower.http_port}/metrics") as response:
        metrics = response.read().decode()
    assert f'mqbroker_cluster_in_sync{{node="{follower.name}"}} 1.0' in metrics
    assert "mqbroker_cluster_replication_lag_bytes" in metrics


def test_a_follower_cut_off_never_leads(nodes: list[ClusterNode]) -> None:
    """A follower stopped (SIGSTOP: its replication and lease-less campaign
    freeze) falls out of the in-sync set; when the leader then dies, the
    frozen node, resumed, is not elected: the other in-sync node is."""
    import os
    import signal

    status = cluster_status(nodes)
    assert status is not None
    leader = next(n for n in nodes if n.name == status["leader"])
    frozen, other = [n for n in nodes if n is not leader]
    os.kill(frozen.pid, signal.SIGSTOP)
    try:
        conn = _connect([other], time.monotonic() + 30)
        ch = conn.channel()
        ch.queue_declare("after", durable=True)
        ch.confirm_delivery()
        for i in range(50):
            ch.basic_publish("", "after", b"%d" % i, pika.BasicProperties(delivery_mode=2))
        conn.close()
        status = cluster_status([leader])
        assert status is not None
        in_sync = {n["name"] for n in status["nodes"] if n["in_sync"]}
        assert frozen.name not in in_sync and other.name in in_sync
        leader.kill()
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status = cluster_status([other, frozen])
        if status and status["leader"] not in (leader.name, None):
            break
        time.sleep(0.2)
    assert status is not None and status["leader"] == other.name
    conn = _connect([frozen], time.monotonic() + 30)  # relayed to the new leader
    ch = conn.channel()
    assert ch.queue_declare("after", passive=True).method.message_count == 50
    conn.close()


def test_a_leader_that_loses_etcd_stops_serving(etcd_process: EtcdProcess, tmp_path: Path) -> None:
    """Without etcd the leader cannot renew its lease: it exits (code 3)
    within about a TTL rather than go on as a leader nobody elected."""
    etcd = etcd_process
    node = ClusterNode("solo", tmp_path / "solo", etcd.url, size=1)
    try:
        node.start()
        wait_in_sync([node], {"solo"})
        conn = pika.BlockingConnection(pika.URLParameters(node.amqp_url))
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("q", durable=True)
        conn.close()
        etcd.stop()
        stopped = time.monotonic()
        assert node.wait(timeout=20) == 3
        assert time.monotonic() - stopped < 10
    finally:
        node.kill()
        etcd.stop()


def test_streams_and_group_offsets_survive_a_failover(nodes: list[ClusterNode]) -> None:
    """Everything the leader stores is replicated: a stream's entries at
    their offsets (segment bytes) and a consumer group's committed offset
    (a store record)."""
    status = cluster_status(nodes)
    assert status is not None
    leader = next(n for n in nodes if n.name == status["leader"])
    rest = [n for n in nodes if n is not leader]
    conn = _connect(rest, time.monotonic() + 30)
    ch = conn.channel()
    ch.queue_declare("events", durable=True, arguments={
        "x-queue-type": "stream", "x-stream-max-segment-size-bytes": 10_000})
    ch.confirm_delivery()
    for i in range(200):
        ch.basic_publish("", "events", b"e%d" % i)
    ch.basic_qos(prefetch_count=50)
    acked: list[int] = []

    def on(c: object, m: object, p: pika.BasicProperties, b: bytes) -> None:
        ch.basic_ack(m.delivery_tag)  # type: ignore[attr-defined]
        acked.append(p.headers["x-stream-offset"])

    tag = ch.basic_consume("events", on, arguments={"x-stream-group": "billing",
                                                    "x-stream-offset": "first"})
    deadline = time.monotonic() + 20
    while len(acked) < 200 and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.1)
    ch.basic_cancel(tag)
    for i in range(200, 500):
        ch.basic_publish("", "events", b"e%d" % i)
    conn.close()
    assert acked == list(range(200))
    leader.kill()
    status = wait_in_sync(rest, {n.name for n in rest}, timeout=30)
    assert status["leader"] != leader.name
    groups = rest[0].api("/api/stream-groups/%2F")
    billing = [g for g in groups if g["group"] == "billing"]
    assert billing and billing[0]["committed_offset"] == 200
    conn = _connect(rest, time.monotonic() + 30)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=100)
    got: list[int] = []

    def on_again(c: object, m: object, p: pika.BasicProperties, b: bytes) -> None:
        got.append(p.headers["x-stream-offset"])
        assert b == b"e%d" % p.headers["x-stream-offset"]
        ch.basic_ack(m.delivery_tag)  # type: ignore[attr-defined]

    ch.basic_consume("events", on_again, arguments={"x-stream-group": "billing"})
    deadline = time.monotonic() + 20
    while len(got) < 300 and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.1)
    conn.close()
    assert got == list(range(200, 500))  # resumes at the committed offset
