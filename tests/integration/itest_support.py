"""Plain helpers (no fixtures) for the integration suite; see conftest.py."""

from __future__ import annotations

import contextlib
import socket
import struct
import time
import uuid
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions
from pamqp import body as pbody
from pamqp import commands
from pamqp import constants as pconst
from pamqp import frame as pframe
from pamqp import header as pheader
from pamqp import heartbeat as pheartbeat

from amqp_support import Cleanup, pika_params

# Default bound for anything that waits on the broker.
WAIT = 10.0

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"


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


class RawClosed(Exception):
    """The peer closed the socket."""


class RawAMQP:
    """A hand-driven AMQP 0-9-1 client for malformed-frame tests.

    Frames are built with pamqp, or with ``struct`` when they must be
    malformed on purpose.
    """

    def __init__(self, broker: Any, timeout: float = 5.0) -> None:
        self.broker = broker
        self.sock = socket.create_connection(
            (broker.host, broker.port), timeout=timeout
        )
        self.buf = b""
        self.frame_max = 0
        self.channel_max = 0

    # -- plumbing

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RawAMQP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_frame(self, value: Any, channel: int = 0) -> None:
        self.send(pframe.marshal(value, channel))

    def _recv_some(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no data from broker in time")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise RawClosed(str(exc)) from exc
        except TimeoutError as exc:
            raise TimeoutError("no data from broker in time") from exc
        if not data:
            raise RawClosed("EOF")
        self.buf += data

    def read_exact(self, n: int, timeout: float = WAIT) -> bytes:
        deadline = time.monotonic() + timeout
        while len(self.buf) < n:
            self._recv_some(deadline)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_until_eof(self, timeout: float = WAIT) -> bytes:
        """Everything the broker sends until it closes the socket."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._recv_some(deadline)
            except RawClosed:
                out, self.buf = self.buf, b""
                return out

    def read_frame(
        self, timeout: float = WAIT, skip_heartbeats: bool = True
    ) -> tuple[int, Any]:
        deadline = time.monotonic() + timeout
        while True:
            head = self.read_exact(7, max(deadline - time.monotonic(), 0.001))
            _ftype, _chan, size = struct.unpack(">BHI", head)
            rest = self.read_exact(
                size + 1, max(deadline - time.monotonic(), 0.001)
            )
            _, chan, value = pframe.unmarshal(head + rest)
            if skip_heartbeats and isinstance(value, pheartbeat.Heartbeat):
                continue
            return chan, value

    def expect(self, cls: type, timeout: float = WAIT) -> Any:
        _, value = self.read_frame(timeout)
        assert isinstance(value, cls), (
            f"expected {cls.__name__}, got {value!r}"
        )
        return value

    # -- handshake

    def handshake(
        self,
        vhost: str | None = None,
        frame_max: int | None = None,
        channel_max: int | None = None,
        heartbeat: int = 0,
    ) -> None:
        """Protocol header, Start/Start-Ok (PLAIN), Tune/Tune-Ok, Open/Open-Ok."""
        self.send(PROTOCOL_HEADER)
        start = self.expect(commands.Connection.Start)
        mechanisms = start.mechanisms
        if isinstance(mechanisms, bytes):
            mechanisms = mechanisms.decode()
        assert "PLAIN" in mechanisms.split(), mechanisms
        self.send_frame(
            commands.Connection.StartOk(
                client_properties={
                    "product": "mqbroker-raw-test",
                    "capabilities": {
                        "consumer_cancel_notify": True,
                        "connection.blocked": True,
                        "authentication_failure_close": True,
                    },
                },
                mechanism="PLAIN",
                response=f"\0{self.broker.user}\0{self.broker.password}",
                locale="en_US",
            )
        )
        tune = self.expect(commands.Connection.Tune)
        self.frame_max = frame_max if frame_max is not None else tune.frame_max
        self.channel_max = (
            channel_max if channel_max is not None else tune.channel_max
        )
        self.send_frame(
            commands.Connection.TuneOk(
                channel_max=self.channel_max,
                frame_max=self.frame_max,
                heartbeat=heartbeat,
            )
        )
        self.send_frame(
            commands.Connection.Open(virtual_host=vhost or self.broker.vhost)
        )
        self.expect(commands.Connection.OpenOk)

    def open_channel(self, channel: int = 1) -> None:
        self.send_frame(commands.Channel.Open(), channel)
        chan, value = self.read_frame()
        assert chan == channel and isinstance(
            value, commands.Channel.OpenOk
        ), value

    # -- closing

    def expect_connection_close(
        self, timeout: float = WAIT, wait_eof: bool = True
    ) -> Any:
        """Read until Connection.Close (skipping anything else), answer
        Close-Ok and (unless ``wait_eof`` is false) check that the broker
        then closes the socket."""
        deadline = time.monotonic() + timeout
        while True:
            chan, value = self.read_frame(
                max(deadline - time.monotonic(), 0.001)
            )
            if isinstance(value, commands.Connection.Close):
                assert chan == 0, f"connection.close on channel {chan}"
                break
        with contextlib.suppress(OSError):
            self.send_frame(commands.Connection.CloseOk())
        # After close-ok the server must drop the socket.
        if wait_eof:
            self.read_until_eof(timeout=max(deadline - time.monotonic(), 1.0))
        return value


def raw_method_frame(
    channel: int, payload: bytes, frame_end: int = pconst.FRAME_END
) -> bytes:
    return (
        struct.pack(">BHI", pconst.FRAME_METHOD, channel, len(payload))
        + payload
        + bytes([frame_end])
    )


def raw_frame(
    ftype: int, channel: int, payload: bytes, frame_end: int = pconst.FRAME_END
) -> bytes:
    return (
        struct.pack(">BHI", ftype, channel, len(payload))
        + payload
        + bytes([frame_end])
    )


def method_payload(value: Any) -> bytes:
    """Class id + method id + marshalled arguments of a pamqp method."""
    full = pframe.marshal(value, 0)
    return full[7:-1]


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
