"""Malformed frames against a live broker over real sockets, while a healthy
pika client does publish/get round trips alongside.

For every bad client the broker must answer with the right close code (or
close the socket), within a bound; it must never crash or hang; the
healthy client must keep working throughout; and once the bad clients are
gone the broker must hold no session or socket of theirs.
"""

from __future__ import annotations

import contextlib
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fuzz_strategies import (
    HANDSHAKE,
    chunked,
    frame_lists,
    mutated_session,
    nested_table,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp import commands
from pamqp import frame as pframe

from support.frames import raw_frame
from support.raw import RawClient, close_code
from support.waits import wait_until

pytestmark = pytest.mark.filterwarnings("ignore:This command is deprecated:DeprecationWarning")

# Every bad client must be answered or dropped within this many seconds.
ANSWER_S = 5.0


class Healthy(threading.Thread):
    """publish + get round trips in a loop; records latency and errors."""

    def __init__(self, b: Any) -> None:
        super().__init__(daemon=True)
        self.b = b
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.errors: list[BaseException] = []
        self.ready = threading.Event()

    def run(self) -> None:
        try:
            conn = self.b.connect(heartbeat=0)
            ch = conn.channel()
            q = ch.queue_declare("", exclusive=True).method.queue
            self.ready.set()
            n = 0
            while not self.stop.is_set():
                n += 1
                body = b"rt-%d" % n
                started = time.monotonic()
                ch.basic_publish("", q, body)
                while True:
                    method, _, got = ch.basic_get(q, auto_ack=True)
                    if method is not None:
                        break
                    if time.monotonic() - started > 10:
                        raise AssertionError("round trip took more than 10 s")
                assert got == body
                self.latencies.append(time.monotonic() - started)
                time.sleep(0.005)
            conn.close()
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)
            self.ready.set()


@pytest.fixture
def live(make_broker: Any) -> Iterator[tuple[Any, Healthy]]:
    b = make_broker()
    healthy = Healthy(b)
    healthy.start()
    assert healthy.ready.wait(10)
    yield b, healthy
    healthy.stop.set()
    healthy.join(15)
    assert not healthy.errors, healthy.errors
    # nothing left behind: no session, no socket, once the healthy one went
    assert wait_until(lambda: b.sessions() == 0), b.sessions()
    assert wait_until(lambda: b.tcp_connections() == 0), b.tcp_connections()


def assert_only_healthy_left(b: Any, healthy: Healthy) -> None:
    assert not healthy.errors, healthy.errors
    assert wait_until(lambda: b.sessions() == 1), b.sessions()
    assert wait_until(lambda: b.tcp_connections() == 1), b.tcp_connections()


def bad_client(b: Any, tail: bytes, handshake: bool = True) -> Any:
    """Send (handshake +) tail; the broker's close, or None if it only
    dropped the socket. Fails if neither happens within ANSWER_S."""
    with RawClient(b.host, b.port, timeout=ANSWER_S) as r:
        if handshake:
            r.handshake()
            r.open_channel(1)
        r.send(tail)
        started = time.monotonic()
        close = r.read_until_close(ANSWER_S)
        assert time.monotonic() - started < ANSWER_S
        assert r.wait_eof(ANSWER_S), "the broker did not close the socket"
        return close


CASES = [
    ("bad frame end", raw_frame(1, 1, b"\x00\x3c\x00\x28", end=0x00), 501),
    ("frame larger than frame_max", b"\x01\x00\x01\x10\x00\x00\x00" + b"x" * 100, 501),
    ("unknown frame type", raw_frame(7, 0, b""), 501),
    ("heartbeat on channel 1", raw_frame(8, 1, b""), 505),
    ("method on unopened channel", pframe.marshal(commands.Basic.Qos(), 9), 504),
    ("body without header", raw_frame(3, 1, b"body"), 505),
    ("content on channel 0", raw_frame(2, 0, b"\x00\x3c\x00\x00" + b"\x00" * 10), 505),
    ("unknown class/method", raw_frame(1, 1, b"\x00\x63\x00\x01"), 540),
    ("deep nested table", raw_frame(1, 1, b"\x00\x32\x00\x0a\x00\x00\x01q\x00" + nested_table(15000)), 501),
    ("invalid UTF-8 shortstr",
     raw_frame(1, 1, b"\x00\x32\x00\x0a\x00\x00\x01\xff\x00\x00\x00\x00\x00"), 501),
    ("table length past the frame",
     raw_frame(1, 1, b"\x00\x32\x00\x0a\x00\x00\x01q\x00\x00\x00\x00\x0a\x03key"), 501),
    ("bad table type tag",
     raw_frame(1, 1, b"\x00\x32\x00\x0a\x00\x00\x01q\x00\x00\x00\x00\x05\x01aZxx"), 502),
    ("body longer than announced",
     pframe.marshal(commands.Basic.Publish(exchange="", routing_key="q"), 1)
     + raw_frame(2, 1, b"\x00\x3c\x00\x00" + (3).to_bytes(8, "big") + b"\x00\x00")
     + raw_frame(3, 1, b"too long"), 505),
]


def test_malformed_frames_get_the_right_close(live: tuple[Any, Healthy]) -> None:
    """Every case at once, one client each (after a frame error the broker
    cannot parse a close-ok any more, so it waits ``CLOSE_TIMEOUT_S``
    before dropping the socket: running them in parallel keeps this fast)."""
    b, healthy = live
    results: dict[str, Any] = {}

    def worker(name: str, tail: bytes) -> None:
        try:
            close = bad_client(b, tail)
            results[name] = close_code(close)[0] if close is not None else None
        except BaseException as exc:
            results[name] = exc

    threads = [threading.Thread(target=worker, args=(n, t)) for n, t, _ in CASES]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {name: code for name, _, code in CASES}
    assert_only_healthy_left(b, healthy)


def test_garbage_before_and_during_handshake(live: tuple[Any, Healthy]) -> None:
    b, healthy = live
    # not AMQP at all: our protocol header, then the socket closes
    with RawClient(b.host, b.port) as r:
        r.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        channel, header = r.read_frame(ANSWER_S)
        assert header == b"AMQP\x00\x00\x09\x01"
        assert r.wait_eof(ANSWER_S)
    # garbage instead of start-ok
    with RawClient(b.host, b.port) as r:
        r.send(b"AMQP\x00\x00\x09\x01")
        r.expect(commands.Connection.Start)
        r.send(b"\xff" * 64)
        r.read_until_close(ANSWER_S)
        assert r.wait_eof(ANSWER_S)
    # a method before connection.open
    with RawClient(b.host, b.port) as r:
        r.start_ok()
        r.expect(commands.Connection.Tune)
        r.send(pframe.marshal(commands.Channel.Open(), 1))
        close = r.read_until_close(ANSWER_S)
        assert close is not None and close_code(close)[0] in (503, 505)
    # disconnect in the middle of a frame
    with RawClient(b.host, b.port) as r:
        r.handshake()
        r.send(HANDSHAKE[:3])
    assert_only_healthy_left(b, healthy)


def test_many_bad_clients_at_once(live: tuple[Any, Healthy]) -> None:
    b, healthy = live
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            name, tail, code = CASES[i % len(CASES)]
            close = bad_client(b, tail)
            assert close is not None and close_code(close)[0] == code
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(60)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors[:3]
    assert_only_healthy_left(b, healthy)
    assert healthy.latencies and max(healthy.latencies) < 2.0, (
        statistics.median(healthy.latencies), max(healthy.latencies))


def _send_and_half_close(b: Any, chunks: list[bytes]) -> None:
    """Send a stream, half-close; the broker must close within ANSWER_S."""
    with RawClient(b.host, b.port, ANSWER_S) as client:
        for chunk in chunks:
            try:
                client.send(chunk)
            except OSError:
                break  # the broker closed already
        with contextlib.suppress(OSError):
            client.sock.shutdown(socket.SHUT_WR)
        assert client.wait_eof(ANSWER_S), "broker did not close the socket"


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.data())
def test_random_streams_over_sockets(live: tuple[Any, Healthy], data: st.DataObject) -> None:
    b, healthy = live
    if data.draw(st.booleans()):
        stream = HANDSHAKE + b"".join(data.draw(frame_lists))
    else:
        stream = data.draw(mutated_session())
    _send_and_half_close(b, data.draw(chunked(stream)))
    assert not healthy.errors, healthy.errors


def test_random_streams_leave_nothing_behind(live: tuple[Any, Healthy]) -> None:
    """Runs after the hypothesis test in this module has had its turn on
    its own broker; here: a fixed mix, then the leak check."""
    b, healthy = live
    for _, tail, _ in CASES * 3:
        _send_and_half_close(b, [HANDSHAKE, tail])
    assert_only_healthy_left(b, healthy)


@pytest.mark.stress
@settings(max_examples=1000, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.data())
def test_stress_random_streams_over_sockets(live: tuple[Any, Healthy], data: st.DataObject) -> None:
    b, healthy = live
    stream = HANDSHAKE + b"".join(data.draw(frame_lists))
    _send_and_half_close(b, data.draw(chunked(stream)))
    assert not healthy.errors, healthy.errors
