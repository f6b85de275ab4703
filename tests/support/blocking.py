"""What the suites that drive a broker with pika's BlockingConnection
share (integration, policies, the root conftest): connection parameters,
teardown of the names a test created, and bounded basic.get / queue-depth
loops. The suites also run against an external broker (RabbitMQ,
``MQBROKER_EXTERNAL_URL``), which every test shares, hence the cleanup;
every loop is bounded so a broker that stops answering fails a test
instead of hanging it."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import pika

from support.waits import WAIT


def pika_params(broker: Any, **overrides: Any) -> pika.ConnectionParameters:
    """Parameters for ``broker`` (anything with host, port, vhost, user,
    password); every wait is bounded."""
    kwargs: dict[str, Any] = dict(
        host=broker.host,
        port=broker.port,
        virtual_host=broker.vhost,
        credentials=pika.PlainCredentials(broker.user, broker.password),
        connection_attempts=1,
        socket_timeout=5,
        stack_timeout=10,
        blocked_connection_timeout=10,
        heartbeat=30,
    )
    kwargs.update(overrides)
    return pika.ConnectionParameters(**kwargs)


class Cleanup:
    """Durable or shared names to delete at teardown."""

    def __init__(self, broker: Any) -> None:
        self.broker = broker
        self.queues: list[str] = []
        self.exchanges: list[str] = []

    def queue(self, name: str) -> str:
        self.queues.append(name)
        return name

    def exchange(self, name: str) -> str:
        self.exchanges.append(name)
        return name

    def run(self) -> None:
        if not (self.queues or self.exchanges):
            return
        try:
            conn = pika.BlockingConnection(pika_params(self.broker))
        except Exception:
            return
        try:
            for name in self.queues:
                with contextlib.suppress(Exception):
                    ch = conn.channel()
                    ch.queue_delete(name)
                    ch.close()
            for name in self.exchanges:
                with contextlib.suppress(Exception):
                    ch = conn.channel()
                    ch.exchange_delete(name)
                    ch.close()
        finally:
            with contextlib.suppress(Exception):
                conn.close()


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


def message_count(chan: Any, queue: str) -> int:
    """The ready count, by passive declare."""
    count: int = chan.queue_declare(queue, passive=True).method.message_count
    return count


def wait_message_count(
    chan: Any, queue: str, expected: int, timeout: float = WAIT
) -> int:
    """Passive-declare until the ready count equals ``expected`` (bounded);
    the last count seen."""
    deadline = time.monotonic() + timeout
    while True:
        count = message_count(chan, queue)
        if count == expected or time.monotonic() > deadline:
            return count
        chan.connection.process_data_events(time_limit=0.02)


def wait_count(
    chan: Any, queue: str, expected: int, timeout: float = WAIT
) -> None:
    """``wait_message_count`` that fails the test on a wrong count."""
    count = wait_message_count(chan, queue, expected, timeout)
    if count != expected:
        raise AssertionError(
            f"queue {queue}: {count} messages, expected {expected}"
        )


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
