"""Test-harness hooks inside a running broker: virtual time, peeking at
queues, and faults (dropped connections, alarms, failing writes, crashes).

Strategy: everything here runs on the broker's own trio loop (the pytest
plugin calls in from the test's thread with ``trio.from_thread``), so it
sees and changes state exactly as a connection task would, with the real
semantics: advancing the clock fires the broker's own timers (TTL and
dead-lettering, x-expires, delayed releases, consumer timeouts) and waits
for their commits and the frames they caused; a crash skips every
shutdown write, as a SIGKILL would.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

import trio

from mqbroker.broker.broker import Broker
from mqbroker.persistence import GroupCommitter
from mqbroker.persistence.errors import StoreFullError
from mqbroker.protocol import codec
from mqbroker.queues.queue import Queue
from mqbroker.server.alarms import REASONS, Alarms
from mqbroker.server.tls import socket_of
from mqbroker.streams.queue import StreamQueue
from mqbroker.streams.record import decode_record

# Alarm sources of the harness (the periodic checks never clear them).
HARNESS_ALARMS = {"memory": "harness:memory", "disk": "harness:disk"}
REASONS.update({"harness:memory": "low on memory", "harness:disk": "low on disk"})
MAX_TIMER_ROUNDS = 10_000


class VirtualClock:
    """Real time plus an offset that only ``advance`` moves: time still
    flows (heartbeats, timestamps stay sane) and can jump ahead."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset_s

    def wall_ms(self) -> int:
        return int((time.time() + self.offset_s) * 1000)


@dataclass(frozen=True)
class Peeked:
    body: bytes
    properties: Any
    headers: dict[str, Any]
    redelivered: bool
    routing_key: str
    exchange: str
    offset: int | None = None  # streams


class Harness:
    def __init__(self, broker: Broker, committer: GroupCommitter, alarms: Alarms) -> None:
        self.broker = broker
        self.committer = committer
        self.alarms = alarms
        self.clock: VirtualClock | None = None
        self.tasks: set[Any] = set()  # live ConnectionTasks
        self.crashed = False
        self.failing_writes = False

    def use_virtual_clock(self) -> VirtualClock:
        clock = self.clock = VirtualClock()
        self.broker.clock = clock.monotonic
        self.broker.wall_ms = clock.wall_ms
        return clock

    # ------------------------------------------------------------- time

    async def advance(self, seconds: float) -> None:
        """Move the virtual clock and return once every timer that fell due
        fired, its writes are committed and its frames are sent."""
        assert self.clock is not None, "the broker was started without virtual_clock=True"
        self.clock.offset_s += seconds
        broker = self.broker
        for _ in range(MAX_TIMER_ROUNDS):
            broker.on_timer()
            deadline = broker.next_deadline()
            if deadline is None or deadline > broker.wall_ms():
                break
        broker.check_consumer_timeouts(broker.config.consumer_timeout_ms)
        broker.timer_changed()
        await self.settle()

    async def settle(self) -> None:
        """Commits done and output written (bounded wait)."""
        self.broker.run_dispatch()
        if not self.failing_writes:
            await self.committer.flush()
        with trio.move_on_after(5):
            while any(s.conn.output_size for s in self.broker.sessions if not s.closed):
                await trio.sleep(0.001)
        await trio.sleep(0.01)  # let clients' reads of what was sent start

    # ------------------------------------------------------------- peek

    def peek(self, vhost: str, name: str) -> list[Peeked]:
        found = self.broker.vhosts.get(vhost)
        queue = found.queues.get(name) if found is not None else None
        if queue is None:
            raise KeyError(f"no queue '{name}' in vhost '{vhost}'")
        if isinstance(queue, StreamQueue):
            return self._peek_stream(queue)
        return [self._peeked(queue, entry) for entry in queue.entries()]

    @staticmethod
    def _peeked(queue: Queue, entry: Any) -> Peeked:
        message = queue.message_of(entry)
        props = message.props
        return Peeked(
            bytes(message.body), props, dict(props.headers or {}), bool(entry.redelivered),
            message.routing_key, message.exchange,
        )

    @staticmethod
    def _peek_stream(queue: StreamQueue) -> list[Peeked]:
        reader = queue.log.reader(queue.log.first_offset)
        out = []
        try:
            while batch := reader.read(1000):
                for entry in batch:
                    exchange, key, _flt, raw, body = decode_record(entry.payload)
                    props = codec.decode_properties(raw)
                    out.append(Peeked(
                        body, props, dict(props.headers or {}), False, key, exchange, entry.offset,
                    ))
        finally:
            reader.close()
        return out

    # ----------------------------------------------------------- faults

    async def disconnect_all(self) -> None:
        """Every client connection drops, no close handshake (a reset)."""
        for task in list(self.tasks):
            task.dropped = True
            sock = socket_of(task.stream)
            if sock is not None:  # linger 0: the close is a reset
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await trio.aclose_forcefully(task.stream)
        await trio.sleep(0.05)

    def set_alarm(self, kind: str, on: bool) -> None:
        source = HARNESS_ALARMS[kind]
        if on:
            self.alarms.raise_alarm(source, "raised by the test harness")
        else:
            self.alarms.clear_alarm(source)

    def fail_writes(self, on: bool) -> None:
        """While on, every store write fails: waiting publishers are nacked
        (their messages may still arrive: RabbitMQ's nack means "not known
        to be safe"), the batch is kept and written once writes work again,
        so nothing acked before is lost."""
        self.failing_writes = on
        store: Any = self.broker.store
        if on:
            original = store.write_batch

            def failing(batch: Any) -> None:
                raise StoreFullError("write failed (test harness)")

            store._harness_write = original
            store.write_batch = failing
        else:
            original = getattr(store, "_harness_write", None)
            if original is not None:
                store.write_batch = original
                del store._harness_write
            self.committer.notify()

    def nack_waiting(self) -> None:
        self.broker.confirms.nack_waiting()
        self.broker.run_dispatch()
