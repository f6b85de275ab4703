"""The six RabbitMQ Python tutorials (pika BlockingConnection), as tests.

Each tutorial's program is condensed into producer and consumer code that
runs against the ``broker`` fixture, and its promised outcome is asserted.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pika
import pytest

from support.blocking import drain, pika_params
from support.waits import wait_for

pytestmark = pytest.mark.timeout(30)


# ---------------------------------------------------------------- 1. hello world


def test_hello_world(connect, uniq, cleanup):
    queue = cleanup.queue(uniq("hello"))

    # send.py
    sender = connect()
    send_ch = sender.channel()
    send_ch.queue_declare(queue=queue)
    send_ch.basic_publish(exchange="", routing_key=queue, body="Hello World!")
    sender.close()

    # receive.py
    receiver = connect()
    recv_ch = receiver.channel()
    recv_ch.queue_declare(queue=queue)  # idempotent redeclare
    received: list[tuple[Any, bytes]] = []

    def callback(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        received.append((method, body))

    recv_ch.basic_consume(
        queue=queue, on_message_callback=callback, auto_ack=True
    )
    wait_for(
        lambda: len(received) == 1, what="hello world message", conn=receiver
    )
    method, body = received[0]
    assert body == b"Hello World!"
    assert method.exchange == ""
    assert method.routing_key == queue
    assert method.redelivered is False
    # Nothing else was in the queue, and it is empty now (auto_ack).
    receiver.process_data_events(time_limit=0.2)
    assert len(received) == 1
    assert recv_ch.queue_declare(queue, passive=True).method.message_count == 0


# ---------------------------------------------------------------- 2. work queues


def test_work_queues_round_robin(connect, uniq, cleanup):
    """Without prefetch, messages are dealt out alternately to the workers."""
    queue = cleanup.queue(uniq("task_queue"))
    conn = connect()
    setup = conn.channel()
    setup.queue_declare(queue=queue, durable=True)

    got: dict[str, list[bytes]] = {"w1": [], "w2": []}
    for worker in ("w1", "w2"):
        ch = conn.channel()

        def cb(
            ch: Any, method: Any, props: Any, body: bytes, worker: str = worker
        ) -> None:
            got[worker].append(body)
            ch.basic_ack(delivery_tag=method.delivery_tag)

        ch.basic_consume(queue=queue, on_message_callback=cb)

    for i in range(10):
        setup.basic_publish(
            exchange="",
            routing_key=queue,
            body=f"task {i}".encode(),
            properties=pika.BasicProperties(
                delivery_mode=pika.DeliveryMode.Persistent
            ),
        )
    wait_for(
        lambda: len(got["w1"]) + len(got["w2"]) == 10, what="10 tasks", conn=conn
    )
    assert sorted(got["w1"] + got["w2"]) == sorted(
        f"task {i}".encode() for i in range(10)
    )
    # Strict alternation: each worker got every other message, in order.
    first, second = (
        (got["w1"], got["w2"])
        if got["w1"][0] == b"task 0"
        else (got["w2"], got["w1"])
    )
    assert first == [f"task {i}".encode() for i in range(0, 10, 2)]
    assert second == [f"task {i}".encode() for i in range(1, 10, 2)]


def test_work_queues_fair_dispatch(connect, uniq, cleanup):
    """prefetch_count=1 + manual ack: a busy worker gets no new task until it
    acks, so the idle worker takes everything else."""
    queue = cleanup.queue(uniq("task_queue"))
    producer = connect()
    pch = producer.channel()
    pch.queue_declare(queue=queue, durable=True)

    conn = connect()
    slow_ch = conn.channel()
    fast_ch = conn.channel()
    slow_ch.basic_qos(prefetch_count=1)
    fast_ch.basic_qos(prefetch_count=1)
    slow: list[tuple[int, bytes, Any]] = []
    fast: list[bytes] = []

    def slow_cb(ch: Any, method: Any, props: Any, body: bytes) -> None:
        slow.append(
            (method.delivery_tag, body, props)
        )  # "working": no ack yet

    def fast_cb(ch: Any, method: Any, props: Any, body: bytes) -> None:
        assert props.delivery_mode == 2
        fast.append(body)
        ch.basic_ack(delivery_tag=method.delivery_tag)

    slow_ch.basic_consume(queue=queue, on_message_callback=slow_cb)
    # Let the slow worker's consumer be registered first.
    wait_for(
        lambda: (
            pch.queue_declare(queue, passive=True).method.consumer_count == 1
        ),
        conn=conn,
    )
    fast_ch.basic_consume(queue=queue, on_message_callback=fast_cb)
    wait_for(
        lambda: (
            pch.queue_declare(queue, passive=True).method.consumer_count == 2
        ),
        conn=conn,
    )

    total = 8
    for i in range(total):
        pch.basic_publish(
            exchange="",
            routing_key=queue,
            body=f"task {i}".encode(),
            properties=pika.BasicProperties(
                delivery_mode=pika.DeliveryMode.Persistent
            ),
        )
    wait_for(
        lambda: len(slow) + len(fast) == total,
        what="all tasks dispatched",
        conn=conn,
    )
    assert len(slow) == 1, (slow, fast)
    assert len(fast) == total - 1
    assert slow[0][2].delivery_mode == 2
    # Order is preserved across the two workers.
    assert sorted([slow[0][1]] + fast, key=lambda b: int(b.split()[1])) == [
        f"task {i}".encode() for i in range(total)
    ]
    # The slow worker still holds exactly one unacked message.
    q = pch.queue_declare(queue, passive=True).method
    assert q.message_count == 0
    # Finish the slow task; the next one goes to whichever worker is free.
    slow_ch.basic_ack(delivery_tag=slow[0][0])
    pch.basic_publish(
        "",
        queue,
        b"task last",
        pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent),
    )
    wait_for(
        lambda: len(slow) + len(fast) == total + 1, what="last task", conn=conn
    )


def test_work_queue_unacked_task_is_redelivered_when_worker_dies(
    connect, uniq, cleanup
):
    queue = cleanup.queue(uniq("task_queue"))
    producer = connect()
    pch = producer.channel()
    pch.queue_declare(queue=queue, durable=True)
    pch.confirm_delivery()
    pch.basic_publish(
        "",
        queue,
        b"important",
        pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent),
    )

    worker = connect()
    wch = worker.channel()
    wch.basic_qos(prefetch_count=1)
    got: list[Any] = []
    wch.basic_consume(queue, lambda ch, m, p, b: got.append((m, b)))
    wait_for(lambda: len(got) == 1, conn=worker)
    assert got[0][0].redelivered is False
    worker.close()  # dies without acking

    worker2 = connect()
    wch2 = worker2.channel()
    got2: list[Any] = []
    wch2.basic_consume(
        queue,
        lambda ch, m, p, b: (
            got2.append((m, b)),
            ch.basic_ack(m.delivery_tag),
        ),
    )
    wait_for(lambda: len(got2) == 1, conn=worker2)
    assert got2[0][1] == b"important"
    assert got2[0][0].redelivered is True


# ---------------------------------------------------------------- 3. publish/subscribe


def test_publish_subscribe_fanout(connect, uniq, cleanup):
    exchange = cleanup.exchange(uniq("logs"))
    subscribers = []
    for _ in range(2):
        conn = connect()
        ch = conn.channel()
        ch.exchange_declare(exchange=exchange, exchange_type="fanout")
        result = ch.queue_declare(queue="", exclusive=True)
        queue_name = result.method.queue
        assert queue_name.startswith("amq.gen-")
        ch.queue_bind(exchange=exchange, queue=queue_name)
        received: list[bytes] = []
        ch.basic_consume(
            queue=queue_name,
            on_message_callback=lambda c, m, p, b, r=received: r.append(b),
            auto_ack=True,
        )
        subscribers.append((conn, ch, queue_name, received))
    assert subscribers[0][2] != subscribers[1][2]

    emitter = connect()
    ech = emitter.channel()
    ech.exchange_declare(exchange=exchange, exchange_type="fanout")
    for i in range(3):
        # The routing key is ignored by a fanout exchange.
        ech.basic_publish(
            exchange=exchange, routing_key=f"ignored-{i}", body=f"log {i}"
        )

    for conn, _ch, _q, received in subscribers:
        wait_for(lambda r=received: len(r) == 3, what="3 log lines", conn=conn)
        assert received == [b"log 0", b"log 1", b"log 2"]

    # An exclusive queue goes away with its connection.
    conn, _ch, qname, _ = subscribers[0]
    conn.close()
    probe = connect().channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        probe.queue_declare(qname, passive=True)
    assert info.value.reply_code == 404


def test_fanout_late_subscriber_misses_earlier_messages(
    connect, uniq, cleanup
):
    exchange = cleanup.exchange(uniq("logs"))
    conn = connect()
    ch = conn.channel()
    ch.exchange_declare(exchange, "fanout")
    ch.confirm_delivery()
    ch.basic_publish(
        exchange, "", b"nobody hears this"
    )  # no queue bound: dropped
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, exchange)
    ch.basic_publish(exchange, "", b"heard")
    assert drain(ch, q) == [b"heard"]


# ---------------------------------------------------------------- 4. routing


def test_routing_direct(connect, uniq, cleanup):
    exchange = cleanup.exchange(uniq("direct_logs"))
    conn = connect()
    ch = conn.channel()
    ch.exchange_declare(exchange=exchange, exchange_type="direct")
    errors_q = ch.queue_declare("", exclusive=True).method.queue
    all_q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(exchange=exchange, queue=errors_q, routing_key="error")
    for severity in ("info", "warning", "error"):  # multiple bindings
        ch.queue_bind(exchange=exchange, queue=all_q, routing_key=severity)

    pub = connect().channel()
    pub.confirm_delivery()
    for severity in ("info", "warning", "error", "debug"):
        pub.basic_publish(
            exchange=exchange, routing_key=severity, body=f"{severity}: msg"
        )

    assert drain(ch, errors_q) == [b"error: msg"]
    assert drain(ch, all_q) == [b"info: msg", b"warning: msg", b"error: msg"]


def test_routing_same_key_to_several_queues(connect, uniq, cleanup):
    """Multiple queues bound with the same key all get the message (like fanout)."""
    exchange = cleanup.exchange(uniq("direct"))
    ch = connect().channel()
    ch.exchange_declare(exchange, "direct")
    q1 = ch.queue_declare("", exclusive=True).method.queue
    q2 = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q1, exchange, "black")
    ch.queue_bind(q2, exchange, "black")
    ch.queue_bind(q1, exchange, "orange")
    ch.queue_bind(q2, exchange, "green")
    # Binding twice with the same key is idempotent: still one copy.
    ch.queue_bind(q1, exchange, "black")
    ch.confirm_delivery()
    for key in ("black", "orange", "green", "blue"):
        ch.basic_publish(exchange, key, key.encode())
    assert drain(ch, q1) == [b"black", b"orange"]
    assert drain(ch, q2) == [b"black", b"green"]


def test_routing_unbind(connect, uniq, cleanup):
    exchange = cleanup.exchange(uniq("direct"))
    ch = connect().channel()
    ch.exchange_declare(exchange, "direct")
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, exchange, "k")
    ch.confirm_delivery()
    ch.basic_publish(exchange, "k", b"1")
    ch.queue_unbind(q, exchange, "k")
    ch.basic_publish(exchange, "k", b"2")
    assert drain(ch, q) == [b"1"]


# ---------------------------------------------------------------- 5. topics

TOPIC_CASES = [
    # routing key, goes to Q1 ("*.orange.*"), goes to Q2 ("*.*.rabbit", "lazy.#")
    ("quick.orange.rabbit", True, True),
    ("lazy.orange.elephant", True, True),
    ("quick.orange.fox", True, False),
    ("lazy.brown.fox", False, True),
    (
        "lazy.pink.rabbit",
        False,
        True,
    ),  # matches both Q2 bindings: delivered once
    ("quick.brown.fox", False, False),
    ("orange", False, False),
    ("quick.orange.new.rabbit", False, False),
    ("lazy.orange.new.rabbit", False, True),
    ("quick.orange.male.rabbit", False, False),
    ("lazy", False, True),  # '#' matches zero words
]


def test_topics(connect, uniq, cleanup):
    exchange = cleanup.exchange(uniq("topic_logs"))
    ch = connect().channel()
    ch.exchange_declare(exchange=exchange, exchange_type="topic")
    q1 = ch.queue_declare("", exclusive=True).method.queue
    q2 = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q1, exchange, "*.orange.*")
    ch.queue_bind(q2, exchange, "*.*.rabbit")
    ch.queue_bind(q2, exchange, "lazy.#")

    pub = connect().channel()
    pub.confirm_delivery()
    for key, _, _ in TOPIC_CASES:
        pub.basic_publish(exchange, key, key.encode())

    assert drain(ch, q1) == [k.encode() for k, to1, _ in TOPIC_CASES if to1]
    assert drain(ch, q2) == [k.encode() for k, _, to2 in TOPIC_CASES if to2]


@pytest.mark.parametrize(
    "binding, key, matches",
    [
        ("#", "", True),
        ("#", "a.b.c", True),
        ("*", "", False),  # the empty key has zero words
        ("*", "a", True),
        ("*", "a.b", False),
        ("a.*.b", "a..b", True),  # '*' matches an empty word
        ("a.*.b", "a.x.b", True),
        ("a.#.b", "a.b", True),
        ("a.#.b", "a.x.y.b", True),
        ("#.b", "b", True),
        ("a#", "ab", False),  # 'a#' is a literal word, not a wildcard
        ("a#", "a#", True),
        ("a.#", "a", True),
        ("a.*", "a", False),
        ("", "", True),
        ("", "a", False),
        ("a.b", "a.b", True),
        ("a.b", "a.B", False),  # case-sensitive
    ],
)
def test_topic_matching_edge_cases(
    connect, uniq, cleanup, binding, key, matches
):
    exchange = cleanup.exchange(uniq("topic"))
    ch = connect().channel()
    ch.exchange_declare(exchange, "topic")
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, exchange, binding)
    ch.confirm_delivery()
    ch.basic_publish(exchange, key, b"m")
    assert drain(ch, q) == ([b"m"] if matches else [])


# ---------------------------------------------------------------- 6. RPC


def fib(n: int) -> int:
    return n if n < 2 else fib(n - 1) + fib(n - 2)


class RpcServer(threading.Thread):
    """rpc_server.py on its own connection, in a thread, with a stop flag."""

    def __init__(self, broker: Any, queue: str) -> None:
        super().__init__(daemon=True)
        self.broker = broker
        self.queue = queue
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.served = 0

    def run(self) -> None:
        try:
            conn = pika.BlockingConnection(pika_params(self.broker))
            try:
                ch = conn.channel()
                ch.queue_declare(queue=self.queue)
                ch.basic_qos(prefetch_count=1)

                def on_request(
                    ch: Any, method: Any, props: Any, body: bytes
                ) -> None:
                    self.served += 1  # before replying: the client may see the reply at once
                    response = fib(int(body))
                    ch.basic_publish(
                        exchange="",
                        routing_key=props.reply_to,
                        properties=pika.BasicProperties(
                            correlation_id=props.correlation_id
                        ),
                        body=str(response),
                    )
                    ch.basic_ack(delivery_tag=method.delivery_tag)

                ch.basic_consume(
                    queue=self.queue, on_message_callback=on_request
                )
                self.ready.set()
                deadline = time.monotonic() + 25
                while not self.stop.is_set() and time.monotonic() < deadline:
                    conn.process_data_events(time_limit=0.05)
            finally:
                conn.close()
        except BaseException as exc:  # surfaced by the test
            self.error = exc
            self.ready.set()


class FibonacciRpcClient:
    def __init__(self, conn: pika.BlockingConnection, queue: str) -> None:
        self.connection = conn
        self.queue = queue
        self.channel = conn.channel()
        result = self.channel.queue_declare(queue="", exclusive=True)
        self.callback_queue = result.method.queue
        self.channel.basic_consume(
            queue=self.callback_queue,
            on_message_callback=self.on_response,
            auto_ack=True,
        )
        self.responses: dict[str, bytes] = {}

    def on_response(
        self, ch: Any, method: Any, props: Any, body: bytes
    ) -> None:
        self.responses[props.correlation_id] = body

    def send(self, n: int, corr_id: str | None = None) -> str:
        corr_id = corr_id or str(uuid.uuid4())
        self.channel.basic_publish(
            exchange="",
            routing_key=self.queue,
            properties=pika.BasicProperties(
                reply_to=self.callback_queue, correlation_id=corr_id
            ),
            body=str(n),
        )
        return corr_id

    def call(self, n: int, timeout: float = 10) -> int:
        corr_id = self.send(n)
        wait_for(
            lambda: corr_id in self.responses,
            timeout,
            what=f"fib({n})",
            conn=self.connection,
        )
        return int(self.responses.pop(corr_id))


@pytest.fixture
def rpc_server(broker, uniq, cleanup):
    queue = cleanup.queue(uniq("rpc_queue"))
    server = RpcServer(broker, queue)
    server.start()
    assert server.ready.wait(10), "RPC server did not start"
    if server.error:
        raise server.error
    yield server
    server.stop.set()
    server.join(10)
    assert not server.is_alive()
    if server.error:
        raise server.error


def test_rpc(connect, rpc_server):
    client = FibonacciRpcClient(connect(), rpc_server.queue)
    assert client.call(30 // 3) == 55
    assert [client.call(n) for n in range(8)] == [0, 1, 1, 2, 3, 5, 8, 13]
    assert rpc_server.served == 9


def test_rpc_concurrent_requests_matched_by_correlation_id(
    connect, rpc_server
):
    client = FibonacciRpcClient(connect(), rpc_server.queue)
    ids = {client.send(n): n for n in range(12)}
    wait_for(
        lambda: len(client.responses) == 12,
        what="12 replies",
        conn=client.connection,
    )
    assert {cid: int(body) for cid, body in client.responses.items()} == {
        cid: fib(n) for cid, n in ids.items()
    }


def test_rpc_direct_reply_to(connect, rpc_server):
    """The tutorial's note: amq.rabbitmq.reply-to instead of a callback queue."""
    conn = connect()
    ch = conn.channel()
    replies: list[tuple[Any, Any, bytes]] = []
    ch.basic_consume(
        "amq.rabbitmq.reply-to",
        lambda c, m, p, b: replies.append((m, p, b)),
        auto_ack=True,
    )
    ch.basic_publish(
        "",
        rpc_server.queue,
        b"12",
        pika.BasicProperties(
            reply_to="amq.rabbitmq.reply-to", correlation_id="direct-1"
        ),
    )
    wait_for(lambda: len(replies) == 1, what="direct reply", conn=conn)
    method, props, body = replies[0]
    assert body == b"144"
    assert props.correlation_id == "direct-1"
    assert method.routing_key.startswith("amq.rabbitmq.reply-to.")
