"""Message deduplication (rabbitmq-message-deduplication semantics, also
LavinMQ's): queue level and exchange level. mqbroker only (the plugin is
not installed on the RabbitMQ used for differential runs)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest
from policy_support import start_embedded

from mqbroker.model.dedup import DedupCache
from support.blocking import drain, get_message, message_count, pika_params

pytestmark = [pytest.mark.timeout(60)]


def _pub(ch: Any, ex: str, key: str, body: bytes, dedup: Any = None, **props: Any) -> None:
    headers = dict(props.pop("headers", {}) or {})
    if dedup is not None:
        headers["x-deduplication-header"] = dedup
    ch.basic_publish(ex, key, body, pika.BasicProperties(headers=headers or None, **props))


# ------------------------------------------------------------------ queue


def test_queue_refuses_a_duplicate_while_the_first_is_there(inproc, ch, uniq):
    q = uniq("dq")
    ch.queue_declare(q, exclusive=True, arguments={"x-message-deduplication": True})
    ch.confirm_delivery()
    _pub(ch, "", q, b"a1", "A")
    _pub(ch, "", q, b"a2", "A")  # duplicate: confirmed (no NackError), dropped
    _pub(ch, "", q, b"b1", "B")
    _pub(ch, "", q, b"n1")  # no key: never a duplicate
    _pub(ch, "", q, b"n2")
    assert drain(ch, q) == [b"a1", b"b1", b"n1", b"n2"]
    # consumed (acked): the key is free again
    _pub(ch, "", q, b"a3", "A")
    assert drain(ch, q) == [b"a3"]


def test_queue_key_held_until_ack_and_kept_over_requeue(inproc, ch, uniq):
    q = uniq("dq-ack")
    ch.queue_declare(q, exclusive=True, arguments={"x-message-deduplication": True})
    ch.confirm_delivery()
    _pub(ch, "", q, b"first", "K")
    method, _, _ = get_message(ch, q, auto_ack=False)
    _pub(ch, "", q, b"dup-while-unacked", "K")
    assert message_count(ch, q) == 0
    ch.basic_nack(method.delivery_tag, requeue=True)
    _pub(ch, "", q, b"dup-after-requeue", "K")
    method, _, body = get_message(ch, q, auto_ack=False)
    assert body == b"first"
    ch.basic_ack(method.delivery_tag)
    _pub(ch, "", q, b"second", "K")
    assert drain(ch, q) == [b"second"]


def test_queue_message_id_is_the_key_without_the_header(inproc, ch, uniq):
    q = uniq("dq-mid")
    ch.queue_declare(q, exclusive=True, arguments={"x-message-deduplication": True})
    ch.confirm_delivery()
    for body in (b"1", b"2"):
        _pub(ch, "", q, body, message_id="order-42")
    _pub(ch, "", q, b"3", message_id="order-43")
    assert drain(ch, q) == [b"1", b"3"]


def test_queue_key_released_by_dead_lettering_and_purge(inproc, ch, uniq):
    q, dlq = uniq("dq-dl"), uniq("dq-dlq")
    ch.queue_declare(dlq, exclusive=True)
    ch.queue_declare(
        q,
        exclusive=True,
        arguments={
            "x-message-deduplication": True,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dlq,
        },
    )
    _pub(ch, "", q, b"x", "K")
    method, _, _ = get_message(ch, q, auto_ack=False)
    ch.basic_reject(method.delivery_tag, requeue=False)
    _pub(ch, "", q, b"y", "K")
    assert message_count(ch, q) == 1
    ch.queue_purge(q)
    _pub(ch, "", q, b"z", "K")
    assert drain(ch, q) == [b"z"]


def test_queue_dedup_survives_a_restart(scratch_dir: Path):
    data = scratch_dir / "data"
    first = start_embedded(data)
    try:
        conn = pika.BlockingConnection(pika_params(first))
        ch = conn.channel()
        ch.queue_declare("dd.q", durable=True, arguments={"x-message-deduplication": True})
        ch.confirm_delivery()
        _pub(ch, "", "dd.q", b"once", "K", delivery_mode=2)
        conn.close()
    finally:
        first.embedded.stop()
    second = start_embedded(data)
    try:
        conn = pika.BlockingConnection(pika_params(second))
        ch = conn.channel()
        ch.confirm_delivery()
        # the producer's retry after the restart is still a duplicate
        _pub(ch, "", "dd.q", b"once-retry", "K", delivery_mode=2)
        assert drain(ch, "dd.q") == [b"once"]
        conn.close()
    finally:
        second.embedded.stop()


def test_dedup_by_policy(inproc, ch, uniq):
    q = uniq("dq-pol")
    ch.queue_declare(q, exclusive=True)
    inproc.call(inproc.core.policies.set_policy, "/", "dedup", "^" + q + "$",
                {"message-deduplication": True}, apply_to="queues")
    _pub(ch, "", q, b"1", "K")
    _pub(ch, "", q, b"2", "K")
    assert drain(ch, q) == [b"1"]
    inproc.call(inproc.core.policies.clear_policy, "/", "dedup")


# --------------------------------------------------------------- exchange


def test_exchange_type_from_the_plugin(inproc, conn, uniq):
    ch = conn.channel()
    ex = uniq("dedup-ex")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.exchange_declare(ex, "x-message-deduplication")
    assert info.value.reply_code == 406
    ch = conn.channel()
    ch.exchange_declare(ex, "x-message-deduplication", auto_delete=True,
                        arguments={"x-cache-size": 10})
    a, b = uniq("a"), uniq("b")
    for q in (a, b):
        ch.queue_declare(q, exclusive=True)
        ch.queue_bind(q, ex, routing_key="ignored")  # routes like fanout
    ch.confirm_delivery()
    _pub(ch, ex, "any", b"1", "K")
    _pub(ch, ex, "any", b"2", "K")  # confirmed, not routed
    _pub(ch, ex, "any", b"3", "L")
    assert drain(ch, a) == [b"1", b"3"]
    assert drain(ch, b) == [b"1", b"3"]
    # unlike queue level, the exchange remembers keys after consumption
    _pub(ch, ex, "any", b"4", "K")
    assert drain(ch, a) == []


def test_exchange_argument_on_a_direct_exchange(inproc, ch, uniq):
    ex, q = uniq("dd-direct"), uniq("dd-direct-q")
    ch.exchange_declare(ex, "direct", auto_delete=True,
                        arguments={"x-message-deduplication": True, "x-cache-ttl": 300})
    ch.queue_declare(q, exclusive=True)
    ch.queue_bind(q, ex, routing_key="k")
    ch.confirm_delivery()
    _pub(ch, ex, "k", b"1", "K")
    _pub(ch, ex, "k", b"2", "K")
    assert drain(ch, q) == [b"1"]
    time.sleep(0.4)  # x-cache-ttl passed: routed again
    _pub(ch, ex, "k", b"3", "K")
    assert drain(ch, q) == [b"3"]


def test_exchange_cache_ttl_header_overrides(inproc, ch, uniq):
    ex, q = uniq("dd-ttlh"), uniq("dd-ttlh-q")
    ch.exchange_declare(ex, "x-message-deduplication", auto_delete=True,
                        arguments={"x-cache-size": 5})
    ch.queue_declare(q, exclusive=True)
    ch.queue_bind(q, ex)
    _pub(ch, ex, "", b"1", "K", headers={"x-cache-ttl": 200})
    _pub(ch, ex, "", b"2", "K")
    time.sleep(0.3)
    _pub(ch, ex, "", b"3", "K")
    assert drain(ch, q) == [b"1", b"3"]


def test_exchange_cache_is_bounded(inproc, ch, uniq):
    ex, q = uniq("dd-size"), uniq("dd-size-q")
    ch.exchange_declare(ex, "x-message-deduplication", auto_delete=True,
                        arguments={"x-cache-size": 2})
    ch.queue_declare(q, exclusive=True)
    ch.queue_bind(q, ex)
    for key in ("A", "B", "C", "A"):  # A was evicted by C
        _pub(ch, ex, "", key.encode(), key)
    assert drain(ch, q) == [b"A", b"B", b"C", b"A"]


def test_duplicate_mandatory_publish_is_returned(inproc, conn, uniq):
    ch = conn.channel()
    ex, q = uniq("dd-mand"), uniq("dd-mand-q")
    ch.exchange_declare(ex, "x-message-deduplication", auto_delete=True,
                        arguments={"x-cache-size": 5})
    ch.queue_declare(q, exclusive=True)
    ch.queue_bind(q, ex)
    returned: list[Any] = []
    ch.add_on_return_callback(lambda c, m, p, b: returned.append(b))
    for body in (b"1", b"2"):
        ch.basic_publish(ex, "", body, pika.BasicProperties(
            headers={"x-deduplication-header": "K"}), mandatory=True)
    conn.process_data_events(time_limit=0.3)
    assert returned == [b"2"]


def test_lost_confirm_retry_enqueues_once(inproc, connect, uniq, cleanup):
    """A producer whose connection dies before the confirm publishes again
    on a new connection: the queue holds the message once."""
    q = cleanup.queue(uniq("dd-retry"))
    setup = connect().channel()
    setup.queue_declare(q, durable=True, arguments={"x-message-deduplication": True})
    doomed = connect()
    dch = doomed.channel()
    dch.basic_publish("", q, b"payment-1", pika.BasicProperties(
        message_id="pay-1", delivery_mode=2))
    doomed.close()  # the confirm (never asked for) is lost with it
    retry = connect().channel()
    retry.confirm_delivery()
    retry.basic_publish("", q, b"payment-1", pika.BasicProperties(
        message_id="pay-1", delivery_mode=2))
    assert drain(retry, q) == [b"payment-1"]


def test_dedup_cache_unit():
    cache = DedupCache(size=2, ttl_ms=100)
    assert cache.check_and_add("a", 0) is False
    assert cache.check_and_add("a", 50) is True
    assert cache.check_and_add("a", 150) is False  # expired, re-added at 150
    cache.add("b", 160)
    cache.add("c", 170)
    assert len(cache) == 2 and not cache.contains("a", 171)
    cache.discard("b")
    assert not cache.contains("b", 171)
    forever = DedupCache(size=1)
    forever.add("x", 0)
    assert forever.contains("x", 10**12)
