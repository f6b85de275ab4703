"""Clean restart (SIGTERM) of a broker subprocess: exactly the durable part
comes back (issue 3), and a data dir of another format is refused.

Durable: exchanges, queues and bindings declared ``durable=True`` (a binding
is durable when both ends are), and persistent messages in durable queues.
Everything else (non-durable exchanges and queues, exclusive queues,
transient messages, bindings to or from a non-durable end) is gone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import lmdb
import msgpack
import pika
import pika.exceptions
import pytest
from crash_support import params

from mqbroker.testing import BrokerProcess, BrokerStartError

pytestmark = [pytest.mark.crash, pytest.mark.timeout(60)]


def P(mid: str) -> pika.BasicProperties:
    return pika.BasicProperties(delivery_mode=2, message_id=mid)


def T(mid: str) -> pika.BasicProperties:
    return pika.BasicProperties(delivery_mode=1, message_id=mid)


@contextlib.contextmanager
def connection(url: str) -> Iterator[pika.BlockingConnection]:
    conn = pika.BlockingConnection(params(url))
    try:
        yield conn
    finally:
        with contextlib.suppress(Exception):
            if conn.is_open:
                conn.close()


def exists(conn: pika.BlockingConnection, kind: str, name: str) -> bool:
    """Passive declare on a throw-away channel: True, or False on 404."""
    ch = conn.channel()
    try:
        if kind == "exchange":
            ch.exchange_declare(name, passive=True)
        else:
            ch.queue_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        assert exc.reply_code == 404, exc
        return False
    ch.close()
    return True


def get_all(
    conn: pika.BlockingConnection, queue: str
) -> list[tuple[str, bool]]:
    """(message_id, redelivered) of every message in ``queue``, in order,
    acked."""
    ch = conn.channel()
    out = []
    while True:
        method, props, _body = ch.basic_get(queue)
        if method is None:
            break
        out.append((props.message_id, method.redelivered))
        ch.basic_ack(method.delivery_tag)
    ch.close()
    return out


def ids(messages: list[tuple[str, bool]]) -> list[str]:
    return [mid for mid, _ in messages]


# Durable definitions: must be back.
DURABLE_EXCHANGES = {
    "r.direct": "direct", "r.topic": "topic", "r.fanout": "fanout",
    "r.e2e.src": "direct", "r.headers": "headers",
}
DURABLE_QUEUES = ["r.q1", "r.q2", "r.q3", "r.q4", "r.hq", "r.ad.dur"]
# Non-durable: must be gone.
TRANSIENT_EXCHANGES = {"r.tx": "direct", "r.tx.fanout": "fanout"}
TRANSIENT_QUEUES = ["r.tq", "r.ad"]
EXCLUSIVE_QUEUE = "r.excl"
# Deleted before the restart: must stay deleted.
DELETED_EXCHANGE = "r.deleted.x"
DELETED_QUEUE = "r.deleted.q"


def declare_topology(ch: pika.adapters.blocking_connection.BlockingChannel
                     ) -> None:
    for name, kind in DURABLE_EXCHANGES.items():
        ch.exchange_declare(name, kind, durable=True)
    for name, kind in TRANSIENT_EXCHANGES.items():
        ch.exchange_declare(name, kind, durable=False)
    for name in DURABLE_QUEUES:
        ch.queue_declare(name, durable=True,
                         auto_delete=name == "r.ad.dur")
    ch.queue_declare("r.tq", durable=False)
    ch.queue_declare("r.ad", durable=False, auto_delete=True)
    ch.queue_declare(EXCLUSIVE_QUEUE, durable=True, exclusive=True)
    # durable -> durable bindings
    ch.queue_bind("r.q1", "r.direct", "k1")
    ch.queue_bind("r.q2", "r.topic", "a.*")
    ch.exchange_bind("r.topic", "r.e2e.src", "a.e2e")  # exchange-to-exchange
    ch.queue_bind("r.q3", "r.fanout")
    ch.queue_bind("r.hq", "r.headers", arguments={"x-match": "all", "h": "1"})
    # bindings that must not come back (one end non-durable or exclusive)
    ch.queue_bind("r.tq", "r.direct", "k1")
    ch.queue_bind("r.q1", "r.tx", "kt")
    ch.exchange_bind("r.tx.fanout", "r.fanout")
    ch.queue_bind(EXCLUSIVE_QUEUE, "r.direct", "k1")
    # a durable binding removed again, a queue and an exchange deleted
    ch.queue_bind("r.q1", "r.topic", "gone.key")
    ch.queue_unbind("r.q1", "r.topic", "gone.key")
    ch.exchange_declare(DELETED_EXCHANGE, "fanout", durable=True)
    ch.queue_declare(DELETED_QUEUE, durable=True)
    ch.basic_publish("", DELETED_QUEUE, b"x", properties=P("deleted"))
    ch.queue_delete(DELETED_QUEUE)
    ch.exchange_delete(DELETED_EXCHANGE)


def publish_messages(ch: pika.adapters.blocking_connection.BlockingChannel
                     ) -> None:
    """Confirmed publishes (all routable: mandatory); persistent and
    transient interleaved."""
    def pub(exchange: str, key: str, body: bytes,
            properties: pika.BasicProperties) -> None:
        ch.basic_publish(exchange, key, body, properties=properties,
                         mandatory=True)

    for i in range(1, 6):
        # r.direct/k1 -> r.q1 (durable) and r.tq (non-durable): the copy in
        # r.tq dies with the queue, the one in r.q1 survives.
        pub("r.direct", "k1", b"p%d" % i, properties=P(f"q1.p{i}"))
        pub("r.direct", "k1", b"t%d" % i, properties=T(f"q1.t{i}"))
        # through the exchange-to-exchange binding into r.q2
        pub("r.e2e.src", "a.e2e", b"", properties=P(f"q2.p{i}"))
        # fanout: r.q3 (and the non-durable exchange r.tx.fanout)
        pub("r.fanout", "", b"", properties=P(f"q3.p{i}"))
        pub("r.fanout", "", b"", properties=T(f"q3.t{i}"))
        # r.q4 is consumed below
        pub("", "r.q4", b"", properties=P(f"q4.p{i}"))
        # headers exchange
        pub("r.headers", "", b"", properties=pika.BasicProperties(
            delivery_mode=2, message_id=f"hq.p{i}", headers={"h": "1"}))
    # persistent message in a non-durable queue: gone with the queue
    pub("", "r.tq", b"", properties=P("tq.only"))
    pub("", "r.ad.dur", b"", properties=P("ad.p1"))


def test_clean_restart_brings_back_exactly_the_durable_part(
    mqbroker_process: Callable[..., BrokerProcess],
) -> None:
    broker = mqbroker_process(reuse_port=True)
    holder = pika.BlockingConnection(params(broker.url))
    try:
        ch = holder.channel()
        declare_topology(ch)
        ch.confirm_delivery()
        publish_messages(ch)
        # A consumer on the auto-delete queue keeps it alive.
        ch.basic_consume("r.ad", lambda *a: None)
        # Leave three of r.q4's five messages delivered and unacked.
        consumer = holder.channel()
        consumer.basic_qos(prefetch_count=3)
        got: list[str] = []
        consumer.basic_consume(
            "r.q4", lambda c, m, p, b: got.append(p.message_id)
        )
        deadline = 50
        while len(got) < 3 and deadline:
            holder.process_data_events(time_limit=0.1)
            deadline -= 1
        assert got == ["q4.p1", "q4.p2", "q4.p3"]
        # Everything above was confirmed (so committed); now stop cleanly
        # with the consumer still open.
        broker.terminate()
    finally:
        with contextlib.suppress(Exception):
            holder.close()

    broker.start()
    with connection(broker.url) as conn:
        missing = [n for n in DURABLE_EXCHANGES
                   if not exists(conn, "exchange", n)]
        missing += [n for n in DURABLE_QUEUES if not exists(conn, "queue", n)]
        assert not missing, f"durable definitions lost: {missing}"
        back = [n for n in TRANSIENT_EXCHANGES if exists(conn, "exchange", n)]
        back += [n for n in (*TRANSIENT_QUEUES, EXCLUSIVE_QUEUE, DELETED_QUEUE)
                 if exists(conn, "queue", n)]
        back += [n for n in (DELETED_EXCHANGE,)
                 if exists(conn, "exchange", n)]
        assert not back, f"non-durable or deleted definitions came back: {back}"

        # Messages: persistent ones in durable queues, in order.
        assert ids(get_all(conn, "r.q1")) == [f"q1.p{i}" for i in range(1, 6)]
        assert ids(get_all(conn, "r.q2")) == [f"q2.p{i}" for i in range(1, 6)]
        assert ids(get_all(conn, "r.q3")) == [f"q3.p{i}" for i in range(1, 6)]
        assert ids(get_all(conn, "r.hq")) == [f"hq.p{i}" for i in range(1, 6)]
        assert ids(get_all(conn, "r.ad.dur")) == ["ad.p1"]
        # The three delivered-unacked ones come back first, redelivered.
        assert get_all(conn, "r.q4") == [
            ("q4.p1", True), ("q4.p2", True), ("q4.p3", True),
            ("q4.p4", False), ("q4.p5", False),
        ]

        # Routing through the recovered bindings (mandatory + confirms: an
        # unroutable message raises UnroutableError).
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish("r.direct", "k1", b"", properties=P("after.q1"),
                         mandatory=True)
        ch.basic_publish("r.e2e.src", "a.e2e", b"", properties=P("after.q2"),
                         mandatory=True)
        ch.basic_publish("r.fanout", "", b"", properties=P("after.q3"),
                         mandatory=True)
        ch.basic_publish("r.headers", "", b"", mandatory=True,
                         properties=pika.BasicProperties(
                             delivery_mode=2, message_id="after.hq",
                             headers={"h": "1"}))
        with pytest.raises(pika.exceptions.UnroutableError):
            # the binding removed before the restart stays removed
            ch.basic_publish("r.topic", "gone.key", b"", mandatory=True)
        assert ids(get_all(conn, "r.q1")) == ["after.q1"]  # not in r.tq/excl
        assert ids(get_all(conn, "r.q2")) == ["after.q2"]
        assert ids(get_all(conn, "r.q3")) == ["after.q3"]
        assert ids(get_all(conn, "r.hq")) == ["after.hq"]
    assert broker.terminate() is not None


def test_clean_restart_unacked_come_back_redelivered(
    mqbroker_process: Callable[..., BrokerProcess],
) -> None:
    """SIGTERM with a consumer holding three unacked deliveries: they come
    back first, in order, redelivered; the two never delivered do not."""
    broker = mqbroker_process()
    with connection(broker.url) as conn:
        ch = conn.channel()
        ch.queue_declare("r.unacked", durable=True)
        ch.confirm_delivery()
        for i in range(1, 6):
            ch.basic_publish("", "r.unacked", b"", properties=P(f"u{i}"))
        ch.basic_qos(prefetch_count=3)
        got: list[str] = []
        ch.basic_consume("r.unacked", lambda c, m, p, b: got.append(p.message_id))
        for _ in range(50):
            if len(got) == 3:
                break
            conn.process_data_events(time_limit=0.1)
        assert got == ["u1", "u2", "u3"]
        broker.terminate()
    broker.start()
    with connection(broker.url) as conn:
        assert get_all(conn, "r.unacked") == [
            ("u1", True), ("u2", True), ("u3", True),
            ("u4", False), ("u5", False),
        ]


def test_clean_restart_keeps_definitions_declared_last(
    mqbroker_process: Callable[..., BrokerProcess],
) -> None:
    """Definitions not followed by any publish (so no commit was asked
    for) are written by the final flush of a clean stop."""
    broker = mqbroker_process()
    with connection(broker.url) as conn:
        ch = conn.channel()
        ch.exchange_declare("r.last.x", "direct", durable=True)
        ch.queue_declare("r.last.q", durable=True)
        ch.queue_bind("r.last.q", "r.last.x", "k")
    broker.terminate()
    broker.start()
    with connection(broker.url) as conn:
        assert exists(conn, "exchange", "r.last.x")
        assert exists(conn, "queue", "r.last.q")


def test_sigterm_is_a_clean_stop(
    mqbroker_process: Callable[..., BrokerProcess],
) -> None:
    broker = mqbroker_process()
    code = broker.terminate()
    assert code == 0, f"exit code {code}:\n{broker.log_tail()}"
    assert "broker.stopping" in broker.log_text()


# ------------------------------------------------------- format version


def _stopped_store(
    mqbroker_process: Callable[..., BrokerProcess],
) -> BrokerProcess:
    broker = mqbroker_process()
    with connection(broker.url) as conn:
        ch = conn.channel()
        ch.queue_declare("r.fmt", durable=True)
        ch.confirm_delivery()
        ch.basic_publish("", "r.fmt", b"kept", properties=P("fmt1"))
    broker.terminate()
    return broker


def _open_env(data_dir: Path) -> lmdb.Environment:
    return lmdb.open(str(data_dir), max_dbs=8, subdir=True)


def _expect_refusal(broker: BrokerProcess, *needles: str) -> str:
    with pytest.raises(BrokerStartError) as info:
        broker.start()
    assert broker.returncode not in (None, 0)
    text = str(info.value)
    for needle in needles:
        assert needle in text, text
    return text


@pytest.mark.parametrize(
    "value", [msgpack.packb(2), msgpack.packb(0), msgpack.packb("1"),
              b"\xc1garbage"],
    ids=["v2", "v0", "string", "undecodable"],
)
def test_other_format_version_is_refused(
    mqbroker_process: Callable[..., BrokerProcess], value: bytes
) -> None:
    broker = _stopped_store(mqbroker_process)
    env = _open_env(broker.data_dir)
    with env.begin(write=True) as txn:
        meta = env.open_db(b"meta", txn=txn)
        assert msgpack.unpackb(txn.get(b"format", db=meta)) == 1
        txn.put(b"format", value, db=meta)
    env.close()

    _expect_refusal(broker, "format")
    # The refusal did not touch the data dir.
    env = _open_env(broker.data_dir)
    with env.begin() as txn:
        meta = env.open_db(b"meta", txn=txn)
        assert txn.get(b"format", db=meta) == value
    env.close()

    # Put the right version back: the data is still readable, intact.
    env = _open_env(broker.data_dir)
    with env.begin(write=True) as txn:
        txn.put(b"format", msgpack.packb(1), db=env.open_db(b"meta", txn=txn))
    env.close()
    broker.start()
    with connection(broker.url) as conn:
        assert get_all(conn, "r.fmt") == [("fmt1", False)]


def test_missing_format_key_is_refused(
    mqbroker_process: Callable[..., BrokerProcess],
) -> None:
    broker = _stopped_store(mqbroker_process)
    env = _open_env(broker.data_dir)
    with env.begin(write=True) as txn:
        assert txn.delete(b"format", db=env.open_db(b"meta", txn=txn))
    env.close()
    _expect_refusal(broker, "format")


def test_foreign_lmdb_environment_is_refused(
    mqbroker_process: Callable[..., BrokerProcess], tmp_path: Path
) -> None:
    data_dir = tmp_path / "foreign" / "data"
    data_dir.mkdir(parents=True)
    env = _open_env(data_dir)
    with env.begin(write=True) as txn:
        txn.put(b"k", b"v", db=env.open_db(b"someone-elses", txn=txn))
    env.close()
    broker = BrokerProcess(data_dir, start_timeout=15)
    try:
        _expect_refusal(broker, "not an mqbroker store")
    finally:
        broker.kill()
