"""docs/recipes.md, executed: every ``<!-- recipe: NAME -->`` Python block
is run exactly as written (``exec``), then its functions are driven against
the broker with short delays."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from policy_support import text

from support.blocking import get_message, message_count
from support.waits import wait_for

pytestmark = pytest.mark.timeout(90)

RECIPES = Path(__file__).resolve().parents[2] / "docs" / "recipes.md"
_BLOCK = re.compile(r"<!-- recipe: ([\w-]+) -->\s*```python\n(.*?)```", re.DOTALL)


def recipe(name: str) -> dict[str, Any]:
    blocks = dict(_BLOCK.findall(RECIPES.read_text()))
    assert name in blocks, f"no recipe {name!r} in {RECIPES}"
    namespace: dict[str, Any] = {"__name__": f"recipe_{name.replace('-', '_')}"}
    exec(compile(blocks[name], f"{RECIPES}:{name}", "exec"), namespace)
    return namespace


def test_every_recipe_has_a_test() -> None:
    names = {name for name, _ in _BLOCK.findall(RECIPES.read_text())}
    assert names == {"retry-ttl", "retry-delayed", "poison"}


def test_retry_with_ttl_delay_queues(connect, uniq, cleanup):
    r = recipe("retry-ttl")
    conn = connect()
    ch = conn.channel()
    q = uniq("tasks")
    for name in (q, q + ".parked", *(f"{q}.delay.{n}" for n in (1, 2, 3))):
        cleanup.queue(name)
    delays = (100, 200, 300)
    r["declare_retry_topology"](ch, q, delays_ms=delays)

    tries: dict[bytes, list[float]] = {}
    done: list[bytes] = []

    def handle(body: bytes) -> None:
        tries.setdefault(body, []).append(time.monotonic())
        if body == b"bad" or (body == b"flaky" and len(tries[body]) < 3):
            raise RuntimeError("not now")
        done.append(body)

    worker = conn.channel()
    r["run_worker"](worker, q, handle, delays_ms=delays)
    ch.confirm_delivery()
    for body in (b"bad", b"flaky", b"good"):
        ch.basic_publish("", q, body)
    wait_for(lambda: message_count(ch, q + ".parked") == 1, conn=conn, timeout=20)
    assert sorted(done) == [b"flaky", b"good"]
    assert len(tries[b"bad"]) == 4  # the first try and three retries
    gaps = [b - a for a, b in zip(tries[b"bad"], tries[b"bad"][1:])]
    for gap, delay in zip(gaps, delays):
        assert gap >= delay / 1000 - 0.02, (gaps, delays)
    _, props, body = get_message(ch, q + ".parked", auto_ack=True)
    assert body == b"bad"
    assert props.headers["x-retry-attempt"] == 4
    waited = {text(d["queue"]): (text(d["reason"]), d["count"]) for d in props.headers["x-death"]}
    assert waited == {f"{q}.delay.{n}": ("expired", 1) for n in (1, 2, 3)}


def test_retry_with_the_delayed_exchange(inproc, connect, uniq, cleanup):
    r = recipe("retry-delayed")
    conn = connect()
    ch = conn.channel()
    q = cleanup.queue(uniq("dtasks"))
    cleanup.queue(q + ".parked")
    cleanup.exchange(q + ".retry")
    r["declare_delayed_retry"](ch, q)
    arrivals: list[tuple[float, Any]] = []

    def on_message(c: Any, method: Any, props: Any, body: bytes) -> None:
        arrivals.append((time.monotonic(), (props.headers or {}).get("x-delay")))
        r["retry_with_backoff"](c, q, method, props, body, base_delay_ms=100, max_attempts=3)

    worker = conn.channel()
    worker.basic_consume(q, on_message)
    ch.basic_publish("", q, b"always-fails")
    wait_for(lambda: message_count(ch, q + ".parked") == 1, conn=conn, timeout=20)
    assert [d for _, d in arrivals] == [None, -100, -200, -400]
    gaps = [b[0] - a[0] for a, b in zip(arrivals, arrivals[1:])]
    for gap, expected in zip(gaps, (0.1, 0.2, 0.4)):
        assert gap >= expected - 0.02, gaps
    _, props, _ = get_message(ch, q + ".parked", auto_ack=True)
    assert props.headers["x-retry-attempt"] == 4


def test_poison_messages_with_a_delivery_limit(connect, uniq, cleanup, capsys):
    r = recipe("poison")
    conn = connect()
    ch = conn.channel()
    q = cleanup.queue(uniq("ptasks"))
    cleanup.queue(q + ".dlq")
    r["declare_poison_safe_queue"](ch, q, delivery_limit=2)
    fixed = {"yes": False}
    done: list[bytes] = []

    def handle(body: bytes) -> None:
        if body == b"poison" and not fixed["yes"]:
            raise ValueError("cannot parse")
        done.append(body)

    worker = conn.channel()
    r["run_poison_tolerant_worker"](worker, q, handle)
    ch.confirm_delivery()
    for body in (b"poison", b"ok1", b"ok2"):
        ch.basic_publish("", q, body)
    wait_for(
        lambda: message_count(ch, q + ".dlq") == 1 and len(done) == 2,
        conn=conn, timeout=20,
    )
    assert done == [b"ok1", b"ok2"]
    printed = capsys.readouterr().out
    assert "failed (0 earlier failures)" in printed
    assert "failed (2 earlier failures)" in printed

    # inspect without consuming: get, read, requeue
    method, props, body = get_message(ch, q + ".dlq", auto_ack=False)
    assert body == b"poison"
    why = r["why_dead"](props)
    assert {k: text(v) for k, v in why.items()} == {
        "reason": "delivery_limit", "queue": q, "times": 1, "first_reason": "delivery_limit",
    }
    ch.basic_nack(method.delivery_tag, requeue=True)

    fixed["yes"] = True
    assert r["replay_dead_letters"](ch, q + ".dlq") == 1
    wait_for(lambda: len(done) == 3, conn=conn, timeout=10)
    assert done[-1] == b"poison"
    assert message_count(ch, q + ".dlq") == 0
