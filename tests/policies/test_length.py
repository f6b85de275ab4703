"""Length limits: x-max-length, x-max-length-bytes and the x-overflow modes.

Runs against mqbroker, and against RabbitMQ with MQBROKER_EXTERNAL_URL.
"""

from __future__ import annotations

import pika
import pika.exceptions
import pytest
from policy_support import text

from support.blocking import drain, get_message, message_count, wait_count

pytestmark = pytest.mark.timeout(60)


def _dlx_args(dlq: str, **extra: object) -> dict[str, object]:
    args: dict[str, object] = {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dlq,
    }
    args.update(extra)
    return args


def test_drop_head_keeps_the_newest_and_dead_letters_maxlen(ch, uniq):
    q, dlq = uniq("len"), uniq("len-dlq")
    ch.queue_declare(dlq, exclusive=True)
    ch.queue_declare(q, exclusive=True, arguments=_dlx_args(dlq, **{"x-max-length": 3}))
    ch.confirm_delivery()
    for i in range(5):
        ch.basic_publish("", q, b"m%d" % i)
    wait_count(ch, dlq, 2)
    assert drain(ch, q) == [b"m2", b"m3", b"m4"]
    dropped = []
    for _ in range(2):
        _, props, body = get_message(ch, dlq, auto_ack=True)
        dropped.append(body)
        death = props.headers["x-death"][0]
        assert text(death["reason"]) == "maxlen"
        assert text(death["queue"]) == q
    assert dropped == [b"m0", b"m1"]


def test_max_length_bytes_counts_body_bytes_only(ch, uniq):
    q = uniq("bytes")
    ch.queue_declare(q, exclusive=True, arguments={"x-max-length-bytes": 10})
    ch.confirm_delivery()
    headers = {"big": "h" * 500}  # headers do not count
    for body in (b"aaaa", b"bbbb", b"cc"):
        ch.basic_publish("", q, body, pika.BasicProperties(headers=headers))
    assert message_count(ch, q) == 3
    ch.basic_publish("", q, b"d")  # 11 bytes: the head goes
    assert drain(ch, q) == [b"bbbb", b"cc", b"d"]


def test_reject_publish_nacks_a_confirming_publisher(ch, uniq):
    q = uniq("reject")
    ch.queue_declare(
        q, exclusive=True, arguments={"x-max-length": 2, "x-overflow": "reject-publish"}
    )
    ch.confirm_delivery()
    ch.basic_publish("", q, b"1")
    ch.basic_publish("", q, b"2")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"3")
    # a mandatory publish that was refused by a full queue is nacked,
    # not returned: it was routed
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"4", mandatory=True)
    assert drain(ch, q) == [b"1", b"2"]
    ch.basic_publish("", q, b"5")  # room again
    assert drain(ch, q) == [b"5"]


def test_reject_publish_without_confirms_drops_silently(conn, uniq):
    ch = conn.channel()
    q = uniq("reject")
    ch.queue_declare(
        q, exclusive=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
    )
    for i in range(3):
        ch.basic_publish("", q, b"m%d" % i)
    assert drain(ch, q) == [b"m0"]
    assert ch.is_open


def test_reject_publish_other_queues_still_get_it(ch, uniq):
    full, other = uniq("full"), uniq("other")
    ex = "amq.fanout"
    ch.queue_declare(
        full, exclusive=True, arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
    )
    ch.queue_declare(other, exclusive=True)
    ch.queue_bind(full, ex)
    ch.queue_bind(other, ex)
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish(ex, "", b"x")
    assert drain(ch, other) == [b"x"]
    assert message_count(ch, full) == 0


def test_reject_publish_dlx_nacks_and_dead_letters(ch, uniq):
    q, dlq = uniq("rpdlx"), uniq("rpdlx-dlq")
    ch.queue_declare(dlq, exclusive=True)
    ch.queue_declare(
        q,
        exclusive=True,
        arguments=_dlx_args(dlq, **{"x-max-length": 1, "x-overflow": "reject-publish-dlx"}),
    )
    ch.confirm_delivery()
    ch.basic_publish("", q, b"kept")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"refused")
    _, props, body = get_message(ch, dlq, auto_ack=True)
    assert body == b"refused"
    assert text(props.headers["x-death"][0]["reason"]) == "maxlen"
    assert drain(ch, q) == [b"kept"]


def test_reject_publish_ignores_unacked_and_requeue_may_exceed(conn, uniq):
    ch = conn.channel()
    q = uniq("rp-unacked")
    ch.queue_declare(
        q, exclusive=True, arguments={"x-max-length": 2, "x-overflow": "reject-publish"}
    )
    ch.confirm_delivery()
    ch.basic_publish("", q, b"a")
    ch.basic_publish("", q, b"b")
    method, _, _ = get_message(ch, q, auto_ack=False)  # a: unacked, not counted
    ch.basic_publish("", q, b"c")
    assert message_count(ch, q) == 2
    ch.basic_nack(method.delivery_tag, requeue=True)
    wait_count(ch, q, 3)  # over the limit, nothing dropped
    assert drain(ch, q) == [b"a", b"b", b"c"]


def test_drop_head_after_requeue_enforces_the_limit(conn, uniq):
    ch = conn.channel()
    q = uniq("dh-requeue")
    ch.queue_declare(q, exclusive=True, arguments={"x-max-length": 2})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"a")
    ch.basic_publish("", q, b"b")
    method, _, _ = get_message(ch, q, auto_ack=False)
    ch.basic_publish("", q, b"c")
    ch.basic_nack(method.delivery_tag, requeue=True)
    wait_count(ch, q, 2)
    assert drain(ch, q) == [b"b", b"c"]


def test_max_length_zero_delivers_to_a_waiting_consumer(conn, uniq):
    ch = conn.channel()
    q = uniq("len0")
    ch.queue_declare(q, exclusive=True, arguments={"x-max-length": 0})
    got: list[bytes] = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    ch.basic_publish("", q, b"direct")
    deadline = 50
    while not got and deadline:
        conn.process_data_events(time_limit=0.1)
        deadline -= 1
    assert got == [b"direct"]
