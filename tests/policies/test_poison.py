"""Poison messages: delivery limits, x-delivery-count, quorum queue rules.

The retry flow of the issue: a worker that always fails one message; after
three deliveries it is in the DLQ with a correct x-death, and the messages
behind it were processed meanwhile. Runs on mqbroker and (quorum queues)
on RabbitMQ 3.10 with MQBROKER_EXTERNAL_URL.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
import pika
import pika.exceptions
import pytest
from policy_support import RawGet, headers_dict, text, typed_headers

from support.blocking import get_message, message_count
from support.waits import wait_for

pytestmark = pytest.mark.timeout(60)


def _poison_queue(ch: Any, q: str, dlq: str, **extra: Any) -> None:
    args = {
        "x-delivery-limit": 2,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dlq,
    }
    args.update(extra)
    ch.queue_declare(q, durable=True, arguments=args)


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
def test_worker_that_always_fails_a_message(broker, connect, uniq, cleanup, queue_type):
    if queue_type == "classic" and broker.external:
        pytest.skip("RabbitMQ 3.10 has no delivery limit on classic queues")
    conn = connect()
    ch = conn.channel()
    q, dlq = cleanup.queue(uniq("work")), cleanup.queue(uniq("work-dlq"))
    ch.queue_declare(dlq, durable=True)
    _poison_queue(ch, q, dlq, **{"x-queue-type": queue_type})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"poison", pika.BasicProperties(delivery_mode=2))
    for i in range(5):
        ch.basic_publish("", q, b"ok%d" % i, pika.BasicProperties(delivery_mode=2))

    seen: list[tuple[bytes, bool, Any]] = []
    done: list[bytes] = []

    def worker(c: Any, method: Any, props: Any, body: bytes) -> None:
        count = (props.headers or {}).get("x-delivery-count")
        seen.append((body, method.redelivered, count))
        if body == b"poison":
            c.basic_nack(method.delivery_tag, requeue=True)
        else:
            done.append(body)
            c.basic_ack(method.delivery_tag)

    wch = conn.channel()
    wch.basic_qos(prefetch_count=1)
    wch.basic_consume(q, worker)
    wait_for(lambda: len(done) == 5 and message_count(ch, dlq) == 1, conn=conn, timeout=15)

    poison = [(r, c) for b, r, c in seen if b == b"poison"]
    # three deliveries; the first has no x-delivery-count, then 1, 2
    assert poison == [(False, None), (True, 1), (True, 2)]
    assert done == [b"ok%d" % i for i in range(5)]
    assert message_count(ch, q) == 0

    with RawGet(broker) as raw:
        method, raw_props, body = raw.get_wait(dlq)
    assert body == b"poison"
    headers = headers_dict(typed_headers(raw_props))
    assert "x-delivery-count" not in headers
    tag, deaths = headers["x-death"]
    assert len(deaths) == 1
    entry = {k: (t, v) for k, t, v in deaths[0][1]}
    assert entry["reason"] == ("S", "delivery_limit")
    assert entry["queue"] == ("S", q)
    assert entry["count"] == ("l", 1)
    assert entry["exchange"] == ("S", "")
    assert entry["routing-keys"] == ("A", [("S", q)])
    assert [k for k, _, _ in deaths[0][1]] == [
        "count", "reason", "queue", "time", "exchange", "routing-keys",
    ]
    assert headers["x-first-death-reason"] == ("S", "delivery_limit")
    assert method.routing_key == dlq


def test_delivery_limit_without_dlx_drops(broker, ch, uniq, cleanup):
    q = cleanup.queue(uniq("limit-drop"))
    ch.queue_declare(
        q, durable=True, arguments={"x-queue-type": "quorum", "x-delivery-limit": 1}
    )
    ch.confirm_delivery()
    ch.basic_publish("", q, b"x")
    for _ in range(2):
        method, _, _ = get_message(ch, q, auto_ack=False)
        ch.basic_nack(method.delivery_tag, requeue=True)
    wait_for(lambda: message_count(ch, q) == 0, timeout=5)
    assert ch.basic_get(q, auto_ack=True)[0] is None


def test_quorum_x_delivery_count_on_basic_get(ch, uniq, cleanup):
    """basic.get always carries x-delivery-count (0 the first time)."""
    q = cleanup.queue(uniq("qq-get"))
    ch.queue_declare(q, durable=True, arguments={"x-queue-type": "quorum"})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"m", pika.BasicProperties(headers={"zzz": 1, "aaa": 2}))
    counts = []
    for requeue in (True, True, None):
        method, props, _ = get_message(ch, q, auto_ack=False)
        counts.append((props.headers.get("x-delivery-count"), method.redelivered))
        assert props.headers["zzz"] == 1 and props.headers["aaa"] == 2
        if requeue:
            ch.basic_nack(method.delivery_tag, requeue=True)
        else:
            ch.basic_ack(method.delivery_tag)
    assert counts == [(0, False), (1, True), (2, True)]


def test_x_delivery_count_keeps_header_types_and_sorts(broker, ch, uniq, cleanup):
    q = cleanup.queue(uniq("qq-types"))
    ch.queue_declare(q, durable=True, arguments={"x-queue-type": "quorum"})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"m", pika.BasicProperties(headers={"zzz": 1, "aaa": "s"}))
    with RawGet(broker) as raw:
        _, raw_props, _ = raw.get_wait(q)
    assert typed_headers(raw_props) == [
        ("aaa", "S", "s"),
        ("x-delivery-count", "l", 0),
        ("zzz", "I", 1),
    ]


def test_quorum_requeue_goes_to_the_back(ch, uniq, cleanup):
    q = cleanup.queue(uniq("qq-back"))
    ch.queue_declare(q, durable=True, arguments={"x-queue-type": "quorum"})
    ch.confirm_delivery()
    for body in (b"a", b"b", b"c"):
        ch.basic_publish("", q, body)
    method, _, body = get_message(ch, q, auto_ack=False)
    assert body == b"a"
    ch.basic_nack(method.delivery_tag, requeue=True)
    order = [get_message(ch, q, auto_ack=True)[2] for _ in range(3)]
    assert order == [b"b", b"c", b"a"]


def test_classic_requeue_keeps_its_place(ch, uniq):
    q = uniq("classic-place")
    ch.queue_declare(q, exclusive=True)
    ch.confirm_delivery()
    for body in (b"a", b"b", b"c"):
        ch.basic_publish("", q, body)
    method, _, _ = get_message(ch, q, auto_ack=False)
    ch.basic_nack(method.delivery_tag, requeue=True)
    assert [get_message(ch, q, auto_ack=True)[2] for _ in range(3)] == [b"a", b"b", b"c"]


def test_quorum_default_delivery_limit_is_20(inproc, ch, uniq, cleanup):
    """RabbitMQ 4: quorum queues dead-letter after 20 failed deliveries
    unless told otherwise (RabbitMQ 3.10 has no default)."""
    q, dlq = cleanup.queue(uniq("qq-default")), cleanup.queue(uniq("qq-default-dlq"))
    ch.queue_declare(dlq, durable=True)
    ch.queue_declare(
        q,
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dlq,
        },
    )
    ch.basic_publish("", q, b"x")
    deliveries = 0
    while True:
        method, _, _ = ch.basic_get(q, auto_ack=False)
        if method is None:
            break
        deliveries += 1
        ch.basic_nack(method.delivery_tag, requeue=True)
    assert deliveries == 21
    assert message_count(ch, dlq) == 1


def test_delivery_limit_minus_one_is_unlimited(inproc, ch, uniq, cleanup):
    q = cleanup.queue(uniq("qq-unlimited"))
    ch.queue_declare(
        q, durable=True, arguments={"x-queue-type": "quorum", "x-delivery-limit": -1}
    )
    ch.basic_publish("", q, b"x")
    for _ in range(30):
        method, _, _ = get_message(ch, q, auto_ack=False)
        ch.basic_nack(method.delivery_tag, requeue=True)
    assert message_count(ch, q) == 1


def test_channel_close_counts_as_a_failed_delivery(broker, connect, uniq, cleanup):
    conn = connect()
    ch = conn.channel()
    q, dlq = cleanup.queue(uniq("qq-close")), cleanup.queue(uniq("qq-close-dlq"))
    ch.queue_declare(dlq, durable=True)
    _poison_queue(ch, q, dlq, **{"x-queue-type": "quorum"})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"crashy")
    for _ in range(3):
        worker = conn.channel()
        get_message(worker, q, auto_ack=False)
        worker.close()  # a worker crash: requeued, counted
    wait_for(lambda: message_count(ch, dlq) == 1, timeout=10)
    _, props, _ = get_message(ch, dlq, auto_ack=True)
    assert text(props.headers["x-death"][0]["reason"]) == "delivery_limit"


# ----------------------------------------------------------- queue types


def test_quorum_queue_must_be_durable(conn, uniq):
    ch = conn.channel()
    name = uniq("qq-transient")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.queue_declare(name, durable=False, arguments={"x-queue-type": "quorum"})
    assert info.value.reply_code == 406
    assert info.value.reply_text == (
        f"PRECONDITION_FAILED - invalid property 'non-durable' for queue "
        f"'{name}' in vhost '/'"
    )


def test_quorum_queue_cannot_be_exclusive(conn, uniq):
    ch = conn.channel()
    name = uniq("qq-exclusive")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.queue_declare(
            name, durable=True, exclusive=True, arguments={"x-queue-type": "quorum"}
        )
    assert info.value.reply_code == 406
    assert "invalid property 'exclusive-owner'" in info.value.reply_text


def test_non_durable_stream_queue_is_refused(inproc, conn, uniq):
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.queue_declare(uniq("stream"), durable=False, arguments={"x-queue-type": "stream"})
    assert info.value.reply_code == 406
    assert "invalid property 'non-durable'" in info.value.reply_text


def test_classic_queue_type_accepted(ch, uniq):
    ch.queue_declare(uniq("classic"), exclusive=True, arguments={"x-queue-type": "classic"})


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ({"x-message-ttl": -1}, "{value_negative,-1}"),
        ({"x-expires": 0}, "{value_zero,0}"),
        ({"x-max-length": -1}, "{value_negative,-1}"),
        ({"x-message-ttl": "100"}, '"expected integer, got longstr"'),
        ({"x-max-priority": 256}, "{max_value_exceeded,256}"),
        ({"x-overflow": "foo"}, "invalid_overflow"),
        ({"x-queue-type": "foo"}, "\"unsupported queue type 'foo'\""),
    ],
)
def test_bad_queue_arguments_are_406_with_rabbitmq_text(conn, uniq, args, reason):
    ch = conn.channel()
    name = uniq("badarg")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.queue_declare(name, exclusive=True, arguments=args)
    assert info.value.reply_code == 406
    (arg,) = args
    assert info.value.reply_text == (
        f"PRECONDITION_FAILED - invalid arg '{arg}' for queue '{name}' in "
        f"vhost '/': {reason}"
    )


def test_bad_dead_letter_strategy(conn, uniq):
    ch = conn.channel()
    name = uniq("badarg")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.queue_declare(
            name, durable=True,
            arguments={"x-queue-type": "quorum", "x-dead-letter-strategy": "foo"},
        )
    assert info.value.reply_text.endswith("invalid_dlx_strategy")


# ---------------------------------------------------------------- aio-pika


def test_poison_flow_with_aio_pika(broker, uniq, cleanup):
    q, dlq = cleanup.queue(uniq("aio-work")), cleanup.queue(uniq("aio-dlq"))

    async def flow() -> tuple[list[Any], Any]:
        connection = await aio_pika.connect(broker.url, timeout=10)
        async with connection:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=1)
            await channel.declare_queue(dlq, durable=True)
            queue = await channel.declare_queue(
                q,
                durable=True,
                arguments={
                    "x-queue-type": "quorum",
                    "x-delivery-limit": 2,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": dlq,
                },
            )
            await channel.default_exchange.publish(
                aio_pika.Message(b"bad", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=q,
            )
            counts: list[Any] = []
            async with queue.iterator() as it:
                async for message in it:
                    counts.append(message.headers.get("x-delivery-count"))
                    await message.nack(requeue=True)
                    if len(counts) == 3:
                        break
            dead = await (await channel.get_queue(dlq)).get(timeout=5, fail=False)
            for _ in range(50):
                if dead is not None:
                    break
                await asyncio.sleep(0.1)
                dead = await (await channel.get_queue(dlq)).get(timeout=5, fail=False)
            assert dead is not None
            await dead.ack()
            return counts, dead.headers

    async def main() -> Any:
        return await asyncio.wait_for(flow(), 30)

    counts, headers = asyncio.run(main())
    assert counts == [None, 1, 2]
    assert "x-delivery-count" not in headers
    death = headers["x-death"][0]
    assert death["reason"] == "delivery_limit"
    assert death["count"] == 1
