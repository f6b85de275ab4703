"""Every AMQP reply code provoked by a real client, and its scope.

Soft errors (4xx) close only the channel: the connection and a second
channel on it stay usable. Hard errors (5xx, plus 530/540) close the whole
connection. After every error a fresh connection must still work.

Reply texts are asserted by prefix where RabbitMQ's wording is stable.
Validated against RabbitMQ 3.10.8; deviations from the design notes are
called out in comments marked "RabbitMQ:".
"""

from __future__ import annotations

import contextlib
import struct
import time
from typing import Any

import amqp
import amqp.exceptions
import pika
import pika.exceptions
import pytest
from itest_support import amqp_connect
from pamqp import body as pbody
from pamqp import commands
from pamqp import constants as pconst
from pamqp import header as pheader

from support.blocking import get_message, wait_message_count
from support.frames import (
    PROTOCOL_HEADER,
    method_payload,
    raw_frame,
    raw_method_frame,
)
from support.raw import Closed, RawClient
from support.waits import WAIT

pytestmark = pytest.mark.timeout(30)


# ---------------------------------------------------------------- helpers


def assert_connection_usable(conn: pika.BlockingConnection) -> None:
    """A new channel on ``conn`` can declare, publish and get."""
    assert conn.is_open
    chan = conn.channel()
    q = chan.queue_declare("", exclusive=True).method.queue
    chan.basic_publish("", q, b"ping")
    _, _, body = get_message(chan, q, auto_ack=True)
    assert body == b"ping"
    chan.close()


def channel_error(
    fn: Any, code: int, prefix: str
) -> pika.exceptions.ChannelClosedByBroker:
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        fn()
    exc = info.value
    assert exc.reply_code == code, exc
    assert exc.reply_text.startswith(prefix), exc.reply_text
    return exc


def connection_error(
    fn: Any, code: int, prefix: str
) -> pika.exceptions.ConnectionClosedByBroker:
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
        fn()
    exc = info.value
    assert exc.reply_code == code, exc
    assert exc.reply_text.startswith(prefix), exc.reply_text
    return exc


def sync_point(chan: Any) -> None:
    """A synchronous round trip: surfaces an asynchronous channel.close."""
    chan.basic_qos(prefetch_count=0)


def drain_until_error(
    conn: amqp.Connection, timeout: float = WAIT
) -> amqp.exceptions.AMQPError:
    """Pump py-amqp until the broker closes something; return the error."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn.drain_events(timeout=0.2)
        except TimeoutError:
            continue
        except amqp.exceptions.AMQPError as exc:
            return exc
    raise AssertionError("broker did not raise an error in time")


# ---------------------------------------------------------------- 404


def test_publish_to_missing_exchange_closes_channel_only(
    connect, uniq, healthy
):
    conn = connect()
    chan = conn.channel()
    other = conn.channel()
    missing = uniq("missing-ex")
    chan.basic_publish(missing, "rk", b"x")
    channel_error(
        lambda: sync_point(chan),
        404,
        f"NOT_FOUND - no exchange '{missing}' in vhost",
    )
    assert chan.is_closed
    assert conn.is_open
    # The sibling channel opened before the error still works.
    q = other.queue_declare("", exclusive=True).method.queue
    other.basic_publish("", q, b"y")
    assert get_message(other, q, auto_ack=True)[2] == b"y"
    assert_connection_usable(conn)
    healthy()


def test_passive_declare_missing_queue(connect, uniq, healthy):
    conn = connect()
    chan = conn.channel()
    missing = uniq("missing-q")
    channel_error(
        lambda: chan.queue_declare(missing, passive=True),
        404,
        f"NOT_FOUND - no queue '{missing}' in vhost",
    )
    assert_connection_usable(conn)
    healthy()


def test_passive_declare_missing_exchange(connect, uniq, healthy):
    conn = connect()
    chan = conn.channel()
    missing = uniq("missing-ex")
    channel_error(
        lambda: chan.exchange_declare(missing, passive=True),
        404,
        f"NOT_FOUND - no exchange '{missing}' in vhost",
    )
    assert_connection_usable(conn)
    healthy()


def test_bind_missing_queue(connect, uniq, healthy):
    conn = connect()
    chan = conn.channel()
    missing = uniq("missing-q")
    channel_error(
        lambda: chan.queue_bind(missing, "amq.direct", "rk"),
        404,
        f"NOT_FOUND - no queue '{missing}' in vhost",
    )
    assert_connection_usable(conn)
    healthy()


def test_bind_to_missing_exchange(connect, uniq, healthy):
    conn = connect()
    chan = conn.channel()
    q = chan.queue_declare("", exclusive=True).method.queue
    missing = uniq("missing-ex")
    channel_error(
        lambda: chan.queue_bind(q, missing, "rk"),
        404,
        f"NOT_FOUND - no exchange '{missing}' in vhost",
    )
    assert_connection_usable(conn)
    healthy()


def test_consume_missing_queue(connect, uniq, healthy):
    conn = connect()
    chan = conn.channel()
    missing = uniq("missing-q")
    channel_error(
        lambda: chan.basic_consume(missing, lambda *a: None),
        404,
        f"NOT_FOUND - no queue '{missing}' in vhost",
    )
    assert_connection_usable(conn)
    healthy()


# ---------------------------------------------------------------- 405


@pytest.fixture
def foreign_exclusive(connect, uniq):
    """An exclusive queue owned by one connection, and a second connection."""
    owner = connect()
    owner_ch = owner.channel()
    name = uniq("excl")
    owner_ch.queue_declare(name, exclusive=True)
    return name, owner, owner_ch, connect()


@pytest.mark.parametrize(
    "operation",
    [
        "consume",
        "declare",
        "passive-declare",
        "delete",
        "purge",
        "bind",
        "get",
    ],
)
def test_other_connections_exclusive_queue_is_locked(
    foreign_exclusive, operation, healthy
):
    name, _owner, owner_ch, other = foreign_exclusive
    chan = other.channel()
    ops = {
        "consume": lambda: chan.basic_consume(name, lambda *a: None),
        "declare": lambda: chan.queue_declare(name, exclusive=True),
        "passive-declare": lambda: chan.queue_declare(name, passive=True),
        "delete": lambda: chan.queue_delete(name),
        "purge": lambda: chan.queue_purge(name),
        "bind": lambda: chan.queue_bind(name, "amq.fanout"),
        "get": lambda: chan.basic_get(name),
    }
    channel_error(
        ops[operation],
        405,
        f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{name}' in vhost",
    )
    assert_connection_usable(other)
    # The owner is unaffected and the queue still exists.
    assert owner_ch.queue_declare(name, passive=True).method.queue == name
    healthy()


def test_publish_to_other_connections_exclusive_queue_is_allowed(
    foreign_exclusive,
):
    name, _owner, owner_ch, other = foreign_exclusive
    chan = other.channel()
    chan.confirm_delivery()
    chan.basic_publish("", name, b"from outside", mandatory=True)
    _, _, body = get_message(owner_ch, name, auto_ack=True)
    assert body == b"from outside"


# ---------------------------------------------------------------- 406


@pytest.mark.parametrize(
    "first, second, arg",
    [
        ({"durable": False}, {"durable": True}, "durable"),
        ({"auto_delete": False}, {"auto_delete": True}, "auto_delete"),
        (
            {"arguments": {"x-message-ttl": 1000}},
            {"arguments": {"x-message-ttl": 2000}},
            "x-message-ttl",
        ),
        (
            {"arguments": {}},
            {"arguments": {"x-max-length": 5}},
            "x-max-length",
        ),
    ],
)
def test_redeclare_queue_with_different_properties(
    connect, uniq, cleanup, healthy, first, second, arg
):
    conn = connect()
    chan = conn.channel()
    name = cleanup.queue(uniq("redeclare"))
    chan.queue_declare(name, **first)
    channel_error(
        lambda: chan.queue_declare(name, **second),
        406,
        f"PRECONDITION_FAILED - inequivalent arg '{arg}' for queue '{name}' in vhost",
    )
    assert_connection_usable(conn)
    # The original is untouched: redeclaring it as it was is fine.
    chan2 = conn.channel()
    chan2.queue_declare(name, **first)
    healthy()


def test_redeclare_own_exclusive_queue(connect, uniq):
    """RabbitMQ: an exclusive queue is never durable, so redeclaring it with
    durable=true is equivalent (no 406); redeclaring it as non-exclusive is
    405 RESOURCE_LOCKED, not 406."""
    conn = connect()
    chan = conn.channel()
    name = uniq("own-excl")
    chan.queue_declare(name, exclusive=True)
    chan.queue_declare(name, exclusive=True, durable=True)
    channel_error(
        lambda: chan.queue_declare(name, exclusive=False),
        405,
        f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{name}'",
    )
    chan = conn.channel()
    channel_error(
        lambda: chan.queue_declare(name, exclusive=True, auto_delete=True),
        406,
        f"PRECONDITION_FAILED - inequivalent arg 'auto_delete' for queue '{name}'",
    )
    assert_connection_usable(conn)


def test_redeclare_queue_unknown_x_arg_is_not_compared(ch, uniq, cleanup):
    """Only known arguments take part in equivalence (traps: Declares)."""
    name = cleanup.queue(uniq("xfoo"))
    ch.queue_declare(name, arguments={"x-foo": 1})
    ch.queue_declare(name, arguments={"x-foo": 2})
    ch.queue_declare(name)


@pytest.mark.parametrize(
    "first, second, arg",
    [
        ({"exchange_type": "direct"}, {"exchange_type": "fanout"}, "type"),
        ({"durable": False}, {"durable": True}, "durable"),
        ({"auto_delete": False}, {"auto_delete": True}, "auto_delete"),
    ],
)
def test_redeclare_exchange_with_different_properties(
    connect, uniq, cleanup, healthy, first, second, arg
):
    conn = connect()
    chan = conn.channel()
    name = cleanup.exchange(uniq("redeclare-ex"))
    chan.exchange_declare(name, **{"exchange_type": "direct", **first})
    channel_error(
        lambda: chan.exchange_declare(
            name, **{"exchange_type": "direct", **second}
        ),
        406,
        f"PRECONDITION_FAILED - inequivalent arg '{arg}' for exchange '{name}' in vhost",
    )
    assert_connection_usable(conn)
    healthy()


def test_redeclare_amq_direct_non_durable(connect, healthy):
    conn = connect()
    chan = conn.channel()
    chan.exchange_declare(
        "amq.direct", "direct", durable=True
    )  # equivalent: ok
    channel_error(
        lambda: chan.exchange_declare("amq.direct", "direct", durable=False),
        406,
        "PRECONDITION_FAILED - inequivalent arg 'durable' for exchange 'amq.direct'",
    )
    assert_connection_usable(conn)
    healthy()


def test_ack_unknown_delivery_tag(connect, healthy):
    conn = connect()
    chan = conn.channel()
    chan.basic_ack(delivery_tag=999)
    channel_error(
        lambda: sync_point(chan),
        406,
        "PRECONDITION_FAILED - unknown delivery tag 999",
    )
    assert_connection_usable(conn)
    healthy()


def test_double_ack(connect, healthy):
    conn = connect()
    chan = conn.channel()
    q = chan.queue_declare("", exclusive=True).method.queue
    chan.basic_publish("", q, b"once")
    method, _, _ = get_message(chan, q)
    tag = method.delivery_tag
    chan.basic_ack(tag)
    sync_point(chan)  # the first ack is fine
    chan.basic_ack(tag)
    channel_error(
        lambda: sync_point(chan),
        406,
        f"PRECONDITION_FAILED - unknown delivery tag {tag}",
    )
    assert_connection_usable(conn)
    healthy()


def test_reject_and_nack_unknown_tag(connect, healthy):
    conn = connect()
    for op in ("reject", "nack"):
        chan = conn.channel()
        if op == "reject":
            chan.basic_reject(delivery_tag=42)
        else:
            chan.basic_nack(delivery_tag=42)
        channel_error(
            lambda c=chan: sync_point(c),
            406,
            "PRECONDITION_FAILED - unknown delivery tag 42",
        )
    assert_connection_usable(conn)
    healthy()


def test_queue_delete_if_empty(connect, uniq, cleanup, healthy):
    conn = connect()
    chan = conn.channel()
    name = cleanup.queue(uniq("ifempty"))
    chan.queue_declare(name)
    chan.basic_publish("", name, b"x")
    assert wait_message_count(chan, name, 1) == 1
    channel_error(
        lambda: chan.queue_delete(name, if_empty=True),
        406,
        f"PRECONDITION_FAILED - queue '{name}' in vhost '{conn_vhost(conn)}' not empty",
    )
    assert_connection_usable(conn)
    healthy()


def test_queue_delete_if_empty_ignores_unacked(connect, uniq, cleanup):
    """RabbitMQ: if-empty looks at ready messages only; a queue whose only
    message is delivered-but-unacked is deleted (the unacked message is lost)."""
    conn = connect()
    chan = conn.channel()
    name = cleanup.queue(uniq("ifempty-unacked"))
    chan.queue_declare(name)
    chan.basic_publish("", name, b"x")
    holder = conn.channel()
    get_message(holder, name)  # now unacked on `holder`
    assert chan.queue_declare(name, passive=True).method.message_count == 0
    assert chan.queue_delete(name, if_empty=True).method.message_count == 0
    channel_error(
        lambda: chan.queue_declare(name, passive=True),
        404,
        "NOT_FOUND - no queue",
    )


def conn_vhost(conn: pika.BlockingConnection) -> str:
    return conn._impl.params.virtual_host


def test_queue_delete_if_unused(connect, uniq, cleanup, healthy):
    conn = connect()
    chan = conn.channel()
    name = cleanup.queue(uniq("ifunused"))
    chan.queue_declare(name)
    consumer_ch = conn.channel()
    consumer_ch.basic_consume(name, lambda *a: None)
    channel_error(
        lambda: chan.queue_delete(name, if_unused=True),
        406,
        f"PRECONDITION_FAILED - queue '{name}' in vhost '{conn_vhost(conn)}' in use",
    )
    assert_connection_usable(conn)
    # Without a consumer the same call succeeds.
    consumer_ch.close()
    conn.channel().queue_delete(name, if_unused=True)
    healthy()


def test_exchange_delete_if_unused(connect, uniq, cleanup, healthy):
    conn = connect()
    chan = conn.channel()
    ex = cleanup.exchange(uniq("ex-ifunused"))
    chan.exchange_declare(ex, "fanout")
    q = chan.queue_declare("", exclusive=True).method.queue
    chan.queue_bind(q, ex)
    channel_error(
        lambda: chan.exchange_delete(ex, if_unused=True),
        406,
        f"PRECONDITION_FAILED - exchange '{ex}' in vhost '{conn_vhost(conn)}' in use",
    )
    assert_connection_usable(conn)
    healthy()


def test_cc_header_must_be_an_array(connect, uniq, healthy):
    conn = connect()
    chan = conn.channel()
    q = chan.queue_declare("", exclusive=True).method.queue
    chan.basic_publish(
        "", q, b"x", pika.BasicProperties(headers={"CC": "not-an-array"})
    )
    channel_error(lambda: sync_point(chan), 406, "PRECONDITION_FAILED")
    assert_connection_usable(conn)
    healthy()


# ---------------------------------------------------------------- 403


@pytest.mark.parametrize("kind", ["exchange", "queue"])
def test_declare_reserved_amq_prefix(connect, uniq, healthy, kind):
    conn = connect()
    chan = conn.channel()
    name = "amq." + uniq("reserved")
    ops = {
        "exchange": lambda: chan.exchange_declare(name, "direct"),
        "queue": lambda: chan.queue_declare(name),
    }
    channel_error(
        ops[kind],
        403,
        f"ACCESS_REFUSED - {kind} name '{name}' contains reserved prefix 'amq.*'",
    )
    assert_connection_usable(conn)
    healthy()


def test_passive_declare_of_amq_prefixed_missing_exchange_is_404(
    connect, uniq
):
    """Passive declares check existence only, the reserved prefix does not apply."""
    chan = connect().channel()
    name = "amq." + uniq("nope")
    channel_error(
        lambda: chan.exchange_declare(name, passive=True),
        404,
        "NOT_FOUND - no exchange",
    )


def test_publish_to_internal_exchange(connect, uniq, cleanup, healthy):
    conn = connect()
    chan = conn.channel()
    ex = cleanup.exchange(uniq("internal"))
    chan.exchange_declare(ex, "fanout", internal=True)
    chan.basic_publish(ex, "", b"x")
    channel_error(
        lambda: sync_point(chan),
        403,
        f"ACCESS_REFUSED - cannot publish to internal exchange '{ex}' in vhost",
    )
    assert_connection_usable(conn)
    healthy()


def test_exclusive_consume_on_queue_with_consumers(connect, uniq, healthy):
    conn = connect()
    chan = conn.channel()
    q = chan.queue_declare("", exclusive=True).method.queue
    chan.basic_consume(q, lambda *a: None)
    chan2 = conn.channel()
    channel_error(
        lambda: chan2.basic_consume(q, lambda *a: None, exclusive=True),
        403,
        f"ACCESS_REFUSED - queue '{q}' in vhost '{conn_vhost(conn)}' in exclusive use",
    )
    assert_connection_usable(conn)
    healthy()


def test_consume_on_queue_with_exclusive_consumer(connect, uniq, healthy):
    conn = connect()
    chan = conn.channel()
    q = chan.queue_declare("", exclusive=True).method.queue
    chan.basic_consume(q, lambda *a: None, exclusive=True)
    chan2 = conn.channel()
    channel_error(
        lambda: chan2.basic_consume(q, lambda *a: None),
        403,
        f"ACCESS_REFUSED - queue '{q}' in vhost '{conn_vhost(conn)}' in exclusive use",
    )
    assert_connection_usable(conn)
    healthy()


def test_bad_credentials_with_auth_failure_close(raw, broker, healthy):
    """Clients advertising authentication_failure_close get 403 before the socket closes."""
    r: RawClient = raw()
    r.send(PROTOCOL_HEADER)
    r.expect(commands.Connection.Start)
    r.send_frame(
        commands.Connection.StartOk(
            client_properties={
                "capabilities": {"authentication_failure_close": True}
            },
            mechanism="PLAIN",
            response=f"\0{broker.user}\0wrong-password",
        )
    )
    close = r.expect_connection_close()
    assert close.reply_code == 403
    assert close.reply_text.startswith("ACCESS_REFUSED - Login was refused")
    healthy()


def test_bad_credentials_pika(broker, healthy):
    params = pika.ConnectionParameters(
        host=broker.host,
        port=broker.port,
        virtual_host=broker.vhost,
        credentials=pika.PlainCredentials(broker.user, "wrong-password"),
        connection_attempts=1,
        socket_timeout=5,
        stack_timeout=10,
    )
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as info:
        pika.BlockingConnection(params)
    assert "403" in str(info.value) and "ACCESS_REFUSED" in str(info.value)
    healthy()


# ---------------------------------------------------------------- 530


def test_open_missing_vhost_raw(raw, uniq, healthy):
    r: RawClient = raw()
    vhost = uniq("no-such-vhost")
    r.send(PROTOCOL_HEADER)
    r.expect(commands.Connection.Start)
    r.send_frame(
        commands.Connection.StartOk(
            mechanism="PLAIN",
            response=f"\0{r.broker.user}\0{r.broker.password}",
        )
    )
    tune = r.expect(commands.Connection.Tune)
    r.send_frame(
        commands.Connection.TuneOk(
            channel_max=tune.channel_max, frame_max=tune.frame_max, heartbeat=0
        )
    )
    r.send_frame(commands.Connection.Open(virtual_host=vhost))
    close = r.expect_connection_close()
    assert close.reply_code == 530
    assert close.reply_text == f"NOT_ALLOWED - vhost {vhost} not found"
    healthy()


def test_open_missing_vhost_pika(broker, uniq, healthy):
    vhost = uniq("no-such-vhost")
    params = pika.ConnectionParameters(
        host=broker.host,
        port=broker.port,
        virtual_host=vhost,
        credentials=pika.PlainCredentials(broker.user, broker.password),
        connection_attempts=1,
        socket_timeout=5,
        stack_timeout=10,
    )
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as info:
        pika.BlockingConnection(params)
    assert "(530)" in str(info.value)
    assert f"NOT_ALLOWED - vhost {vhost} not found" in str(info.value)
    healthy()


def test_reuse_consumer_tag_on_same_channel(broker, healthy):
    # pika refuses a duplicate tag client-side, so use py-amqp.
    conn = amqp_connect(broker)
    try:
        chan = conn.channel()
        q, _, _ = chan.queue_declare("", exclusive=True)
        chan.basic_consume(q, consumer_tag="dup-tag", callback=lambda m: None)
        with pytest.raises(amqp.exceptions.NotAllowed) as info:
            chan.basic_consume(
                q, consumer_tag="dup-tag", callback=lambda m: None
            )
        assert info.value.reply_code == 530
        assert info.value.reply_text.startswith(
            "NOT_ALLOWED - attempt to reuse consumer tag 'dup-tag'"
        )
        # It is a hard error: the connection is gone (py-amqp saw
        # connection.close, answered close-ok and marked itself closed).
        assert not conn.connected
        with pytest.raises(amqp.exceptions.RecoverableConnectionError):
            conn.channel()
    finally:
        with contextlib.suppress(Exception):
            conn.collect()
    healthy()


def test_same_consumer_tag_on_different_channels_is_fine(connect):
    conn = connect()
    q = conn.channel().queue_declare("", exclusive=True).method.queue
    a, b = conn.channel(), conn.channel()
    assert (
        a.basic_consume(q, lambda *x: None, consumer_tag="shared") == "shared"
    )
    assert (
        b.basic_consume(q, lambda *x: None, consumer_tag="shared") == "shared"
    )


# ---------------------------------------------------------------- 540


def test_qos_prefetch_size_closes_connection(connect, healthy):
    conn = connect()
    chan = conn.channel()
    connection_error(
        lambda: chan.basic_qos(prefetch_size=10),
        540,
        "NOT_IMPLEMENTED - prefetch_size!=0 (10)",
    )
    assert conn.is_closed
    healthy()


def test_recover_without_requeue_closes_connection(connect, healthy):
    conn = connect()
    chan = conn.channel()
    connection_error(
        lambda: chan.basic_recover(requeue=False),
        540,
        "NOT_IMPLEMENTED - requeue=false",
    )
    assert conn.is_closed
    healthy()


def test_publish_immediate_closes_connection(broker, healthy):
    # pika has no immediate flag; py-amqp still sends it.
    conn = amqp_connect(broker)
    try:
        chan = conn.channel()
        q, _, _ = chan.queue_declare("", exclusive=True)
        chan.basic_publish(
            amqp.Message(b"x"), exchange="", routing_key=q, immediate=True
        )
        exc = drain_until_error(conn)
        assert isinstance(exc, amqp.exceptions.AMQPNotImplementedError), exc
        assert exc.reply_code == 540
        assert exc.reply_text == "NOT_IMPLEMENTED - immediate=true"
    finally:
        with contextlib.suppress(Exception):
            conn.collect()
    healthy()


# ---------------------------------------------------------------- 503 / 406: unknown exchange type


def test_unknown_exchange_type(connect, uniq, healthy):
    """RabbitMQ 3.10 closes the connection with 503 COMMAND_INVALID; releases
    since 2024 close the channel with 406 (traps: the newer is preferred).
    Either is accepted; anything else fails."""
    conn = connect()
    chan = conn.channel()
    name = uniq("badtype")
    with pytest.raises(
        (
            pika.exceptions.ChannelClosedByBroker,
            pika.exceptions.ConnectionClosedByBroker,
        )
    ) as info:
        chan.exchange_declare(name, exchange_type="no-such-type")
    exc = info.value
    if isinstance(exc, pika.exceptions.ConnectionClosedByBroker):
        assert exc.reply_code == 503
        assert exc.reply_text.startswith(
            "COMMAND_INVALID - unknown exchange type 'no-such-type'"
        )
        assert conn.is_closed
    else:
        assert exc.reply_code == 406
        assert "no-such-type" in exc.reply_text
        assert_connection_usable(conn)
    healthy()


# ---------------------------------------------------------------- raw frames


@pytest.fixture
def opened(raw) -> RawClient:
    """A raw connection after a full handshake, with channel 1 open."""
    r: RawClient = raw()
    r.handshake()
    r.open_channel(1)
    return r


def assert_hard_close(
    r: RawClient, code: int, prefix: str, wait_eof: bool = True
) -> Any:
    close = r.expect_connection_close(wait_eof=wait_eof)
    assert close.reply_code == code, (close.reply_code, close.reply_text)
    assert close.reply_text.startswith(prefix), close.reply_text
    return close


def test_method_on_unopened_channel_is_504(opened, healthy):
    opened.send_frame(commands.Queue.Declare(queue="", exclusive=True), 3)
    close = assert_hard_close(
        opened, 504, "CHANNEL_ERROR - expected 'channel.open'"
    )
    assert (close.class_id, close.method_id) == (50, 10)
    healthy()


def test_second_channel_open_is_504(opened, healthy):
    # RabbitMQ: 504 CHANNEL_ERROR (the spec would suggest 503 COMMAND_INVALID).
    opened.send_frame(commands.Channel.Open(), 1)
    assert_hard_close(
        opened, 504, "CHANNEL_ERROR - second 'channel.open' seen"
    )
    healthy()


def test_non_connection_method_on_channel_zero_is_504(opened, healthy):
    opened.send_frame(commands.Queue.Declare(queue="", exclusive=True), 0)
    assert_hard_close(
        opened,
        504,
        "CHANNEL_ERROR - unexpected method in connection state running",
    )
    healthy()


def test_body_without_header_is_505(opened, healthy):
    opened.send_frame(
        commands.Basic.Publish(exchange="", routing_key="nowhere"), 1
    )
    opened.send(raw_frame(pconst.FRAME_BODY, 1, b"hello"))
    assert_hard_close(
        opened,
        505,
        "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead",
    )
    healthy()


def test_body_without_publish_is_505(opened, healthy):
    opened.send(raw_frame(pconst.FRAME_BODY, 1, b"hello"))
    assert_hard_close(
        opened,
        505,
        "UNEXPECTED_FRAME - expected method frame, got non method frame instead",
    )
    healthy()


def test_header_without_publish_is_505(opened, healthy):
    opened.send_frame(pheader.ContentHeader(body_size=1), 1)
    assert_hard_close(
        opened,
        505,
        "UNEXPECTED_FRAME - expected method frame, got non method frame instead",
    )
    healthy()


def test_method_instead_of_content_header_is_505(opened, healthy):
    opened.send_frame(
        commands.Basic.Publish(exchange="", routing_key="nowhere"), 1
    )
    opened.send_frame(commands.Basic.Qos(prefetch_count=1), 1)
    assert_hard_close(
        opened,
        505,
        "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead",
    )
    healthy()


def test_content_header_for_wrong_class_is_505(opened, healthy):
    opened.send_frame(
        commands.Basic.Publish(exchange="", routing_key="nowhere"), 1
    )
    opened.send(
        raw_frame(pconst.FRAME_HEADER, 1, struct.pack(">HHQH", 50, 0, 1, 0))
    )
    assert_hard_close(
        opened,
        505,
        "UNEXPECTED_FRAME - expected content header for class 60, got one for class 50 instead",
    )
    healthy()


def test_heartbeat_on_nonzero_channel_is_505(opened, healthy):
    # RabbitMQ 3.10: connection.close 505 "UNEXPECTED_FRAME - type 8, ..." (as the traps note says).
    opened.send(raw_frame(pconst.FRAME_HEARTBEAT, 1, b""))
    assert_hard_close(opened, 505, "UNEXPECTED_FRAME")
    healthy()


def test_heartbeat_on_channel_zero_is_fine(opened):
    opened.send(raw_frame(pconst.FRAME_HEARTBEAT, 0, b""))
    # Still alive: a synchronous method gets its answer.
    opened.send_frame(commands.Basic.Qos(prefetch_count=5), 1)
    chan, value = opened.read_frame()
    assert (chan, type(value)) == (1, commands.Basic.QosOk)


def test_bad_frame_end_is_501(opened, healthy):
    payload = method_payload(commands.Queue.Declare(queue="", exclusive=True))
    opened.send(raw_method_frame(1, payload, frame_end=0x00))
    # RabbitMQ stops reading after a framing error and drops the socket
    # about 3 s after its connection.close; don't wait for that.
    assert_hard_close(opened, 501, "FRAME_ERROR", wait_eof=False)
    healthy()


def test_frame_larger_than_frame_max_is_501(opened, healthy):
    frame_max = opened.frame_max
    assert frame_max >= 4096
    opened.send_frame(
        commands.Basic.Publish(exchange="", routing_key="nowhere"), 1
    )
    opened.send_frame(pheader.ContentHeader(body_size=frame_max * 2), 1)
    # frame_max counts the whole frame (7 header octets + payload + frame-end).
    opened.send(raw_frame(pconst.FRAME_BODY, 1, b"x" * (frame_max + 100)))
    # RabbitMQ stops reading after a framing error and drops the socket
    # about 3 s after its connection.close; don't wait for that.
    assert_hard_close(opened, 501, "FRAME_ERROR", wait_eof=False)
    healthy()


def test_frame_exactly_frame_max_is_accepted(raw, healthy):
    r: RawClient = raw()
    r.handshake(frame_max=4096)
    r.open_channel(1)
    r.send_frame(commands.Queue.Declare(queue="", exclusive=True), 1)
    _, declare_ok = r.read_frame()
    q = declare_ok.queue
    body = b"y" * (4096 - 8)  # 7 octets of header + 1 frame-end
    r.send_frame(commands.Basic.Publish(exchange="", routing_key=q), 1)
    r.send_frame(pheader.ContentHeader(body_size=len(body)), 1)
    r.send(raw_frame(pconst.FRAME_BODY, 1, body))
    r.send_frame(commands.Basic.Get(queue=q, no_ack=True), 1)
    _, get_ok = r.read_frame()
    assert isinstance(get_ok, commands.Basic.GetOk), get_ok
    _, hdr = r.read_frame()
    assert hdr.body_size == len(body)
    received = b""
    while len(received) < len(body):
        _, part = r.read_frame()
        assert isinstance(part, pbody.ContentBody)
        received += part.value
    assert received == body
    healthy()


def test_unknown_frame_type_is_501(opened, healthy):
    opened.send(raw_frame(9, 1, b"abc"))
    assert_hard_close(opened, 501, "FRAME_ERROR")
    healthy()


def test_truncated_method_arguments_is_501(opened, healthy):
    # RabbitMQ reports undecodable method arguments as 501 FRAME_ERROR
    # ("cannot decode ..."), not 502 SYNTAX_ERROR.
    opened.send(raw_method_frame(1, struct.pack(">HH", 50, 10) + b"\x00"))
    close = assert_hard_close(opened, 501, "FRAME_ERROR - cannot decode")
    assert (close.class_id, close.method_id) == (50, 10)
    healthy()


def test_invalid_field_table_in_method_kills_connection(opened, healthy):
    """queue.declare whose arguments table has an unknown type tag.

    RabbitMQ 3.10 drops the socket without a connection.close (no 502 on the
    wire). A connection.close with 502 SYNTAX_ERROR (the spec's code) is
    also accepted; the connection must not survive either way."""
    table = b"\x01kZ\x00"  # key "k", type tag 'Z' (undefined)
    payload = (
        struct.pack(">HHH", 50, 10, 0)
        + b"\x00"  # queue name ""
        + bytes([0b00100])  # exclusive
        + struct.pack(">I", len(table))
        + table
    )
    opened.send(raw_method_frame(1, payload))
    try:
        _, value = opened.read_frame()
    except Closed:
        pass  # RabbitMQ's behaviour
    else:
        assert isinstance(value, commands.Connection.Close), value
        assert value.reply_code == 502, value.reply_text
        opened.read_until_eof()
    healthy()


def test_invalid_field_table_in_content_header_kills_connection(
    opened, healthy
):
    """A content header whose `headers` table has an unknown type tag.

    RabbitMQ 3.10 answers connection.close 541 INTERNAL_ERROR (its decoder
    crashes); 502 SYNTAX_ERROR is accepted as the better answer. Either way
    it is a hard error."""
    opened.send_frame(commands.Queue.Declare(queue="", exclusive=True), 1)
    _, declare_ok = opened.read_frame()
    table = b"\x01kZ\x00"
    props = struct.pack(">H", 0x2000) + struct.pack(">I", len(table)) + table
    opened.send_frame(
        commands.Basic.Publish(exchange="", routing_key=declare_ok.queue), 1
    )
    opened.send(
        raw_frame(
            pconst.FRAME_HEADER, 1, struct.pack(">HHQ", 60, 0, 1) + props
        )
    )
    opened.send(raw_frame(pconst.FRAME_BODY, 1, b"x"))
    opened.send_frame(
        commands.Basic.Get(queue=declare_ok.queue, no_ack=True), 1
    )
    close = opened.expect_connection_close()
    assert close.reply_code in (502, 541), (close.reply_code, close.reply_text)
    healthy()


@pytest.mark.parametrize(
    "header",
    [
        b"AMQP\x00\x00\x09\x02",
        b"AMQP\x00\x00\x08\x00",
        b"GET / HTTP/1.1\r\n\r\n",
    ],
    ids=["0-9-2", "0-8-0", "http"],
)
def test_bad_protocol_header(raw, header, healthy):
    r: RawClient = raw()
    r.send(header)
    assert r.read_until_eof() == PROTOCOL_HEADER
    healthy()


def test_channel_max_exceeded_is_530(raw, healthy):
    """With channel_max=2 negotiated, a third open channel is refused."""
    r: RawClient = raw()
    r.handshake(channel_max=2)
    r.open_channel(1)
    r.open_channel(2)
    r.send_frame(commands.Channel.Open(), 3)
    assert_hard_close(
        r,
        530,
        "NOT_ALLOWED - number of channels opened (2) has reached the negotiated channel_max (2)",
    )
    healthy()


def test_channel_max_counts_open_channels_not_ids(raw):
    """Channel ids above channel_max are fine while fewer channels are open."""
    r: RawClient = raw()
    r.handshake(channel_max=2)
    r.open_channel(1)
    r.open_channel(2)
    r.send_frame(
        commands.Channel.Close(
            reply_code=200, reply_text="bye", class_id=0, method_id=0
        ),
        2,
    )
    chan, value = r.read_frame()
    assert (chan, type(value)) == (2, commands.Channel.CloseOk)
    r.open_channel(5)


def test_method_before_connection_open_is_505(raw, healthy):
    """A channel.open right after tune-ok, before connection.open."""
    r: RawClient = raw()
    r.send(PROTOCOL_HEADER)
    r.expect(commands.Connection.Start)
    r.send_frame(
        commands.Connection.StartOk(
            mechanism="PLAIN",
            response=f"\0{r.broker.user}\0{r.broker.password}",
        )
    )
    tune = r.expect(commands.Connection.Tune)
    r.send_frame(
        commands.Connection.TuneOk(
            channel_max=tune.channel_max, frame_max=tune.frame_max, heartbeat=0
        )
    )
    r.send_frame(commands.Channel.Open(), 1)
    assert_hard_close(r, 505, "UNEXPECTED_FRAME")
    healthy()
