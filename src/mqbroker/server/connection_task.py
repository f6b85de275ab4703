"""I/O adapter: one TCP connection <-> one sans-I/O ``Session``.

Strategy: one nursery per connection with three tasks. The reader feeds
bytes to the session (which handles every complete frame synchronously and
lets the broker dispatch once per read), the writer sends whatever output
accumulated since its last send in one ``send_all`` (batching emerges: one
write per loop pass, not per frame), and the heartbeat task sends and checks
heartbeats. Backpressure: when more than ``output_high_water_bytes`` wait
for this socket, consumers on it get no more deliveries and the reader stops
reading, so neither a slow consumer nor a publisher that ignores its
confirms can grow the broker's memory without bound.
"""

from __future__ import annotations

import math

import trio

from mqbroker import errors
from mqbroker.broker.broker import FLOW_LOW_READY, Broker
from mqbroker.broker.session import Session
from mqbroker.log import get_logger
from mqbroker.protocol.connection import ServerConnection, State
from mqbroker.server import tls

log = get_logger("mqbroker.connection")

FLOW_POLL_S = 0.002  # how often a throttled publisher re-checks its queues
FLOW_STALL_S = 0.2  # consumers idle this long do not hold publishers back
READ_SIZE = 256 * 1024  # one read may carry hundreds of small publishes
CLOSE_TIMEOUT_S = 3.0  # how long we wait for the peer's close-ok
SENDMSG_BUFFERS = 512  # buffers per sendmsg call (Linux IOV_MAX is 1024)


class ConnectionTask:
    def __init__(self, broker: Broker, stream: trio.abc.Stream) -> None:
        self.broker = broker
        self.stream = stream
        # Set by the test harness: the connection was cut, say nothing.
        self.dropped = False
        try:
            sock = tls.socket_of(stream)
            if sock is None:
                raise OSError("no socket")
            host, port = sock.getpeername()[:2]
            self.peer = f"{host}:{port}"
        except OSError:
            self.peer = "unknown"
        config = broker.config
        self.conn = ServerConnection(
            frame_max=config.frame_max,
            channel_max=config.channel_max,
            heartbeat=config.heartbeat_s,
            max_message_size=config.max_message_size,
            server_properties=broker.server_properties(),
        )
        self.session = Session(broker, self.conn, self.peer)
        self.session.wake = self._wake
        self.session.resume_reading = self._resume_reading
        self._unblocked = trio.Event()
        self._wakeup = trio.Event()
        self._writable = trio.Event()
        self._finished = False
        self._writer_done = trio.Event()
        self.last_recv = trio.current_time()
        self.last_sent = trio.current_time()
        self._logged_open = False

    def _wake(self) -> None:
        self._wakeup.set()

    def _resume_reading(self) -> None:
        self._unblocked.set()

    async def _start_tls(self) -> bool:
        """TLS handshake first: a verified client certificate's CN makes
        SASL EXTERNAL available on this connection."""
        assert isinstance(self.stream, trio.SSLStream)
        try:
            cn = await tls.handshake(
                self.stream, self.broker.config.tls_handshake_timeout_s
            )
        except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            cause = exc.__cause__ or exc
            self.session.close_reason = f"TLS handshake failed: {cause!r}"[:200]
            return False
        self.session.tls_peer_cn = cn
        if cn is not None:
            self.conn.mechanisms += " EXTERNAL"
        return True

    async def run(self) -> None:
        access = self.broker.access
        access.tcp_connections += 1
        try:
            if isinstance(self.stream, trio.SSLStream) and not await self._start_tls():
                return
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer)
                nursery.start_soon(self._heartbeat)
                await self._reader()
                self._finished = True
                self._wake()
                with trio.move_on_after(CLOSE_TIMEOUT_S):
                    await self._writer_done.wait()
                nursery.cancel_scope.cancel()
        finally:
            access.tcp_connections -= 1
            if self.conn.state is State.OPEN and not self.dropped:
                # The broker is stopping (our tasks were cancelled while the
                # connection was open): tell the client, as RabbitMQ does.
                await self._say_shutdown()
            self.session.connection_lost()
            await trio.aclose_forcefully(self.stream)
            log.info(
                "connection.closed",
                peer=self.peer,
                user=self.session.user,
                reason=self.session.close_reason or "socket closed",
            )

    async def _say_shutdown(self) -> None:
        self.session.close_reason = "broker shutdown"
        self.conn.close_connection(
            errors.ConnectionForced(
                "broker forced connection closure with reason 'shutdown'"
            )
        )
        with trio.CancelScope(shield=True), trio.move_on_after(0.5):
            try:
                await self.stream.send_all(self.conn.data_to_send())
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError, OSError):
                pass

    # ----------------------------------------------------------- reader

    def _deadline(self) -> float:
        state = self.conn.state
        if state is State.CLOSING:
            return self._closing_since + CLOSE_TIMEOUT_S
        if state is not State.OPEN:
            return self._started + self.broker.config.handshake_timeout_s
        return math.inf

    async def _reader(self) -> None:
        self._started = trio.current_time()
        self._closing_since = math.inf
        session, conn = self.session, self.conn
        while conn.state is not State.CLOSED:
            if not session.writable:
                self._writable = trio.Event()
                await self._writable.wait()
            # Resource alarm: a publishing connection stops being read
            # until the alarm clears (or the connection is closed).
            while session.blocked and conn.state is State.OPEN and not self._finished:
                self._unblocked = trio.Event()
                await self._unblocked.wait()
            data = b""
            with trio.move_on_at(self._deadline()) as scope:
                try:
                    # bytes() is free for a SocketStream's bytes (TLS: bytearray)
                    data = bytes(await self.stream.receive_some(READ_SIZE))
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    data = b""
            if scope.cancelled_caught:
                if conn.state is State.CLOSING:
                    return
                if conn.state is not State.OPEN:
                    session.close_reason = "handshake timeout"
                    return
            if not data:
                if session.close_reason is None:
                    session.close_reason = "peer closed the socket"
                return
            self.last_recv = trio.current_time()
            # Blocked while this read was pending: hold the bytes until the
            # alarm clears (at most one read is held per connection).
            while session.blocked and conn.state is State.OPEN and not self._finished:
                self._unblocked = trio.Event()
                await self._unblocked.wait()
            was_closing = conn.state is State.CLOSING
            try:
                session.receive(data)
            except Exception as exc:  # a broker bug must not kill the broker
                log.exception("connection.internal_error", peer=self.peer)
                session.report(errors.InternalError(type(exc).__name__), 0)
            if not was_closing and conn.state is State.CLOSING:
                self._closing_since = trio.current_time()
            if not self._logged_open and conn.state is State.OPEN:
                self._logged_open = True
                log.info(
                    "connection.opened",
                    peer=self.peer,
                    user=session.user,
                    vhost=session.vhost.name if session.vhost else None,
                )
            self.broker.run_dispatch()
            # Publisher flow control: let slow consumers catch up before
            # reading more publishes from this connection.
            while not self._finished and session.in_flow(
                FLOW_LOW_READY, trio.current_time(), FLOW_STALL_S
            ):
                await trio.sleep(FLOW_POLL_S)
            if session.last_error is not None:
                error = session.last_error
                session.last_error = None
                log.info(
                    "channel.error" if not error.hard else "connection.error",
                    peer=self.peer,
                    user=session.user,
                    code=error.reply_code,
                    text=error.reply_text,
                )

    # ----------------------------------------------------------- writer

    async def _writer(self) -> None:
        session, conn = self.session, self.conn
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                while conn.output_size:
                    chunks = conn.take_output()
                    session.inflight = sum(map(len, chunks))
                    try:
                        await self._send(chunks)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        self._finished = True
                        return
                    finally:
                        session.inflight = 0
                    self.last_sent = trio.current_time()
                    if (
                        conn.output_size
                        < self.broker.config.output_low_water_bytes
                    ):
                        self._writable.set()
                        self.broker.writable_again(session)
                if self._finished or conn.state is State.CLOSED:
                    return
        finally:
            self._writer_done.set()
            self._writable.set()
            self._unblocked.set()

    async def _send(self, chunks: list[bytes | bytearray]) -> None:
        """One pass's output. Several buffers (large bodies are queued
        uncopied) go to a plain socket with ``sendmsg``, as many per call
        as the kernel takes; TLS streams get them one by one."""
        if len(chunks) == 1:
            await self.stream.send_all(chunks[0])
            return
        if not isinstance(self.stream, trio.SocketStream):
            for chunk in chunks:
                await self.stream.send_all(chunk)
            return
        sock = self.stream.socket
        views = [memoryview(chunk) for chunk in chunks]
        first = 0
        while first < len(views):
            sent = await sock.sendmsg(views[first : first + SENDMSG_BUFFERS])
            while sent:
                size = len(views[first])
                if sent >= size:
                    sent -= size
                    first += 1
                else:
                    views[first] = views[first][sent:]
                    sent = 0

    # -------------------------------------------------------- heartbeat

    async def _heartbeat(self) -> None:
        conn = self.conn
        while conn.state is not State.OPEN:
            await trio.sleep(0.5)
            if conn.state in (State.CLOSED, State.CLOSING):
                return
        interval = conn.heartbeat
        if interval <= 0:
            return
        while True:
            await trio.sleep(interval / 2)
            now = trio.current_time()
            if self.session.blocked:
                # Reads are paused: the peer's heartbeats sit unread in the
                # socket (RabbitMQ pauses its heartbeat monitor the same way).
                self.last_recv = now
            if now - self.last_recv > 2 * interval:
                self.session.close_reason = (
                    f"missed heartbeats from client, timeout: {interval}s"
                )
                await trio.aclose_forcefully(self.stream)
                return
            if now - self.last_sent >= interval / 2:
                conn.send_heartbeat()
                self._wake()
