"""Stream queues over AMQP 0-9-1, as RabbitMQ 3.10 answers (differential).

Run with ``MQBROKER_EXTERNAL_URL`` to hold every expectation against
RabbitMQ. Where mqbroker deliberately differs the test says so and checks
mqbroker's answer only on mqbroker: a bad ``x-stream-offset`` is a 406
(RabbitMQ crashes the channel, 541); ``last`` is the last message (RabbitMQ:
the start of the last chunk); a filter is exact per message (RabbitMQ
filters per chunk); prefetch is exact (RabbitMQ delivers whole chunks);
table and array headers round-trip (RabbitMQ drops them).
"""

from __future__ import annotations

import datetime
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pika
import pika.exceptions
import pytest

STREAM = {"x-queue-type": "stream"}


@pytest.fixture
def conn(broker: Any) -> Iterator[Any]:
    c = pika.BlockingConnection(
        pika.ConnectionParameters(broker.host, broker.port, virtual_host=broker.vhost,
                                  credentials=pika.PlainCredentials(broker.user, broker.password))
    )
    yield c
    if c.is_open:
        c.close()


@pytest.fixture
def stream(conn: Any) -> Iterator[str]:
    name = f"stest.{uuid.uuid4().hex[:12]}"
    ch = conn.channel()
    ch.queue_declare(name, durable=True, arguments=STREAM)
    yield name
    if conn.is_open:
        conn.channel().queue_delete(name)


def publish(conn: Any, name: str, bodies: list[bytes], headers: list[dict] | None = None) -> None:
    ch = conn.channel()
    ch.confirm_delivery()
    for i, body in enumerate(bodies):
        ch.basic_publish("", name, body, pika.BasicProperties(headers=headers[i] if headers else None))
    ch.close()


def consume(conn: Any, name: str, count: int, *, prefetch: int = 100, args: dict | None = None,
            timeout: float = 5.0, ack: bool = True) -> list[tuple[bytes, dict]]:
    ch = conn.channel()
    ch.basic_qos(prefetch_count=prefetch)
    got: list[tuple[bytes, dict]] = []

    def on(c: Any, m: Any, p: Any, b: bytes) -> None:
        got.append((b, dict(p.headers or {})))
        if ack:
            c.basic_ack(m.delivery_tag)

    tag = ch.basic_consume(name, on, arguments=args or {})
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    conn.process_data_events(time_limit=0.2)  # nothing more should come
    ch.basic_cancel(tag)
    ch.close()
    return got


def declare_error(conn: Any, **kwargs: Any) -> Any:
    ch = conn.channel()
    name = f"stest.{uuid.uuid4().hex[:12]}"
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.queue_declare(name, **kwargs)
    return name, info.value


# ------------------------------------------------------------- declare


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"durable": False, "arguments": STREAM}, "invalid property 'non-durable' for queue '{q}' in vhost '/'"),
        ({"durable": True, "exclusive": True, "arguments": STREAM}, "invalid property 'exclusive-owner' for queue '{q}' in vhost '/'"),
        ({"durable": True, "auto_delete": True, "arguments": STREAM}, "invalid property 'auto-delete' for queue '{q}' in vhost '/'"),
        ({"durable": True, "arguments": {**STREAM, "x-max-age": "7d"}}, "invalid arg 'x-max-age' for queue '{q}' in vhost '/': invalid_max_age"),
        ({"durable": True, "arguments": {**STREAM, "x-stream-max-segment-size-bytes": 3_000_000_001}}, "Exceeded max value for x-stream-max-segment-size-bytes"),
        ({"durable": True, "arguments": {**STREAM, "x-message-ttl": 1000}}, "invalid arg 'x-message-ttl' for queue '{q}' in vhost '/' of queue type rabbit_stream_queue"),
        ({"durable": True, "arguments": {**STREAM, "x-dead-letter-exchange": "dlx"}}, "invalid arg 'x-dead-letter-exchange' for queue '{q}' in vhost '/' of queue type rabbit_stream_queue"),
        ({"durable": True, "arguments": {**STREAM, "x-max-length": 5}}, "invalid arg 'x-max-length' for queue '{q}' in vhost '/' of queue type rabbit_stream_queue"),
        ({"durable": True, "arguments": {**STREAM, "x-single-active-consumer": True}}, "invalid arg 'x-single-active-consumer' for queue '{q}' in vhost '/' of queue type rabbit_stream_queue"),
        ({"durable": True, "arguments": {**STREAM, "x-max-priority": 5}}, "invalid arg 'x-max-priority' for queue '{q}' in vhost '/' of queue type rabbit_stream_queue"),
    ],
)
def test_declare_refusals(conn: Any, kwargs: dict, text: str) -> None:
    name, err = declare_error(conn, **kwargs)
    assert err.reply_code == 406
    assert err.reply_text == "PRECONDITION_FAILED - " + text.format(q=name)


def test_declare_with_retention_arguments(conn: Any) -> None:
    ch = conn.channel()
    name = f"stest.{uuid.uuid4().hex[:12]}"
    ch.queue_declare(name, durable=True, arguments={
        **STREAM, "x-max-age": "7D", "x-max-length-bytes": 10_000_000,
        "x-stream-max-segment-size-bytes": 1_000_000,
    })
    ch.queue_delete(name)


# -------------------------------------------------------------- consume


def test_replay_from_first_carries_offsets_and_headers(conn: Any, stream: str) -> None:
    publish(conn, stream, [b"m%d" % i for i in range(10)], [{"i": i, "s": "x"} for i in range(10)])
    got = consume(conn, stream, 10, args={"x-stream-offset": "first"})
    assert [b for b, _ in got] == [b"m%d" % i for i in range(10)]
    assert [h["x-stream-offset"] for _, h in got] == list(range(10))
    assert all(h["i"] == i and h["s"] == "x" for i, (_, h) in enumerate(got))
    # a stream keeps what was read: a second reader sees it all again
    assert len(consume(conn, stream, 10, args={"x-stream-offset": "first"})) == 10


def test_default_is_next_only_new_messages(conn: Any, stream: str) -> None:
    publish(conn, stream, [b"old"])
    ch = conn.channel()
    ch.basic_qos(prefetch_count=10)
    got: list[bytes] = []
    ch.basic_consume(stream, lambda c, m, p, b: (got.append(b), c.basic_ack(m.delivery_tag)))
    conn.process_data_events(time_limit=0.3)
    publish(conn, stream, [b"new"])
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    assert got == [b"new"]


def test_integer_offset_and_clamping(conn: Any, stream: str) -> None:
    publish(conn, stream, [b"%d" % i for i in range(6)])
    assert [b for b, _ in consume(conn, stream, 3, args={"x-stream-offset": 3})] == [b"3", b"4", b"5"]
    assert len(consume(conn, stream, 6, args={"x-stream-offset": -1})) == 6
    assert consume(conn, stream, 1, args={"x-stream-offset": 100}, timeout=0.5) == []


def test_timestamp_and_interval_offsets(conn: Any, stream: str) -> None:
    publish(conn, stream, [b"a", b"b"])
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    assert len(consume(conn, stream, 2, args={"x-stream-offset": past})) == 2
    future = datetime.datetime(2100, 1, 1, tzinfo=datetime.UTC)
    assert consume(conn, stream, 1, args={"x-stream-offset": future}, timeout=0.5) == []
    assert len(consume(conn, stream, 2, args={"x-stream-offset": "1h"})) == 2


def test_last_is_the_last_message(broker: Any, conn: Any, stream: str) -> None:
    for i in range(3):  # one confirmed publish at a time: one chunk each in RabbitMQ
        publish(conn, stream, [b"%d" % i])
    got = consume(conn, stream, 1, args={"x-stream-offset": "last"}, timeout=1.0)
    assert [b for b, _ in got] == [b"2"]


def test_prefetch_is_credit_and_acks_return_it(broker: Any, conn: Any, stream: str) -> None:
    publish(conn, stream, [b"%d" % i for i in range(5)])
    got = consume(conn, stream, 5, prefetch=2, args={"x-stream-offset": "first"}, ack=False, timeout=1.0)
    if broker.external:  # RabbitMQ hands over whole chunks, whatever the prefetch
        assert len(got) >= 2
        return
    assert len(got) == 2
    assert len(consume(conn, stream, 5, prefetch=2, args={"x-stream-offset": "first"})) == 5


def test_filter_exact_per_message(broker: Any, conn: Any, stream: str) -> None:
    values = ["a", "b", None, "a"]
    publish(conn, stream, [b"%d" % i for i in range(4)],
            [{"x-stream-filter-value": v} if v else {} for v in values])
    got = consume(conn, stream, 4, args={"x-stream-offset": "first", "x-stream-filter": "a"}, timeout=1.0)
    if broker.external:  # per chunk: a superset of the matches
        assert {b"0", b"3"} <= {b for b, _ in got}
        return
    assert [b for b, _ in got] == [b"0", b"3"]
    both = consume(conn, stream, 4, args={"x-stream-offset": "first", "x-stream-filter": ["b"],
                                          "x-stream-match-unfiltered": True}, timeout=1.0)
    assert [b for b, _ in both] == [b"1", b"2"]


def test_table_headers_round_trip(broker: Any, conn: Any, stream: str) -> None:
    if broker.external:
        pytest.skip("RabbitMQ 3.10 drops table and array headers on streams")
    publish(conn, stream, [b"t"], [{"t": {"k": 1}, "a": [1, "x"]}])
    ((_, h),) = consume(conn, stream, 1, args={"x-stream-offset": "first"})
    assert h["t"] == {"k": 1}
    assert h["a"] in ([1, b"x"], [1, "x"])


# ------------------------------------------------------------ refusals


def _channel_error(conn: Any, fn: Any) -> Any:
    ch = conn.channel()
    with pytest.raises((pika.exceptions.ChannelClosedByBroker, pika.exceptions.ConnectionClosedByBroker)) as info:
        fn(ch)
        conn.process_data_events(time_limit=0.5)
        ch.queue_declare("", exclusive=True)
    return info.value


def test_consume_without_qos_is_406(conn: Any, stream: str) -> None:
    err = _channel_error(conn, lambda ch: ch.basic_consume(stream, lambda *a: None))
    assert err.reply_code == 406
    assert err.reply_text == (
        f"PRECONDITION_FAILED - consumer prefetch count is not set for "
        f"'queue '{stream}' in vhost '/''"
    )


@pytest.mark.parametrize(
    ("what", "call"),
    [
        ("automatic acknowledgement", lambda ch, q: (ch.basic_qos(prefetch_count=1), ch.basic_consume(q, lambda *a: None, auto_ack=True))),
        ("basic.get", lambda ch, q: ch.basic_get(q)),
        ("queue.purge", lambda ch, q: ch.queue_purge(q)),
    ],
)
def test_refused_operations_close_the_connection_540(broker: Any, stream: str, what: str, call: Any) -> None:
    c = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port))
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
        call(c.channel(), stream)
        c.process_data_events(time_limit=0.5)
    assert info.value.reply_code == 540
    assert info.value.reply_text == (
        f"NOT_IMPLEMENTED - {what} not supported by stream queues queue '{stream}' in vhost '/'"
    )


def test_nack_closes_the_connection_540(broker: Any, conn: Any, stream: str) -> None:
    publish(conn, stream, [b"x"])
    c = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port))
    ch = c.channel()
    ch.basic_qos(prefetch_count=1)
    ch.basic_consume(stream, lambda c_, m, p, b: c_.basic_nack(m.delivery_tag),
                     arguments={"x-stream-offset": "first"})
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            c.process_data_events(time_limit=0.1)
    assert info.value.reply_code == 540
    assert "basic.nack and basic.reject not supported by stream queues" in info.value.reply_text


def test_bad_stream_offset_is_a_clear_406(broker: Any, conn: Any, stream: str) -> None:
    if broker.external:
        pytest.skip("RabbitMQ 3.10 crashes the channel (541 INTERNAL_ERROR)")
    ch = conn.channel()
    ch.basic_qos(prefetch_count=1)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.basic_consume(stream, lambda *a: None, arguments={"x-stream-offset": "foo"})
    assert info.value.reply_code == 406
    assert "x-stream-offset" in info.value.reply_text


def test_retention_by_size_drops_old_segments(broker: Any, conn: Any) -> None:
    """x-max-length-bytes with small segments: the oldest go, the newest
    stay, offsets keep counting (RabbitMQ evaluates retention per segment
    too, so only what both promise is checked)."""
    ch = conn.channel()
    name = f"stest.{uuid.uuid4().hex[:12]}"
    ch.queue_declare(name, durable=True, arguments={
        **STREAM, "x-max-length-bytes": 20_000, "x-stream-max-segment-size-bytes": 5_000})
    publish(conn, name, [b"r%04d" % i + b"." * 200 for i in range(300)])
    time.sleep(1.0)
    publish(conn, name, [b"last"])
    got = consume(conn, name, 300, args={"x-stream-offset": "first"}, timeout=3.0)
    offsets = [h["x-stream-offset"] for _, h in got]
    assert got and got[-1][0] == b"last"
    assert offsets[0] > 0 and len(got) < 301  # the oldest segments are gone
    assert offsets == sorted(offsets)
    if not broker.external:  # RabbitMQ's offsets also count its own entries
        assert offsets == list(range(offsets[0], 301))
    conn.channel().queue_delete(name)


def test_policy_max_length_bytes_wins(broker: Any, conn: Any) -> None:
    if broker.external:
        pytest.skip("needs a policy set through the broker under test's own API")
    ch = conn.channel()
    name = f"stest.{uuid.uuid4().hex[:12]}"
    ch.queue_declare(name, durable=True, arguments={**STREAM, "x-stream-max-segment-size-bytes": 5_000})
    publish(conn, name, [b"p%04d" % i + b"." * 200 for i in range(300)])
    assert len(consume(conn, name, 300, args={"x-stream-offset": "first"})) == 300
    live = broker.live
    live.call_sync(
        lambda: live.embedded.info.broker.policies.set_policy(
            "/", "small", f"^{name}$", {"max-length-bytes": 20_000}, priority=0, apply_to="streams"
        )
    )
    publish(conn, name, [b"after"])
    got = consume(conn, name, 301, args={"x-stream-offset": "first"}, timeout=2.0)
    assert got[-1][0] == b"after" and len(got) < 301
    conn.channel().queue_delete(name)


def test_one_burst_of_publishes_mixed_plain_and_filtered(broker: Any, conn: Any, stream: str) -> None:
    """One write of 300 publishes to the stream (the broker reads them as
    runs): plain ones, ones with a filter value and ones with other
    headers interleaved, all confirmed, stored in publish order with
    consecutive offsets, and the filter still exact."""
    from pamqp import body as pbody
    from pamqp import commands
    from pamqp import frame as pframe
    from pamqp import header as pheader

    from mqbroker.perf.client import Connection

    url = f"amqp://{broker.user}:{broker.password}@{broker.host}:{broker.port}/" + (
        "%2F" if broker.vhost == "/" else broker.vhost
    )
    client = Connection(url)
    client.channel_open(1)
    client.confirm_select(1)
    out = []
    for i in range(300):
        headers = {"x-stream-filter-value": "f"} if i % 7 == 3 else ({"h": i} if i % 11 == 5 else None)
        props = commands.Basic.Properties(headers=headers, delivery_mode=2)
        body = b"m%03d" % i
        out.append(pframe.marshal(commands.Basic.Publish(exchange="", routing_key=stream), 1))
        out.append(pframe.marshal(pheader.ContentHeader(0, len(body), props), 1))
        out.append(pframe.marshal(pbody.ContentBody(body), 1))
    client.sock.sendall(b"".join(out))
    acked = 0
    deadline = time.monotonic() + 10
    while acked < 300 and time.monotonic() < deadline:
        _ch, method = client.read_frame()
        if isinstance(method, commands.Basic.Ack):
            acked = method.delivery_tag if method.multiple or method.delivery_tag > acked else acked
    client.close()
    assert acked == 300
    got = consume(conn, stream, 300, prefetch=300, args={"x-stream-offset": "first"})
    assert [b for b, _ in got] == [b"m%03d" % i for i in range(300)]
    if not broker.external:
        assert [h["x-stream-offset"] for _, h in got] == list(range(300))
    assert all(h.get("h") == i for i, (_, h) in enumerate(got) if i % 11 == 5 and i % 7 != 3)
    if not broker.external:
        flt = consume(conn, stream, 300, args={"x-stream-offset": "first", "x-stream-filter": "f"},
                      timeout=1.0)
        assert [b for b, _ in flt] == [b"m%03d" % i for i in range(300) if i % 7 == 3]


def test_persistent_publish_single(conn: Any, stream: str) -> None:
    """delivery_mode 2 with other properties, published one at a time."""
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish("", stream, b"p", pika.BasicProperties(delivery_mode=2, content_type="t/x"))
    ch.close()
    ((body, headers),) = consume(conn, stream, 1, args={"x-stream-offset": "first"})
    assert body == b"p" and headers["x-stream-offset"] == 0
