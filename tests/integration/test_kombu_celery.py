"""kombu (py-amqp transport) and a real Celery worker against the broker."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import textwrap
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import kombu
import pytest
from kombu import Consumer, Exchange, Producer, Queue

pytestmark = pytest.mark.timeout(60)

VENV_BIN = Path(sys.executable).parent


def kombu_url(broker: Any, scheme: str = "pyamqp") -> str:
    vhost = (
        "/"
        if broker.vhost == "/"
        else urllib.parse.quote(broker.vhost, safe="")
    )
    return f"{scheme}://{broker.user}:{broker.password}@{broker.host}:{broker.port}/{vhost}"


@pytest.fixture
def kconn(broker):
    # confirm_publish: py-amqp waits for the broker's ack, so counts are exact
    # right after a publish.
    conn = kombu.Connection(
        kombu_url(broker),
        connect_timeout=5,
        transport_options={"max_retries": 1, "confirm_publish": True},
    )
    conn.ensure_connection(max_retries=1)
    yield conn
    conn.release()


def test_kombu_producer_consumer(kconn, uniq, cleanup):
    exchange = Exchange(
        cleanup.exchange(uniq("kombu-ex")), type="direct", durable=False
    )
    queue = Queue(
        cleanup.queue(uniq("kombu-q")),
        exchange=exchange,
        routing_key="video",
        durable=False,
    )
    received: list[tuple[Any, Any]] = []

    def on_message(body: Any, message: Any) -> None:
        received.append(
            (
                body,
                message.properties.get("content_type"),
                message.delivery_info["routing_key"],
            )
        )
        message.ack()

    channel = kconn.channel()
    producer = Producer(
        channel, exchange=exchange, routing_key="video", serializer="json"
    )
    with Consumer(
        kconn.channel(),
        queues=[queue],
        callbacks=[on_message],
        accept=["json"],
    ):
        # The consumer declared and bound the queue; now publish.
        for i in range(5):
            producer.publish(
                {"n": i, "name": "clip"}, declare=[queue], retry=False
            )
        deadline_loops = 100
        while len(received) < 5 and deadline_loops:
            try:
                kconn.drain_events(timeout=0.1)
            except TimeoutError:
                deadline_loops -= 1
    assert [body for body, _, _ in received] == [
        {"n": i, "name": "clip"} for i in range(5)
    ]
    assert {ct for _, ct, _ in received} == {"application/json"}
    assert {rk for _, _, rk in received} == {"video"}
    channel.close()


def test_kombu_reject_requeue_and_redelivered(kconn, uniq, cleanup):
    queue = Queue(
        cleanup.queue(uniq("kombu-q")), routing_key=None, durable=False
    )
    channel = kconn.channel()
    bound = queue(channel)
    bound.declare()
    Producer(channel).publish(
        "payload", routing_key=bound.name, serializer="raw", retry=False
    )
    seen: list[bool] = []

    def on_message(body: Any, message: Any) -> None:
        seen.append(message.delivery_info["redelivered"])
        if len(seen) == 1:
            message.requeue()
        else:
            message.ack()

    with Consumer(
        kconn.channel(), queues=[queue], callbacks=[on_message], accept=None
    ):
        loops = 100
        while len(seen) < 2 and loops:
            try:
                kconn.drain_events(timeout=0.1)
            except TimeoutError:
                loops -= 1
    assert seen == [False, True]


def test_kombu_simple_queue(kconn, uniq, cleanup):
    name = cleanup.queue(uniq("simple"))
    cleanup.exchange(
        name
    )  # SimpleQueue declares a direct exchange of the same name
    queue = kconn.SimpleQueue(name)
    try:
        queue.put("junk-1")
        queue.put("junk-2")
        assert queue.qsize() == 2
        assert queue.clear() == 2  # purge, before any consumer exists
        for i in range(3):
            queue.put({"hello": i})
        assert queue.qsize() == 3
        got = []
        for _ in range(3):
            message = queue.get(block=True, timeout=5)
            got.append(message.payload)
            message.ack()
        assert got == [{"hello": 0}, {"hello": 1}, {"hello": 2}]
        with pytest.raises(queue.Empty):
            queue.get(block=True, timeout=0.3)
        queue.put("again")
        message = queue.get(block=True, timeout=5)
        assert message.payload == "again"
        message.ack()
    finally:
        queue.close()


def test_kombu_server_properties(kconn):
    """Not a behaviour assertion on qos semantics: just that the handshake
    gives kombu a product and capabilities to look at."""
    props = kconn.connection.server_properties
    caps = props["capabilities"]
    for cap in (
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
    ):
        assert caps.get(cap) is True, cap
    assert props.get("product")


# ---------------------------------------------------------------- Celery

CELERY_APP = """
import os

from celery import Celery

app = Celery(__name__, broker=os.environ["ITEST_BROKER_URL"], backend="rpc://")
app.conf.update(
    task_default_queue=os.environ["ITEST_QUEUE"],
    task_default_exchange=os.environ["ITEST_QUEUE"],
    task_default_routing_key=os.environ["ITEST_QUEUE"],
    worker_enable_remote_control=False,
    worker_send_task_events=False,
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=3,
    result_expires=60,
)


@app.task
def add(x, y):
    return x + y


@app.task
def fail():
    raise ValueError("boom")
"""


@pytest.fixture
def celery_module(tmp_path, broker, uniq, cleanup, monkeypatch):
    module_name = f"itest_celery_app_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module_name}.py").write_text(textwrap.dedent(CELERY_APP))
    queue = cleanup.queue(uniq("celery"))
    cleanup.exchange(queue)
    env = {
        "ITEST_BROKER_URL": kombu_url(broker, "amqp"),
        "ITEST_QUEUE": queue,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(module_name)
    yield module_name, module, env
    sys.modules.pop(module_name, None)


@pytest.fixture
def celery_worker(celery_module, tmp_path):
    module_name, module, env = celery_module
    log_path = tmp_path / "worker.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [
            str(VENV_BIN / "celery"),
            "-A",
            module_name,
            "worker",
            "--pool=solo",
            "-c",
            "1",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
            "--loglevel=INFO",
            "-n",
            f"{module_name}@%h",
        ],
        cwd=tmp_path,
        env={**os.environ, **env, "PYTHONPATH": str(tmp_path)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield module, proc, log_path
    finally:
        # Terminate, then kill. (An idle solo worker started with
        # --without-heartbeat may take ~10 s to notice SIGTERM: its event loop
        # has no timer to wake it, so don't wait that long.)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        log.close()
        module.app.close()


def test_celery_worker_runs_tasks(celery_worker):
    module, proc, log_path = celery_worker
    try:
        first = module.add.delay(2, 3)
        assert first.get(timeout=30) == 5  # includes worker start-up
        results = [module.add.delay(i, i) for i in range(10)]
        assert [r.get(timeout=15) for r in results] == [
            2 * i for i in range(10)
        ]
        assert (
            module.add.apply_async((40, 2), countdown=0).get(timeout=15) == 42
        )
        failing = module.fail.delay()
        with pytest.raises(ValueError, match="boom"):
            failing.get(timeout=15)
        assert failing.state == "FAILURE"
    except BaseException:
        sys.stderr.write(log_path.read_text(errors="replace"))
        raise
    assert proc.poll() is None, "worker died"
