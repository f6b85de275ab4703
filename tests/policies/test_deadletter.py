"""Dead-lettering: reasons, routing keys, the x-death history, cycles.

The x-death format is checked differentially: ``run_history_scenario``
drives one message through rejects and expiries across three queues and
returns the *shape* of its headers (tags, values, key order; times and
unique names normalised). The shape must equal the one RabbitMQ 3.10.8
produced (``RABBITMQ_SHAPE``, recorded from a real broker), and, when a
RabbitMQ answers on ``MQBROKER_DIFF_URL`` (default
amqp://guest:guest@127.0.0.1:5672/%2F), the scenario is run there too and
the two shapes compared live.
"""

from __future__ import annotations

import decimal
import os
import time
import urllib.parse
from typing import Any

import pika
import pika.exceptions
import pytest
from policy_support import (
    PolicyBroker,
    RawGet,
    death_shape,
    headers_dict,
    text,
    typed_headers,
    unique,
)

from support.blocking import (
    Cleanup,
    get_message,
    message_count,
    pika_params,
    wait_count,
)

pytestmark = pytest.mark.timeout(60)


def _dl(dlq: str | None, exchange: str = "", **extra: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"x-dead-letter-exchange": exchange}
    if dlq is not None:
        args["x-dead-letter-routing-key"] = dlq
    args.update(extra)
    return args


def _reject(ch: Any, queue: str, requeue: bool = False) -> bytes:
    method, _, body = get_message(ch, queue, auto_ack=False)
    ch.basic_reject(method.delivery_tag, requeue=requeue)
    return body


# ---------------------------------------------------------------- reasons


def test_reason_rejected_by_nack_and_reject(ch, uniq):
    q, dlq = uniq("rej"), uniq("rej-dlq")
    ch.queue_declare(dlq, exclusive=True)
    ch.queue_declare(q, exclusive=True, arguments=_dl(dlq))
    ch.basic_publish("", q, b"one")
    ch.basic_publish("", q, b"two")
    m1, _, _ = get_message(ch, q, auto_ack=False)
    ch.basic_nack(m1.delivery_tag, requeue=False)
    m2, _, _ = get_message(ch, q, auto_ack=False)
    ch.basic_reject(m2.delivery_tag, requeue=False)
    for body in (b"one", b"two"):
        _, props, got = get_message(ch, dlq, auto_ack=True)
        assert got == body
        assert text(props.headers["x-death"][0]["reason"]) == "rejected"
        assert text(props.headers["x-first-death-reason"]) == "rejected"
        assert text(props.headers["x-first-death-queue"]) == q


def test_nack_multiple_dead_letters_all(ch, uniq):
    q, dlq = uniq("multi"), uniq("multi-dlq")
    ch.queue_declare(dlq, exclusive=True)
    ch.queue_declare(q, exclusive=True, arguments=_dl(dlq))
    for i in range(3):
        ch.basic_publish("", q, b"%d" % i)
    tags = [get_message(ch, q, auto_ack=False)[0].delivery_tag for _ in range(3)]
    ch.basic_nack(tags[-1], multiple=True, requeue=False)
    wait_count(ch, dlq, 3)


def test_requeue_true_does_not_dead_letter(ch, uniq):
    q, dlq = uniq("requeue"), uniq("requeue-dlq")
    ch.queue_declare(dlq, exclusive=True)
    ch.queue_declare(q, exclusive=True, arguments=_dl(dlq))
    ch.basic_publish("", q, b"x")
    _reject(ch, q, requeue=True)
    method, _, body = get_message(ch, q, auto_ack=True)
    assert body == b"x" and method.redelivered
    assert message_count(ch, dlq) == 0


def test_routing_key_override_replaces_keys_and_drops_cc(broker, ch, uniq, cleanup):
    q = uniq("override")
    dlq = cleanup.queue(uniq("override-dlq"))
    ch.queue_declare(dlq)
    ch.queue_declare(q, exclusive=True, arguments=_dl(dlq))
    ch.basic_publish(
        "", q, b"x", pika.BasicProperties(headers={"CC": ["elsewhere"], "keep": 1})
    )
    _reject(ch, q)
    with RawGet(broker) as raw:
        method, raw_props, _ = raw.get_wait(dlq)
    assert method.routing_key == dlq
    headers = headers_dict(typed_headers(raw_props))
    assert "CC" not in headers
    assert headers["keep"] == ("I", 1)  # the publisher's type tag is kept
    entry = {k: (t, v) for k, t, v in headers["x-death"][1][0][1]}
    assert entry["routing-keys"] == ("A", [("S", q), ("S", "elsewhere")])


def test_no_override_keeps_routing_key_and_cc(broker, ch, uniq, cleanup):
    q = uniq("keys")
    ch.queue_declare(q, exclusive=True, arguments=_dl(None, "amq.fanout"))
    target = cleanup.queue(uniq("keys-dlq"))
    ch.queue_declare(target)
    ch.queue_bind(target, "amq.fanout")
    ch.basic_publish(
        "", q, b"x", pika.BasicProperties(headers={"CC": ["c1"], "BCC": ["b1"]})
    )
    _reject(ch, q)
    with RawGet(broker) as raw:
        method, raw_props, _ = raw.get_wait(target)
    assert method.exchange == "amq.fanout"
    assert method.routing_key == q
    headers = headers_dict(typed_headers(raw_props))
    assert headers["CC"] == ("A", [("S", "c1")])
    assert "BCC" not in headers
    entry = {k: (t, v) for k, t, v in headers["x-death"][1][0][1]}
    # CC keys are recorded, BCC keys never are
    assert entry["routing-keys"] == ("A", [("S", q), ("S", "c1")])
    assert entry["exchange"] == ("S", "")


def test_missing_dead_letter_exchange_drops_silently(ch, uniq):
    q = uniq("nodlx")
    ch.queue_declare(q, exclusive=True, arguments=_dl(None, uniq("no-such-exchange")))
    ch.basic_publish("", q, b"x")
    _reject(ch, q)
    assert message_count(ch, q) == 0
    assert ch.is_open


def test_dead_letter_to_exchange_with_alternate(ch, uniq):
    dlx, ae_q = uniq("dlx"), uniq("ae-q")
    ch.exchange_declare(dlx, "direct", auto_delete=True,
                        arguments={"alternate-exchange": "amq.fanout"})
    ch.queue_declare(ae_q, exclusive=True)
    ch.queue_bind(ae_q, "amq.fanout")
    q = uniq("src")
    ch.queue_declare(q, exclusive=True, arguments=_dl(None, dlx))
    # keep the auto-delete exchange alive with a binding
    ch.queue_bind(q, dlx, routing_key="unused")
    ch.basic_publish("", q, b"x")
    _reject(ch, q)
    _, props, body = get_message(ch, ae_q, auto_ack=True)
    assert body == b"x"


# ----------------------------------------------------------------- cycles


def test_queue_dead_lettering_expired_messages_to_itself_drops_them(ch, uniq):
    """RabbitMQ drops the message on its first expiry: dead-lettering it
    would make it reach the queue it already died in, with no reject in
    between (checked against RabbitMQ 3.10.8)."""
    q = uniq("self")
    ch.queue_declare(
        q, exclusive=True,
        arguments={"x-message-ttl": 300, "x-dead-letter-exchange": ""},
    )
    ch.confirm_delivery()
    ch.basic_publish("", q, b"x")
    assert message_count(ch, q) == 1
    time.sleep(0.6)  # past the first expiry, before a second one
    assert message_count(ch, q) == 0
    assert ch.basic_get(q, auto_ack=True)[0] is None


def test_cycle_through_two_queues_by_expiry_is_dropped(ch, uniq):
    a, b = uniq("cyc-a"), uniq("cyc-b")
    ch.queue_declare(a, exclusive=True, arguments=_dl(b, **{"x-message-ttl": 100}))
    ch.queue_declare(b, exclusive=True, arguments=_dl(a, **{"x-message-ttl": 100}))
    ch.basic_publish("", a, b"x")
    time.sleep(0.8)
    assert message_count(ch, a) == 0
    assert message_count(ch, b) == 0


def test_cycle_with_a_reject_is_not_dropped(ch, uniq):
    """Rejected by a client on the way: the cycle is not 'fully
    automatic', the message keeps going round."""
    a, b = uniq("rcyc-a"), uniq("rcyc-b")
    ch.queue_declare(a, exclusive=True, arguments=_dl(b))
    ch.queue_declare(b, exclusive=True, arguments=_dl(a, **{"x-message-ttl": 100}))
    ch.basic_publish("", a, b"x")
    for round_ in range(1, 4):
        method, props, _ = get_message(ch, a, auto_ack=False)
        if round_ > 1:
            counts = {
                (text(d["queue"]), text(d["reason"])): d["count"]
                for d in props.headers["x-death"]
            }
            assert counts == {(a, "rejected"): round_ - 1, (b, "expired"): round_ - 1}
        ch.basic_reject(method.delivery_tag, requeue=False)


# ------------------------------------------------------ x-death, exactly


def run_history_scenario(handle: Any) -> dict[str, Any]:
    """q1 (reject) -> q2 (expire) -> q3 (reject) -> q1 (reject) -> q2
    (expire) -> q3, where the message is read with its raw headers."""
    conn = pika.BlockingConnection(pika_params(handle))
    cleanup = Cleanup(handle)
    try:
        ch = conn.channel()
        q1, q2, q3 = (cleanup.queue(unique(n)) for n in ("hist1", "hist2", "hist3"))
        ch.queue_declare(q1, arguments=_dl(q2))
        ch.queue_declare(q2, arguments=_dl(q3, **{"x-message-ttl": 100}))
        ch.queue_declare(q3, arguments=_dl(q1))
        ch.basic_publish(
            "",
            q1,
            b"history",
            pika.BasicProperties(
                headers={
                    "zzz": 7, "aaa": "text", "CC": ["cc-key"],
                    "x-foo": decimal.Decimal("1.5"), "flag": True, "t": {"n": 2**40},
                },
                expiration="60000",
                priority=3,
                message_id="mid",
            ),
        )
        _reject(ch, q1)
        _reject(ch, q3)
        _reject(ch, q1)
        with RawGet(handle) as raw:
            method, raw_props, body = raw.get_wait(q3)
        assert body == b"history"
        labels = {q1: "Q1", q2: "Q2", q3: "Q3"}
        shape = death_shape(typed_headers(raw_props), labels)
        shape["routing_key"] = labels.get(method.routing_key, method.routing_key)
        shape["exchange"] = method.exchange
        shape["redelivered"] = method.redelivered
        return shape
    finally:
        conn.close()
        cleanup.run()


# What RabbitMQ 3.10.8 wrote (recorded with run_history_scenario).
RABBITMQ_SHAPE: dict[str, Any] = {
    "exchange": "",
    "headers": [
        ("aaa", "S", "text"),
        ("flag", "t", 1),
        ("t", "F", [("n", "l", 1099511627776)]),
        ("x-first-death-exchange", "S", ""),
        ("x-first-death-queue", "S", "Q1"),
        ("x-first-death-reason", "S", "rejected"),
        ("x-foo", "D", (1, 15)),
        ("zzz", "I", 7),
    ],
    "order": [
        "aaa",
        "flag",
        "t",
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-foo",
        "zzz",
    ],
    "redelivered": False,
    "routing_key": "Q3",
    "x-death": [
        (
            "F",
            [
                ("count", "l", 2),
                ("exchange", "S", ""),
                ("queue", "S", "Q2"),
                ("reason", "S", "expired"),
                ("routing-keys", "A", [("S", "Q2")]),
                ("time", "T", None),
            ],
        ),
        (
            "F",
            [
                ("count", "l", 1),
                ("exchange", "S", ""),
                ("queue", "S", "Q3"),
                ("reason", "S", "rejected"),
                ("routing-keys", "A", [("S", "Q3")]),
                ("time", "T", None),
            ],
        ),
        (
            "F",
            [
                ("count", "l", 2),
                ("exchange", "S", ""),
                ("original-expiration", "S", "60000"),
                ("queue", "S", "Q1"),
                ("reason", "S", "rejected"),
                ("routing-keys", "A", [("S", "Q1"), ("S", "cc-key")]),
                ("time", "T", None),
            ],
        ),
    ],
}


def comparable(shape: dict[str, Any]) -> dict[str, Any]:
    """RabbitMQ 3.10 regroups the older x-death entries through an Erlang
    ``dict`` (``group_by_queue_and_reason``), so once a message has three
    or more entries their order after the newest one follows a hash of the
    queue names; RabbitMQ 3.13+ and mqbroker keep them newest first, as
    documented. The newest entry is compared in place, the rest as a set."""
    out = dict(shape)
    first, *rest = shape["x-death"]
    out["x-death"] = [first, sorted(rest, key=repr)]
    return out


def test_x_death_history_matches_rabbitmq(broker):
    shape = run_history_scenario(broker)
    assert comparable(shape) == comparable(RABBITMQ_SHAPE)


def _diff_handle() -> PolicyBroker | None:
    url = os.environ.get("MQBROKER_DIFF_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
    parts = urllib.parse.urlparse(url)
    handle = PolicyBroker(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5672,
        vhost=urllib.parse.unquote(parts.path[1:]) if len(parts.path) > 1 else "/",
        user=parts.username or "guest",
        password=parts.password or "guest",
    )
    try:
        conn = pika.BlockingConnection(pika_params(handle, socket_timeout=2))
    except Exception:
        return None
    product = conn._impl.server_properties.get("product", b"")
    platform = conn._impl.server_properties.get("platform", b"")
    conn.close()
    if b"mqbroker" in (platform if isinstance(platform, bytes) else platform.encode()):
        return None
    return handle if product in (b"RabbitMQ", "RabbitMQ") else None


def test_x_death_history_live_differential(broker):
    """Same scenario, same shape, on a live RabbitMQ when one is there."""
    other = _diff_handle()
    if other is None or broker.external:
        pytest.skip("no RabbitMQ to compare with (set MQBROKER_DIFF_URL)")
    assert comparable(run_history_scenario(broker)) == comparable(
        run_history_scenario(other)
    )


def test_x_last_death_headers(ch, uniq):
    """x-last-death-* (RabbitMQ 3.13+): the most recent death."""
    q1, q2, q3 = uniq("last1"), uniq("last2"), uniq("last3")
    ch.queue_declare(q3, exclusive=True)
    ch.queue_declare(q2, exclusive=True, arguments=_dl(q3, **{"x-message-ttl": 50}))
    ch.queue_declare(q1, exclusive=True, arguments=_dl(q2))
    ch.basic_publish("", q1, b"x")
    _reject(ch, q1)
    _, props, _ = get_message(ch, q3, auto_ack=True)
    h = props.headers
    assert text(h["x-first-death-queue"]) == q1
    assert text(h["x-first-death-reason"]) == "rejected"
    if "x-last-death-queue" not in h:
        pytest.skip("this broker predates x-last-death-* (RabbitMQ < 3.13)")
    assert text(h["x-last-death-queue"]) == q2
    assert text(h["x-last-death-reason"]) == "expired"
    assert text(h["x-last-death-exchange"]) == ""


def test_dead_lettered_copy_keeps_properties(ch, uniq):
    q, dlq = uniq("props"), uniq("props-dlq")
    ch.queue_declare(dlq, exclusive=True)
    ch.queue_declare(q, exclusive=True, arguments=_dl(dlq))
    sent = pika.BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        delivery_mode=2,
        priority=4,
        correlation_id="corr",
        reply_to="rt",
        message_id="mid",
        timestamp=1_700_000_000,
        type="kind",
        app_id="app",
    )
    ch.basic_publish("", q, b"{}", sent)
    _reject(ch, q)
    _, props, body = get_message(ch, dlq, auto_ack=True)
    assert body == b"{}"
    for name in (
        "content_type", "content_encoding", "delivery_mode", "priority",
        "correlation_id", "reply_to", "message_id", "timestamp", "type", "app_id",
    ):
        assert getattr(props, name) == getattr(sent, name), name
