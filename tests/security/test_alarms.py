"""Resource alarms: publishers get connection.blocked and are no longer
read; consumers keep draining; connection.unblocked when alarms clear.

RabbitMQ blocks only connections that have published ("Memory and Disk
Alarms"); connections that only consume are never blocked.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from pamqp import body as pbody
from pamqp import commands
from pamqp import frame as pframe
from pamqp import header as pheader

from mqbroker.persistence.errors import StoreFullError
from support.raw import RawClient
from support.waits import wait_until


def publish_frames(channel: int, queue: str, body: bytes, persistent: bool = False) -> bytes:
    props = commands.Basic.Properties(delivery_mode=2 if persistent else None)
    return (
        pframe.marshal(commands.Basic.Publish(exchange="", routing_key=queue), channel)
        + pframe.marshal(pheader.ContentHeader(0, len(body), props), channel)
        + pframe.marshal(pbody.ContentBody(body), channel)
    )


def queue_count(b: Any, name: str, vhost: str = "/") -> int:
    return int(b.call(lambda: b.broker.vhosts[vhost].queues[name].message_count))


def raise_alarm(b: Any, source: str = "memory") -> None:
    b.call(lambda: b.info.alarms.raise_alarm(source, "test"))


def clear_alarm(b: Any, source: str = "memory") -> None:
    b.call(lambda: b.info.alarms.clear_alarm(source))


def publisher(b: Any, queue: str, caps: dict[str, Any] | None = None, heartbeat: int = 0) -> RawClient:
    r = RawClient(b.host, b.port)
    if caps is None:
        r.handshake(heartbeat=heartbeat)
    else:
        r.handshake(heartbeat=heartbeat, capabilities=caps)
    r.open_channel(1)
    r.send_method(commands.Queue.Declare(queue=queue, durable=True), 1)
    r.expect(commands.Queue.DeclareOk)
    return r


def test_alarm_blocks_publishers_and_consumers_keep_draining(sec_broker: Any) -> None:
    b = sec_broker
    pub = publisher(b, "aq")
    for i in range(20):
        pub.send(publish_frames(1, "aq", b"before-%d" % i))
    assert wait_until(lambda: queue_count(b, "aq") == 20)
    consumer = b.connect()
    consumer_blocked: list[Any] = []
    consumer.add_on_connection_blocked_callback(lambda *a: consumer_blocked.append(a))
    try:
        raise_alarm(b)
        blocked = pub.expect(commands.Connection.Blocked, timeout=5)
        assert blocked.reason == "low on memory"
        # a publish now is not read by the broker
        pub.send(publish_frames(1, "aq", b"during"))
        time.sleep(0.3)
        assert queue_count(b, "aq") == 20
        # the consumer-only connection is not blocked and drains the queue
        ch = consumer.channel()
        got = []
        for _ in range(20):
            method, _, body = ch.basic_get("aq", auto_ack=True)
            got.append(body)
        assert got == [b"before-%d" % i for i in range(20)]
        consumer.process_data_events(0.2)
        assert consumer_blocked == []
        clear_alarm(b)
        pub.expect(commands.Connection.Unblocked, timeout=5)
        assert wait_until(lambda: queue_count(b, "aq") == 1)
        assert ch.basic_get("aq", auto_ack=True)[2] == b"during"
    finally:
        pub.close()
        consumer.close()


def test_new_publisher_is_blocked_after_its_first_publish(sec_broker: Any) -> None:
    b = sec_broker
    raise_alarm(b, "disk")
    pub = publisher(b, "nq")  # connected during the alarm; not blocked yet
    try:
        pub.send(publish_frames(1, "nq", b"first"))
        blocked = pub.expect(commands.Connection.Blocked, timeout=5)
        assert blocked.reason == "low on disk"
        assert queue_count(b, "nq") == 1  # the publish that blocked it landed
        pub.send(publish_frames(1, "nq", b"second"))
        time.sleep(0.3)
        assert queue_count(b, "nq") == 1
        clear_alarm(b, "disk")
        pub.expect(commands.Connection.Unblocked, timeout=5)
        assert wait_until(lambda: queue_count(b, "nq") == 2)
    finally:
        pub.close()


def test_client_without_capability_is_paused_silently(sec_broker: Any) -> None:
    b = sec_broker
    pub = publisher(b, "sq", caps={})
    try:
        pub.send(publish_frames(1, "sq", b"one"))
        assert wait_until(lambda: queue_count(b, "sq") == 1)
        raise_alarm(b)
        pub.send(publish_frames(1, "sq", b"two"))
        with pytest.raises(TimeoutError):
            pub.read_frame(timeout=0.5)  # no connection.blocked frame
        assert queue_count(b, "sq") == 1
        clear_alarm(b)
        assert wait_until(lambda: queue_count(b, "sq") == 2)
        with pytest.raises(TimeoutError):
            pub.read_frame(timeout=0.3)  # nor connection.unblocked
    finally:
        pub.close()


def test_blocked_connection_survives_missed_heartbeats(sec_broker: Any) -> None:
    b = sec_broker
    pub = publisher(b, "hq", heartbeat=1)
    try:
        pub.send(publish_frames(1, "hq", b"x"))
        raise_alarm(b)
        pub.expect(commands.Connection.Blocked, timeout=5)
        time.sleep(3.0)  # > 2 heartbeat intervals without a word from us
        clear_alarm(b)
        pub.send(b"\x08\x00\x00\x00\x00\x00\x00\xce")
        pub.expect(commands.Connection.Unblocked, timeout=5)
        pub.send_method(commands.Queue.Declare(queue="hq", passive=True), 1)
        ok = pub.expect(commands.Queue.DeclareOk, timeout=5)
        assert ok.message_count == 1
    finally:
        pub.close()


def test_pika_sees_blocked_and_unblocked(sec_broker: Any) -> None:
    b = sec_broker
    conn = b.connect()
    events: list[str] = []
    conn.add_on_connection_blocked_callback(
        lambda _c, frame: events.append("blocked:" + frame.method.reason)
    )
    conn.add_on_connection_unblocked_callback(lambda *_: events.append("unblocked"))
    try:
        ch = conn.channel()
        ch.queue_declare("pq")
        ch.basic_publish("", "pq", b"1")
        raise_alarm(b)
        assert wait_until(lambda: (conn.process_data_events(0.05), events)[1] != [], 5)
        assert events == ["blocked:low on memory"]
        clear_alarm(b)
        assert wait_until(lambda: (conn.process_data_events(0.05), len(events))[1] == 2, 5)
        assert events[1] == "unblocked"
        ch.basic_publish("", "pq", b"2")
        assert wait_until(lambda: queue_count(b, "pq") == 2)
    finally:
        conn.close()


def test_memory_watermark_from_rss(make_broker: Any) -> None:
    b = make_broker(vm_memory_high_watermark_bytes=1, alarm_check_interval_s=0.05)
    assert b.call(lambda: b.broker.alarm) == "low on memory"
    assert b.info.alarms.last_rss > 0
    pub = publisher(b, "mq")
    try:
        pub.send(publish_frames(1, "mq", b"x"))
        assert pub.expect(commands.Connection.Blocked, timeout=5).reason == "low on memory"
    finally:
        pub.close()


def test_disk_free_limit(make_broker: Any) -> None:
    b = make_broker(disk_free_limit_bytes=1 << 62, alarm_check_interval_s=0.05)
    assert b.call(lambda: b.broker.alarm) == "low on disk"
    assert b.info.alarms.last_disk_free is not None


def test_no_alarm_with_defaults(sec_broker: Any) -> None:
    assert sec_broker.call(lambda: sec_broker.broker.alarm) is None


def test_store_full_raises_disk_alarm_until_writes_succeed(
    sec_broker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GroupCommitter's on_error/on_recovered drive the disk alarm."""
    b = sec_broker
    store = b.broker.store
    real_write = store.write_batch
    full = {"on": True}

    def write_batch(batch: Any) -> None:
        if full["on"]:
            raise StoreFullError("test: map full")
        real_write(batch)

    monkeypatch.setattr(store, "write_batch", write_batch)
    pub = publisher(b, "fq")
    try:
        pub.send_method(commands.Confirm.Select(), 1)
        pub.expect(commands.Confirm.SelectOk)
        pub.send(publish_frames(1, "fq", b"persistent", persistent=True))
        blocked = pub.expect(commands.Connection.Blocked, timeout=5)
        assert blocked.reason == "low on disk"
        full["on"] = False
        # the retried write succeeds: unblocked, and the publish is confirmed
        seen = set()
        deadline = time.monotonic() + 5
        while seen != {"unblocked", "ack"} and time.monotonic() < deadline:
            _, frame = pub.read_frame(timeout=5)
            if isinstance(frame, commands.Connection.Unblocked):
                seen.add("unblocked")
            elif isinstance(frame, commands.Basic.Ack):
                seen.add("ack")
        assert seen == {"unblocked", "ack"}
        assert b.call(lambda: b.broker.alarm) is None
    finally:
        pub.close()
        monkeypatch.setattr(store, "write_batch", real_write)


def test_unit_alarm_sources_and_reasons(sec_broker: Any) -> None:
    alarms = sec_broker.info.alarms
    sec_broker.call(lambda: alarms.raise_alarm("disk"))
    sec_broker.call(lambda: alarms.raise_alarm("memory"))
    # both raised: memory is reported first, as RabbitMQ lists it
    assert sec_broker.call(lambda: sec_broker.broker.alarm) == "low on memory"
    sec_broker.call(lambda: alarms.clear_alarm("memory"))
    assert sec_broker.call(lambda: sec_broker.broker.alarm) == "low on disk"
    sec_broker.call(lambda: alarms.clear_alarm("disk"))
    assert sec_broker.call(lambda: sec_broker.broker.alarm) is None
