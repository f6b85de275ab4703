"""Streams across restarts and kill -9: what was confirmed is there, in
order, at the same offsets; nothing torn is ever delivered."""

from __future__ import annotations

import threading
import time
from typing import Any

import pika
import pytest

STREAM = {"x-queue-type": "stream"}


def _read_all(url: str, name: str, expect: int, timeout: float = 20.0) -> list[tuple[int, bytes]]:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=500)
    got: list[tuple[int, bytes]] = []

    def on(c: Any, m: Any, p: Any, b: bytes) -> None:
        got.append((p.headers["x-stream-offset"], b))
        c.basic_ack(m.delivery_tag)

    ch.basic_consume(name, on, arguments={"x-stream-offset": "first"})
    deadline = time.monotonic() + timeout
    while len(got) < expect and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.1)
    conn.process_data_events(time_limit=0.3)
    conn.close()
    return got


def test_stream_survives_a_clean_restart(mqbroker_process: Any) -> None:
    broker = mqbroker_process(reuse_port=True)
    conn = pika.BlockingConnection(pika.URLParameters(broker.url))
    ch = conn.channel()
    ch.queue_declare("events", durable=True, arguments={**STREAM, "x-stream-max-segment-size-bytes": 20_000})
    ch.confirm_delivery()
    for i in range(2000):
        ch.basic_publish("", "events", b"e%05d" % i)
    conn.close()
    broker.restart()
    got = _read_all(broker.url, "events", 2000)
    assert [o for o, _ in got] == list(range(2000))
    assert [b for _, b in got] == [b"e%05d" % i for i in range(2000)]


@pytest.mark.parametrize("kill_after", [0.3, 0.8])
def test_kill9_loses_no_confirmed_stream_entry(mqbroker_process: Any, kill_after: float) -> None:
    broker = mqbroker_process(reuse_port=True)
    conn = pika.BlockingConnection(pika.URLParameters(broker.url))
    conn.channel().queue_declare(
        "log", durable=True, arguments={**STREAM, "x-stream-max-segment-size-bytes": 50_000}
    )
    conn.close()
    confirmed: list[bytes] = []
    stop = threading.Event()

    def publisher() -> None:
        try:
            c = pika.BlockingConnection(pika.URLParameters(broker.url))
            ch = c.channel()
            ch.confirm_delivery()
            i = 0
            while not stop.is_set():
                body = b"p%07d" % i
                ch.basic_publish("", "log", body)  # returns once confirmed
                confirmed.append(body)
                i += 1
        except Exception:  # the broker was killed under us
            return

    thread = threading.Thread(target=publisher)
    thread.start()
    time.sleep(kill_after)
    broker.kill()
    stop.set()
    thread.join(10)
    assert confirmed, "nothing was confirmed before the kill"
    broker.restart()
    got = _read_all(broker.url, "log", len(confirmed))
    offsets = [o for o, _ in got]
    assert offsets == list(range(len(got)))  # contiguous, no torn entry
    bodies = [b for _, b in got]
    assert bodies[: len(confirmed)] == confirmed  # every confirmed one, in order
    assert all(b.startswith(b"p") and len(b) == 8 for b in bodies)
