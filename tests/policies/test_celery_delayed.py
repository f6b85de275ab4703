"""Celery's native delayed delivery topology (kombu 5.5+,
``kombu.transport.native_delayed_delivery``): 28 topic exchanges and
quorum queues ``celery_delayed_27 .. 0`` with ``x-overflow:
reject-publish``, ``x-message-ttl: 2**level * 1000``, dead-letter chains
(``x-dead-letter-strategy: at-least-once``) and exchange-to-exchange
bindings, ending in ``celery_delayed_delivery``. Declared through kombu
exactly as Celery does, then a delayed message must arrive after its
delay -- through kombu, and through a real Celery worker.

Runs on mqbroker and on RabbitMQ (MQBROKER_EXTERNAL_URL); every name gets a
unique prefix (kombu's ``prefix`` argument) and is deleted afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import kombu
import pika
import pytest
from kombu.transport import native_delayed_delivery as ndd

from support.blocking import pika_params

pytestmark = pytest.mark.timeout(120)

VENV_BIN = Path(sys.executable).parent


def _url(broker: Any) -> str:
    vhost = "%2F" if broker.vhost == "/" else broker.vhost
    return f"amqp://{broker.user}:{broker.password}@{broker.host}:{broker.port}/{vhost}"


def _delete_topology(broker: Any, prefix: str, extra_queues: list[str],
                     extra_exchanges: list[str]) -> None:
    conn = pika.BlockingConnection(pika_params(broker))
    try:
        for level in range(28):
            name = ndd.level_name(level, prefix)
            for kind in ("queue", "exchange"):
                try:
                    ch = conn.channel()
                    (ch.queue_delete if kind == "queue" else ch.exchange_delete)(name)
                    ch.close()
                except Exception:
                    pass
        for name in extra_queues:
            try:
                ch = conn.channel()
                ch.queue_delete(name)
                ch.close()
            except Exception:
                pass
        for name in [f"{prefix}_celery_delayed_delivery", *extra_exchanges]:
            try:
                ch = conn.channel()
                ch.exchange_delete(name)
                ch.close()
            except Exception:
                pass
    finally:
        conn.close()


@pytest.fixture
def prefix(broker: Any) -> Any:
    value = f"ptest{uuid.uuid4().hex[:8]}"
    holder: dict[str, list[str]] = {"queues": [], "exchanges": []}
    yield value, holder
    _delete_topology(broker, value, holder["queues"], holder["exchanges"])


def test_topology_declares_and_a_delayed_message_arrives(broker, prefix):
    pfx, holder = prefix
    with kombu.Connection(_url(broker), connect_timeout=10) as conn:
        ndd.declare_native_delayed_delivery_exchanges_and_queues(conn, "quorum", pfx)
        # declaring again (a worker restart) is equivalent, not a 406
        ndd.declare_native_delayed_delivery_exchanges_and_queues(conn, "quorum", pfx)
        exchange = kombu.Exchange(f"{pfx}.tasks", type="topic")
        queue = kombu.Queue(
            f"{pfx}.tasks", exchange, routing_key="tasks",
            queue_arguments={"x-queue-type": "quorum"},
        )
        holder["queues"].append(queue.name)
        holder["exchanges"].append(exchange.name)
        queue.bind(conn.channel()).declare()
        ndd.bind_queue_to_native_delayed_delivery_exchange(conn, queue, pfx)
        producer = kombu.Producer(conn.channel())
        sent = time.monotonic()
        for countdown in (2, 1):
            producer.publish(
                {"countdown": countdown},
                exchange=ndd.level_name(27, pfx),
                routing_key=ndd.calculate_routing_key(countdown, "tasks"),
                serializer="json",
                delivery_mode=2,
            )
        arrivals: list[tuple[int, float]] = []

        def on_message(body: Any, message: Any) -> None:
            arrivals.append((body["countdown"], time.monotonic() - sent))
            message.ack()

        with kombu.Consumer(conn.channel(), [queue], callbacks=[on_message]):
            deadline = time.monotonic() + 20
            while len(arrivals) < 2 and time.monotonic() < deadline:
                try:
                    conn.drain_events(timeout=0.5)
                except TimeoutError:
                    pass
                except OSError:
                    pass
    assert [c for c, _ in arrivals] == [1, 2]
    for countdown, elapsed in arrivals:
        assert countdown - 0.05 <= elapsed < countdown + 2.5, (countdown, elapsed)


def test_topology_queue_arguments(broker, prefix):
    pfx, _ = prefix
    with kombu.Connection(_url(broker), connect_timeout=10) as conn:
        ndd.declare_native_delayed_delivery_exchanges_and_queues(conn, "quorum", pfx)
    conn = pika.BlockingConnection(pika_params(broker))
    ch = conn.channel()
    for level in (0, 5, 27):
        name = ndd.level_name(level, pfx)
        # a passive declare finds it; a redeclare with the same arguments
        # is accepted, with another TTL it is a 406
        ch.queue_declare(name, passive=True)
        args = {
            "x-queue-type": "quorum",
            "x-overflow": "reject-publish",
            "x-message-ttl": 2**level * 1000,
            "x-dead-letter-exchange": (
                ndd.level_name(level - 1, pfx) if level else f"{pfx}_celery_delayed_delivery"
            ),
            "x-dead-letter-strategy": "at-least-once",
        }
        ch.queue_declare(name, durable=True, arguments=args)
        bad = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            bad.queue_declare(name, durable=True, arguments={**args, "x-message-ttl": 1})
        assert info.value.reply_code == 406
    conn.close()


CELERY_APP = """
import os

from celery import Celery
from kombu import Exchange, Queue

prefix = os.environ["PTEST_PREFIX"]
app = Celery(__name__, broker=os.environ["PTEST_BROKER_URL"], backend="rpc://")
exchange = Exchange(prefix + ".celery", type="topic")
app.conf.update(
    task_queues=[Queue(prefix + ".celery", exchange, routing_key=prefix + ".celery",
                       queue_arguments={"x-queue-type": "quorum"})],
    task_default_queue=prefix + ".celery",
    task_default_exchange=prefix + ".celery",
    task_default_exchange_type="topic",
    task_default_routing_key=prefix + ".celery",
    task_default_queue_type="quorum",
    broker_native_delayed_delivery_queue_type="quorum",
    worker_detect_quorum_queues=True,
    worker_enable_remote_control=False,
    worker_send_task_events=False,
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=3,
    result_expires=60,
)


@app.task
def stamp():
    import time
    return time.time()
"""


def test_celery_countdown_uses_native_delayed_delivery(inproc, prefix, tmp_path, monkeypatch):
    """A real worker: Celery declares the (unprefixed) topology itself, so
    this runs only on the fresh in-process broker, never on a shared one."""
    broker = inproc
    pfx, holder = prefix
    holder["queues"].append(pfx + ".celery")
    holder["exchanges"].append(pfx + ".celery")
    module_name = f"ptest_celery_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module_name}.py").write_text(textwrap.dedent(CELERY_APP))
    env = {"PTEST_BROKER_URL": _url(broker), "PTEST_PREFIX": pfx}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    module = importlib.import_module(module_name)
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(VENV_BIN / "celery"), "-A", module_name, "worker", "--pool=solo",
             "-c", "1", "--without-heartbeat", "--without-gossip", "--without-mingle",
             "--loglevel=INFO", "-n", f"{module_name}@%h"],
            cwd=tmp_path,
            env={**os.environ, **env, "PYTHONPATH": str(tmp_path)},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            assert module.stamp.delay().get(timeout=40)  # worker is up
            sent = time.time()
            result = module.stamp.apply_async(countdown=3)
            ran_at = result.get(timeout=30)
            assert ran_at - sent >= 2.9
            assert ran_at - sent < 8
            declared = broker.call(
                lambda: sorted(q for q in broker.core.vhosts["/"].queues
                               if q.startswith("celery_delayed_"))
            )
            assert len(declared) == 28
        except BaseException:
            sys.stderr.write(log_path.read_text(errors="replace"))
            raise
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(3)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            module.app.close()
            sys.modules.pop(module_name, None)
