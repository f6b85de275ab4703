"""Integration-only helpers (no fixtures): a py-amqp connection and the
health check the conftest runs after every test. Everything generic (the
raw client, frames, waits, pika loops) lives in tests/support."""

from __future__ import annotations

from typing import Any

import pika

from support.blocking import get_message, pika_params


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
