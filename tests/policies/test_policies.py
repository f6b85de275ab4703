"""Named policies: pattern, apply-to, priority, definition; applied to new
and existing queues and exchanges; arguments win (numeric limits: the
lower wins); stored durably.

The ``policy`` fixture sets policies through ``broker.policies`` on
mqbroker and through ``rabbitmqctl`` on RabbitMQ, so these tests run on
both (MQBROKER_EXTERNAL_URL).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest
from policy_support import start_embedded, text

from mqbroker.broker.policies import PolicyError
from support.blocking import (
    drain,
    get_message,
    message_count,
    pika_params,
    wait_count,
)
from support.waits import wait_for

pytestmark = pytest.mark.timeout(90)


def _fill(ch: Any, q: str, n: int) -> None:
    for i in range(n):
        ch.basic_publish("", q, b"m%d" % i)


def _settle_count(ch: Any, q: str, n: int, expected: int, timeout: float = 10) -> None:
    """Publish n, check the count; retried while a policy propagates."""

    def check() -> bool:
        ch.queue_purge(q)
        _fill(ch, q, n)
        time.sleep(0.05)
        return message_count(ch, q) == expected

    wait_for(check, timeout=timeout, interval=0.1)


def test_policy_applies_to_existing_and_new_queues(ch, uniq, policy):
    prefix = uniq("pol")
    old = prefix + ".old"
    ch.queue_declare(old, exclusive=True)
    policy.set(prefix, "^" + prefix.replace(".", r"\.") + r"\.", {"max-length": 2},
               apply_to="queues")
    ch.confirm_delivery()
    _settle_count(ch, old, 5, 2)
    new = prefix + ".new"
    ch.queue_declare(new, exclusive=True)
    _fill(ch, new, 5)
    assert drain(ch, new) == [b"m3", b"m4"]
    other = uniq("other")  # does not match the pattern
    ch.queue_declare(other, exclusive=True)
    _fill(ch, other, 5)
    assert message_count(ch, other) == 5


def test_clearing_a_policy_reverts(ch, uniq, policy):
    q = uniq("revert")
    ch.queue_declare(q, exclusive=True)
    ch.confirm_delivery()
    name = uniq("p")
    policy.set(name, "^" + q + "$", {"max-length": 1}, apply_to="queues")
    _settle_count(ch, q, 3, 1)
    policy.clear(name)
    _settle_count(ch, q, 3, 3)


def test_policy_message_ttl_and_dead_letter_exchange(ch, uniq, policy):
    q, dlq = uniq("pttl"), uniq("pttl-dlq")
    ch.queue_declare(dlq, exclusive=True)
    ch.queue_declare(q, exclusive=True)
    policy.set(
        uniq("p"), "^" + q + "$",
        {"message-ttl": 100, "dead-letter-exchange": "", "dead-letter-routing-key": dlq},
        apply_to="queues",
    )

    def dead_lettered() -> bool:
        ch.basic_publish("", q, b"x")
        time.sleep(0.3)
        return message_count(ch, dlq) > 0

    wait_for(dead_lettered, timeout=10, interval=0.1)
    _, props, _ = get_message(ch, dlq, auto_ack=True)
    assert text(props.headers["x-death"][0]["reason"]) == "expired"


def test_arguments_win_over_policy(ch, uniq, policy):
    q, arg_dlq, pol_dlq = uniq("argwin"), uniq("arg-dlq"), uniq("pol-dlq")
    ch.queue_declare(arg_dlq, exclusive=True)
    ch.queue_declare(pol_dlq, exclusive=True)
    ch.queue_declare(
        q,
        exclusive=True,
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": arg_dlq},
    )
    policy.set(
        uniq("p"), "^" + q + "$",
        {"dead-letter-exchange": "", "dead-letter-routing-key": pol_dlq, "max-length": 1},
        apply_to="queues",
    )
    ch.confirm_delivery()
    # wait for the policy (max-length 1 shows it is in force)
    _settle_count(ch, q, 1, 1)
    ch.queue_purge(q)
    ch.basic_publish("", q, b"x")
    method, _, _ = get_message(ch, q, auto_ack=False)
    ch.basic_nack(method.delivery_tag, requeue=False)
    wait_count(ch, arg_dlq, 1)
    assert message_count(ch, pol_dlq) == 0


@pytest.mark.parametrize(("arg", "pol", "effective"), [(5, 3, 3), (1, 3, 1)])
def test_numeric_limits_lower_wins(ch, uniq, policy, arg, pol, effective):
    q = uniq("min")
    ch.queue_declare(q, exclusive=True, arguments={"x-max-length": arg})
    policy.set(uniq("p"), "^" + q + "$", {"max-length": pol}, apply_to="queues")
    ch.confirm_delivery()
    _settle_count(ch, q, 8, effective)


def test_highest_priority_wins(ch, uniq, policy):
    q = uniq("prio")
    ch.queue_declare(q, exclusive=True)
    pattern = "^" + q + "$"
    policy.set(uniq("p-low"), pattern, {"max-length": 1}, priority=1, apply_to="queues")
    policy.set(uniq("p-high"), pattern, {"max-length": 3}, priority=5, apply_to="queues")
    policy.set(uniq("p-mid"), pattern, {"max-length": 2}, priority=2, apply_to="queues")
    ch.confirm_delivery()
    _settle_count(ch, q, 6, 3)


def test_equal_priority_the_lowest_name_wins(inproc, ch, uniq, policy):
    """With equal priorities RabbitMQ applies whichever matching policy
    comes first in its (hash-ordered) table, so the choice is unspecified
    there; mqbroker makes it deterministic: the lowest name wins, whichever
    was set first."""
    q = uniq("tie")
    ch.queue_declare(q, exclusive=True)
    pattern = "^" + q + "$"
    base = uniq("tie")
    policy.set(base + "-zz", pattern, {"max-length": 2}, apply_to="queues")
    policy.set(base + "-aa", pattern, {"max-length": 3}, apply_to="queues")
    ch.confirm_delivery()
    _settle_count(ch, q, 6, 3)


def test_apply_to_exchanges_leaves_queues_alone(ch, uniq, policy):
    prefix = uniq("ex-only")
    q = prefix + ".q"
    ch.queue_declare(q, exclusive=True)
    policy.set(uniq("p"), "^" + prefix, {"max-length": 1}, apply_to="exchanges")
    ch.confirm_delivery()
    time.sleep(0.3)
    _fill(ch, q, 3)
    assert message_count(ch, q) == 3


def test_alternate_exchange_by_policy(ch, uniq, policy, cleanup):
    ex = cleanup.exchange(uniq("ae-src"))
    ch.exchange_declare(ex, "direct")
    catch = uniq("ae-catch")
    ch.queue_declare(catch, exclusive=True)
    ch.queue_bind(catch, "amq.fanout")
    policy.set(uniq("p"), "^" + ex + "$", {"alternate-exchange": "amq.fanout"},
               apply_to="exchanges")
    ch.confirm_delivery()

    def caught() -> bool:
        ch.basic_publish(ex, "nowhere", b"x")
        return message_count(ch, catch) > 0

    wait_for(caught, timeout=10, interval=0.1)
    # an alternate-exchange argument wins over the policy
    ex2 = cleanup.exchange(uniq("ae-src2"))
    ch.exchange_declare(ex2, "direct", arguments={"alternate-exchange": "amq.topic"})
    catch2 = uniq("ae-catch2")
    ch.queue_declare(catch2, exclusive=True)
    ch.queue_bind(catch2, "amq.topic", routing_key="#")
    policy.set(uniq("p2"), "^" + ex2 + "$", {"alternate-exchange": "amq.fanout"},
               apply_to="exchanges")
    time.sleep(0.5)
    ch.queue_purge(catch)
    ch.basic_publish(ex2, "nowhere", b"y")
    wait_count(ch, catch2, 1)
    assert message_count(ch, catch) == 0


def test_delivery_limit_by_policy(ch, uniq, policy, cleanup):
    q, dlq = cleanup.queue(uniq("qq-pol")), uniq("qq-pol-dlq")
    ch.queue_declare(dlq, exclusive=True)
    ch.queue_declare(q, durable=True, arguments={"x-queue-type": "quorum"})
    policy.set(
        uniq("p"), "^" + q + "$",
        {"delivery-limit": 1, "dead-letter-exchange": "", "dead-letter-routing-key": dlq},
        apply_to="queues",
    )
    time.sleep(1.0)  # RabbitMQ applies policies to quorum queues lazily
    ch.confirm_delivery()
    ch.basic_publish("", q, b"x")
    for _ in range(2):
        method, _, _ = get_message(ch, q, auto_ack=False)
        ch.basic_nack(method.delivery_tag, requeue=True)
    wait_count(ch, dlq, 1)
    _, props, _ = get_message(ch, dlq, auto_ack=True)
    assert text(props.headers["x-death"][0]["reason"]) == "delivery_limit"


# ------------------------------------------------------- the API itself


def test_api_records_and_validation(inproc):
    policies = inproc.core.policies
    record = inproc.call(
        policies.set_policy, "/", "api-ttl", r"^api\.", {"message-ttl": 1000},
        priority=3, apply_to="queues",
    )
    assert record == {
        "vhost": "/",
        "name": "api-ttl",
        "pattern": r"^api\.",
        "apply-to": "queues",
        "priority": 3,
        "definition": {"message-ttl": 1000},
    }
    assert inproc.call(policies.get_policy, "/", "api-ttl") == record
    assert inproc.call(policies.list_policies) == [record]
    assert inproc.call(policies.effective, "/", "queue", "api.x") == record
    assert inproc.call(policies.effective, "/", "queue", "other") is None
    assert inproc.call(policies.effective, "/", "exchange", "api.x") is None
    for bad in (
        dict(pattern="(", definition={"message-ttl": 1}),
        dict(pattern=".*", definition={}),
        dict(pattern=".*", definition={"message-ttl": -1}),
        dict(pattern=".*", definition={"expires": 0}),
        dict(pattern=".*", definition={"overflow": "nope"}),
        dict(pattern=".*", definition={"no-such-key": 1}),
        dict(pattern=".*", definition={"max-length": 1}, apply_to="everything"),
        dict(pattern=".*", definition={"max-length": 1}, priority="high"),
    ):
        with pytest.raises(PolicyError):
            inproc.call(
                policies.set_policy, "/", "bad", bad["pattern"], bad["definition"],
                priority=bad.get("priority", 0), apply_to=bad.get("apply_to", "all"),
            )
    with pytest.raises(KeyError):
        inproc.call(policies.set_policy, "no-vhost", "p", ".*", {"max-length": 1})
    assert inproc.call(policies.clear_policy, "/", "api-ttl") is True
    assert inproc.call(policies.clear_policy, "/", "api-ttl") is False
    assert inproc.call(policies.list_policies) == []


def test_apply_to_queue_types(inproc, ch, uniq, cleanup):
    policies = inproc.core.policies
    prefix = uniq("qt")
    classic, quorum = prefix + ".classic", cleanup.queue(prefix + ".quorum")
    ch.queue_declare(classic, exclusive=True)
    ch.queue_declare(quorum, durable=True, arguments={"x-queue-type": "quorum"})
    inproc.call(policies.set_policy, "/", "qq-only", "^" + prefix, {"max-length": 1},
                apply_to="quorum_queues")
    ch.confirm_delivery()
    _fill(ch, classic, 3)
    _fill(ch, quorum, 3)
    assert message_count(ch, classic) == 3
    assert message_count(ch, quorum) == 1
    # a quorum queue declared later picks it up too
    later = cleanup.queue(prefix + ".later")
    ch.queue_declare(later, durable=True, arguments={"x-queue-type": "quorum"})
    _fill(ch, later, 3)
    assert message_count(ch, later) == 1
    inproc.call(policies.clear_policy, "/", "qq-only")


def test_policies_survive_a_restart(scratch_dir: Path):
    data = scratch_dir / "data"
    first = start_embedded(data)
    try:
        first.call(
            first.core.policies.set_policy, "/", "durable-len", r"^dur\.",
            {"max-length": 2}, apply_to="queues",
        )
        conn = pika.BlockingConnection(pika_params(first))
        ch = conn.channel()
        ch.queue_declare("dur.q", durable=True)
        conn.close()
    finally:
        first.embedded.stop()
    second = start_embedded(data)
    try:
        assert second.call(second.core.policies.get_policy, "/", "durable-len") is not None
        conn = pika.BlockingConnection(pika_params(second))
        ch = conn.channel()
        ch.confirm_delivery()
        _fill(ch, "dur.q", 5)  # the recovered queue has its policy
        assert message_count(ch, "dur.q") == 2
        ch.queue_declare("dur.new", durable=True)  # so does a new one
        _fill(ch, "dur.new", 5)
        assert drain(ch, "dur.new") == [b"m3", b"m4"]
        second.call(second.core.policies.clear_policy, "/", "durable-len")
        conn.close()
    finally:
        second.embedded.stop()
    third = start_embedded(data)
    try:
        assert third.call(third.core.policies.list_policies) == []
    finally:
        third.embedded.stop()


def test_policy_lowering_a_limit_trims_existing_messages(inproc, ch, uniq):
    q = uniq("trim")
    ch.queue_declare(q, exclusive=True)
    ch.confirm_delivery()
    _fill(ch, q, 5)
    inproc.call(inproc.core.policies.set_policy, "/", "trim", "^" + q + "$",
                {"max-length": 2}, apply_to="queues")
    assert drain(ch, q) == [b"m3", b"m4"]
    inproc.call(inproc.core.policies.clear_policy, "/", "trim")


def test_policy_expires_deletes_an_existing_queue(inproc, ch, uniq):
    q = uniq("pexp")
    ch.queue_declare(q)
    inproc.call(inproc.core.policies.set_policy, "/", "exp", "^" + q + "$",
                {"expires": 200}, apply_to="queues")
    time.sleep(0.6)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.queue_declare(q, passive=True)
    assert info.value.reply_code == 404
    inproc.call(inproc.core.policies.clear_policy, "/", "exp")
