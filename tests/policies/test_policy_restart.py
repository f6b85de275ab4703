"""Dead-lettering of persistent messages is as durable as publishing them:
broker subprocesses killed with SIGKILL (mqbroker.testing.BrokerProcess).
"""

from __future__ import annotations

import time
from typing import Any

import pika
import pytest
from policy_support import text

from support.blocking import get_message, message_count
from support.waits import wait_for

pytestmark = [pytest.mark.timeout(120)]


def _params(proc: Any) -> pika.URLParameters:
    return pika.URLParameters(proc.url + "?socket_timeout=5&heartbeat=30")


def _dl_args(dlq: str, **extra: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dlq,
    }
    args.update(extra)
    return args


def test_rejected_persistent_message_is_in_the_dlq_after_kill9(mqbroker_process):
    proc = mqbroker_process(reuse_port=True)
    conn = pika.BlockingConnection(_params(proc))
    ch = conn.channel()
    ch.queue_declare("work", durable=True, arguments=_dl_args("work.dlq"))
    ch.queue_declare("work.dlq", durable=True)
    ch.queue_declare("marker", durable=True)
    ch.confirm_delivery()
    ch.basic_publish("", "work", b"bad", pika.BasicProperties(delivery_mode=2, headers={"n": 1}))
    method, _, _ = get_message(ch, "work", auto_ack=False)
    ch.basic_reject(method.delivery_tag, requeue=False)
    wait_for(lambda: message_count(ch, "work.dlq") == 1)
    # a confirmed publish after the reject: its commit covers the reject's
    ch.basic_publish("", "marker", b"", pika.BasicProperties(delivery_mode=2))
    proc.kill()
    proc.start()
    conn = pika.BlockingConnection(_params(proc))
    ch = conn.channel()
    assert message_count(ch, "work") == 0
    assert message_count(ch, "work.dlq") == 1
    _, props, body = get_message(ch, "work.dlq", auto_ack=True)
    assert body == b"bad"
    assert props.headers["n"] == 1
    death = props.headers["x-death"][0]
    assert text(death["reason"]) == "rejected"
    assert text(death["queue"]) == "work"
    assert death["count"] == 1
    conn.close()


def test_messages_expiring_while_down_are_dead_lettered_at_start(mqbroker_process):
    proc = mqbroker_process(reuse_port=True)
    conn = pika.BlockingConnection(_params(proc))
    ch = conn.channel()
    ch.queue_declare("ttl", durable=True, arguments=_dl_args("ttl.dlq", **{"x-message-ttl": 500}))
    ch.queue_declare("ttl.dlq", durable=True)
    ch.confirm_delivery()
    for i in range(20):
        ch.basic_publish("", "ttl", b"%d" % i, pika.BasicProperties(delivery_mode=2))
    proc.kill()
    time.sleep(0.6)
    proc.start()
    conn = pika.BlockingConnection(_params(proc))
    ch = conn.channel()
    wait_for(lambda: message_count(ch, "ttl.dlq") == 20, timeout=10)
    assert message_count(ch, "ttl") == 0
    bodies = sorted(int(get_message(ch, "ttl.dlq", auto_ack=True)[2]) for _ in range(20))
    assert bodies == list(range(20))
    conn.close()


def test_kill9_during_dead_lettering_loses_and_duplicates_nothing(mqbroker_process):
    """Messages expire into the DLQ while the broker is killed: after the
    restart each confirmed message is in exactly one of the two queues."""
    proc = mqbroker_process(reuse_port=True)
    conn = pika.BlockingConnection(_params(proc))
    ch = conn.channel()
    ch.queue_declare("src", durable=True, arguments=_dl_args("src.dlq", **{"x-message-ttl": 1}))
    ch.queue_declare("src.dlq", durable=True)
    total = 3000
    for i in range(total - 1):
        ch.basic_publish("", "src", b"%d" % i, pika.BasicProperties(delivery_mode=2))
    # one confirmed publish last: once it is confirmed, so are all before
    # it (one connection, store epochs in order)
    confirm = conn.channel()
    confirm.confirm_delivery()
    confirm.basic_publish("", "src", b"%d" % (total - 1), pika.BasicProperties(delivery_mode=2))
    proc.kill()  # expiries are being dead-lettered right now
    proc.start()
    conn = pika.BlockingConnection(_params(proc))
    ch = conn.channel()
    wait_for(lambda: message_count(ch, "src.dlq") + message_count(ch, "src") == total,
               timeout=20)
    wait_for(lambda: message_count(ch, "src") == 0, timeout=20)
    seen = []
    while True:
        method, _, body = ch.basic_get("src.dlq", auto_ack=True)
        if method is None:
            break
        seen.append(int(body))
    assert sorted(seen) == list(range(total))
    conn.close()


def test_queue_over_its_limit_at_start_drops_its_head(mqbroker_process):
    """Unacked messages come back as ready at a restart; a drop-head queue
    that is then over x-max-length dead-letters its head (reason maxlen),
    as RabbitMQ does when it starts the queue."""
    proc = mqbroker_process(reuse_port=True)
    conn = pika.BlockingConnection(_params(proc))
    ch = conn.channel()
    ch.queue_declare("lim.dlq", durable=True)
    ch.queue_declare("lim", durable=True, arguments=_dl_args("lim.dlq", **{"x-max-length": 1}))
    ch.confirm_delivery()
    ch.basic_publish("", "lim", b"first", pika.BasicProperties(delivery_mode=2))
    get_message(ch, "lim", auto_ack=False)  # unacked when the broker dies
    ch.basic_publish("", "lim", b"second", pika.BasicProperties(delivery_mode=2))
    proc.kill()
    proc.start()
    conn = pika.BlockingConnection(_params(proc))
    ch = conn.channel()
    assert message_count(ch, "lim") == 1
    assert get_message(ch, "lim", auto_ack=True)[2] == b"second"
    _, props, body = get_message(ch, "lim.dlq", auto_ack=True)
    assert body == b"first"
    assert text(props.headers["x-death"][0]["reason"]) == "maxlen"
    conn.close()
