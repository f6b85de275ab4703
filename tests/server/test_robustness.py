"""Bad peers cannot kill the broker or make it leak sessions or tasks.

Each test drives a real in-process broker over loopback sockets with raw
bytes, then checks that the broker still serves a well-behaved pika client
and that every per-connection task and session is gone.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
import trio
from pamqp import commands
from pamqp import frame as pamqp_frame

from mqbroker.config import Config
from mqbroker.server.embedded import EmbeddedBroker

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


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    return sock


def _read_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    except (TimeoutError, ConnectionResetError):
        pass
    return b"".join(chunks)


def _frames(data: bytes) -> list[object]:
    out = []
    while data:
        try:
            consumed, _, value = pamqp_frame.unmarshal(data)
        except Exception:
            break
        out.append(value)
        data = data[consumed:]
    return out


def _handshake(sock: socket.socket, heartbeat: int = 0) -> None:
    sock.sendall(b"AMQP\x00\x00\x09\x01")
    time.sleep(0.05)
    sock.recv(65536)  # connection.start
    sock.sendall(
        pamqp_frame.marshal(
            commands.Connection.StartOk(
                mechanism="PLAIN", response="\0guest\0guest"
            ),
            0,
        )
    )
    time.sleep(0.05)
    sock.recv(65536)  # connection.tune
    sock.sendall(
        pamqp_frame.marshal(
            commands.Connection.TuneOk(
                channel_max=10, frame_max=131072, heartbeat=heartbeat
            ),
            0,
        )
        + pamqp_frame.marshal(commands.Connection.Open(virtual_host="/"), 0)
    )
    time.sleep(0.05)
    sock.recv(65536)  # open-ok


def test_garbage_gets_protocol_header_and_close(running: Running) -> None:
    baseline = running.tasks()
    sock = _connect(running.port)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _read_all(sock) == b"AMQP\x00\x00\x09\x01"
    sock.close()
    running.wait_idle(baseline)
    running.assert_serves()


def test_disconnect_mid_frame_releases_everything(running: Running) -> None:
    baseline = running.tasks()
    for _ in range(20):
        sock = _connect(running.port)
        _handshake(sock)
        frame = pamqp_frame.marshal(commands.Channel.Open(), 1)
        sock.sendall(frame[: len(frame) // 2])
        sock.close()
    running.wait_idle(baseline)
    running.assert_serves()


def test_oversized_frame_is_501_and_broker_survives(running: Running) -> None:
    baseline = running.tasks()
    sock = _connect(running.port)
    _handshake(sock)
    sock.sendall(struct.pack(">BHI", 1, 0, 10_000_000) + b"\x00" * 64)
    frames = _frames(_read_all(sock))
    closes = [f for f in frames if isinstance(f, commands.Connection.Close)]
    assert closes and closes[0].reply_code == 501
    sock.close()
    running.wait_idle(baseline)
    running.assert_serves()


def test_method_on_unopened_channel_is_504(running: Running) -> None:
    sock = _connect(running.port)
    _handshake(sock)
    sock.sendall(pamqp_frame.marshal(commands.Basic.Qos(prefetch_count=1), 7))
    frames = _frames(_read_all(sock))
    closes = [f for f in frames if isinstance(f, commands.Connection.Close)]
    assert closes and closes[0].reply_code == 504
    running.assert_serves()


def test_silent_peer_is_dropped_after_two_heartbeats(running: Running) -> None:
    baseline = running.tasks()
    sock = _connect(running.port)
    _handshake(sock, heartbeat=1)
    started = time.monotonic()
    sock.settimeout(10)
    data = b""
    while True:  # heartbeats arrive, then the broker hangs up
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    elapsed = time.monotonic() - started
    assert b"\x08\x00\x00\x00\x00\x00\x00\xce" in data  # we got heartbeats
    assert 1.5 <= elapsed <= 6, elapsed
    sock.close()
    running.wait_idle(baseline)


def test_half_open_handshake_times_out(running: Running) -> None:
    baseline = running.tasks()
    sock = _connect(running.port)
    sock.sendall(b"AMQP\x00\x00\x09\x01")  # then nothing
    started = time.monotonic()
    _read_all(sock, timeout=10)
    assert time.monotonic() - started < 5
    sock.close()
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
        sock = _connect(running.port)
        sock.sendall(payloads[i % len(payloads)])
        sock.close()
    running.wait_idle(baseline)
    running.assert_serves()
