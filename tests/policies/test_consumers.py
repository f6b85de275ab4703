"""Priority queues, single active consumer, consumer priorities and the
consumer acknowledgement timeout."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aio_pika
import pika
import pika.exceptions
import pytest

from support.blocking import drain, get_message, message_count
from support.waits import wait_for

pytestmark = pytest.mark.timeout(60)


# -------------------------------------------------------------- priorities


def test_higher_priority_first_equal_priority_fifo(ch, uniq):
    q = uniq("prio")
    ch.queue_declare(q, exclusive=True, arguments={"x-max-priority": 10})
    ch.confirm_delivery()
    sent = [(0, b"low-1"), (5, b"mid-1"), (9, b"high-1"), (5, b"mid-2"),
            (0, b"low-2"), (9, b"high-2"), (None, b"none")]
    for priority, body in sent:
        ch.basic_publish("", q, body, pika.BasicProperties(priority=priority))
    assert drain(ch, q) == [
        b"high-1", b"high-2", b"mid-1", b"mid-2", b"low-1", b"low-2", b"none",
    ]


def test_priority_above_max_counts_as_max(ch, uniq):
    q = uniq("prio-cap")
    ch.queue_declare(q, exclusive=True, arguments={"x-max-priority": 3})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"three", pika.BasicProperties(priority=3))
    ch.basic_publish("", q, b"two-hundred", pika.BasicProperties(priority=200))
    ch.basic_publish("", q, b"two", pika.BasicProperties(priority=2))
    assert drain(ch, q) == [b"three", b"two-hundred", b"two"]


def test_no_max_priority_ignores_priority(ch, uniq):
    q = uniq("no-prio")
    ch.queue_declare(q, exclusive=True)
    ch.confirm_delivery()
    for priority, body in ((0, b"a"), (9, b"b"), (5, b"c")):
        ch.basic_publish("", q, body, pika.BasicProperties(priority=priority))
    assert drain(ch, q) == [b"a", b"b", b"c"]


def test_requeued_priority_message_returns_to_its_level(ch, uniq):
    q = uniq("prio-requeue")
    ch.queue_declare(q, exclusive=True, arguments={"x-max-priority": 5})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"low", pika.BasicProperties(priority=1))
    ch.basic_publish("", q, b"high", pika.BasicProperties(priority=5))
    method, _, body = get_message(ch, q, auto_ack=False)
    assert body == b"high"
    ch.basic_nack(method.delivery_tag, requeue=True)
    assert drain(ch, q) == [b"high", b"low"]


def test_priorities_with_aio_pika_consumer(broker, uniq):
    q = uniq("aio-prio")

    async def flow() -> list[bytes]:
        connection = await aio_pika.connect(broker.url, timeout=10)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(
                q, exclusive=True, arguments={"x-max-priority": 5}
            )
            for priority in (1, 3, 5, 2, 4):
                await channel.default_exchange.publish(
                    aio_pika.Message(str(priority).encode(), priority=priority),
                    routing_key=q,
                )
            got = []
            async with queue.iterator() as it:
                async for message in it:
                    await message.ack()
                    got.append(message.body)
                    if len(got) == 5:
                        break
            return got

    got = asyncio.run(asyncio.wait_for(flow(), 20))
    assert got == [b"5", b"4", b"3", b"2", b"1"]


# ------------------------------------------------- single active consumer


def test_single_active_consumer(connect, uniq, cleanup):
    conn = connect()
    ch = conn.channel()
    q = cleanup.queue(uniq("sac"))
    ch.queue_declare(q, arguments={"x-single-active-consumer": True})
    first: list[bytes] = []
    second: list[bytes] = []
    ch1 = conn.channel()
    ch2 = conn.channel()
    tag1 = ch1.basic_consume(q, lambda c, m, p, b: first.append(b), auto_ack=True)
    ch2.basic_consume(q, lambda c, m, p, b: second.append(b), auto_ack=True)
    ch.confirm_delivery()
    for i in range(6):
        ch.basic_publish("", q, b"m%d" % i)
    wait_for(lambda: len(first) == 6, conn=conn)
    conn.process_data_events(time_limit=0.3)
    assert second == []
    ch1.basic_cancel(tag1)
    for i in range(6, 9):
        ch.basic_publish("", q, b"m%d" % i)
    wait_for(lambda: len(second) == 3, conn=conn)
    assert first == [b"m%d" % i for i in range(6)]
    assert second == [b"m6", b"m7", b"m8"]


def test_single_active_consumer_unacked_go_to_the_next_one(connect, uniq, cleanup):
    conn = connect()
    ch = conn.channel()
    q = cleanup.queue(uniq("sac-handover"))
    ch.queue_declare(q, arguments={"x-single-active-consumer": True})
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", q, b"m%d" % i)
    ch1 = conn.channel()
    ch1.basic_qos(prefetch_count=3)
    got1: list[bytes] = []
    ch1.basic_consume(q, lambda c, m, p, b: got1.append(b))
    got2: list[tuple[bytes, bool]] = []
    ch2 = conn.channel()
    ch2.basic_consume(q, lambda c, m, p, b: got2.append((b, m.redelivered)), auto_ack=True)
    wait_for(lambda: len(got1) == 3, conn=conn)
    ch1.close()  # the active consumer dies with everything unacked
    wait_for(lambda: len(got2) == 3, conn=conn)
    assert got2 == [(b"m0", True), (b"m1", True), (b"m2", True)]


# ---------------------------------------------------- consumer priorities


def test_consumer_priorities(connect, uniq):
    conn = connect()
    ch = conn.channel()
    q = uniq("cprio")
    ch.queue_declare(q, exclusive=True)
    low: list[bytes] = []
    high: list[Any] = []
    ch_low = conn.channel()
    ch_low.basic_consume(q, lambda c, m, p, b: low.append(b), auto_ack=True,
                         arguments={"x-priority": 1})
    ch_high = conn.channel()
    ch_high.basic_qos(prefetch_count=2)
    ch_high.basic_consume(q, lambda c, m, p, b: high.append(m.delivery_tag),
                          arguments={"x-priority": 10})
    ch.confirm_delivery()
    for i in range(5):
        ch.basic_publish("", q, b"m%d" % i)
    wait_for(lambda: len(high) + len(low) == 5, conn=conn)
    # the high-priority consumer takes all it can (2), the rest overflow
    assert len(high) == 2
    assert low == [b"m2", b"m3", b"m4"]
    ch_high.basic_ack(high[-1], multiple=True)
    ch.basic_publish("", q, b"m5")
    wait_for(lambda: len(high) == 3, conn=conn)
    assert len(low) == 3


def test_equal_consumer_priorities_round_robin(connect, uniq):
    conn = connect()
    ch = conn.channel()
    q = uniq("rr")
    ch.queue_declare(q, exclusive=True)
    got: dict[int, list[bytes]] = {1: [], 2: []}
    for n in (1, 2):
        c = conn.channel()
        c.basic_consume(q, lambda c_, m, p, b, n=n: got[n].append(b), auto_ack=True)
    ch.confirm_delivery()
    for i in range(6):
        ch.basic_publish("", q, b"m%d" % i)
    wait_for(lambda: len(got[1]) + len(got[2]) == 6, conn=conn)
    assert len(got[1]) == 3 and len(got[2]) == 3


# ------------------------------------------------------- consumer timeout


def test_consumer_timeout_closes_the_channel(inproc, connect, uniq):
    """x-consumer-timeout (RabbitMQ 3.12+ queue argument): a consumer that
    holds a delivery too long gets its channel closed with 406, and the
    message is requeued for the next consumer."""
    conn = connect()
    ch = conn.channel()
    q = uniq("timeout")
    ch.queue_declare(q, exclusive=True, arguments={"x-consumer-timeout": 500})
    ch.basic_publish("", q, b"slow")
    holder = conn.channel()
    got: list[bytes] = []
    holder.basic_consume(q, lambda c, m, p, b: got.append(b))
    closed: list[tuple[int, str]] = []
    started = time.monotonic()
    try:
        wait_for(lambda: not holder.is_open, conn=conn, timeout=10)
    finally:
        elapsed = time.monotonic() - started
    assert got == [b"slow"]
    assert elapsed >= 0.4
    reason = holder._closing_reason  # set by pika when the broker closes it
    assert isinstance(reason, pika.exceptions.ChannelClosedByBroker)
    closed.append((reason.reply_code, reason.reply_text))
    code, text_ = closed[0]
    assert code == 406
    assert text_.startswith(
        "PRECONDITION_FAILED - delivery acknowledgement on channel"
    )
    assert "timed out. Timeout value used: 500 ms" in text_
    # requeued, redelivered to someone else
    method, _, body = get_message(ch, q, auto_ack=True)
    assert body == b"slow" and method.redelivered


def test_consumer_that_acks_in_time_is_not_closed(inproc, connect, uniq):
    conn = connect()
    ch = conn.channel()
    q = uniq("in-time")
    ch.queue_declare(q, exclusive=True, arguments={"x-consumer-timeout": 800})
    worker = conn.channel()

    def handle(c: Any, m: Any, p: Any, b: bytes) -> None:
        c.basic_ack(m.delivery_tag)

    worker.basic_consume(q, handle)
    for i in range(5):
        ch.basic_publish("", q, b"m%d" % i)
        conn.process_data_events(time_limit=0.4)
    conn.process_data_events(time_limit=1.5)
    assert worker.is_open
    assert message_count(ch, q) == 0
