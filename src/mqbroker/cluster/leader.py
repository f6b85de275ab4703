"""The leader's half of replication: ship every committed batch to the
followers and hold its confirms until enough of them made it durable.

The rule (LavinMQ's, with RabbitMQ quorum queues' majority): a batch's
confirms go out once it is fsynced here AND acknowledged (fsynced) by
every follower of the in-sync set (ISR, kept in etcd) AND by enough
followers for a majority of the cluster. A follower silent for
``ack_timeout`` leaves the ISR, and that change is committed to etcd
(fenced by this leader's term) before the confirms proceed; a follower
that acknowledged the batch joins it the same way. So every ISR member
holds every confirmed batch, and only ISR members may become leader.
etcd unreachable: confirms stall, they are never sent early.

Batches are shipped in write order as soon as they are durable here, and
waited for in that order while the next ones are written and shipped (the
group committer's pipeline): one round trip per batch, not per message,
and the followers' fsyncs overlap the leader's next write.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from mqbroker.log import get_logger
from mqbroker.persistence import WriteBatch
from mqbroker.streams.log import StreamLog

from .records import (
    POSITION,
    LogCapture,
    LogRange,
    Position,
    Record,
    encode,
    read_ranges,
)
from .ring import Ring
from .wire import pack

log = get_logger("mqbroker.cluster")

# Records queued for one follower beyond this: it cannot keep up; cut it
# off (it reconnects and catches up from the ring or a snapshot).
MAX_QUEUED_BYTES = 256 << 20
# An ISR member with no connection is waited for this long, not the whole
# ack timeout (a dead node would otherwise hold every confirm 3 s).
DISCONNECTED_GRACE = 1.0


class NotLeader(Exception):
    """etcd refused a fenced write: another node leads now."""


@dataclass(slots=True)
class _Pending:
    lsn: int
    ranges: list[LogRange]
    floors: list[tuple[str, int]]
    raw: bytes | None = None


@dataclass(eq=False)
class FollowerLink:
    """One connected follower, as the leader sees it."""

    name: str
    acked: int
    queue: list[bytes] = field(default_factory=list)
    queued_bytes: int = 0
    wakeup: trio.Event = field(default_factory=trio.Event)
    closed: bool = False
    sent_bytes: int = 0  # bytes of records handed to this follower
    acked_bytes: int = 0
    _sizes: dict[int, int] = field(default_factory=dict)  # lsn -> cumulative bytes

    def offer(self, lsn: int, frame: bytes) -> None:
        if self.closed:
            return
        self.queue.append(frame)
        self.queued_bytes += len(frame)
        self.sent_bytes += len(frame)
        self._sizes[lsn] = self.sent_bytes
        if self.queued_bytes > MAX_QUEUED_BYTES:
            log.warning("cluster.follower_too_slow", follower=self.name)
            self.closed = True
        self.wakeup.set()

    def take(self) -> list[bytes]:
        frames, self.queue, self.queued_bytes = self.queue, [], 0
        self.wakeup = trio.Event()
        return frames

    def ack(self, lsn: int) -> None:
        self.acked = max(self.acked, lsn)
        for done in [k for k in self._sizes if k <= lsn]:
            self.acked_bytes = self._sizes.pop(done)

    @property
    def lag_bytes(self) -> int:
        return self.sent_bytes - self.acked_bytes if self._sizes else 0


class Leader:
    """A ``Replicator`` for the group committer (persistence/store.py)."""

    def __init__(
        self,
        *,
        node: str,
        data_dir: Path,
        term: int,
        start: Position,
        ring: Ring,
        cluster_size: int,
        isr: set[str],
        write_isr: Callable[[set[str]], Awaitable[bool]],
        ack_timeout: float = 3.0,
    ) -> None:
        self.node = node
        self.data_dir = data_dir
        self.term = term
        self.last_lsn = start.lsn  # the last record prepared
        self.replicated = start  # the last record confirmed to the cluster
        self.shipped = start  # the last record sent to the followers
        self.ring = ring
        self.majority = cluster_size // 2 + 1
        self.isr = set(isr) | {node}
        self._write_isr = write_isr
        self.ack_timeout = ack_timeout
        self.capture = LogCapture(data_dir)
        self.links: dict[str, FollowerLink] = {}
        self._acked = trio.Event()
        # one ISR change at a time: a batch's wait, or the idle upkeep
        self._isr_lock = trio.Lock()

    def seed_logs(self, logs: list[StreamLog]) -> None:
        for stream_log in logs:
            self.capture.seed(stream_log)

    # ----------------------------------------------------- Replicator

    def prepare(self, batch: WriteBatch) -> None:
        self.last_lsn += 1
        batch.definitions[POSITION] = {"term": self.term, "lsn": self.last_lsn}
        batch.replica = _Pending(
            self.last_lsn, self.capture.capture(batch), self.capture.floors(batch)
        )

    def encode(self, batch: WriteBatch) -> None:
        pending = batch.replica
        if not isinstance(pending, _Pending) or pending.raw is not None:
            return
        ranges = read_ranges(self.data_dir, pending.ranges)
        pending.raw = encode(Record(self.term, pending.lsn, batch, ranges, pending.floors))
        pending.ranges = []

    def ship(self, batch: WriteBatch) -> None:
        pending = batch.replica
        assert isinstance(pending, _Pending) and pending.raw is not None
        self.shipped = Position(self.term, pending.lsn)
        self.ring.add(self.shipped, pending.raw)
        frame = _frame_rec(pending.raw)
        for link in list(self.links.values()):
            link.offer(pending.lsn, frame)
        batch.replica = pending.lsn

    async def wait(self, batch: WriteBatch) -> None:
        lsn = batch.replica
        assert isinstance(lsn, int)
        batch.replica = None
        async with self._isr_lock:
            await self._wait_for(lsn)
        self.replicated = Position(self.term, lsn)

    async def maintain(self, interval: float = 0.5) -> None:
        """While no batch is being replicated: let followers that caught up
        join the ISR and drop those that left, so the in-sync set (and who
        may be elected) is right even when nothing is published."""
        while True:
            await trio.sleep(interval)
            if self._isr_lock.locked():
                continue
            async with self._isr_lock:
                lsn = self.replicated.lsn
                if self.last_lsn != lsn:
                    continue  # a batch is on its way: its wait decides
                members = {self.node} | {n for n in self.links if self._acked_lsn(n) >= lsn}
                if members != self.isr:
                    await self._commit_isr(members)

    async def _wait_for(self, lsn: int) -> None:
        start = trio.current_time()
        while True:
            now = trio.current_time()
            # a member with no connection gets a second to (re)connect, a
            # connected one the whole ack timeout
            waiting = [
                n for n in self.isr - {self.node} if self._acked_lsn(n) < lsn
                and now - start < (self.ack_timeout if n in self.links else DISCONNECTED_GRACE)
            ]
            if not waiting:
                break
            await self._next_ack(min(start + self.ack_timeout, now + 0.1))
        while 1 + sum(1 for n in self.links if self._acked_lsn(n) >= lsn) < self.majority:
            await self._next_ack(trio.current_time() + 1.0)
        members = {self.node} | {n for n in self.links if self._acked_lsn(n) >= lsn}
        if members != self.isr:
            await self._commit_isr(members)

    def _acked_lsn(self, name: str) -> int:
        link = self.links.get(name)
        return -1 if link is None or link.closed else link.acked

    async def _next_ack(self, deadline: float) -> None:
        with trio.move_on_at(deadline):
            await self._acked.wait()
        self._acked = trio.Event()

    async def _commit_isr(self, members: set[str]) -> None:
        """Fenced by the term; retried while etcd is unreachable (the
        confirms of this batch wait meanwhile)."""
        while True:
            try:
                ok = await self._write_isr(members)
            except Exception as exc:  # etcd down: stall, never confirm early
                log.warning("cluster.isr_write_failed", error=str(exc))
                await trio.sleep(0.5)
                continue
            if not ok:
                raise NotLeader("the leader key is no longer ours")
            log.info("cluster.isr", members=sorted(members))
            self.isr = members
            return

    # ------------------------------------------------------ followers

    def attach(self, name: str, position: Position) -> FollowerLink | None:
        """A follower at ``position`` connects: its link with the records
        it lacks queued, or None when the ring does not reach back (it
        needs a snapshot). Synchronous: nothing is replicated between
        reading the ring and registering the link."""
        current = self.ring.last or self.shipped
        if position == current:
            missing: list[bytes] = []
        else:
            found = self.ring.after(position)
            if found is None:
                return None
            missing = found
        old = self.links.pop(name, None)
        if old is not None:
            old.closed = True
            old.wakeup.set()
        link = FollowerLink(name, acked=position.lsn)
        first = position.lsn + 1
        for i, raw in enumerate(missing):
            link.offer(first + i, _frame_rec(raw))
        self.links[name] = link
        return link

    def detach(self, link: FollowerLink) -> None:
        link.closed = True
        link.wakeup.set()
        if self.links.get(link.name) is link:
            del self.links[link.name]
        self._acked.set()

    def acked(self, link: FollowerLink, lsn: int) -> None:
        link.ack(lsn)
        self._acked.set()

    def status(self) -> dict[str, Any]:
        return {
            "term": self.term,
            "lsn": self.replicated.lsn,
            "isr": sorted(self.isr),
            "followers": {
                name: {"acked_lsn": link.acked, "lag_bytes": link.lag_bytes}
                for name, link in self.links.items()
            },
        }


def _frame_rec(raw: bytes) -> bytes:
    return pack(["rec", raw])
