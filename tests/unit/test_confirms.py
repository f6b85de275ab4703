"""Publisher confirms of persistent messages, on the broker core with a
real LMDB store and no group committer running: nothing is committed
unless a test commits, so a confirm seen before that can only come from
the rule RabbitMQ documents: a persistent message is confirmed when it is
persisted to disk, or when it has been consumed on every queue.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pamqp import commands
from protocol_helpers import handshake_bytes

from mqbroker.broker.broker import Broker
from mqbroker.broker.session import Session
from mqbroker.config import Config
from mqbroker.persistence import LmdbStore
from mqbroker.protocol.connection import ServerConnection
from support.frames import (
    channel_open,
    decode_frames,
    method_frame,
    publish_frames,
)

PERSISTENT = commands.Basic.Properties(delivery_mode=2)


class Client:
    def __init__(self, broker: Broker, name: str) -> None:
        self.broker = broker
        conn = ServerConnection(
            frame_max=131072,
            channel_max=2047,
            heartbeat=0,
            max_message_size=1 << 20,
            server_properties=broker.server_properties(),
        )
        self.session = Session(broker, conn, f"127.0.0.1:{name}")
        self.send(handshake_bytes(), channel_open(1))
        self.methods()

    def send(self, *chunks: bytes) -> None:
        self.session.receive(b"".join(chunks))
        self.broker.run_dispatch()

    def methods(self) -> list[Any]:
        data = self.session.conn.data_to_send()
        return [value for _, value in decode_frames(data) if hasattr(value, "name")]

    def acks(self) -> list[tuple[int, bool]]:
        return [
            (m.delivery_tag, m.multiple)
            for m in self.methods()
            if isinstance(m, commands.Basic.Ack)
        ]


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    store = LmdbStore(tmp_path / "data")
    yield Broker(Config(), store)
    store.close()


def _commit(broker: Broker) -> None:
    store = broker.store
    batch = store.take_batch()  # type: ignore[attr-defined]
    assert batch is not None
    store.write_batch(batch)  # type: ignore[attr-defined]
    store.batch_done(batch)  # type: ignore[attr-defined]
    broker.on_committed(batch.epoch)


def _setup(broker: Broker, queues: list[str]) -> tuple[Client, Client]:
    consumer = Client(broker, "40001")
    for n, name in enumerate(queues):
        consumer.send(method_frame(1, commands.Queue.Declare(queue=name, durable=True)))
        if len(queues) > 1:
            consumer.send(method_frame(1, commands.Queue.Bind(queue=name, exchange="amq.fanout")))
        consumer.send(
            method_frame(1, commands.Basic.Consume(queue=name, consumer_tag=f"c{n}"))
        )
    consumer.methods()
    publisher = Client(broker, "40002")
    publisher.send(method_frame(1, commands.Confirm.Select()))
    publisher.methods()
    return publisher, consumer


def _deliveries(consumer: Client) -> list[int]:
    return [
        m.delivery_tag for m in consumer.methods() if isinstance(m, commands.Basic.Deliver)
    ]


def test_consumed_message_is_confirmed_before_its_commit(broker: Broker) -> None:
    publisher, consumer = _setup(broker, ["q"])
    publisher.send(publish_frames(1, b"m1", routing_key="q", properties=PERSISTENT))
    assert publisher.acks() == []  # waits for a commit ...
    (tag,) = _deliveries(consumer)
    consumer.send(method_frame(1, commands.Basic.Ack(delivery_tag=tag)))
    assert publisher.acks() == [(1, False)]  # ... or for its consumption
    assert broker.confirms.early == {}
    _commit(broker)
    assert publisher.acks() == []  # never twice


def test_unconsumed_message_waits_for_the_commit(broker: Broker) -> None:
    publisher, consumer = _setup(broker, ["q"])
    publisher.send(publish_frames(1, b"m1", routing_key="q", properties=PERSISTENT))
    (tag,) = _deliveries(consumer)
    consumer.send(method_frame(1, commands.Basic.Nack(delivery_tag=tag, requeue=True)))
    assert publisher.acks() == []  # requeued is not consumed
    _commit(broker)
    assert publisher.acks() == [(1, False)]
    assert broker.confirms.early == {}


def test_every_queue_must_have_consumed_it(broker: Broker) -> None:
    publisher, consumer = _setup(broker, ["q1", "q2"])
    publisher.send(
        publish_frames(1, b"m1", exchange="amq.fanout", properties=PERSISTENT)
    )
    first, second = _deliveries(consumer)
    consumer.send(method_frame(1, commands.Basic.Ack(delivery_tag=first)))
    assert publisher.acks() == []
    consumer.send(method_frame(1, commands.Basic.Ack(delivery_tag=second)))
    assert publisher.acks() == [(1, False)]


def test_confirms_stay_in_order(broker: Broker) -> None:
    publisher, consumer = _setup(broker, ["q"])
    for n in range(3):
        publisher.send(publish_frames(1, b"m%d" % n, routing_key="q", properties=PERSISTENT))
    tags = _deliveries(consumer)
    assert len(tags) == 3
    # the second and third are consumed; the first is not: nothing yet
    consumer.send(method_frame(1, commands.Basic.Ack(delivery_tag=tags[1])))
    consumer.send(method_frame(1, commands.Basic.Ack(delivery_tag=tags[2])))
    assert publisher.acks() == []
    # the first is consumed too: all three at once, one cumulative ack
    consumer.send(method_frame(1, commands.Basic.Ack(delivery_tag=tags[0])))
    assert publisher.acks() == [(3, True)]


def test_closed_publisher_channel_leaves_nothing_behind(broker: Broker) -> None:
    publisher, consumer = _setup(broker, ["q"])
    publisher.send(publish_frames(1, b"m1", routing_key="q", properties=PERSISTENT))
    assert len(broker.confirms.early) == 1
    publisher.send(method_frame(1, commands.Channel.Close(reply_code=200, reply_text="", class_id=0, method_id=0)))
    assert broker.confirms.early == {}
    (tag,) = _deliveries(consumer)
    consumer.send(method_frame(1, commands.Basic.Ack(delivery_tag=tag)))  # no error


def test_confirms_of_one_read_coalesce_into_one_multiple_ack(broker: Broker) -> None:
    """RabbitMQ answers a burst of transient publishes read together with
    one ``basic.ack(multiple=true)``; clients test for it and it saves a
    frame per message."""
    publisher = Client(broker, "40003")
    publisher.send(method_frame(1, commands.Confirm.Select()))
    publisher.methods()
    burst = b"".join(publish_frames(1, b"x", routing_key="nowhere") for _ in range(50))
    publisher.send(burst)
    assert publisher.acks() == [(50, True)]
    publisher.send(publish_frames(1, b"x", routing_key="nowhere"))
    assert publisher.acks() == [(51, False)]
