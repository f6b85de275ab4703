"""Hypothesis fuzzing of the sans-I/O protocol core and of a whole session.

Properties:
- ``ServerConnection.next_event()`` raises nothing but ``AMQPError``, for
  any input, and always makes progress (the loop below is bounded by the
  number of bytes fed);
- ``Session.receive()`` (protocol + every method handler + a real broker on
  the memory store) never raises at all;
- whatever the server writes back decodes as valid AMQP frames;
- after the connection is gone, the broker holds no session, consumer or
  exclusive queue of it.

Set ``MQB_FUZZ_EXAMPLES`` to change the number of examples per test (the
``stress`` tests run 20x more).
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from fuzz_strategies import (
    HANDSHAKE,
    PROTOCOL_HEADER,
    VALID_SESSION,
    chunked,
    frame_lists,
    malformed_frames,
    mutated_session,
    nested_table,
    raw_frame,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp import commands
from pamqp import frame as pframe
from pamqp import heartbeat as pheartbeat

from mqbroker import errors
from mqbroker.broker.broker import Broker
from mqbroker.broker.session import Session
from mqbroker.config import Config
from mqbroker.persistence.memory import MemoryStore
from mqbroker.protocol.connection import ServerConnection, State
from mqbroker.protocol.events import OpenRequested, StartOk

# pamqp warns when it builds basic.recover-async (deprecated in 0-9-1)
pytestmark = pytest.mark.filterwarnings("ignore:This command is deprecated:DeprecationWarning")

EXAMPLES = int(os.environ.get("MQB_FUZZ_EXAMPLES", "300"))
FAST = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=False,
)
STRESS = settings(FAST, max_examples=EXAMPLES * 20)
# Per-example wall-clock bound: a parser that stalls on some input fails.
MAX_SECONDS = 5.0

SERVER_PROPERTIES = {"product": "mqbroker", "version": "0", "platform": "Python"}


def new_conn() -> ServerConnection:
    return ServerConnection(
        frame_max=131072,
        channel_max=2047,
        heartbeat=60,
        max_message_size=1 << 20,
        server_properties=SERVER_PROPERTIES,
    )


def decode_output(data: bytes) -> list[tuple[int, Any]]:
    """Everything the server wrote must be well-formed frames."""
    out = []
    if data.startswith(b"AMQP"):
        assert data[:8] == PROTOCOL_HEADER
        data = data[8:]
    while data:
        consumed, channel, value = pframe.unmarshal(data)
        assert consumed > 0
        out.append((channel, value))
        data = data[consumed:]
    return out


def drive_protocol(chunks: list[bytes]) -> tuple[ServerConnection, list[errors.AMQPError]]:
    """Feed chunks as the broker would; only AMQPError may come out."""
    conn = new_conn()
    raised: list[errors.AMQPError] = []
    budget = sum(len(c) for c in chunks) + 64
    started = time.monotonic()
    for chunk in chunks:
        conn.receive_data(chunk)
        while True:
            budget -= 1
            assert budget > 0, "next_event() did not make progress"
            try:
                event = conn.next_event()
            except errors.AMQPError as exc:
                raised.append(exc)
                conn.report(exc, exc.channel if exc.channel is not None else 0)
                continue
            if event is None:
                break
            if isinstance(event, StartOk):
                conn.accept_auth()
            elif isinstance(event, OpenRequested):
                conn.accept_open()
    assert time.monotonic() - started < MAX_SECONDS
    decode_output(bytes(conn.out))
    return conn, raised


_CONFIG = Config(data_dir=None, storage="memory", management_port=None)


def new_session() -> tuple[Broker, Session]:
    broker = Broker(_CONFIG, MemoryStore())
    conn = ServerConnection(
        frame_max=_CONFIG.frame_max,
        channel_max=_CONFIG.channel_max,
        heartbeat=_CONFIG.heartbeat_s,
        max_message_size=_CONFIG.max_message_size,
        server_properties=broker.server_properties(),
    )
    return broker, Session(broker, conn, "127.0.0.1:40000")


def drive_session(chunks: list[bytes]) -> tuple[Broker, Session]:
    broker, session = new_session()
    started = time.monotonic()
    output = bytearray()
    for chunk in chunks:
        if session.conn.state is State.CLOSED:
            break
        session.receive(chunk)  # must never raise
        broker.run_dispatch()
        output += session.conn.data_to_send()
    assert time.monotonic() - started < MAX_SECONDS
    decode_output(bytes(output))
    session.connection_lost()
    broker.run_dispatch()
    assert not broker.sessions
    for vhost in broker.vhosts.values():
        for queue in vhost.queues.values():
            assert not queue.consumers, f"consumer left on {queue.name}"
            assert queue.exclusive_owner is None, f"exclusive queue {queue.name} left"
    return broker, session


# ------------------------------------------------------ protocol level


CHEAP = settings(FAST, max_examples=EXAMPLES * 5)  # ~1 ms per example


@CHEAP
@given(st.binary(max_size=4000))
def test_arbitrary_bytes(data: bytes) -> None:
    drive_protocol([data])


@CHEAP
@given(st.binary(max_size=4000))
def test_arbitrary_bytes_after_valid_header(data: bytes) -> None:
    drive_protocol([PROTOCOL_HEADER, data])


@FAST
@given(st.data())
def test_valid_handshake_then_random_frames(data: st.DataObject) -> None:
    stream = HANDSHAKE + b"".join(data.draw(frame_lists))
    drive_protocol(data.draw(chunked(stream)))


@FAST
@given(st.data())
def test_mutated_valid_session(data: st.DataObject) -> None:
    stream = data.draw(mutated_session())
    drive_protocol(data.draw(chunked(stream)))


# ------------------------------------------------------ whole session


@FAST
@given(st.data())
def test_session_survives_random_frames(data: st.DataObject) -> None:
    stream = HANDSHAKE + b"".join(data.draw(frame_lists))
    drive_session(data.draw(chunked(stream)))


@FAST
@given(st.data())
def test_session_survives_mutations(data: st.DataObject) -> None:
    stream = data.draw(mutated_session())
    drive_session(data.draw(chunked(stream)))


def test_valid_session_seed_is_valid() -> None:
    """The mutation seed itself goes through without any error."""
    conn, raised = drive_protocol([VALID_SESSION])
    assert raised == []
    assert conn.state is State.CLOSED
    broker, session = new_session()
    session.receive(VALID_SESSION)
    assert session.last_error is None, session.last_error
    frames = decode_output(session.conn.data_to_send())
    names = [type(v).__name__ for _, v in frames]
    assert "CloseOk" in names and "GetOk" in names


# ------------------------------------------------------ exact answers

HANDSHAKE_ONLY = HANDSHAKE


def close_of(chunks: list[bytes]) -> tuple[int, int]:
    """(reply code, channel) of the first close the server sends."""
    conn, _ = drive_protocol(chunks)
    for channel, value in decode_output(bytes(conn.out)):
        if isinstance(value, commands.Connection.Close | commands.Channel.Close):
            return int(value.reply_code), channel
    raise AssertionError("no close sent")


@pytest.mark.parametrize(
    "name,tail,code,channel",
    [
        ("bad frame end", raw_frame(1, 1, b"\x00\x3c\x00\x28", end=0x00), 501, 0),
        ("frame larger than frame_max", b"\x01\x00\x01\x00\x10\x00\x00", 501, 0),
        ("unknown frame type", raw_frame(7, 0, b""), 501, 0),
        ("heartbeat on channel 1", raw_frame(8, 1, b""), 505, 0),
        ("method on unopened channel", pframe.marshal(commands.Basic.Qos(), 9), 504, 0),
        ("body without header", raw_frame(3, 1, b"body"), 505, 0),
        ("header without method", raw_frame(2, 1, b"\x00\x3c\x00\x00" + b"\x00" * 8 + b"\x00\x00"), 505, 0),
        ("unknown class/method", raw_frame(1, 1, b"\x00\x63\x00\x01"), 540, 0),
        ("deep nested table", raw_frame(1, 1, b"\x00\x32\x00\x0a\x00\x00\x01q\x00"
                                        + nested_table(15000)), 501, 0),
        ("invalid UTF-8 shortstr", raw_frame(1, 1, b"\x00\x32\x00\x0a\x00\x00\x01\xff\x00"
                                             + b"\x00\x00\x00\x00"), 501, 0),
        ("table past its frame", raw_frame(1, 1, b"\x00\x32\x00\x0a\x00\x00\x01q\x00"
                                           + b"\x00\x00\x00\x0a\x03key"), 501, 0),
        ("second channel.open", pframe.marshal(commands.Channel.Open(), 1), 504, 0),
    ],
)
def test_malformed_frame_answers(name: str, tail: bytes, code: int, channel: int) -> None:
    assert close_of([HANDSHAKE_ONLY, tail]) == (code, channel), name


def test_bad_protocol_header_gets_ours() -> None:
    conn, _ = drive_protocol([b"HTTP/1.1 200\r\n"])
    assert bytes(conn.out) == PROTOCOL_HEADER
    assert conn.state is State.CLOSED


def test_heartbeats_on_channel_zero_are_fine() -> None:
    conn, raised = drive_protocol([HANDSHAKE, pframe.marshal(pheartbeat.Heartbeat(), 0) * 5])
    assert raised == [] and conn.state is State.OPEN


def test_oversized_publish_body_is_406_on_the_channel() -> None:
    header = raw_frame(2, 1, b"\x00\x3c\x00\x00" + (2**40).to_bytes(8, "big") + b"\x00\x00")
    publish = pframe.marshal(commands.Basic.Publish(exchange="", routing_key="q"), 1)
    assert close_of([HANDSHAKE, publish + header]) == (406, 1)


@pytest.mark.parametrize("depth", [10, 100, 1000, 5000])
def test_session_nested_arguments(depth: int) -> None:
    payload = b"\x00\x32\x00\x0a\x00\x00\x01q\x00" + nested_table(depth)
    broker, session = drive_session([HANDSHAKE, raw_frame(1, 1, payload)])


# ------------------------------------------------------ long runs


@pytest.mark.stress
@STRESS
@given(st.data())
def test_stress_protocol_random_frames(data: st.DataObject) -> None:
    stream = HANDSHAKE + b"".join(data.draw(frame_lists))
    drive_protocol(data.draw(chunked(stream)))


@pytest.mark.stress
# thousands of whole-session examples: minutes on a shared 2-core machine
@pytest.mark.timeout(900)
@STRESS
@given(st.data())
def test_stress_session_random_frames(data: st.DataObject) -> None:
    stream = HANDSHAKE + b"".join(data.draw(frame_lists))
    drive_session(data.draw(chunked(stream)))


@pytest.mark.stress
@STRESS
@given(st.data())
def test_stress_session_mutations(data: st.DataObject) -> None:
    stream = data.draw(mutated_session())
    drive_session(data.draw(chunked(stream)))


@pytest.mark.stress
@STRESS
@given(st.lists(malformed_frames(), min_size=1, max_size=20))
def test_stress_malformed_only(frames: list[bytes]) -> None:
    drive_session([HANDSHAKE + b"".join(frames)])
