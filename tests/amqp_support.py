"""Helpers shared by the suites that drive a broker with pika
(integration, policies): connection parameters and teardown of the names a
test created. Both suites also run against an external broker (RabbitMQ,
``MQBROKER_EXTERNAL_URL``), which every test shares, hence the cleanup."""

from __future__ import annotations

import contextlib
from typing import Any

import pika


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
