"""Plain helpers (no fixtures) for the integration suite; see conftest.py."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions
from pamqp import body as pbody
from pamqp import header as pheader
from pamqp import heartbeat as pheartbeat

from amqp_support import Cleanup, pika_params
from support.frames import (
    PROTOCOL_HEADER,
    method_payload,
    raw_frame,
    raw_method_frame,
)
from support.raw import Closed, RawClient
from support.waits import WAIT

# ---------------------------------------------------------------- names


def unique_name(prefix: str = "t") -> str:
    return f"itest.{prefix}.{uuid.uuid4().hex[:12]}"


# ---------------------------------------------------------------- pika


def wait_until(
    conn: pika.BlockingConnection,
    predicate: Callable[[], bool],
    timeout: float = WAIT,
    what: str = "condition",
) -> None:
    """Pump pika's I/O until ``predicate()`` holds, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what}"
            )
        conn.process_data_events(time_limit=0.05)


def get_message(
    chan: Any, queue: str, timeout: float = WAIT, auto_ack: bool = False
) -> tuple[Any, Any, bytes]:
    """basic.get until a message arrives (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        method, props, body = chan.basic_get(queue, auto_ack=auto_ack)
        if method is not None:
            return method, props, body
        if time.monotonic() > deadline:
            raise AssertionError(f"no message on {queue!r} within {timeout}s")
        chan.connection.process_data_events(time_limit=0.02)


def drain(chan: Any, queue: str, limit: int = 10_000) -> list[bytes]:
    """basic.get (auto-ack) until get-empty; return the bodies in order.

    Only meaningful once the publishes are known to be enqueued (publisher
    confirms, or a count observed with ``wait_message_count``)."""
    bodies: list[bytes] = []
    for _ in range(limit):
        method, _props, body = chan.basic_get(queue, auto_ack=True)
        if method is None:
            return bodies
        bodies.append(body)
    raise AssertionError(f"{queue!r} did not run dry after {limit} messages")


def wait_message_count(
    chan: Any, queue: str, expected: int, timeout: float = WAIT
) -> int:
    """Passive-declare until the ready count equals ``expected`` (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        count = chan.queue_declare(queue, passive=True).method.message_count
        if count == expected or time.monotonic() > deadline:
            return count
        chan.connection.process_data_events(time_limit=0.02)


def consume_n(
    chan: Any,
    queue: str,
    n: int,
    timeout: float = WAIT,
    auto_ack: bool = True,
) -> list[tuple[Any, Any, bytes]]:
    """Collect ``n`` deliveries from ``queue`` with a bounded consume loop."""
    got: list[tuple[Any, Any, bytes]] = []
    deadline = time.monotonic() + timeout
    for method, props, body in chan.consume(
        queue, auto_ack=auto_ack, inactivity_timeout=0.1
    ):
        if method is not None:
            got.append((method, props, body))
            if len(got) == n:
                break
        if time.monotonic() > deadline:
            break
    chan.cancel()
    return got


def amqp_connect(broker: Any, **kwargs: Any) -> Any:
    """A connected py-amqp Connection with socket timeouts."""
    import amqp

    conn = amqp.Connection(
        host=f"{broker.host}:{broker.port}",
        userid=broker.user,
        password=broker.password,
        virtual_host=kwargs.pop("virtual_host", broker.vhost),
        connect_timeout=5,
        read_timeout=5,
        write_timeout=5,
        **kwargs,
    )
    conn.connect()
    return conn


def assert_broker_healthy(broker: Any) -> None:
    """A fresh connection can declare, publish and get."""
    conn = pika.BlockingConnection(pika_params(broker))
    try:
        chan = conn.channel()
        q = chan.queue_declare("", exclusive=True).method.queue
        chan.basic_publish("", q, b"still alive")
        _, _, body = get_message(chan, q, auto_ack=True)
        assert body == b"still alive"
    finally:
        conn.close()


# ---------------------------------------------------------------- raw AMQP

# The suites share one raw client (tests/support/raw.py).
RawAMQP = RawClient
RawClosed = Closed


__all__ = [
    "PROTOCOL_HEADER",
    "WAIT",
    "Cleanup",
    "RawAMQP",
    "RawClosed",
    "assert_broker_healthy",
    "consume_n",
    "get_message",
    "method_payload",
    "pbody",
    "pheader",
    "pheartbeat",
    "pika_params",
    "raw_frame",
    "raw_method_frame",
    "unique_name",
    "wait_message_count",
    "wait_until",
]
