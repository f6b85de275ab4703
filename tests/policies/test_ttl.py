"""Message TTL (per queue, per message) and queue expiry (x-expires).

Every test runs against mqbroker, and against RabbitMQ with
MQBROKER_EXTERNAL_URL set (names are unique, queues exclusive or cleaned).
"""

from __future__ import annotations

import time

import pika
import pika.exceptions
import pytest
from policy_support import (
    RawGet,
    has_expiration,
    headers_dict,
    text,
    typed_headers,
)

from support.blocking import get_message, message_count, wait_count
from support.waits import wait_for

pytestmark = pytest.mark.timeout(60)


def test_per_queue_ttl_expires_messages(ch, uniq):
    q = uniq("ttl")
    ch.queue_declare(q, exclusive=True, arguments={"x-message-ttl": 500})
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", q, b"m%d" % i)
    assert message_count(ch, q) == 3
    wait_count(ch, q, 0, timeout=5)
    assert ch.basic_get(q, auto_ack=True)[0] is None


def test_per_message_ttl_expires_message(ch, uniq):
    q = uniq("ttl")
    ch.queue_declare(q, exclusive=True)
    ch.basic_publish("", q, b"short", pika.BasicProperties(expiration="150"))
    ch.basic_publish("", q, b"long", pika.BasicProperties(expiration="60000"))
    wait_count(ch, q, 1, timeout=5)
    assert get_message(ch, q, auto_ack=True)[2] == b"long"


def test_expiry_only_at_the_head(ch, uniq):
    """An expired message behind a live one is still counted (and still
    there) until it reaches the head."""
    q = uniq("head")
    ch.queue_declare(q, exclusive=True)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"live", pika.BasicProperties(expiration="60000"))
    ch.basic_publish("", q, b"dead", pika.BasicProperties(expiration="100"))
    time.sleep(0.4)
    assert message_count(ch, q) == 2
    assert get_message(ch, q, auto_ack=True)[2] == b"live"
    # now the expired one is at the head: a get finds nothing
    assert ch.basic_get(q, auto_ack=True)[0] is None
    assert message_count(ch, q) == 0


def test_lower_of_queue_and_message_ttl_wins(ch, uniq):
    q = uniq("lower")
    ch.queue_declare(q, exclusive=True, arguments={"x-message-ttl": 150})
    ch.basic_publish("", q, b"x", pika.BasicProperties(expiration="60000"))
    wait_count(ch, q, 0, timeout=5)
    q2 = uniq("lower2")
    ch.queue_declare(q2, exclusive=True, arguments={"x-message-ttl": 60000})
    ch.basic_publish("", q2, b"x", pika.BasicProperties(expiration="150"))
    wait_count(ch, q2, 0, timeout=5)


@pytest.mark.parametrize(
    "expiration",
    ["abc", "-5", "1.5"],
)
def test_malformed_expiration_is_406(conn, uniq, expiration):
    ch = conn.channel()
    q = uniq("bad")
    ch.queue_declare(q, exclusive=True)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.basic_publish("", q, b"x", pika.BasicProperties(expiration=expiration))
        ch.queue_declare(q, passive=True)  # round trip to see the close
    assert info.value.reply_code == 406
    text_ = info.value.reply_text
    assert text_.startswith(f"PRECONDITION_FAILED - invalid expiration '{expiration}'")
    if expiration == "abc":
        assert text_ == "PRECONDITION_FAILED - invalid expiration 'abc': no_integer"


def test_ttl_zero_is_delivered_to_a_waiting_consumer(conn, uniq):
    ch = conn.channel()
    q = uniq("zero")
    ch.queue_declare(q, exclusive=True, arguments={"x-message-ttl": 0})
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    for i in range(5):
        ch.basic_publish("", q, b"z%d" % i)
    wait_for(lambda: len(got) == 5, conn=conn)
    assert got == [b"z%d" % i for i in range(5)]


def test_ttl_zero_without_consumer_expires_at_once(ch, uniq):
    q, dlq = uniq("zero"), uniq("zero-dlq")
    ch.queue_declare(dlq, exclusive=True)
    ch.queue_declare(
        q,
        exclusive=True,
        arguments={
            "x-message-ttl": 0,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dlq,
        },
    )
    ch.basic_publish("", q, b"gone")
    wait_count(ch, dlq, 1, timeout=5)
    assert message_count(ch, q) == 0
    _, props, body = get_message(ch, dlq, auto_ack=True)
    assert body == b"gone"
    assert text(props.headers["x-death"][0]["reason"]) == "expired"


def test_message_expiration_zero_with_consumer(conn, uniq):
    ch = conn.channel()
    q = uniq("zero-msg")
    ch.queue_declare(q, exclusive=True)
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    ch.basic_publish("", q, b"now", pika.BasicProperties(expiration="0"))
    wait_for(lambda: got, conn=conn)
    assert got == [b"now"]


def test_expired_per_message_dead_letter_has_original_expiration(
    broker, ch, uniq, cleanup
):
    q, dlq = uniq("exp"), cleanup.queue(uniq("exp-dlq"))
    ch.queue_declare(dlq)
    ch.queue_declare(
        q,
        exclusive=True,
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq},
    )
    ch.basic_publish(
        "", q, b"late", pika.BasicProperties(expiration="100", headers={"k": "v"})
    )
    with RawGet(broker) as raw:
        _, raw_props, body = raw.get_wait(dlq)
    assert body == b"late"
    assert not has_expiration(raw_props), "expiration must be removed"
    headers = headers_dict(typed_headers(raw_props))
    assert headers["k"] == ("S", "v")
    tag, deaths = headers["x-death"]
    assert tag == "A" and len(deaths) == 1
    entry = {k: (t, v) for k, t, v in deaths[0][1]}
    assert entry["reason"] == ("S", "expired")
    assert entry["queue"] == ("S", q)
    assert entry["count"] == ("l", 1)
    assert entry["original-expiration"] == ("S", "100")
    assert entry["routing-keys"] == ("A", [("S", q)])
    assert headers["x-first-death-reason"] == ("S", "expired")


def test_per_queue_ttl_dead_letter_has_no_original_expiration(ch, uniq):
    q, dlq = uniq("exp"), uniq("exp-dlq")
    ch.queue_declare(dlq, exclusive=True)
    ch.queue_declare(
        q,
        exclusive=True,
        arguments={
            "x-message-ttl": 100,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dlq,
        },
    )
    ch.basic_publish("", q, b"late")
    _, props, _ = get_message(ch, dlq, auto_ack=True)
    death = props.headers["x-death"][0]
    assert text(death["reason"]) == "expired"
    assert "original-expiration" not in death
    assert props.expiration is None


def test_expired_message_requeued_after_expiry_is_dropped(conn, uniq):
    """A message that expires while unacked is expired when it is
    requeued back to the head."""
    ch = conn.channel()
    q = uniq("unacked-exp")
    ch.queue_declare(q, exclusive=True, arguments={"x-message-ttl": 200})
    ch.basic_publish("", q, b"x")
    method, _, _ = get_message(ch, q, auto_ack=False)
    time.sleep(0.4)
    ch.basic_nack(method.delivery_tag, requeue=True)
    wait_count(ch, q, 0, timeout=5)


def test_x_expires_deletes_an_unused_queue(ch, uniq):
    """(A passive declare counts as a use, so the probe sleeps longer
    than x-expires between two looks.)"""
    q = uniq("expires")
    ch.queue_declare(q, arguments={"x-expires": 200})
    ch.basic_publish("", q, b"x")

    def gone() -> bool:
        try:
            probe = ch.connection.channel()
            probe.queue_declare(q, passive=True)
            probe.close()
            return False
        except pika.exceptions.ChannelClosedByBroker as exc:
            assert exc.reply_code == 404
            return True

    wait_for(gone, timeout=5, interval=0.5)


def test_x_expires_waits_while_a_consumer_is_attached(connect, uniq):
    conn = connect()
    ch = conn.channel()
    q = uniq("expires-used")
    ch.queue_declare(q, arguments={"x-expires": 200})
    tag = ch.basic_consume(q, lambda *a: None, auto_ack=True)
    conn.process_data_events(time_limit=0.8)
    probe = conn.channel()
    probe.queue_declare(q, passive=True)  # still there
    ch.basic_cancel(tag)
    started = time.monotonic()

    def gone() -> bool:
        try:
            p = conn.channel()
            p.queue_declare(q, passive=True)
            p.close()
            return False
        except pika.exceptions.ChannelClosedByBroker:
            return True

    wait_for(gone, timeout=5, interval=0.4)
    # counted from the cancel, not from the declare
    assert time.monotonic() - started >= 0.15


def test_x_expires_redeclare_and_get_count_as_use(ch, uniq):
    q = uniq("expires-touch")
    ch.queue_declare(q, arguments={"x-expires": 500})
    for _ in range(4):
        time.sleep(0.25)
        ch.basic_get(q, auto_ack=True)
    for _ in range(3):
        time.sleep(0.25)
        ch.queue_declare(q, arguments={"x-expires": 500})
    for _ in range(3):
        time.sleep(0.25)
        ch.queue_declare(q, passive=True)
    ch.queue_delete(q)


def test_expired_queue_does_not_dead_letter(ch, uniq):
    q, dlq = uniq("expires"), uniq("expires-dlq")
    ch.queue_declare(dlq, exclusive=True)
    ch.queue_declare(
        q,
        arguments={
            "x-expires": 200,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dlq,
        },
    )
    ch.basic_publish("", q, b"x")
    time.sleep(0.8)
    assert message_count(ch, dlq) == 0
