"""The pytest plugin as a test harness, used exactly as a user would:
virtual clock, peek, faults (pika and aio-pika clients)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aio_pika
import pika
import pika.exceptions
import pytest


def _conn(mqbroker: Any) -> Any:
    return pika.BlockingConnection(pika.URLParameters(mqbroker.url))


@pytest.mark.mqbroker(virtual_clock=True)
def test_an_hour_of_ttl_dead_letters_in_well_under_a_second(mqbroker: Any) -> None:
    conn = _conn(mqbroker)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("dlq")
    ch.queue_declare("work", arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dlq"})
    ch.basic_publish("", "work", b"late", pika.BasicProperties(expiration=str(3600 * 1000)))
    started = time.monotonic()
    mqbroker.clock.advance(3599)
    assert [m.body for m in mqbroker.peek("work")] == [b"late"]
    assert mqbroker.peek("dlq") == []
    mqbroker.clock.advance(2)
    assert mqbroker.peek("work") == []
    (dead,) = mqbroker.peek("dlq")
    assert dead.body == b"late"
    assert dead.headers["x-death"][0]["reason"] in (b"expired", "expired")
    assert time.monotonic() - started < 1.0
    conn.close()


@pytest.mark.mqbroker(virtual_clock=True)
def test_delayed_retry_due_tomorrow(mqbroker: Any) -> None:
    clock = mqbroker.clock  # first: skips against an external broker
    conn = _conn(mqbroker)
    ch = conn.channel()
    ch.exchange_declare("retry", "x-delayed-message", arguments={"x-delayed-type": "direct"})
    ch.queue_declare("jobs")
    ch.queue_bind("jobs", "retry", "jobs")
    ch.confirm_delivery()
    ch.basic_publish("retry", "jobs", b"again", pika.BasicProperties(headers={"x-delay": 86_400_000}))
    clock.advance(86_000)
    assert mqbroker.peek("jobs") == []
    clock.advance(500)
    assert [m.body for m in mqbroker.peek("jobs")] == [b"again"]
    conn.close()


@pytest.mark.mqbroker(virtual_clock=True, consumer_timeout_ms=60_000)
def test_consumer_timeout_fires_on_advance(mqbroker: Any) -> None:
    conn = _conn(mqbroker)
    ch = conn.channel()
    ch.queue_declare("slow")
    ch.basic_publish("", "slow", b"x")
    ch.basic_consume("slow", lambda *a: None)
    conn.process_data_events(time_limit=0.2)
    mqbroker.clock.advance(59)
    conn.process_data_events(time_limit=0.2)
    assert ch.is_open
    mqbroker.clock.advance(2)
    conn.process_data_events(time_limit=0.5)
    assert ch.is_closed  # 406 "delivery acknowledgement ... timed out"
    assert conn.is_open
    conn.close()


def test_peek_leaves_messages_and_shows_streams(mqbroker: Any) -> None:
    conn = _conn(mqbroker)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("q")
    ch.queue_declare("s", durable=True, arguments={"x-queue-type": "stream"})
    for i in range(3):
        ch.basic_publish("", "q", b"%d" % i, pika.BasicProperties(headers={"i": i}))
        ch.basic_publish("", "s", b"%d" % i)
    peeked = mqbroker.peek("q")
    assert [(m.body, m.headers["i"], m.routing_key, m.redelivered) for m in peeked] == [
        (b"0", 0, "q", False), (b"1", 1, "q", False), (b"2", 2, "q", False)
    ]
    assert ch.queue_declare("q", passive=True).method.message_count == 3
    assert [(m.offset, m.body) for m in mqbroker.peek("s")] == [(0, b"0"), (1, b"1"), (2, b"2")]
    conn.close()


def test_disconnect_all_drops_without_close(mqbroker: Any) -> None:
    conn = _conn(mqbroker)
    conn.channel().queue_declare("x")
    mqbroker.faults.disconnect_all()
    with pytest.raises(pika.exceptions.AMQPConnectionError) as info:
        conn.channel().queue_declare("y")
    assert not isinstance(info.value, pika.exceptions.ConnectionClosedByBroker)


def test_crash_keeps_what_was_confirmed(mqbroker: Any) -> None:
    conn = _conn(mqbroker)
    ch = conn.channel()
    ch.queue_declare("orders", durable=True)
    ch.confirm_delivery()
    for i in range(50):
        ch.basic_publish("", "orders", b"%d" % i, pika.BasicProperties(delivery_mode=2))
    mqbroker.faults.crash()
    conn = _conn(mqbroker)  # same URL
    assert [m.body for m in mqbroker.peek("orders")] == [b"%d" % i for i in range(50)]
    conn.close()


def test_disk_alarm_blocks_publishers_until_it_ends(mqbroker: Any) -> None:
    blocked: list[str] = []
    params = pika.URLParameters(mqbroker.url)
    conn = pika.BlockingConnection(params)
    conn.add_on_connection_blocked_callback(lambda c, m: blocked.append("blocked"))
    conn.add_on_connection_unblocked_callback(lambda c, m: blocked.append("unblocked"))
    ch = conn.channel()
    ch.queue_declare("q")
    ch.basic_publish("", "q", b"first")  # only a connection that published is blocked
    conn.process_data_events(time_limit=0.1)
    with mqbroker.faults.disk_alarm():
        conn.process_data_events(time_limit=0.3)
        assert blocked == ["blocked"]
    conn.process_data_events(time_limit=0.3)
    assert blocked == ["blocked", "unblocked"]
    conn.close()


def test_fail_writes_nacks_and_loses_nothing_acked(mqbroker: Any) -> None:
    conn = _conn(mqbroker)
    ch = conn.channel()
    ch.queue_declare("ledger", durable=True)
    ch.confirm_delivery()
    ch.basic_publish("", "ledger", b"safe", pika.BasicProperties(delivery_mode=2))
    with mqbroker.faults.fail_writes():
        with pytest.raises(pika.exceptions.NackError):
            ch.basic_publish("", "ledger", b"doubtful", pika.BasicProperties(delivery_mode=2))
    ch.basic_publish("", "ledger", b"after", pika.BasicProperties(delivery_mode=2))
    bodies = [m.body for m in mqbroker.peek("ledger")]
    assert bodies[0] == b"safe" and bodies[-1] == b"after"
    mqbroker.faults.crash()
    assert [m.body for m in mqbroker.peek("ledger")][0] == b"safe"


@pytest.mark.mqbroker(virtual_clock=True)
def test_aio_pika_with_the_harness(mqbroker: Any) -> None:
    async def main() -> None:
        conn = await aio_pika.connect(mqbroker.url)
        ch = await conn.channel()
        q = await ch.declare_queue("expiring", arguments={"x-message-ttl": 600_000})
        await ch.default_exchange.publish(aio_pika.Message(b"soon gone"), routing_key=q.name)
        await asyncio.sleep(0.1)
        assert [m.body for m in mqbroker.peek("expiring")] == [b"soon gone"]
        await asyncio.get_running_loop().run_in_executor(None, mqbroker.clock.advance, 601)
        assert mqbroker.peek("expiring") == []
        await conn.close()

    asyncio.run(main())


def test_harness_skips_against_an_external_broker(mqbroker: Any) -> None:
    if not mqbroker.external:
        pytest.skip("only meaningful with MQBROKER_EXTERNAL_URL (it must skip there, not fail)")
    mqbroker.peek("anything")  # skips the test with a reason
    raise AssertionError("peek should have skipped")


def test_process_brokers_crash_for_real_and_say_what_needs_in_process(mqbroker_process: Any) -> None:
    broker = mqbroker_process(reuse_port=True)
    conn = pika.BlockingConnection(pika.URLParameters(broker.url))
    ch = conn.channel()
    ch.queue_declare("kept", durable=True)
    ch.confirm_delivery()
    ch.basic_publish("", "kept", b"x", pika.BasicProperties(delivery_mode=2))
    pid = broker.pid
    broker.faults.crash()  # SIGKILL + restart, same URL
    assert broker.pid != pid
    conn = pika.BlockingConnection(pika.URLParameters(broker.url))
    assert conn.channel().queue_declare("kept", passive=True, durable=True).method.message_count == 1
    conn.close()
    with pytest.raises(RuntimeError, match="in-process"):
        broker.faults.disconnect_all()
    with pytest.raises(RuntimeError, match="in-process"):
        broker.clock  # noqa: B018
