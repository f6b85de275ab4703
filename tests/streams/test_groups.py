"""Partitioned streams and consumer groups over plain AMQP 0-9-1 (an
mqbroker extension: RabbitMQ keeps these to its stream protocol)."""

from __future__ import annotations

import collections
import time
import uuid
from collections.abc import Iterator
from typing import Any

import mmh3
import pika
import pytest


@pytest.fixture
def params(broker: Any) -> pika.ConnectionParameters:
    if broker.external:
        pytest.skip("partitions and groups over AMQP 0-9-1 are mqbroker's own")
    return pika.ConnectionParameters(broker.host, broker.port)


@pytest.fixture
def conn(params: Any) -> Iterator[Any]:
    c = pika.BlockingConnection(params)
    yield c
    if c.is_open:
        c.close()


def expected_partition(key: str, n: int) -> int:
    return (mmh3.hash(key.encode(), 104729, signed=False) & 0x7FFFFFFF) % n


def super_stream(ch: Any, partitions: int = 3) -> str:
    name = f"ss.{uuid.uuid4().hex[:10]}"
    ch.exchange_declare(name, "x-super-stream", durable=True, arguments={"x-partitions": partitions})
    return name


class Member:
    def __init__(self, params: Any, source: str, group: str, offset: Any = "first",
                 prefetch: int = 20) -> None:
        self.conn = pika.BlockingConnection(params)
        ch = self.conn.channel()
        ch.basic_qos(prefetch_count=prefetch)
        self.got: list[tuple[str, int, bytes]] = []
        ch.basic_consume(source, self.on, arguments={"x-stream-group": group, "x-stream-offset": offset})

    def on(self, ch: Any, m: Any, p: Any, b: bytes) -> None:
        h = p.headers
        self.got.append((h.get("x-stream-partition", ""), h["x-stream-offset"], b))
        ch.basic_ack(m.delivery_tag)

    def pump(self, seconds: float = 0.5) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.conn.process_data_events(time_limit=0.02)


def test_super_stream_topology_and_routing(conn: Any) -> None:
    ch = conn.channel()
    name = super_stream(ch, 4)
    for i in range(4):
        ch.queue_declare(f"{name}-{i}", passive=True)
    ch.confirm_delivery()
    keys = [f"k{i}" for i in range(200)]
    for key in keys:
        ch.basic_publish(name, key, key.encode())
    counts = collections.Counter(expected_partition(k, 4) for k in keys)
    for i in range(4):
        assert ch.queue_declare(f"{name}-{i}", passive=True).method.message_count == counts[i]
    ch.exchange_delete(name)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        conn.channel().queue_declare(f"{name}-0", passive=True)
    assert info.value.reply_code == 404


def test_two_members_split_then_one_dies_nothing_skipped(params: Any, conn: Any) -> None:
    ch = conn.channel()
    name = super_stream(ch, 3)
    ch.confirm_delivery()
    for i in range(150):
        ch.basic_publish(name, f"c{i % 11}", b"%d" % i)
    a = Member(params, name, "billing")
    b = Member(params, name, "billing")
    for _ in range(10):
        a.pump(0.1)
        b.pump(0.1)
    parts_a = {p for p, _, _ in a.got}
    parts_b = {p for p, _, _ in b.got}
    assert parts_a == {f"{name}-0", f"{name}-2"} and parts_b == {f"{name}-1"}
    a.conn._impl._transport._sock.close()  # dies without a goodbye (not pika's close)
    for i in range(150, 180):
        ch.basic_publish(name, f"c{i % 11}", b"%d" % i)
    b.pump(2.0)
    assert {p for p, _, _ in b.got} == {f"{name}-0", f"{name}-1", f"{name}-2"}
    seen = {int(x) for _, _, x in a.got} | {int(x) for _, _, x in b.got}
    assert seen == set(range(180))
    b.conn.close()
    ch.exchange_delete(name)


def test_plain_stream_group_one_active_one_standby(params: Any, conn: Any) -> None:
    ch = conn.channel()
    name = f"gs.{uuid.uuid4().hex[:10]}"
    ch.queue_declare(name, durable=True, arguments={"x-queue-type": "stream"})
    ch.confirm_delivery()
    for i in range(20):
        ch.basic_publish("", name, b"%d" % i)
    a = Member(params, name, "g1")
    b = Member(params, name, "g1")
    a.pump(0.5)
    b.pump(0.3)
    assert len(a.got) == 20 and b.got == []
    a.conn.close()
    for i in range(20, 25):
        ch.basic_publish("", name, b"%d" % i)
    b.pump(1.0)
    assert [int(x) for _, _, x in b.got] == list(range(20, 25))  # resumes at the committed offset
    b.conn.close()
    ch.queue_delete(name)


def test_committed_offsets_survive_a_restart(mqbroker_process: Any) -> None:
    broker = mqbroker_process(reuse_port=True)
    params = pika.URLParameters(broker.url)
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.queue_declare("ledger", durable=True, arguments={"x-queue-type": "stream"})
    ch.confirm_delivery()
    for i in range(10):
        ch.basic_publish("", "ledger", b"%d" % i)
    conn.close()
    a = Member(params, "ledger", "audit", prefetch=100)
    a.pump(1.0)
    assert len(a.got) == 10
    a.conn.close()
    time.sleep(0.3)  # the lazy commit of the offset
    broker.restart()
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.confirm_delivery()
    for i in range(10, 13):
        ch.basic_publish("", "ledger", b"%d" % i)
    b = Member(params, "ledger", "audit", offset="first")  # the committed offset wins
    b.pump(1.0)
    assert [int(x) for _, _, x in b.got] == [10, 11, 12]
