"""Bad peers cannot kill the broker or make it leak sessions or tasks.

Each test drives a real in-process broker over loopback sockets with raw
bytes, then checks that the broker still serves a well-behaved pika client
and that every per-connection task and session is gone.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
import trio
from pamqp import commands

from mqbroker.config import Config
from mqbroker.server.embedded import EmbeddedBroker
from support.frames import PROTOCOL_HEADER, method_frame
from support.raw import RawClient

pytestmark = pytest.mark.timeout(60)


def _count_tasks() -> int:
    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(
            walk(child)
            for nursery in task.child_nurseries
            for child in nursery.child_tasks
        )

    return walk(trio.lowlevel.current_root_task())


class Running:
    def __init__(self, embedded: EmbeddedBroker) -> None:
        self.embedded = embedded
        self.port = embedded.port

    def call(self, fn):  # type: ignore[no-untyped-def]
        return trio.from_thread.run_sync(fn, trio_token=self.embedded._token)

    def tasks(self) -> int:
        return int(self.call(_count_tasks))

    def sessions(self) -> int:
        broker = self.embedded.info.broker  # type: ignore[union-attr]
        return int(self.call(lambda: len(broker.sessions)))

    def wait_idle(self, baseline: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.tasks() <= baseline and self.sessions() == 0:
                return
            time.sleep(0.05)
        raise AssertionError(
            f"tasks={self.tasks()} (baseline {baseline}), "
            f"sessions={self.sessions()}"
        )

    def assert_serves(self) -> None:
        conn = pika.BlockingConnection(
            pika.ConnectionParameters("127.0.0.1", self.port)
        )
        try:
            ch = conn.channel()
            q = ch.queue_declare("", exclusive=True).method.queue
            ch.basic_publish("", q, b"ping")
            method, _, body = ch.basic_get(q, auto_ack=True)
            assert body == b"ping"
        finally:
            conn.close()


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    config = Config(
        host="127.0.0.1",
        port=0,
        data_dir=tmp_path / "data",
        heartbeat_s=1,
        handshake_timeout_s=1.0,
    )
    with EmbeddedBroker(config) as embedded:
        yield Running(embedded)


def _connect(port: int) -> RawClient:
    return RawClient("127.0.0.1", port, timeout=5)


def _handshake(client: RawClient, heartbeat: int = 0) -> None:
    client.handshake(heartbeat=heartbeat, channel_max=10, frame_max=131072)


def test_garbage_gets_protocol_header_and_close(running: Running) -> None:
    baseline = running.tasks()
    client = _connect(running.port)
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert client.read_until_eof(5) == PROTOCOL_HEADER
    client.close()
    running.wait_idle(baseline)
    running.assert_serves()


def test_disconnect_mid_frame_releases_everything(running: Running) -> None:
    baseline = running.tasks()
    for _ in range(20):
        client = _connect(running.port)
        _handshake(client)
        frame = method_frame(1, commands.Channel.Open())
        client.send(frame[: len(frame) // 2])
        client.close()
    running.wait_idle(baseline)
    running.assert_serves()


def test_oversized_frame_is_501_and_broker_survives(running: Running) -> None:
    baseline = running.tasks()
    client = _connect(running.port)
    _handshake(client)
    client.send(struct.pack(">BHI", 1, 0, 10_000_000) + b"\x00" * 64)
    close = client.read_until_close(5)
    assert close is not None and close.reply_code == 501
    client.close()
    running.wait_idle(baseline)
    running.assert_serves()


def test_method_on_unopened_channel_is_504(running: Running) -> None:
    client = _connect(running.port)
    _handshake(client)
    client.send(method_frame(7, commands.Basic.Qos(prefetch_count=1)))
    close = client.read_until_close(5)
    assert close is not None and close.reply_code == 504
    running.assert_serves()


def test_silent_peer_is_dropped_after_two_heartbeats(running: Running) -> None:
    baseline = running.tasks()
    client = _connect(running.port)
    _handshake(client, heartbeat=1)
    started = time.monotonic()
    # heartbeats arrive, then the broker hangs up
    data = client.read_until_eof(10)
    elapsed = time.monotonic() - started
    assert b"\x08\x00\x00\x00\x00\x00\x00\xce" in data  # we got heartbeats
    assert 1.5 <= elapsed <= 6, elapsed
    client.close()
    running.wait_idle(baseline)


def test_half_open_handshake_times_out(running: Running) -> None:
    baseline = running.tasks()
    client = _connect(running.port)
    client.send(PROTOCOL_HEADER)  # then nothing
    started = time.monotonic()
    client.read_until_eof(10)
    assert time.monotonic() - started < 5
    client.close()
    running.wait_idle(baseline)


def test_many_bad_clients_leave_no_tasks(running: Running) -> None:
    baseline = running.tasks()
    payloads = [
        b"\x00" * 100,
        b"AMQP\x00\x00\x09\x01" + b"\xff" * 50,
        b"AMQP",
        struct.pack(">I", 10) + b"\x03key",
    ]
    for i in range(40):
        client = _connect(running.port)
        client.send(payloads[i % len(payloads)])
        client.close()
    running.wait_idle(baseline)
    running.assert_serves()
