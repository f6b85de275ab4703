"""Fidelity round 2: protocol answers checked against RabbitMQ 3.10.

Differential: run with ``MQBROKER_EXTERNAL_URL`` to hold each expectation
against RabbitMQ itself. Where mqbroker deliberately answers differently
(a refused tune-ok gets a 530 close instead of a silent 3 s wait and a
reset; a 501 close drops the socket at once) the test says so and checks
only what both do: the connection ends.
"""

from __future__ import annotations

import struct
import time
from typing import Any

import pika
import pika.exceptions
import pytest
from pamqp import body as pbody
from pamqp import commands
from pamqp import header as pheader

from support.frames import PROTOCOL_HEADER, raw_frame, raw_method_frame
from support.raw import Closed, RawClient

Props = commands.Basic.Properties


def _channel_close(r: RawClient, *methods: Any) -> Any:
    """Send methods on channel 1; return the first close that comes back."""
    for method in methods:
        r.send_frame(method, 1)
    deadline = time.monotonic() + 5
    while True:
        chan, value = r.read_frame(max(deadline - time.monotonic(), 0.01))
        if isinstance(value, commands.Channel.Close | commands.Connection.Close):
            return chan, value


@pytest.fixture
def opened(raw: Any) -> RawClient:
    r: RawClient = raw()
    r.handshake()
    r.open_channel(1)
    return r


def _close_ids(close: Any) -> tuple[int, int, int]:
    return close.reply_code, close.class_id, close.method_id


# ------------------------------------------- class/method ids in closes


def test_publish_to_missing_exchange_names_basic_publish(opened: RawClient, uniq: Any) -> None:
    opened.send_frame(commands.Basic.Publish(exchange=uniq("nope"), routing_key="k"), 1)
    opened.send_frame(pheader.ContentHeader(0, 1, Props()), 1)
    opened.send_frame(pbody.ContentBody(b"x"), 1)
    _, close = _channel_close(opened)
    assert _close_ids(close) == (404, 60, 40)


def test_second_channel_open_names_channel_open(opened: RawClient) -> None:
    chan, close = _channel_close(opened, commands.Channel.Open())
    assert chan == 0
    assert _close_ids(close) == (504, 20, 10)


def test_open_missing_vhost_close_ids(raw: Any, broker: Any, uniq: Any) -> None:
    r: RawClient = raw()
    _tune_ok_only(r, broker, None, None)
    r.send_frame(commands.Connection.Open(virtual_host=uniq("novhost")))
    close = r.expect(commands.Connection.Close)
    assert _close_ids(close) == (530, 10, 40)
    assert "not found" in close.reply_text


@pytest.mark.parametrize(
    ("make", "ids"),
    [
        (lambda n: commands.Queue.Bind(queue=n, exchange="amq.direct", routing_key="k"), (404, 50, 20)),
        (lambda n: commands.Basic.Consume(queue=n), (404, 60, 20)),
        (lambda n: commands.Queue.Purge(queue=n), (404, 50, 30)),
        (lambda n: commands.Basic.Get(queue=n), (404, 60, 70)),
        (lambda n: commands.Basic.Ack(delivery_tag=99), (406, 60, 80)),
        (lambda n: commands.Tx.Commit(), (406, 90, 20)),
        (lambda n: commands.Exchange.Bind(destination=n, source="amq.direct"), (404, 40, 30)),
    ],
)
def test_channel_close_names_the_method(opened: RawClient, uniq: Any, make: Any, ids: Any) -> None:
    _, close = _channel_close(opened, make(uniq("missing")))
    assert _close_ids(close) == ids


# ------------------------------------------------------ declare rules


def test_declare_default_exchange_is_403(opened: RawClient) -> None:
    _, close = _channel_close(opened, commands.Exchange.Declare(exchange="", exchange_type="direct"))
    assert _close_ids(close) == (403, 40, 10)
    assert close.reply_text == "ACCESS_REFUSED - operation not permitted on the default exchange"


def test_passive_declare_default_exchange_is_403(opened: RawClient) -> None:
    _, close = _channel_close(opened, commands.Exchange.Declare(exchange="", passive=True))
    assert _close_ids(close) == (403, 40, 10)


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        (
            {"arguments": {"x-dead-letter-routing-key": "k"}},
            "invalid arg 'x-dead-letter-routing-key' for queue '{q}' in vhost '/': "
            "routing_key_but_no_dlx_defined",
        ),
        (
            {"arguments": {"x-dead-letter-exchange": 5}},
            "invalid type 'byte' for arg 'x-dead-letter-exchange' in queue '{q}' in vhost '/'",
        ),
        (
            {"arguments": {"x-single-active-consumer": "yes"}},
            "invalid arg 'x-single-active-consumer' for queue '{q}' in vhost '/': "
            "{{unacceptable_type,longstr}}",
        ),
        (
            {"durable": True, "auto_delete": True, "arguments": {"x-queue-type": "quorum"}},
            "invalid property 'auto-delete' for queue '{q}' in vhost '/'",
        ),
        (
            {"durable": True, "exclusive": True, "arguments": {"x-queue-type": "quorum"}},
            "invalid property 'exclusive-owner' for queue '{q}' in vhost '/'",
        ),
        (
            {"durable": True, "arguments": {"x-queue-type": "quorum", "x-max-priority": 5}},
            "invalid arg 'x-max-priority' for queue '{q}' in vhost '/' of queue type "
            "rabbit_quorum_queue",
        ),
        (
            {"durable": False, "arguments": {"x-queue-type": "quorum"}},
            "invalid property 'non-durable' for queue '{q}' in vhost '/'",
        ),
    ],
)
def test_queue_declare_refusals(opened: RawClient, uniq: Any, kwargs: Any, text: str) -> None:
    name = uniq("q")
    _, close = _channel_close(opened, commands.Queue.Declare(queue=name, **kwargs))
    assert _close_ids(close) == (406, 50, 10)
    assert close.reply_text == "PRECONDITION_FAILED - " + text.format(q=name)


def test_server_named_quorum_queue_is_refused(opened: RawClient) -> None:
    _, close = _channel_close(
        opened,
        commands.Queue.Declare(queue="", durable=True, arguments={"x-queue-type": "quorum"}),
    )
    assert _close_ids(close) == (406, 50, 10)
    assert close.reply_text == (
        "PRECONDITION_FAILED - Cannot declare a server-named queue for type rabbit_quorum_queue"
    )


def test_redeclare_with_classic_type_is_equivalent(broker: Any, uniq: Any) -> None:
    name = uniq("q")
    conn = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port))
    try:
        ch = conn.channel()
        ch.queue_declare(name, auto_delete=True)
        ok = ch.queue_declare(name, auto_delete=True, arguments={"x-queue-type": "classic"})
        assert ok.method.queue == name
        ch.queue_delete(name)
    finally:
        conn.close()


# ------------------------------------------------------- framing rules


def _tune_ok_only(r: RawClient, broker: Any, channel_max: int | None, frame_max: int | None) -> Any:
    r.send(PROTOCOL_HEADER)
    r.expect(commands.Connection.Start)
    r.send_frame(
        commands.Connection.StartOk(
            client_properties={}, mechanism="PLAIN",
            response=f"\0{broker.user}\0{broker.password}", locale="en_US",
        )
    )
    tune = r.expect(commands.Connection.Tune)
    r.send_frame(
        commands.Connection.TuneOk(
            channel_max=tune.channel_max if channel_max is None else channel_max,
            frame_max=tune.frame_max if frame_max is None else frame_max,
            heartbeat=0,
        )
    )
    return tune


@pytest.mark.parametrize(
    ("channel_max", "frame_max", "text"),
    [
        (65535, None, "negotiated channel_max = 65535 is higher than the maximum allowed value (2047)"),
        (0, None, "negotiated channel_max = 0 (no limit) is higher than the maximum allowed value (2047)"),
        (None, 10_000_000, "negotiated frame_max = 10000000 is higher than the maximum allowed value (131072)"),
        (None, 0, "negotiated frame_max = 0 (no limit) is higher than the maximum allowed value (131072)"),
        (None, 1024, "negotiated frame_max = 1024 is lower than the minimum allowed value (4096)"),
    ],
)
def test_tune_ok_beyond_the_offer_ends_the_connection(
    raw: Any, broker: Any, channel_max: int | None, frame_max: int | None, text: str
) -> None:
    r: RawClient = raw(timeout=10)
    _tune_ok_only(r, broker, channel_max, frame_max)
    if broker.external:
        # RabbitMQ 3.10 says nothing: it waits 3 s and resets the socket.
        with pytest.raises((Closed, ConnectionResetError)):
            r.read_frame(timeout=8)
        return
    # mqbroker says why (530, caused by connection.tune) and closes at once.
    chan, close = r.read_frame()
    assert chan == 0 and _close_ids(close) == (530, 10, 30)
    assert close.reply_text == "NOT_ALLOWED - " + text
    assert r.read_until_eof(timeout=1.0) == b""


def test_body_longer_than_declared_is_505(opened: RawClient, broker: Any) -> None:
    opened.send_frame(commands.Basic.Publish(exchange="", routing_key="nowhere"), 1)
    opened.send_frame(pheader.ContentHeader(0, 3, Props()), 1)
    opened.send_frame(pbody.ContentBody(b"hello"), 1)
    if broker.external:
        pytest.skip("RabbitMQ 3.10 waits for more body forever (newer ones answer 505)")
    close = opened.expect_connection_close()
    assert _close_ids(close) == (505, 60, 40)
    assert close.reply_text.startswith("UNEXPECTED_FRAME - content body of 5 bytes")


def test_socket_closes_right_after_a_501(opened: RawClient, broker: Any) -> None:
    # A method frame whose end octet is wrong: framing is lost.
    opened.send(b"\x01\x00\x01\x00\x00\x00\x04\x00\x3c\x00\x28\x00")
    chan, close = opened.read_frame()
    assert chan == 0 and close.reply_code == 501
    started = time.monotonic()
    opened.read_until_eof(timeout=5.0)
    if not broker.external:  # RabbitMQ 3.10 waits 3 s before it resets
        assert time.monotonic() - started < 1.0


# ------------------------------------------------ maximum message size


def test_message_over_max_size_is_406(broker: Any, uniq: Any) -> None:
    conn = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port))
    try:
        ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.basic_publish("", uniq("q"), b"x" * (128 * 1024 * 1024 + 1))
            ch.queue_declare(uniq("q"), exclusive=True)  # a round trip
        assert info.value.reply_code == 406
        assert info.value.reply_text == (
            "PRECONDITION_FAILED - message size 134217729 is larger than "
            "configured max size 134217728"
        )
    finally:
        if conn.is_open:
            conn.close()


def test_large_persistent_message_round_trips(broker: Any, uniq: Any) -> None:
    """A body over 16 MiB is assembled in one buffer; it must arrive whole."""
    name = uniq("q")
    body = bytes(range(256)) * (20 * 4096 + 3)  # ~20 MiB, not frame-aligned
    conn = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare(name, durable=True)
        ch.basic_publish("", name, body, pika.BasicProperties(delivery_mode=2))
        _, _, got = ch.basic_get(name, auto_ack=True)
        assert got == body
        ch.queue_delete(name)
    finally:
        conn.close()


# --------------------------------------------------------------- TTL 0


def _pika(broker: Any) -> Any:
    return pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port))


@pytest.mark.parametrize("how", ["expiration", "x-message-ttl"])
def test_ttl_zero_without_consumer_is_gone_once_confirmed(broker: Any, uniq: Any, how: str) -> None:
    name = uniq("q")
    conn = _pika(broker)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        args = {"x-message-ttl": 0} if how == "x-message-ttl" else {}
        ch.queue_declare(name, exclusive=True, arguments=args)
        props = pika.BasicProperties(expiration="0") if how == "expiration" else None
        for i in range(20):
            ch.basic_publish("", name, b"m%d" % i, props)
        # Confirmed: none of them may reach a consumer now or later.
        assert ch.queue_declare(name, passive=True).method.message_count == 0
        got: list[bytes] = []
        ch.basic_consume(name, lambda c, m, p, b: got.append(b), auto_ack=True)
        conn.process_data_events(time_limit=0.3)
        assert got == []
    finally:
        conn.close()


def test_ttl_zero_goes_to_a_waiting_consumer(broker: Any, uniq: Any) -> None:
    name = uniq("q")
    conn = _pika(broker)
    try:
        ch = conn.channel()
        ch.queue_declare(name, exclusive=True, arguments={"x-message-ttl": 0})
        got: list[bytes] = []
        ch.basic_consume(name, lambda c, m, p, b: got.append(b), auto_ack=True)
        pub = conn.channel()
        pub.confirm_delivery()
        pub.basic_publish("", name, b"now")
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.05)
        assert got == [b"now"]
    finally:
        conn.close()


def test_ttl_zero_dead_letters_at_once(broker: Any, uniq: Any) -> None:
    name, dlq = uniq("q"), uniq("dlq")
    conn = _pika(broker)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare(dlq, exclusive=True)
        ch.queue_declare(
            name, exclusive=True,
            arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq},
        )
        ch.basic_publish("", name, b"dead", pika.BasicProperties(expiration="0"))
        deadline = time.monotonic() + 5
        body = None
        while body is None and time.monotonic() < deadline:
            _, props, body = ch.basic_get(dlq, auto_ack=True)
        assert body == b"dead"
        assert props.headers["x-death"][0]["reason"] == "expired"
        assert ch.queue_declare(name, passive=True).method.message_count == 0
    finally:
        conn.close()


# ------------------------------------------------------ consumer cancel


def _read_quiet(r: RawClient, quiet: float = 0.5) -> list[Any]:
    """Every method frame until the broker has been quiet for ``quiet``."""
    seen = []
    while True:
        try:
            _, value = r.read_frame(timeout=quiet)
        except TimeoutError:
            return seen
        if isinstance(value, pheader.ContentHeader | pbody.ContentBody):
            continue
        seen.append(value)


@pytest.mark.parametrize("with_messages", [False, True])
def test_no_server_cancel_for_a_consumer_the_client_cancelled(
    raw: Any, uniq: Any, with_messages: bool
) -> None:
    """kombu cancels a consumer, then deletes its queue: only the consumer
    still there gets a server basic.cancel, after the delete-ok."""
    r: RawClient = raw()
    r.handshake()
    r.open_channel(1)
    name = uniq("q")
    r.send_frame(commands.Queue.Declare(queue=name, exclusive=True), 1)
    r.expect(commands.Queue.DeclareOk)
    r.send_frame(commands.Basic.Qos(prefetch_count=1), 1)
    r.expect(commands.Basic.QosOk)
    for tag in ("first", "second"):
        r.send_frame(commands.Basic.Consume(queue=name, consumer_tag=tag), 1)
        r.expect(commands.Basic.ConsumeOk)
    if with_messages:
        for _ in range(3):
            r.send_frame(commands.Basic.Publish(exchange="", routing_key=name), 1)
            r.send_frame(pheader.ContentHeader(0, 1, Props()), 1)
            r.send_frame(pbody.ContentBody(b"x"), 1)
    r.send_frame(commands.Basic.Cancel(consumer_tag="first"), 1)
    r.send_frame(commands.Queue.Delete(queue=name), 1)
    seen = [v for v in _read_quiet(r) if not isinstance(v, commands.Basic.Deliver)]
    names = [
        f"{type(v).__name__}:{v.consumer_tag}" if isinstance(v, commands.Basic.Cancel)
        else type(v).__name__
        for v in seen
    ]
    # (RabbitMQ may send the cancel-ok after the delete-ok when the
    # consumer had deliveries in flight: only these orders are promised.)
    assert sorted(names) == ["Cancel:second", "CancelOk", "DeleteOk"], names
    assert names.index("DeleteOk") < names.index("Cancel:second"), names


# ---------------------------------------- at-least-once dead-lettering


def _nack_all(conn: Any, ch: Any, queue: str, count: int) -> None:
    got: list[int] = []
    ch.basic_qos(prefetch_count=count)
    tag = ch.basic_consume(queue, lambda c, m, p, b: got.append(m.delivery_tag))
    deadline = time.monotonic() + 5
    while len(got) < count and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    ch.basic_cancel(tag)
    for t in got:
        ch.basic_nack(t, requeue=False)


def test_at_least_once_holds_a_dead_letter_until_the_target_takes_it(broker: Any, uniq: Any) -> None:
    if broker.external:
        pytest.skip("RabbitMQ resends a held dead letter only after its publisher-confirm "
                    "timeout (180 s by default); mqbroker retries every second")
    source, target = uniq("src"), uniq("dlq")
    conn = _pika(broker)
    try:
        ch = conn.channel()
        ch.queue_declare(target, durable=True, arguments={
            "x-max-length": 1, "x-overflow": "reject-publish"})
        ch.queue_declare(source, durable=True, arguments={
            "x-queue-type": "quorum", "x-overflow": "reject-publish",
            "x-dead-letter-strategy": "at-least-once",
            "x-dead-letter-exchange": "", "x-dead-letter-routing-key": target})
        ch.confirm_delivery()
        for body in (b"one", b"two"):
            ch.basic_publish("", source, body, pika.BasicProperties(delivery_mode=2))
        _nack_all(conn, ch, source, 2)
        deadline = time.monotonic() + 5
        while ch.queue_declare(target, passive=True).method.message_count < 1 and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.05)
        time.sleep(0.5)
        assert ch.queue_declare(target, passive=True).method.message_count == 1  # full
        _, _, first = ch.basic_get(target, auto_ack=True)  # room for one more
        body = None
        deadline = time.monotonic() + 20  # RabbitMQ retries on a timer too
        while body is None and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.2)
            _, _, body = ch.basic_get(target, auto_ack=True)
        assert {first, body} == {b"one", b"two"}  # the second was held, not lost
        ch.queue_delete(source)
        ch.queue_delete(target)
    finally:
        conn.close()


def test_at_most_once_is_the_default_and_drops(broker: Any, uniq: Any) -> None:
    source, target = uniq("src"), uniq("dlq")
    conn = _pika(broker)
    try:
        ch = conn.channel()
        ch.queue_declare(target, durable=True, arguments={
            "x-max-length": 1, "x-overflow": "reject-publish"})
        ch.queue_declare(source, durable=True, arguments={
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": "", "x-dead-letter-routing-key": target})
        ch.confirm_delivery()
        for body in (b"one", b"two"):
            ch.basic_publish("", source, body, pika.BasicProperties(delivery_mode=2))
        _nack_all(conn, ch, source, 2)
        time.sleep(0.5)
        ch.basic_get(target, auto_ack=True)
        time.sleep(1.5)
        conn.process_data_events(time_limit=0.1)
        assert ch.queue_declare(target, passive=True).method.message_count == 0  # the second is gone
        ch.queue_delete(source)
        ch.queue_delete(target)
    finally:
        conn.close()


# ------------------------------------------- headers exchange, arrays


def _shortstr(text: str) -> bytes:
    raw = text.encode()
    return bytes((len(raw),)) + raw


def _table(items: list[tuple[str, bytes]]) -> bytes:
    body = b"".join(_shortstr(k) + v for k, v in items)
    return struct.pack(">I", len(body)) + body


def _array(*elements: bytes) -> bytes:
    body = b"".join(elements)
    return b"A" + struct.pack(">I", len(body)) + body


_STR_A = b"S" + struct.pack(">I", 1) + b"a"
_INT_1 = b"I" + struct.pack(">i", 1)
_LONG_1 = b"l" + struct.pack(">q", 1)


def test_headers_exchange_compares_array_elements_with_their_types(raw: Any, uniq: Any) -> None:
    r: RawClient = raw()
    r.handshake()
    r.open_channel(1)
    exchange, queue = uniq("hx"), uniq("q")
    r.send_frame(commands.Exchange.Declare(exchange=exchange, exchange_type="headers", auto_delete=True), 1)
    r.expect(commands.Exchange.DeclareOk)
    r.send_frame(commands.Queue.Declare(queue=queue, exclusive=True), 1)
    r.expect(commands.Queue.DeclareOk)
    arguments = _table([("x-match", b"S" + struct.pack(">I", 3) + b"all"), ("k", _array(_STR_A, _INT_1))])
    bind = (
        struct.pack(">HHH", 50, 20, 0) + _shortstr(queue) + _shortstr(exchange)
        + _shortstr("") + b"\x00" + arguments
    )
    r.send(raw_method_frame(1, bind))
    r.expect(commands.Queue.BindOk)
    for body, element in ((b"int", _INT_1), (b"long", _LONG_1)):
        props = struct.pack(">H", 0x2000) + _table([("k", _array(_STR_A, element))])
        header = struct.pack(">HHQ", 60, 0, len(body)) + props
        r.send_frame(commands.Basic.Publish(exchange=exchange, routing_key=""), 1)
        r.send(raw_frame(2, 1, header))
        r.send(raw_frame(3, 1, body))
    time.sleep(0.3)
    r.send_frame(commands.Queue.Declare(queue=queue, passive=True), 1)
    ok = r.expect(commands.Queue.DeclareOk)
    assert ok.message_count == 1  # ["a", int 1] matched; ["a", long 1] did not
    r.send_frame(commands.Basic.Get(queue=queue, no_ack=True), 1)
    r.expect(commands.Basic.GetOk)
    r.read_frame()  # content header
    _, got = r.read_frame()
    assert got.value == b"int"


def test_reject_publish_overflow_is_a_nack_not_a_return(broker: Any, uniq: Any) -> None:
    """A queue that refuses a message (x-overflow reject-publish) still
    counts as a route: a mandatory publish is nacked, never returned
    (aio-pika's test_delivery_fail)."""
    name = uniq("q")
    conn = _pika(broker)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare(name, exclusive=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
        ch.basic_publish("", name, b"first", mandatory=True)
        with pytest.raises(pika.exceptions.NackError):
            ch.basic_publish("", name, b"refused", mandatory=True)
    finally:
        conn.close()
