"""The leader's end of one follower's replication connection.

A follower says where its store is (``hello``); it gets the records it
lacks from the ring, or a full snapshot first when the ring does not
reach back or its history forked (an old leader's unconfirmed writes).
Then two tasks: one sends queued records (and a ping each second when
idle, so a dead leader is noticed), one reads acks.
"""

from __future__ import annotations

import hmac
import shutil
from functools import partial
from pathlib import Path

import trio

from mqbroker.log import get_logger
from mqbroker.persistence import LmdbStore

from .leader import FollowerLink, Leader
from .records import Position
from .snapshot import read_chunks, take_snapshot
from .wire import FrameReader, WireError, pack

log = get_logger("mqbroker.cluster")

PING_INTERVAL = 1.0
HELLO_TIMEOUT = 10.0


class Feed:
    def __init__(self, leader: Leader, store: LmdbStore, data_dir: Path, secret: str) -> None:
        self.leader = leader
        self.store = store
        self.data_dir = data_dir
        self.secret = secret
        self._snapshots = 0

    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(trio.serve_listeners, self.handle, listeners))
            nursery.start_soon(self.leader.maintain)
            task_status.started(bound)

    async def handle(self, stream: trio.SocketStream) -> None:
        reader = FrameReader(stream)
        name = "?"
        try:
            with trio.fail_after(HELLO_TIMEOUT):
                hello = await reader.read()
            if hello[0] != "hello" or len(hello) != 5:
                return
            _, name, term, lsn, secret = hello
            if not hmac.compare_digest(str(secret).encode(), self.secret.encode()):
                log.warning("cluster.follower_refused", follower=name, reason="secret")
                return
            link = self.leader.attach(name, Position(term, lsn))
            if link is None:
                link = await self._send_snapshot(stream, name)
                if link is None:
                    return
            else:
                await stream.send_all(pack(["tail"]))
            log.info("cluster.follower_joined", follower=name, position=[term, lsn])
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._send, stream, link, nursery.cancel_scope)
                    await self._receive(reader, link)
                    nursery.cancel_scope.cancel()
            finally:
                self.leader.detach(link)
        except (WireError, trio.BrokenResourceError, trio.ClosedResourceError,
                trio.TooSlowError, OSError, ValueError, TypeError) as exc:
            log.info("cluster.follower_left", follower=name, reason=str(exc) or type(exc).__name__)
        finally:
            await stream.aclose()

    async def _send_snapshot(self, stream: trio.SocketStream, name: str) -> FollowerLink | None:
        """Copy the store, register the follower from the copy's position
        (records committed since come from the ring), then send the files."""
        self._snapshots += 1
        work = self.data_dir.with_name(f"{self.data_dir.name}.snapshot-{self._snapshots}")
        position, files = await trio.to_thread.run_sync(
            take_snapshot, self.store, self.data_dir, work
        )
        try:
            link = self.leader.attach(name, position)
            for _ in range(100):  # the copy may hold a batch not shipped yet
                if link is not None or position.lsn <= self.leader.shipped.lsn:
                    break
                await trio.sleep(0.01)
                link = self.leader.attach(name, position)
            if link is None:
                return None
            log.info("cluster.snapshot", follower=name, position=position.as_list(), files=len(files))
            await stream.send_all(pack(["snapshot", position.term, position.lsn]))
            for rel, path in files:
                await stream.send_all(pack(["file", rel, b""]))
                chunks = read_chunks(path)
                while chunk := await trio.to_thread.run_sync(next, chunks, b""):
                    await stream.send_all(pack(["file", rel, chunk]))
            await stream.send_all(pack(["end"]))
            return link
        finally:
            await trio.to_thread.run_sync(_remove, work)

    async def _send(
        self, stream: trio.SocketStream, link: FollowerLink, scope: trio.CancelScope
    ) -> None:
        try:
            while not link.closed:
                frames = link.take()
                if frames:
                    await stream.send_all(b"".join(frames))
                    continue
                with trio.move_on_after(PING_INTERVAL):
                    await link.wakeup.wait()
                if not link.queue and not link.closed:
                    await stream.send_all(pack(["ping", self.leader.replicated.lsn]))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()

    async def _receive(self, reader: FrameReader, link: FollowerLink) -> None:
        while not link.closed:
            message = await reader.read()
            if message[0] == "ack" and len(message) == 2:
                self.leader.acked(link, int(message[1]))


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
