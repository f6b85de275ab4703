"""A follower: a standby store kept identical to the leader's.

It runs no broker. It applies each record the leader sends to its own
LMDB store and segment files, fsyncs, and acknowledges; when it is
promoted, the node closes this store and starts an ordinary broker on the
same data dir (recovery does the rest). A record that does not follow the
last one applied, or a leader that stays silent for ``SILENCE``, ends the
session; the next one starts from the store's position (or asks for a
full snapshot after a gap).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import trio

from mqbroker.log import get_logger
from mqbroker.persistence import LmdbStore

from .records import (
    GapError,
    Position,
    Record,
    apply_ranges,
    decode,
    read_position,
)
from .ring import Ring
from .snapshot import incoming_dir, install, write_chunk
from .wire import FrameReader, WireError, pack

log = get_logger("mqbroker.cluster")

SILENCE = 5.0
RETRY = 0.5


def led_marker(data_dir: Path) -> Path:
    """Present while (and after) this node led: see ``Follower._resync``."""
    return data_dir / "cluster-led"


class Follower:
    def __init__(self, node: str, data_dir: Path, secret: str, ring: Ring) -> None:
        self.node = node
        self.data_dir = data_dir
        self.secret = secret
        self.ring = ring
        self.store = LmdbStore(data_dir)
        self.position = read_position(dict(self.store.definitions("cluster")))
        self.connected_to: tuple[str, int] | None = None
        self.leader_lsn = 0
        # A node that led wrote segment bytes itself; if it died between a
        # log fsync and the store write of that batch, its files hold bytes
        # its store position does not cover, which no record of the new
        # leader will overwrite: it starts over from a snapshot.
        self._resync = led_marker(data_dir).exists()

    def close(self) -> None:
        self.store.close()

    async def run(self, target: Callable[[], tuple[str, int] | None]) -> None:
        """Follow whoever ``target()`` says leads, reconnecting for ever."""
        while True:
            address = target()
            if address is None:
                await trio.sleep(RETRY / 2)
                continue
            try:
                await self._session(address)
            except (OSError, WireError, trio.TooSlowError, trio.BrokenResourceError,
                    GapError, ValueError, TypeError, KeyError) as exc:
                if isinstance(exc, GapError):
                    self._resync = True
                log.info("cluster.follow_interrupted", leader=f"{address[0]}:{address[1]}",
                         reason=str(exc) or type(exc).__name__)
            finally:
                self.connected_to = None
            await trio.sleep(RETRY)

    async def _session(self, address: tuple[str, int]) -> None:
        stream = await trio.open_tcp_stream(*address)
        async with stream:
            position = Position(-1, -1) if self._resync else self.position
            await stream.send_all(
                pack(["hello", self.node, position.term, position.lsn, self.secret])
            )
            self.connected_to = address
            reader = FrameReader(stream)
            while True:
                with trio.fail_after(SILENCE):
                    message = await reader.read()
                kind = message[0]
                if kind == "rec":
                    await self._apply(decode(message[1]), message[1])
                elif kind == "snapshot":
                    await self._receive_snapshot(reader, Position(message[1], message[2]))
                elif kind == "ping":
                    self.leader_lsn = int(message[1])
                elif kind != "tail":
                    raise WireError(f"unexpected {kind!r}")
                if kind != "tail":
                    await stream.send_all(pack(["ack", self.position.lsn]))

    async def _apply(self, record: Record, raw: bytes) -> None:
        if record.lsn != self.position.lsn + 1:
            raise GapError(f"record {record.lsn} after {self.position.lsn}")

        def write() -> None:
            apply_ranges(self.data_dir, record)
            self.store.write_batch(record.batch)

        await trio.to_thread.run_sync(write)
        self.store.batch_done(record.batch)
        self.position = record.position
        self.leader_lsn = max(self.leader_lsn, record.lsn)
        self.ring.add(record.position, raw)

    async def _receive_snapshot(self, reader: FrameReader, position: Position) -> None:
        incoming = incoming_dir(self.data_dir)
        await trio.to_thread.run_sync(lambda: shutil.rmtree(incoming, ignore_errors=True))
        incoming.mkdir(parents=True)
        while True:
            with trio.fail_after(SILENCE):
                message = await reader.read()
            if message[0] == "end":
                break
            if message[0] != "file" or len(message) != 3:
                raise WireError("bad snapshot frame")
            await trio.to_thread.run_sync(write_chunk, incoming, message[1], message[2])
        self.store.close()
        try:
            await trio.to_thread.run_sync(install, self.data_dir, incoming)
        finally:
            self.store = LmdbStore(self.data_dir)
        self.position = read_position(dict(self.store.definitions("cluster")))
        if self.position != position:
            raise GapError(f"snapshot at {self.position}, announced {position}")
        self.ring.clear()
        self._resync = False
        led_marker(self.data_dir).unlink(missing_ok=True)
        log.info("cluster.snapshot_installed", position=position.as_list())
