"""Repeated failovers under confirmed load (make stress): three rounds of
SIGKILL to whoever leads, each old leader restarted and back in sync
before the next round; at the end every confirmed message is there."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pika
import pytest
from pika.exceptions import AMQPError

from mqbroker.testing.cluster import ClusterNode, cluster_status, wait_in_sync

ROUNDS = 3


def _connect(nodes: list[ClusterNode]) -> pika.BlockingConnection:
    deadline = time.monotonic() + 60
    while True:
        for node in nodes:
            if not node.is_alive():
                continue
            try:
                return pika.BlockingConnection(pika.ConnectionParameters(
                    "127.0.0.1", node.amqp_port, connection_attempts=1, socket_timeout=2))
            except AMQPError:
                continue
        assert time.monotonic() < deadline, "no node accepted a connection"
        time.sleep(0.1)


@pytest.mark.stress
@pytest.mark.timeout(900)
def test_three_failovers_lose_nothing(etcd_url: str, tmp_path: Path) -> None:
    nodes = [ClusterNode(f"n{i}", tmp_path / f"n{i}", etcd_url) for i in (1, 2, 3)]
    confirmed: list[int] = []
    stop = threading.Event()

    def publish() -> None:
        i = 0
        conn = _connect(nodes)
        while not stop.is_set():
            try:
                ch = conn.channel()
                ch.queue_declare("orders", durable=True)
                ch.confirm_delivery()
                while not stop.is_set():
                    ch.basic_publish("", "orders", b"%d" % i, pika.BasicProperties(delivery_mode=2))
                    confirmed.append(i)
                    i += 1
            except AMQPError:
                conn = _connect(nodes)
        conn.close()

    try:
        for node in nodes:
            node.start()
        wait_in_sync(nodes, {"n1", "n2", "n3"})
        publisher = threading.Thread(target=publish, daemon=True)
        publisher.start()
        for _ in range(ROUNDS):
            before = len(confirmed)
            while len(confirmed) < before + 1500:
                time.sleep(0.05)
                assert publisher.is_alive()
            status = cluster_status(nodes)
            assert status is not None
            leader = next(n for n in nodes if n.name == status["leader"])
            leader.kill()
            time.sleep(1)
            leader.start()
            wait_in_sync(nodes, {"n1", "n2", "n3"}, timeout=60)
        stop.set()
        publisher.join(60)
        conn = _connect(nodes)
        ch = conn.channel()
        seen: set[int] = set()
        while (got := ch.basic_get("orders", auto_ack=True))[0] is not None:
            seen.add(int(got[2]))
        conn.close()
        assert set(confirmed) - seen == set()
    finally:
        stop.set()
        for node in nodes:
            node.kill()
