"""Helpers for the crash tests: message bodies that check themselves, a
ledger of what was sent and confirmed, publishers, a killer thread and a
drainer. Plain functions, no fixtures (see ``conftest.py``).

The checks follow the Jepsen "total queue" model (reliability.md B5.1):

- lost = confirmed - drained must be empty;
- unexpected = drained - sent must be empty;
- no seq may be drained twice (each seq is published exactly once and no
  publisher retries, so any duplicate was made by the broker);
- every drained body equals what was sent for its seq (no corruption).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions

# Every wait on the broker is bounded by this many seconds.
WAIT = 20.0

# Mostly small bodies, now and then one bigger than frame_max (131072), so
# some messages arrive in several body frames.
_SIZES = (0, 16, 100, 700, 1024, 3000, 9000)
_BIG = 140_000


def body_for(tag: str, seq: int) -> bytes:
    """The body of message ``seq`` of publisher ``tag``: a readable header
    and a pattern derived from (tag, seq), so a drained body can be checked
    without keeping every body in memory."""
    size = _BIG if seq % 97 == 13 else _SIZES[seq % len(_SIZES)]
    head = f"{tag}:{seq}:".encode()
    digest = hashlib.sha256(head).digest()
    reps = size // len(digest) + 1
    return head + (digest * reps)[:size]


def message_id(tag: str, seq: int) -> str:
    return f"{tag}:{seq}"


def parse_message_id(mid: str) -> tuple[str, int]:
    tag, _, seq = mid.rpartition(":")
    return tag, int(seq)


@dataclass
class Ledger:
    """What one publisher sent and what the broker confirmed."""

    tag: str
    sent: list[int] = field(default_factory=list)
    confirmed: set[int] = field(default_factory=set)
    nacked: set[int] = field(default_factory=set)
    stopped_by: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_sent(self, seq: int) -> None:
        with self.lock:
            self.sent.append(seq)

    def on_confirmed(self, seq: int) -> None:
        with self.lock:
            self.confirmed.add(seq)

    def on_nacked(self, seq: int) -> None:
        with self.lock:
            self.nacked.add(seq)

    @property
    def unconfirmed(self) -> set[int]:
        return set(self.sent) - self.confirmed


@dataclass
class Drained:
    """One message read back after the restart."""

    queue: str
    tag: str
    seq: int
    body: bytes
    redelivered: bool


# ---------------------------------------------------------------- pika


def params(url: str, **overrides: Any) -> pika.URLParameters:
    p = pika.URLParameters(url)
    p.connection_attempts = 1
    p.socket_timeout = 5
    p.stack_timeout = 10
    p.blocked_connection_timeout = 30
    p.heartbeat = 0  # a killed broker closes the socket: no need
    for key, value in overrides.items():
        setattr(p, key, value)
    return p


def declare_queue(url: str, queue: str) -> None:
    conn = pika.BlockingConnection(params(url))
    try:
        conn.channel().queue_declare(queue, durable=True)
    finally:
        conn.close()


def persistent(tag: str, seq: int) -> pika.BasicProperties:
    return pika.BasicProperties(
        delivery_mode=2, message_id=message_id(tag, seq),
        content_type="application/octet-stream",
    )


# Exceptions that mean "the broker went away": the publish in flight is
# unconfirmed (it may or may not have been stored).
CONNECTION_LOST = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.AMQPChannelError,
    pika.exceptions.ConnectionClosed,
    pika.exceptions.ChannelClosed,
    pika.exceptions.StreamLostError,
    ConnectionError,
    OSError,
)


def pika_publisher(
    url: str,
    ledger: Ledger,
    *,
    exchange: str = "",
    routing_key: str,
    started: threading.Event,
    max_seconds: float = 15.0,
) -> None:
    """Publish persistent messages one at a time with confirms until the
    connection is lost (or ``max_seconds``). A ``basic_publish`` that
    returns is a confirmed message; the one that raises is unconfirmed."""
    conn = pika.BlockingConnection(params(url))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        started.set()
        deadline = time.monotonic() + max_seconds
        seq = 0
        while time.monotonic() < deadline:
            seq += 1
            ledger.on_sent(seq)
            try:
                ch.basic_publish(
                    exchange, routing_key, body_for(ledger.tag, seq),
                    properties=persistent(ledger.tag, seq), mandatory=True,
                )
            except pika.exceptions.NackError:
                ledger.on_nacked(seq)
                continue
            except pika.exceptions.UnroutableError as exc:
                ledger.stopped_by = f"unroutable: {exc!r}"
                raise
            except CONNECTION_LOST as exc:
                ledger.stopped_by = type(exc).__name__
                return
            ledger.on_confirmed(seq)
        ledger.stopped_by = "deadline"
    finally:
        started.set()
        with contextlib.suppress(Exception):
            if conn.is_open:
                conn.close()


def run_threads(targets: Iterable[Callable[[], None]]) -> list[BaseException]:
    """Run callables in threads, join them, return their exceptions."""
    errors: list[BaseException] = []

    def wrap(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001  (reported)
                errors.append(exc)
        return run

    threads = [threading.Thread(target=wrap(fn), daemon=True) for fn in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT + 30)
        if t.is_alive():
            errors.append(TimeoutError(f"thread {t.name} did not finish"))
    return errors


class Killer:
    """SIGKILLs the broker ``delay`` seconds after ``start()``, from a
    thread, and records when."""

    def __init__(self, broker: Any, delay: float) -> None:
        self.broker = broker
        self.delay = delay
        self.killed_at: float | None = None
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Killer:
        self._thread.start()
        return self

    def _run(self) -> None:
        if self._cancel.wait(self.delay):
            return
        self.killed_at = time.monotonic()
        self.broker.kill()

    def join(self) -> None:
        self._thread.join(self.delay + 15)

    def cancel(self) -> None:
        self._cancel.set()


def kill_delay(seed: int) -> float:
    return random.Random(seed).uniform(0.2, 1.5)


# ---------------------------------------------------------------- drain


def drain(
    url: str, queues: Iterable[str], *, idle: float = 0.5,
    allow_missing: bool = False,
) -> list[Drained]:
    """Consume (and ack) everything in ``queues``; stop once the count the
    passive declare reported has arrived and nothing more came for
    ``idle`` seconds."""
    out: list[Drained] = []
    conn = pika.BlockingConnection(params(url))
    try:
        for queue in queues:
            ch = conn.channel()
            try:
                expected = ch.queue_declare(
                    queue, passive=True
                ).method.message_count
            except pika.exceptions.ChannelClosedByBroker as exc:
                if allow_missing and exc.reply_code == 404:
                    continue
                raise AssertionError(
                    f"durable queue {queue!r} is missing after the restart: "
                    f"{exc!r}"
                ) from exc
            ch.basic_qos(prefetch_count=1000)
            got = 0
            deadline = time.monotonic() + WAIT + expected / 2000
            last_tag = acked_tag = 0
            for method, props, body in ch.consume(
                queue, inactivity_timeout=idle
            ):
                if method is None:
                    if got >= expected:
                        break
                    if time.monotonic() > deadline:
                        raise AssertionError(
                            f"{queue}: drained {got} of the {expected} "
                            f"messages the queue reported"
                        )
                    continue
                tag, seq = parse_message_id(props.message_id)
                out.append(Drained(queue, tag, seq, body, method.redelivered))
                got += 1
                last_tag = method.delivery_tag
                if got % 500 == 0:
                    ch.basic_ack(last_tag, multiple=True)
                    acked_tag = last_tag
            if last_tag > acked_tag:
                ch.basic_ack(last_tag, multiple=True)
            ch.cancel()
            ch.close()
    finally:
        if conn.is_open:
            conn.close()
    return out


# ---------------------------------------------------------------- checks


def check_total_queue(
    ledgers: Iterable[Ledger], drained: Iterable[Drained], *,
    queue: str, ordered: bool = True, acked: Iterable[int] = (),
) -> dict[str, int]:
    """Assert the Jepsen total-queue properties for one queue; returns a
    summary (confirmed, unconfirmed, recovered-unconfirmed, drained)."""
    by_tag = {ledger.tag: ledger for ledger in ledgers}
    sent = {tag: set(ledger.sent) for tag, ledger in by_tag.items()}
    in_queue = [d for d in drained if d.queue == queue]
    seen: dict[tuple[str, int], int] = {}
    corrupt: list[str] = []
    unexpected: list[str] = []
    for d in in_queue:
        key = (d.tag, d.seq)
        seen[key] = seen.get(key, 0) + 1
        if d.seq not in sent.get(d.tag, ()):
            unexpected.append(f"{d.tag}:{d.seq}")
        elif d.body != body_for(d.tag, d.seq):
            corrupt.append(
                f"{d.tag}:{d.seq} ({len(d.body)} bytes, expected "
                f"{len(body_for(d.tag, d.seq))}, starts {d.body[:40]!r})"
            )
    dupes = sorted(f"{t}:{s} x{n}" for (t, s), n in seen.items() if n > 1)
    lost: list[str] = []
    recovered_unconfirmed = 0
    confirmed = unconfirmed = 0
    for ledger in by_tag.values():
        confirmed += len(ledger.confirmed)
        unconfirmed += len(ledger.unconfirmed)
        gone_ok = set(acked)  # acked before the kill: may be gone
        for seq in sorted(ledger.confirmed):
            if (ledger.tag, seq) not in seen and seq not in gone_ok:
                lost.append(f"{ledger.tag}:{seq}")
        recovered_unconfirmed += sum(
            1 for seq in ledger.unconfirmed if (ledger.tag, seq) in seen
        )
    disorder: list[str] = []
    if ordered:
        last: dict[str, int] = {}
        for d in in_queue:
            if d.seq <= last.get(d.tag, 0):
                disorder.append(f"{d.tag}:{d.seq} after {last[d.tag]}")
            last[d.tag] = max(last.get(d.tag, 0), d.seq)
    problems = []
    if lost:
        problems.append(
            f"LOST {len(lost)} confirmed messages: {lost[:20]}"
        )
    if corrupt:
        problems.append(f"CORRUPT {len(corrupt)}: {corrupt[:5]}")
    if unexpected:
        problems.append(f"UNEXPECTED {len(unexpected)}: {unexpected[:20]}")
    if dupes:
        problems.append(f"DUPLICATED {len(dupes)}: {dupes[:20]}")
    if disorder:
        problems.append(f"OUT OF ORDER {len(disorder)}: {disorder[:10]}")
    assert not problems, f"queue {queue!r}: " + "; ".join(problems)
    return {
        "confirmed": confirmed,
        "unconfirmed": unconfirmed,
        "recovered_unconfirmed": recovered_unconfirmed,
        "drained": len(in_queue),
    }


# ---------------------------------------------------------------- aio-pika


async def aio_publisher(
    url: str,
    ledger: Ledger,
    *,
    exchange_name: str,
    queues: list[str],
    started: threading.Event,
    window: int = 64,
    max_seconds: float = 15.0,
) -> None:
    """Declare a durable fanout exchange bound to ``queues`` and publish
    persistent messages through it with up to ``window`` confirms
    outstanding, until the connection is lost."""
    import aio_pika
    from aiormq import spec

    conn = await aio_pika.connect(url, timeout=10)
    try:
        ch = await conn.channel(publisher_confirms=True)
        ex = await ch.declare_exchange(
            exchange_name, aio_pika.ExchangeType.FANOUT, durable=True
        )
        for name in queues:
            q = await ch.declare_queue(name, durable=True)
            await q.bind(ex)
        started.set()
        slots = asyncio.Semaphore(window)
        lost = asyncio.Event()
        tasks: set[asyncio.Task[None]] = set()

        async def one(seq: int) -> None:
            try:
                result = await ex.publish(
                    aio_pika.Message(
                        body_for(ledger.tag, seq),
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        message_id=message_id(ledger.tag, seq),
                    ),
                    routing_key="",
                    timeout=WAIT,
                )
                if isinstance(result, spec.Basic.Ack):
                    ledger.on_confirmed(seq)
                else:
                    ledger.on_nacked(seq)
            except aio_pika.exceptions.DeliveryError:
                ledger.on_nacked(seq)
            except Exception as exc:  # noqa: BLE001  (connection gone)
                if not ledger.stopped_by:
                    ledger.stopped_by = type(exc).__name__
                lost.set()
            finally:
                slots.release()

        deadline = time.monotonic() + max_seconds
        seq = 0
        while not lost.is_set() and time.monotonic() < deadline:
            await slots.acquire()
            if lost.is_set():
                break
            seq += 1
            ledger.on_sent(seq)
            task = asyncio.ensure_future(one(seq))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(list(tasks), timeout=WAIT)
        if not ledger.stopped_by:
            ledger.stopped_by = "deadline"
    finally:
        started.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), 5)
