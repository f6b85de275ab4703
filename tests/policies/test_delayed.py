"""The x-delayed-message exchange (rabbitmq-delayed-message-exchange
semantics). RabbitMQ here has no such plugin, so these run on mqbroker only.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest
from policy_support import start_embedded

from support.blocking import drain, get_message, message_count, pika_params
from support.waits import wait_for

pytestmark = [pytest.mark.timeout(60)]


@pytest.fixture
def delayed(inproc: Any, ch: Any, uniq: Any) -> tuple[str, str]:
    ex, q = uniq("delayed"), uniq("delayed-q")
    ch.exchange_declare(ex, "x-delayed-message", arguments={"x-delayed-type": "direct"})
    ch.queue_declare(q, exclusive=True)
    ch.queue_bind(q, ex, routing_key="k")
    return ex, q


def _publish(ch: Any, ex: str, body: bytes, delay: Any = None, key: str = "k", **props: Any) -> None:
    headers = dict(props.pop("headers", {}) or {})
    if delay is not None:
        headers["x-delay"] = delay
    ch.basic_publish(ex, key, body, pika.BasicProperties(headers=headers or None, **props))


def test_declare_needs_a_delayed_type(inproc, conn, uniq):
    for args in ({}, {"x-delayed-type": "no-such-type"}, {"x-delayed-type": "x-delayed-message"}):
        ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.exchange_declare(uniq("bad"), "x-delayed-message", arguments=args)
        assert info.value.reply_code == 406
        assert "x-delayed-type" in info.value.reply_text


def test_message_is_held_until_due(delayed, ch):
    ex, q = delayed
    ch.confirm_delivery()
    started = time.monotonic()
    _publish(ch, ex, b"later", 400)
    assert message_count(ch, q) == 0
    method, props, body = get_message(ch, q, timeout=5, auto_ack=True)
    assert body == b"later"
    assert time.monotonic() - started >= 0.38
    assert props.headers["x-delay"] == -400  # the plugin's "was delayed" mark


@pytest.mark.parametrize("delay", [None, 0, -100, "abc"])
def test_no_or_non_positive_delay_routes_now(delayed, ch, delay):
    ex, q = delayed
    ch.confirm_delivery()
    _publish(ch, ex, b"now", delay)
    assert message_count(ch, q) == 1


def test_string_delay_is_parsed(delayed, ch):
    ex, q = delayed
    _publish(ch, ex, b"s", "200")
    assert message_count(ch, q) == 0
    assert get_message(ch, q, timeout=5, auto_ack=True)[2] == b"s"


def test_ordered_by_due_time_not_arrival(delayed, ch):
    ex, q = delayed
    ch.confirm_delivery()
    _publish(ch, ex, b"third", 600)
    _publish(ch, ex, b"first", 200)
    _publish(ch, ex, b"second", 400)
    wait_for(lambda: message_count(ch, q) == 3, timeout=5)
    assert drain(ch, q) == [b"first", b"second", b"third"]


def test_routing_uses_the_underlying_type_at_release(inproc, ch, uniq):
    ex = uniq("delayed-topic")
    ch.exchange_declare(ex, "x-delayed-message", arguments={"x-delayed-type": "topic"})
    a, b = uniq("ta"), uniq("tb")
    ch.queue_declare(a, exclusive=True)
    ch.queue_declare(b, exclusive=True)
    ch.queue_bind(a, ex, routing_key="orders.*")
    _publish(ch, ex, b"o", 300, key="orders.eu")
    # bound after the publish: still gets it, bindings are read when due
    ch.queue_bind(b, ex, routing_key="#")
    assert get_message(ch, a, timeout=5, auto_ack=True)[2] == b"o"
    assert get_message(ch, b, timeout=5, auto_ack=True)[2] == b"o"


def test_per_message_ttl_starts_at_release(delayed, ch):
    ex, q = delayed
    _publish(ch, ex, b"ttl", 300, expiration="200")
    time.sleep(0.35)
    assert get_message(ch, q, timeout=2, auto_ack=True)[2] == b"ttl"


def test_unroutable_when_due_is_dropped(delayed, ch):
    ex, q = delayed
    ch.confirm_delivery()
    _publish(ch, ex, b"lost", 100, key="no-binding")
    time.sleep(0.3)
    assert message_count(ch, q) == 0


def test_mandatory_delayed_publish_is_not_returned(delayed, conn, ch):
    ex, q = delayed
    returned: list[Any] = []
    ch.add_on_return_callback(lambda *a: returned.append(a))
    _publish(ch, ex, b"m", 200)
    ch.basic_publish(ex, "k", b"m2", pika.BasicProperties(headers={"x-delay": 200}),
                     mandatory=True)
    conn.process_data_events(time_limit=0.5)
    assert returned == []
    wait_for(lambda: message_count(ch, q) == 2, timeout=5)


def test_deleting_the_exchange_drops_held_messages(inproc, ch, uniq):
    ex, q = uniq("delayed-del"), uniq("delayed-del-q")
    ch.exchange_declare(ex, "x-delayed-message", arguments={"x-delayed-type": "fanout"})
    ch.queue_declare(q, exclusive=True)
    ch.queue_bind(q, ex)
    _publish(ch, ex, b"x", 200)
    ch.exchange_delete(ex)
    ch.exchange_declare(ex, "x-delayed-message", arguments={"x-delayed-type": "fanout"})
    ch.queue_bind(q, ex)
    time.sleep(0.5)
    assert message_count(ch, q) == 0


def test_exchange_to_exchange_binding_from_delayed(inproc, ch, uniq):
    ex, dest, q = uniq("delayed-e2e"), uniq("dest"), uniq("dest-q")
    ch.exchange_declare(ex, "x-delayed-message", arguments={"x-delayed-type": "fanout"})
    ch.exchange_declare(dest, "fanout", auto_delete=True)
    ch.exchange_bind(dest, ex)
    ch.queue_declare(q, exclusive=True)
    ch.queue_bind(q, dest)
    _publish(ch, ex, b"hop", 200)
    assert get_message(ch, q, timeout=5, auto_ack=True)[2] == b"hop"


def test_persistent_delayed_messages_survive_a_restart(scratch_dir: Path):
    data = scratch_dir / "data"
    first = start_embedded(data)
    try:
        conn = pika.BlockingConnection(pika_params(first))
        ch = conn.channel()
        ch.exchange_declare("dly", "x-delayed-message", durable=True,
                            arguments={"x-delayed-type": "direct"})
        ch.queue_declare("dly.q", durable=True)
        ch.queue_bind("dly.q", "dly", routing_key="k")
        ch.exchange_declare("dly.transient", "x-delayed-message",
                            arguments={"x-delayed-type": "direct"})
        ch.queue_bind("dly.q", "dly.transient", routing_key="k")
        ch.confirm_delivery()
        _publish(ch, "dly", b"persistent", 1500, delivery_mode=2)
        _publish(ch, "dly", b"transient", 1500, delivery_mode=1)
        _publish(ch, "dly.transient", b"on-transient-exchange", 1500, delivery_mode=2)
        conn.close()
    finally:
        first.embedded.stop()
    second = start_embedded(data)
    try:
        conn = pika.BlockingConnection(pika_params(second))
        ch = conn.channel()
        assert message_count(ch, "dly.q") == 0
        _, props, body = get_message(ch, "dly.q", timeout=5, auto_ack=True)
        assert body == b"persistent"
        assert props.headers["x-delay"] == -1500
        time.sleep(0.3)
        assert message_count(ch, "dly.q") == 0
        # delivered once: nothing left to release after another restart
        conn.close()
    finally:
        second.embedded.stop()
    third = start_embedded(data)
    try:
        conn = pika.BlockingConnection(pika_params(third))
        ch = conn.channel()
        time.sleep(0.3)
        assert message_count(ch, "dly.q") == 0
        assert third.call(lambda: third.core.store.queues_with_entries()) == []
        conn.close()
    finally:
        third.embedded.stop()


def test_released_persistent_message_is_durable_in_its_queue(scratch_dir: Path):
    data = scratch_dir / "data"
    first = start_embedded(data)
    try:
        conn = pika.BlockingConnection(pika_params(first))
        ch = conn.channel()
        ch.exchange_declare("dly2", "x-delayed-message", durable=True,
                            arguments={"x-delayed-type": "fanout"})
        ch.queue_declare("dly2.q", durable=True)
        ch.queue_bind("dly2.q", "dly2")
        ch.confirm_delivery()
        _publish(ch, "dly2", b"p", 200, delivery_mode=2)
        wait_for(lambda: message_count(ch, "dly2.q") == 1, timeout=5)
        conn.close()
    finally:
        first.embedded.stop()
    second = start_embedded(data)
    try:
        conn = pika.BlockingConnection(pika_params(second))
        ch = conn.channel()
        assert message_count(ch, "dly2.q") == 1
        _, props, body = get_message(ch, "dly2.q", auto_ack=True)
        assert body == b"p" and props.headers["x-delay"] == -200
        conn.close()
    finally:
        second.embedded.stop()


def test_deleted_durable_exchange_leaves_nothing_behind(scratch_dir: Path):
    data = scratch_dir / "data"
    first = start_embedded(data)
    try:
        conn = pika.BlockingConnection(pika_params(first))
        ch = conn.channel()
        args = {"x-delayed-type": "fanout"}
        ch.exchange_declare("dly3", "x-delayed-message", durable=True, arguments=args)
        ch.queue_declare("dly3.q", durable=True)
        ch.queue_bind("dly3.q", "dly3")
        ch.confirm_delivery()
        _publish(ch, "dly3", b"old", 1000, delivery_mode=2)
        ch.exchange_delete("dly3")
        ch.exchange_declare("dly3", "x-delayed-message", durable=True, arguments=args)
        ch.queue_bind("dly3.q", "dly3")
        _publish(ch, "dly3", b"new", 1000, delivery_mode=2)
        conn.close()
    finally:
        first.embedded.stop()
    second = start_embedded(data)
    try:
        conn = pika.BlockingConnection(pika_params(second))
        ch = conn.channel()
        assert get_message(ch, "dly3.q", timeout=5, auto_ack=True)[2] == b"new"
        time.sleep(0.3)
        assert message_count(ch, "dly3.q") == 0
        conn.close()
    finally:
        second.embedded.stop()
