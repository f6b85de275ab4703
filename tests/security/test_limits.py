"""Limits: connections (node, vhost, user), queues per vhost, message size,
channels, handshake timeout and heartbeats; each with the exact reply and
with another client unaffected."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import pika
import pika.exceptions
import pytest
from pamqp import commands

from mqbroker.protocol import codec
from support.frames import raw_frame
from support.raw import Closed, RawClient, close_code
from support.waits import wait_until


def _open_raw(b: Any, user: str = "guest", password: str = "guest", vhost: str = "/") -> RawClient:
    r = RawClient(b.host, b.port)
    r.handshake(user, password, vhost)
    return r


def _refused_open(b: Any, user: str = "guest", password: str = "guest", vhost: str = "/") -> tuple[int, str]:
    with RawClient(b.host, b.port) as r:
        r.start_ok(user, password)
        tune = r.expect(commands.Connection.Tune)
        r.send_method(commands.Connection.TuneOk(
            channel_max=tune.channel_max, frame_max=tune.frame_max, heartbeat=0))
        r.send_method(commands.Connection.Open(virtual_host=vhost))
        close = r.read_until_close()
        assert close is not None, "expected connection.close"
        assert r.wait_eof()
        return close_code(close)


def test_connection_max(make_broker: Any) -> None:
    b = make_broker(connection_max=2)
    first, second = _open_raw(b), _open_raw(b)
    try:
        assert _refused_open(b) == (
            530, "NOT_ALLOWED - connection refused: node connection limit (2) is reached"
        )
        with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as info:
            b.connect()
        assert "(530)" in str(info.value)
        # the two admitted connections still work
        first.open_channel(1)
        second.open_channel(1)
    finally:
        first.close()
        second.close()
    assert wait_until(lambda: b.tcp_connections() == 0)
    with contextlib.closing(b.connect()):
        pass


def test_vhost_connection_limit(make_broker: Any) -> None:
    b = make_broker()

    def setup() -> None:
        b.access.add_vhost("small", max_connections=1)
        b.access.set_permissions("guest", "small")
    b.call(setup)
    held = _open_raw(b, vhost="small")
    try:
        assert _refused_open(b, vhost="small") == (
            530,
            "NOT_ALLOWED - access to vhost 'small' refused for user 'guest': "
            "connection limit (1) is reached",
        )
        with contextlib.closing(b.connect()):  # vhost "/" is not limited
            pass
    finally:
        held.close()


def test_user_connection_limit(make_broker: Any) -> None:
    b = make_broker()

    def setup() -> None:
        b.access.add_user("capped", "pw")
        b.access.set_permissions("capped", "/")
        b.access.set_user_limits("capped", max_connections=1)
    b.call(setup)
    held = _open_raw(b, "capped", "pw")
    try:
        assert _refused_open(b, "capped", "pw") == (
            530,
            "NOT_ALLOWED - connection refused for user 'capped': user connection "
            "limit (1) is reached",
        )
        with contextlib.closing(b.connect()):
            pass
    finally:
        held.close()


def test_config_default_limits(make_broker: Any) -> None:
    b = make_broker(user_max_connections=1)
    held = _open_raw(b)
    try:
        assert _refused_open(b)[0] == 530
    finally:
        held.close()


def test_vhost_max_queues(make_broker: Any) -> None:
    b = make_broker(vhost_max_queues=2)
    with contextlib.closing(b.connect()) as conn:
        ch = conn.channel()
        ch.queue_declare("q1")
        ch.queue_declare("q2")
        ch.queue_declare("q1")  # redeclaring an existing queue is fine
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.queue_declare("q3")
        assert info.value.reply_code == 406
        assert info.value.reply_text == (
            "PRECONDITION_FAILED - cannot declare queue 'q3': queue limit in "
            "vhost '/' (2) is reached"
        )
        ch = conn.channel()
        ch.queue_delete("q2")
        ch.queue_declare("q3")


def test_per_vhost_queue_limit_overrides_default(make_broker: Any) -> None:
    b = make_broker()

    def setup() -> None:
        b.access.add_vhost("tiny", max_queues=0)
        b.access.set_permissions("guest", "tiny")
    b.call(setup)
    with contextlib.closing(b.connect(vhost="tiny")) as conn:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            conn.channel().queue_declare("any")
        assert info.value.reply_code == 406
    with contextlib.closing(b.connect()) as conn:
        conn.channel().queue_declare("any")  # "/" is unlimited


def test_max_message_size_is_406(make_broker: Any) -> None:
    b = make_broker(max_message_size=1000)
    with contextlib.closing(b.connect()) as conn:
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, b"x" * 1000)
        ch.basic_publish("", q, b"x" * 1001)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.queue_declare(q, passive=True)
        assert info.value.reply_code == 406
        assert info.value.reply_text == (
            "PRECONDITION_FAILED - message size 1001 is larger than configured "
            "max size 1000"
        )
        assert conn.is_open
        ch = conn.channel()
        assert ch.queue_declare(q, passive=True).method.message_count == 1


def test_channel_max_is_530(make_broker: Any) -> None:
    b = make_broker(channel_max=3)
    with RawClient(b.host, b.port) as r:
        r.handshake()
        for n in (1, 2, 3):
            r.open_channel(n)
        r.send_method(commands.Channel.Open(), 4)
        close = r.read_until_close()
        assert close is not None
        code, text = close_code(close)
        assert code == 530
        assert "channel_max (3)" in text


def test_frame_larger_than_frame_max_is_501(sec_broker: Any) -> None:
    with RawClient(sec_broker.host, sec_broker.port) as r:
        r.handshake()
        r.open_channel(1)
        r.send(raw_frame(codec.FRAME_BODY, 1, b"x" * 200_000))
        close = r.read_until_close()
        assert close is not None and close_code(close)[0] == 501


def test_handshake_timeout_closes_half_open_sockets(make_broker: Any) -> None:
    b = make_broker(handshake_timeout_s=0.5)
    idle = RawClient(b.host, b.port)  # connects, says nothing
    header_only = RawClient(b.host, b.port)
    header_only.send(b"AMQP\x00\x00\x09\x01")
    header_only.expect(commands.Connection.Start)
    slow = RawClient(b.host, b.port)  # slowloris: one byte at a time
    started = time.monotonic()
    try:
        for byte in b"AMQP\x00\x00\x09\x01"[:5]:
            slow.send(bytes([byte]))
            time.sleep(0.05)
        assert idle.wait_eof(5)
        assert header_only.wait_eof(5)
        assert slow.wait_eof(5)
        assert time.monotonic() - started < 4
        with contextlib.closing(b.connect()):  # others unaffected
            pass
    finally:
        for r in (idle, header_only, slow):
            r.close()
    assert wait_until(lambda: b.tcp_connections() == 0)


def test_missed_heartbeats_close_the_connection(sec_broker: Any) -> None:
    with RawClient(sec_broker.host, sec_broker.port) as r:
        r.handshake(heartbeat=1)  # then say nothing at all
        started = time.monotonic()
        with pytest.raises(Closed):
            while True:
                r.read_frame(timeout=10)  # heartbeats from the broker are skipped
        assert 1.5 <= time.monotonic() - started < 6
    assert wait_until(lambda: sec_broker.sessions() == 0)
