"""Core AMQP behaviour through pika's BlockingConnection: publish, get,
acknowledgements, QoS, consumers, queue lifecycle, exchange features,
confirms and transactions.

Validated against RabbitMQ 3.10.8; deviations from the design notes are
called out in comments marked "RabbitMQ:".
"""

from __future__ import annotations

import os
import time
from typing import Any

import amqp
import pika
import pika.exceptions
import pytest
from itest_support import amqp_connect

from support.blocking import consume_n, drain, get_message, wait_message_count
from support.waits import wait_for

pytestmark = pytest.mark.timeout(30)


def sync_point(chan: Any) -> None:
    chan.basic_qos(prefetch_count=0)


def publish_all(
    chan: Any, queue: str, bodies: list[bytes], exchange: str = ""
) -> None:
    for body in bodies:
        chan.basic_publish(exchange, queue, body)
    assert wait_message_count(chan, queue, len(bodies)) == len(bodies)


def queue_exists(connect: Any, name: str) -> bool:
    chan = connect().channel()
    try:
        chan.queue_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        assert exc.reply_code == 404
        return False
    chan.close()
    return True


def wait_queue_gone(connect: Any, name: str, timeout: float = 5) -> None:
    # no connection to pump: each probe uses a new one
    wait_for(
        lambda: not queue_exists(connect, name),
        timeout,
        what=f"queue {name} to be gone",
    )


# ---------------------------------------------------------------- mandatory / returns


def test_mandatory_unroutable_is_returned(conn, uniq):
    ch = conn.channel()
    returned: list[tuple[Any, Any, bytes]] = []
    ch.add_on_return_callback(lambda c, m, p, b: returned.append((m, p, b)))
    key = uniq("nowhere")
    props = pika.BasicProperties(
        content_type="text/plain", message_id="m-1", headers={"h": "v"}
    )
    ch.basic_publish("amq.direct", key, b"lost", props, mandatory=True)
    wait_for(lambda: len(returned) == 1, what="basic.return", conn=conn)
    method, rprops, body = returned[0]
    assert method.reply_code == 312
    assert method.reply_text == "NO_ROUTE"
    assert method.exchange == "amq.direct"
    assert method.routing_key == key
    assert body == b"lost"
    assert rprops.content_type == "text/plain"
    assert rprops.message_id == "m-1"
    assert rprops.headers == {"h": "v"}


def test_mandatory_to_default_exchange_missing_queue_is_returned(conn, uniq):
    ch = conn.channel()
    returned: list[Any] = []
    ch.add_on_return_callback(lambda c, m, p, b: returned.append(m))
    ch.basic_publish("", uniq("no-such-queue"), b"x", mandatory=True)
    wait_for(lambda: len(returned) == 1, what="basic.return", conn=conn)
    assert (
        returned[0].reply_code,
        returned[0].reply_text,
        returned[0].exchange,
    ) == (312, "NO_ROUTE", "")


def test_non_mandatory_unroutable_is_dropped_silently(conn, uniq):
    ch = conn.channel()
    returned: list[Any] = []
    ch.add_on_return_callback(lambda c, m, p, b: returned.append(m))
    ch.confirm_delivery()
    ch.basic_publish(
        "amq.direct", uniq("nowhere"), b"x"
    )  # confirmed: no exception
    conn.process_data_events(time_limit=0)
    assert returned == []
    assert ch.is_open


# ---------------------------------------------------------------- basic.get


def test_basic_get_message_count_and_get_empty(ch):
    q = ch.queue_declare("", exclusive=True).method.queue
    method, props, body = ch.basic_get(q)
    assert (method, props, body) == (None, None, None)  # get-empty
    publish_all(ch, q, [b"a", b"b", b"c"])
    counts = []
    bodies = []
    for _ in range(3):
        method, _, body = ch.basic_get(q, auto_ack=True)
        counts.append(method.message_count)
        bodies.append(body)
        assert method.redelivered is False
        assert method.exchange == "" and method.routing_key == q
    assert bodies == [b"a", b"b", b"c"]
    assert counts == [2, 1, 0]
    assert ch.basic_get(q)[0] is None


def test_delivery_tags_are_per_channel_and_increase(conn):
    ch1, ch2 = conn.channel(), conn.channel()
    q = ch1.queue_declare("", exclusive=True).method.queue
    publish_all(ch1, q, [b"1", b"2", b"3", b"4"])
    tags1 = [ch1.basic_get(q)[0].delivery_tag for _ in range(2)]
    tags2 = [ch2.basic_get(q)[0].delivery_tag for _ in range(2)]
    assert tags1 == [1, 2]
    assert tags2 == [1, 2]


# ---------------------------------------------------------------- reject / nack / ack


def test_reject_and_nack_requeue_restore_original_order(ch):
    q = ch.queue_declare("", exclusive=True).method.queue
    publish_all(ch, q, [b"m1", b"m2", b"m3", b"m4"])
    tags = {}
    for expected in (b"m1", b"m2", b"m3"):
        method, _, body = ch.basic_get(q)
        assert body == expected
        tags[body] = method.delivery_tag
    # Requeue out of order; a classic queue puts each back at its original place.
    ch.basic_nack(tags[b"m3"], requeue=True)
    ch.basic_reject(tags[b"m1"], requeue=True)
    ch.basic_nack(tags[b"m2"], requeue=True)
    assert wait_message_count(ch, q, 4) == 4
    got = []
    for _ in range(4):
        method, _, body = ch.basic_get(q, auto_ack=True)
        got.append((body, method.redelivered))
    assert got == [(b"m1", True), (b"m2", True), (b"m3", True), (b"m4", False)]


def test_reject_without_requeue_drops(ch):
    q = ch.queue_declare("", exclusive=True).method.queue
    publish_all(ch, q, [b"bad", b"good"])
    method, _, _ = ch.basic_get(q)
    ch.basic_reject(method.delivery_tag, requeue=False)
    method, _, _ = ch.basic_get(q)
    ch.basic_nack(method.delivery_tag, requeue=False)
    sync_point(ch)
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    assert ch.basic_get(q)[0] is None


def test_ack_multiple(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    publish_all(ch, q, [str(i).encode() for i in range(5)])
    tags = [ch.basic_get(q)[0].delivery_tag for _ in range(5)]
    assert tags == [1, 2, 3, 4, 5]
    ch.basic_ack(3, multiple=True)  # acks 1, 2, 3
    sync_point(ch)
    ch.close()  # 4 and 5 were unacked: requeued
    ch2 = conn.channel()
    assert wait_message_count(ch2, q, 2) == 2
    assert [
        (b, m.redelivered)
        for m, _, b in (ch2.basic_get(q, auto_ack=True) for _ in range(2))
    ] == [
        (b"3", True),
        (b"4", True),
    ]


def test_ack_zero_multiple_acks_everything(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    publish_all(ch, q, [b"a", b"b", b"c"])
    for _ in range(3):
        ch.basic_get(q)
    ch.basic_ack(0, multiple=True)
    sync_point(ch)
    ch.close()
    ch2 = conn.channel()
    assert ch2.queue_declare(q, passive=True).method.message_count == 0


def test_nack_multiple(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    publish_all(ch, q, [b"a", b"b", b"c", b"d"])
    for _ in range(4):
        ch.basic_get(q)
    ch.basic_nack(
        3, multiple=True, requeue=True
    )  # a, b, c back; d stays unacked
    assert wait_message_count(ch, q, 3) == 3
    assert [
        (b, m.redelivered) for m, _, b in (ch.basic_get(q) for _ in range(3))
    ] == [
        (b"a", True),
        (b"b", True),
        (b"c", True),
    ]
    ch.basic_nack(
        0, multiple=True, requeue=False
    )  # drops everything outstanding
    sync_point(ch)
    ch.close()
    ch2 = conn.channel()
    assert ch2.queue_declare(q, passive=True).method.message_count == 0


def test_unacked_messages_requeued_on_channel_close(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    publish_all(ch, q, [b"x", b"y"])
    ch.basic_get(q)
    ch.basic_get(q)
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    ch.close()
    ch2 = conn.channel()
    assert wait_message_count(ch2, q, 2) == 2
    m, _, b = ch2.basic_get(q, auto_ack=True)
    assert (b, m.redelivered) == (b"x", True)


def test_basic_recover_requeue(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    got: list[tuple[bytes, bool]] = []
    ch.basic_consume(q, lambda c, m, p, b: got.append((b, m.redelivered)))
    ch.basic_publish("", q, b"one")
    ch.basic_publish("", q, b"two")
    wait_for(lambda: len(got) == 2, what="first deliveries", conn=conn)
    ch.basic_recover(requeue=True)
    wait_for(lambda: len(got) == 4, what="redeliveries", conn=conn)
    assert got == [
        (b"one", False),
        (b"two", False),
        (b"one", True),
        (b"two", True),
    ]


# ---------------------------------------------------------------- QoS


def _held(
    conn: Any,
    q: str,
    chan: Any,
    consumers: int,
    prefetch_args: dict[str, Any] | None,
) -> dict[str, int]:
    if prefetch_args is not None:
        chan.basic_qos(**prefetch_args)
    counts: dict[str, int] = {}
    for i in range(consumers):
        tag = f"c{i}"
        counts[tag] = 0
        chan.basic_consume(
            q,
            lambda c, m, p, b, t=tag: counts.__setitem__(t, counts[t] + 1),
            consumer_tag=tag,
        )
    return counts


def test_qos_per_consumer(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    publish_all(ch, q, [str(i).encode() for i in range(10)])
    counts = _held(conn, q, ch, 2, {"prefetch_count": 2, "global_qos": False})
    wait_for(lambda: sum(counts.values()) == 4, what="4 deliveries", conn=conn)
    conn.process_data_events(time_limit=0.2)
    assert counts == {"c0": 2, "c1": 2}
    assert ch.queue_declare(q, passive=True).method.message_count == 6


def test_qos_global_is_shared_by_the_channel(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    publish_all(ch, q, [str(i).encode() for i in range(10)])
    counts = _held(conn, q, ch, 2, {"prefetch_count": 3, "global_qos": True})
    wait_for(lambda: sum(counts.values()) == 3, what="3 deliveries", conn=conn)
    conn.process_data_events(time_limit=0.2)
    assert sum(counts.values()) == 3
    assert ch.queue_declare(q, passive=True).method.message_count == 7


def test_qos_applies_only_to_later_consumers(conn):
    ch = conn.channel()
    q1 = ch.queue_declare("", exclusive=True).method.queue
    q2 = ch.queue_declare("", exclusive=True).method.queue
    publish_all(ch, q1, [b"x"] * 5)
    publish_all(ch, q2, [b"y"] * 5)
    got = {"early": 0, "late": 0}
    ch.basic_consume(
        q1, lambda c, m, p, b: got.__setitem__("early", got["early"] + 1)
    )
    ch.basic_qos(prefetch_count=1)
    ch.basic_consume(
        q2, lambda c, m, p, b: got.__setitem__("late", got["late"] + 1)
    )
    wait_for(
        lambda: got["early"] == 5 and got["late"] == 1, what="deliveries", conn=conn
    )
    conn.process_data_events(time_limit=0.2)
    assert got == {"early": 5, "late": 1}


def test_qos_ack_releases_the_next_message(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    publish_all(ch, q, [b"1", b"2", b"3"])
    ch.basic_qos(prefetch_count=1)
    got: list[Any] = []
    ch.basic_consume(q, lambda c, m, p, b: got.append((m.delivery_tag, b)))
    wait_for(lambda: len(got) == 1, conn=conn)
    conn.process_data_events(time_limit=0.1)
    assert [b for _, b in got] == [b"1"]
    ch.basic_ack(got[0][0])
    wait_for(lambda: len(got) == 2, conn=conn)
    assert got[1][1] == b"2"


# ---------------------------------------------------------------- consumers


def test_round_robin_between_consumers(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    got: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    for tag in got:
        ch.basic_consume(
            q,
            lambda c, m, p, b, t=tag: got[t].append(int(b)),
            auto_ack=True,
            consumer_tag=tag,
        )
    for i in range(9):
        ch.basic_publish("", q, str(i).encode())
    wait_for(lambda: sum(map(len, got.values())) == 9, conn=conn)
    assert sorted(len(v) for v in got.values()) == [3, 3, 3]
    # Each consumer sees every third message.
    for seq in got.values():
        assert [x % 3 for x in seq] == [seq[0] % 3] * 3
        assert seq == sorted(seq)


def test_consumer_cancel_notification_on_queue_delete(connect, uniq, cleanup):
    conn = connect()
    ch = conn.channel()
    assert conn.consumer_cancel_notify_supported
    q = cleanup.queue(uniq("cancel-notify"))
    ch.queue_declare(q)
    cancelled: list[Any] = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame))
    tag = ch.basic_consume(q, lambda *a: None)
    assert ch.consumer_tags == [tag]
    connect().channel().queue_delete(q)
    wait_for(lambda: len(cancelled) == 1, what="server basic.cancel", conn=conn)
    assert cancelled[0].method.consumer_tag == tag
    assert ch.is_open and conn.is_open
    assert ch.consumer_tags == []
    sync_point(ch)


def test_consume_generator_ends_when_queue_deleted(connect, uniq, cleanup):
    conn = connect()
    ch = conn.channel()
    q = cleanup.queue(uniq("cancel-gen"))
    ch.queue_declare(q)
    ch.basic_publish("", q, b"first")
    other = connect().channel()
    seen: list[Any] = []
    deadline = time.monotonic() + 10
    for item in ch.consume(q, auto_ack=True, inactivity_timeout=0.1):
        seen.append(item)
        if (
            item[0] is not None
            and len([s for s in seen if s[0] is not None]) == 1
        ):
            other.queue_delete(q)
        assert time.monotonic() < deadline, (
            "generator did not end after server cancel"
        )
    # pika ends the generator once the broker cancels the consumer.
    assert [s[2] for s in seen if s[0] is not None] == [b"first"]


def test_basic_cancel_unknown_tag_is_ok(ch):
    ch.basic_cancel("never-registered")
    sync_point(ch)
    assert ch.is_open


def test_cancelled_consumer_gets_nothing_more(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    got: list[bytes] = []
    tag = ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    ch.basic_publish("", q, b"1")
    wait_for(lambda: got == [b"1"], conn=conn)
    ch.basic_cancel(tag)
    ch.basic_publish("", q, b"2")
    assert wait_message_count(ch, q, 1) == 1
    assert got == [b"1"]


# ---------------------------------------------------------------- queue lifecycle


def test_exclusive_queue_deleted_when_connection_closes(connect, uniq):
    owner = connect()
    name = uniq("exclusive")
    owner.channel().queue_declare(name, exclusive=True)
    owner.close()
    wait_queue_gone(connect, name)


def test_auto_delete_queue_deleted_when_last_consumer_cancels(
    connect, uniq, cleanup
):
    conn = connect()
    ch = conn.channel()
    name = cleanup.queue(uniq("autodel"))
    ch.queue_declare(name, auto_delete=True)
    # Never consumed: it stays.
    assert queue_exists(connect, name)
    t1 = ch.basic_consume(name, lambda *a: None)
    t2 = ch.basic_consume(name, lambda *a: None)
    ch.basic_cancel(t1)
    assert queue_exists(connect, name)
    ch.basic_cancel(t2)
    wait_queue_gone(connect, name)


def test_auto_delete_queue_deleted_when_consumer_channel_closes(
    connect, uniq, cleanup
):
    conn = connect()
    name = cleanup.queue(uniq("autodel"))
    conn.channel().queue_declare(name, auto_delete=True)
    ch = conn.channel()
    ch.basic_consume(name, lambda *a: None)
    ch.close()
    wait_queue_gone(connect, name)


def test_declare_ok_counts_ready_messages_and_consumers(conn, uniq, cleanup):
    ch = conn.channel()
    name = cleanup.queue(uniq("counts"))
    ok = ch.queue_declare(name).method
    assert (ok.queue, ok.message_count, ok.consumer_count) == (name, 0, 0)
    publish_all(ch, name, [b"1", b"2", b"3"])
    ok = ch.queue_declare(name).method  # a plain redeclare reports counts too
    assert (ok.message_count, ok.consumer_count) == (3, 0)
    ch.basic_get(name)  # one unacked: not counted
    ok = ch.queue_declare(name, passive=True).method
    assert (ok.message_count, ok.consumer_count) == (2, 0)
    cons = conn.channel()
    cons.basic_qos(prefetch_count=1)
    cons.basic_consume(name, lambda *a: None)
    cons.basic_consume(name, lambda *a: None)
    wait_for(
        lambda: ch.queue_declare(name, passive=True).method.message_count == 0,
        conn=conn,
    )
    ok = ch.queue_declare(name, passive=True).method
    assert (ok.message_count, ok.consumer_count) == (0, 2)


def test_purge_counts_ready_only_and_unacked_survive(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    publish_all(ch, q, [str(i).encode() for i in range(5)])
    ch.basic_get(q)
    ch.basic_get(q)
    assert ch.queue_purge(q).method.message_count == 3
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    ch.close()  # the two unacked come back
    ch2 = conn.channel()
    assert wait_message_count(ch2, q, 2) == 2
    assert drain(ch2, q) == [b"0", b"1"]


def test_queue_delete_returns_message_count(ch, uniq, cleanup):
    name = cleanup.queue(uniq("delcount"))
    ch.queue_declare(name)
    publish_all(ch, name, [b"a", b"b"])
    assert ch.queue_delete(name).method.message_count == 2


def test_server_named_queue(conn):
    ch = conn.channel()
    names = {
        ch.queue_declare("", exclusive=True).method.queue for _ in range(3)
    }
    assert len(names) == 3
    for name in names:
        assert name.startswith("amq.gen-")
        assert len(name) > len("amq.gen-")


def test_empty_queue_name_means_last_declared_queue(ch):
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"x")
    assert wait_message_count(ch, q, 1) == 1
    # basic.get and queue.purge with queue "" act on the channel's last queue.
    method, _, body = ch.basic_get("", auto_ack=True)
    assert (body, method.routing_key) == (b"x", q)
    ch.basic_publish("", q, b"y")
    assert wait_message_count(ch, q, 1) == 1
    assert ch.queue_purge("").method.message_count == 1
    # RabbitMQ: not so for queue.declare, where "" asks for a new server-named
    # queue; a *passive* declare of "" is a 404 for the literal name ''.
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.queue_declare("", passive=True)
    assert info.value.reply_code == 404
    assert info.value.reply_text.startswith("NOT_FOUND - no queue '' in vhost")


def test_delete_and_unbind_of_missing_things_are_ok(ch, uniq):
    ch.queue_delete(uniq("never-declared"))
    ch.exchange_delete(uniq("never-declared"))
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_unbind(q, "amq.direct", "never-bound")
    sync_point(ch)
    assert ch.is_open


# ---------------------------------------------------------------- exchanges


def test_default_exchange_routes_by_queue_name(ch, uniq, cleanup):
    name = cleanup.queue(uniq("byname"))
    ch.queue_declare(name)
    ch.confirm_delivery()
    ch.basic_publish("", name, b"direct to queue")
    ch.basic_publish("", name + ".nope", b"nowhere")
    assert drain(ch, name) == [b"direct to queue"]


def test_publish_to_amq_default_is_404(conn, uniq):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("amq.default", q, b"x")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        sync_point(ch)
    assert info.value.reply_code == 404
    assert info.value.reply_text.startswith(
        "NOT_FOUND - no exchange 'amq.default' in vhost"
    )


def test_cannot_bind_to_default_exchange(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.queue_bind(q, "", "k")
    assert info.value.reply_code == 403
    assert info.value.reply_text.startswith(
        "ACCESS_REFUSED - operation not permitted on the default exchange"
    )


def test_exchange_to_exchange_binding(ch, uniq, cleanup):
    src = cleanup.exchange(uniq("e2e-src"))
    dst = cleanup.exchange(uniq("e2e-dst"))
    ch.exchange_declare(src, "topic")
    ch.exchange_declare(dst, "fanout")
    ch.exchange_bind(destination=dst, source=src, routing_key="orders.*")
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, dst)
    ch.confirm_delivery()
    ch.basic_publish(src, "orders.new", b"1")
    ch.basic_publish(src, "payments.new", b"2")
    ch.basic_publish(dst, "anything", b"3")
    assert drain(ch, q) == [b"1", b"3"]
    ch.exchange_unbind(destination=dst, source=src, routing_key="orders.*")
    ch.basic_publish(src, "orders.new", b"4")
    assert drain(ch, q) == []


def test_exchange_to_exchange_reaches_queue_once(ch, uniq, cleanup):
    """A queue reachable through two paths gets one copy."""
    src = cleanup.exchange(uniq("e2e-src"))
    dst = cleanup.exchange(uniq("e2e-dst"))
    ch.exchange_declare(src, "fanout")
    ch.exchange_declare(dst, "fanout")
    ch.exchange_bind(dst, src)
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, src)
    ch.queue_bind(q, dst)
    ch.confirm_delivery()
    ch.basic_publish(src, "", b"once")
    assert drain(ch, q) == [b"once"]


def test_alternate_exchange(conn, uniq, cleanup):
    ch = conn.channel()
    ae = cleanup.exchange(uniq("ae"))
    main = cleanup.exchange(uniq("main"))
    ch.exchange_declare(ae, "fanout")
    ch.exchange_declare(main, "direct", arguments={"alternate-exchange": ae})
    routed = ch.queue_declare("", exclusive=True).method.queue
    unrouted = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(routed, main, "known")
    ch.queue_bind(unrouted, ae)
    returned: list[Any] = []
    ch.add_on_return_callback(lambda c, m, p, b: returned.append(m))
    ch.confirm_delivery()
    ch.basic_publish(main, "known", b"routed")
    ch.basic_publish(
        main, "unknown", b"to-ae", mandatory=True
    )  # AE routes it: no return
    assert drain(ch, routed) == [b"routed"]
    assert drain(ch, unrouted) == [b"to-ae"]
    conn.process_data_events(time_limit=0)
    assert returned == []


def test_alternate_exchange_applies_through_e2e_binding(ch, uniq, cleanup):
    src = cleanup.exchange(uniq("src"))
    mid = cleanup.exchange(uniq("mid"))
    ae = cleanup.exchange(uniq("ae"))
    ch.exchange_declare(ae, "fanout")
    ch.exchange_declare(src, "fanout")
    ch.exchange_declare(mid, "direct", arguments={"alternate-exchange": ae})
    ch.exchange_bind(mid, src)
    q_ae = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q_ae, ae)
    ch.confirm_delivery()
    ch.basic_publish(src, "no-binding-in-mid", b"via-ae")
    assert drain(ch, q_ae) == [b"via-ae"]


def test_alternate_exchange_unroutable_with_mandatory_returns(
    conn, uniq, cleanup
):
    ch = conn.channel()
    ae = cleanup.exchange(uniq("ae-empty"))
    main = cleanup.exchange(uniq("main"))
    ch.exchange_declare(ae, "fanout")  # no queue bound to the AE
    ch.exchange_declare(main, "direct", arguments={"alternate-exchange": ae})
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.UnroutableError):
        ch.basic_publish(main, "x", b"nowhere", mandatory=True)


HEADERS_CASES = [
    # message headers, matches all-binding, matches any-binding
    ({"a": 1, "b": 2}, True, True),
    ({"a": 1, "b": 2, "c": 3}, True, True),
    ({"a": 1}, False, True),
    ({"a": 1, "b": 3}, False, True),
    ({"b": 2}, False, True),
    ({"a": 2, "b": 3}, False, False),
    ({}, False, False),
    (None, False, False),
    ({"c": 3}, False, False),
]


def test_headers_exchange_all_and_any(ch, uniq, cleanup):
    ex = cleanup.exchange(uniq("headers"))
    ch.exchange_declare(ex, "headers")
    q_all = ch.queue_declare("", exclusive=True).method.queue
    q_any = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q_all, ex, arguments={"x-match": "all", "a": 1, "b": 2})
    ch.queue_bind(q_any, ex, arguments={"x-match": "any", "a": 1, "b": 2})
    ch.confirm_delivery()
    for i, (headers, _, _) in enumerate(HEADERS_CASES):
        ch.basic_publish(
            ex,
            "ignored",
            str(i).encode(),
            pika.BasicProperties(headers=headers),
        )
    assert drain(ch, q_all) == [
        str(i).encode() for i, c in enumerate(HEADERS_CASES) if c[1]
    ]
    assert drain(ch, q_any) == [
        str(i).encode() for i, c in enumerate(HEADERS_CASES) if c[2]
    ]


def test_headers_exchange_default_is_all_and_special_cases(ch, uniq, cleanup):
    ex = cleanup.exchange(uniq("headers"))
    ch.exchange_declare(ex, "headers")
    q_default = ch.queue_declare("", exclusive=True).method.queue
    q_all_empty = ch.queue_declare("", exclusive=True).method.queue
    q_any_empty = ch.queue_declare("", exclusive=True).method.queue
    q_any_x = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(
        q_default, ex, arguments={"k": "v", "n": 5}
    )  # no x-match: all
    ch.queue_bind(
        q_all_empty, ex, arguments={"x-match": "all"}
    )  # matches everything
    ch.queue_bind(
        q_any_empty, ex, arguments={"x-match": "any"}
    )  # matches nothing
    ch.queue_bind(
        q_any_x, ex, arguments={"x-match": "any", "x-k": "v"}
    )  # x- keys ignored
    ch.confirm_delivery()
    ch.basic_publish(
        ex,
        "",
        b"kv",
        pika.BasicProperties(headers={"k": "v", "n": 5, "x-k": "v"}),
    )
    ch.basic_publish(
        ex, "", b"k-only", pika.BasicProperties(headers={"k": "v"})
    )
    ch.basic_publish(ex, "", b"none")
    assert drain(ch, q_default) == [b"kv"]
    assert drain(ch, q_all_empty) == [b"kv", b"k-only", b"none"]
    assert drain(ch, q_any_empty) == []
    assert drain(ch, q_any_x) == []


def test_headers_exchange_loose_value_comparison(broker, ch, uniq, cleanup):
    ex = cleanup.exchange(uniq("headers"))
    ch.exchange_declare(ex, "headers")
    q_int = ch.queue_declare("", exclusive=True).method.queue
    q_bool = ch.queue_declare("", exclusive=True).method.queue
    q_str = ch.queue_declare("", exclusive=True).method.queue
    q_void = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q_int, ex, arguments={"x-match": "all", "n": 1})
    ch.queue_bind(q_bool, ex, arguments={"x-match": "all", "flag": True})
    ch.queue_bind(q_str, ex, arguments={"x-match": "all", "s": "x"})
    ch.queue_bind(q_void, ex, arguments={"x-match": "all", "v": None})
    # pika cannot encode floats in tables; py-amqp can (type 'd').
    pub = amqp_connect(broker)
    try:
        pch = pub.channel()
        pch.confirm_select()
        for body, headers in [
            ("int", {"n": 1}),
            ("big-int", {"n": 1, "pad": 2**40}),
            ("float", {"n": 1.0}),
            ("str-1", {"n": "1"}),
            ("two", {"n": 2}),
            ("bool-true", {"flag": True}),
            ("one-for-bool", {"flag": 1}),
            ("str-x", {"s": "x"}),
            ("void-v", {"v": None}),
            ("str-v", {"v": "anything"}),
        ]:
            pch.basic_publish(
                amqp.Message(body.encode(), application_headers=headers),
                ex,
                "",
            )
    finally:
        pub.close()
    # Byte arrays (pika encodes bytes as 'x') match equal strings.
    ch.confirm_delivery()
    ch.basic_publish(
        ex, "", b"bytes-x", pika.BasicProperties(headers={"s": b"x"})
    )
    # int 1 matches double 1.0; a string "1" does not; true does not match 1.
    assert drain(ch, q_int) == [b"int", b"big-int", b"float"]
    assert drain(ch, q_bool) == [b"bool-true"]
    assert drain(ch, q_str) == [b"str-x", b"bytes-x"]
    # A void binding value matches any value for that key (the key must be present).
    assert drain(ch, q_void) == [b"void-v", b"str-v"]


def test_cc_and_bcc_headers(ch, uniq, cleanup):
    ex = cleanup.exchange(uniq("direct-cc"))
    ch.exchange_declare(ex, "direct")
    queues = {}
    for key in ("main", "cc1", "cc2", "bcc1", "other"):
        queues[key] = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(queues[key], ex, key)
    # "main" is also listed in CC: still one copy.
    ch.confirm_delivery()
    ch.basic_publish(
        ex,
        "main",
        b"memo",
        pika.BasicProperties(
            headers={
                "CC": ["cc1", "cc2", "main"],
                "BCC": ["bcc1"],
                "keep": "me",
            }
        ),
    )
    for key in ("main", "cc1", "cc2", "bcc1"):
        method, props, body = get_message(ch, queues[key], auto_ack=True)
        assert body == b"memo"
        assert method.routing_key == "main"
        assert props.headers["CC"] == ["cc1", "cc2", "main"]
        assert props.headers["keep"] == "me"
        assert "BCC" not in props.headers
        assert ch.basic_get(queues[key])[0] is None, f"second copy in {key}"
    assert ch.basic_get(queues["other"])[0] is None


# ---------------------------------------------------------------- confirms


def test_publisher_confirms(conn, uniq):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.confirm_delivery()
    for i in range(20):
        assert ch.basic_publish("", q, str(i).encode(), mandatory=True) is None
    # Every publish was confirmed before basic_publish returned: all are enqueued.
    assert ch.queue_declare(q, passive=True).method.message_count == 20
    with pytest.raises(pika.exceptions.UnroutableError) as info:
        ch.basic_publish("amq.direct", uniq("nowhere"), b"x", mandatory=True)
    returned = info.value.messages
    assert len(returned) == 1
    assert returned[0].method.reply_code == 312
    assert returned[0].body == b"x"
    # The channel remains usable afterwards.
    ch.basic_publish("", q, b"after")
    assert ch.queue_declare(q, passive=True).method.message_count == 21


def test_confirm_publish_to_missing_exchange_raises_404(conn, uniq):
    ch = conn.channel()
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.basic_publish(uniq("missing-ex"), "k", b"x")
    assert info.value.reply_code == 404
    assert conn.is_open


def test_confirm_persistent_to_durable_queue(ch, uniq, cleanup):
    name = cleanup.queue(uniq("durable-confirm"))
    ch.queue_declare(name, durable=True)
    ch.confirm_delivery()
    ch.basic_publish("", name, b"safe", pika.BasicProperties(delivery_mode=2))
    _, props, body = ch.basic_get(name, auto_ack=True)
    assert (body, props.delivery_mode) == (b"safe", 2)


# ---------------------------------------------------------------- transactions


def test_tx_commit_and_rollback_publishes(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    observer = conn.channel()
    ch.tx_select()
    ch.basic_publish("", q, b"rolled-back-1")
    ch.basic_publish("", q, b"rolled-back-2")
    assert observer.queue_declare(q, passive=True).method.message_count == 0
    ch.tx_rollback()
    ch.basic_publish("", q, b"committed")
    assert observer.queue_declare(q, passive=True).method.message_count == 0
    ch.tx_commit()
    assert wait_message_count(observer, q, 1) == 1
    assert drain(observer, q) == [b"committed"]


def test_tx_rollback_of_ack(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    publish_all(ch, q, [b"a", b"b"])
    ch.tx_select()
    m1, _, _ = ch.basic_get(q)
    m2, _, _ = ch.basic_get(q)
    ch.basic_ack(m1.delivery_tag)
    ch.tx_rollback()  # the ack never happened: a is still unacked
    ch.basic_ack(m2.delivery_tag)
    ch.tx_commit()  # b is acked
    ch.close()  # a comes back
    ch2 = conn.channel()
    assert wait_message_count(ch2, q, 1) == 1
    method, _, body = ch2.basic_get(q, auto_ack=True)
    assert (body, method.redelivered) == (b"a", True)
    assert ch2.basic_get(q)[0] is None


def test_tx_mandatory_return_sent_at_commit(conn, uniq):
    ch = conn.channel()
    returned: list[Any] = []
    ch.add_on_return_callback(lambda c, m, p, b: returned.append(m))
    ch.tx_select()
    ch.basic_publish("amq.direct", uniq("nowhere"), b"x", mandatory=True)
    sync_point(ch)
    conn.process_data_events(time_limit=0.1)
    assert returned == []
    ch.tx_commit()
    wait_for(lambda: len(returned) == 1, what="return at commit", conn=conn)
    assert returned[0].reply_code == 312


def test_tx_commit_without_select_is_406(conn):
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.tx_commit()
    assert info.value.reply_code == 406
    assert info.value.reply_text.startswith(
        "PRECONDITION_FAILED - channel is not transactional"
    )


# ---------------------------------------------------------------- bodies


@pytest.mark.parametrize(
    "size", [0, 1, 131072 - 8, 131072 - 7, 5 * 1024 * 1024]
)
def test_body_round_trip(ch, size):
    q = ch.queue_declare("", exclusive=True).method.queue
    body = os.urandom(size) if size else b""
    props = pika.BasicProperties(
        content_type="application/octet-stream", headers={"size": size}
    )
    ch.basic_publish("", q, body, props)
    _, rprops, rbody = get_message(ch, q, auto_ack=True)
    assert len(rbody) == size
    assert rbody == body
    assert rprops.headers == {"size": size}
    # And through a consumer (basic.deliver) as well.
    ch.basic_publish("", q, body, props)
    got = consume_n(ch, q, 1)
    assert len(got) == 1 and got[0][2] == body


def test_properties_round_trip(ch):
    q = ch.queue_declare("", exclusive=True).method.queue
    props = pika.BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        headers={
            "str": "s",
            "int": 42,
            "neg": -7,
            "big": 2**40,
            "bool": True,
            "list": [1, "two", False],
            "nested": {"a": {"b": "c"}},
            "bytes": b"\x00\x01",
            "none": None,
        },
        delivery_mode=2,
        priority=5,
        correlation_id="corr",
        reply_to="reply",
        expiration="60000",
        message_id="mid",
        timestamp=1700000000,
        type="kind",
        user_id="guest",
        app_id="app",
    )
    ch.basic_publish("", q, b"{}", props)
    _, got, _ = get_message(ch, q, auto_ack=True)
    for attr in (
        "content_type",
        "content_encoding",
        "delivery_mode",
        "priority",
        "correlation_id",
        "reply_to",
        "expiration",
        "message_id",
        "timestamp",
        "type",
        "user_id",
        "app_id",
    ):
        assert getattr(got, attr) == getattr(props, attr), attr
    assert got.headers == props.headers


def test_user_id_mismatch_is_406(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"x", pika.BasicProperties(user_id="someone-else"))
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        sync_point(ch)
    assert info.value.reply_code == 406
    assert info.value.reply_text.startswith(
        "PRECONDITION_FAILED - user_id property set to 'someone-else'"
    )


@pytest.mark.parametrize("autoack", [True, False])
def test_bodies_of_every_size_arrive_intact(conn, uniq, autoack):
    """Small bodies are copied into the output buffer, bodies of 16 KiB and
    more that fit one frame are queued uncopied and sent with sendmsg,
    larger ones are split over frames: all three, interleaved on one
    channel, arrive byte for byte and in order."""
    sizes = [0, 1, 16 * 1024 - 1, 16 * 1024, 65536, 131072 - 8, 131072 - 7,
             300_000, 5, 70_000, 17_000, 3]
    ch = conn.channel()
    queue = ch.queue_declare(uniq("sizes"), exclusive=True).method.queue
    bodies = [os.urandom(size) for size in sizes]
    for body in bodies:
        ch.basic_publish("", queue, body)
    received: list[bytes] = []
    for _method, _props, body in ch.consume(
        queue, auto_ack=autoack, inactivity_timeout=10
    ):
        assert body is not None, f"timed out after {len(received)} messages"
        received.append(body)
        if not autoack:
            ch.basic_ack(_method.delivery_tag)
        if len(received) == len(bodies):
            break
    ch.cancel()
    assert [len(b) for b in received] == sizes
    assert received == bodies
