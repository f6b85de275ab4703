"""The one hand-driven AMQP 0-9-1 client of the suites (optionally over
TLS): for malformed frames, exact frame orders and handshake edge cases.

Frames are built with pamqp (``send_frame``/``send_method``) or by hand
(``support.frames``) when they must be malformed.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import time
from typing import Any

from pamqp import commands
from pamqp import exceptions as pamqp_exceptions
from pamqp import frame as pframe
from pamqp import heartbeat as pheartbeat

from support.frames import PROTOCOL_HEADER, method_frame
from support.waits import WAIT

CAPS = {
    "authentication_failure_close": True,
    "connection.blocked": True,
    "consumer_cancel_notify": True,
    "publisher_confirms": True,
}


class Closed(Exception):
    """The broker closed the socket."""


class RawClient:
    def __init__(
        self,
        host: str,
        port: int,
        timeout: float = WAIT,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str = "localhost",
        *,
        user: str = "guest",
        password: str = "guest",
        vhost: str = "/",
    ) -> None:
        sock = socket.create_connection((host, port), timeout=timeout)
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(sock, server_hostname=server_hostname)
        self.sock = sock
        self.timeout = timeout
        self.buf = b""
        self.start: Any = None
        self.user, self.password, self.vhost = user, password, vhost
        self.frame_max = 0
        self.channel_max = 0
        self.broker: Any = None  # the test broker handle, when known

    @classmethod
    def for_broker(cls, broker: Any, timeout: float = 5.0) -> RawClient:
        """A client of a test broker handle (host, port, credentials)."""
        client = cls(broker.host, broker.port, timeout, user=broker.user,
                     password=broker.password, vhost=broker.vhost)
        client.broker = broker
        return client

    # -- plumbing

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_frame(self, value: Any, channel: int = 0) -> None:
        self.send(pframe.marshal(value, channel))

    def send_method(self, method: Any, channel: int = 0) -> None:
        self.send(method_frame(channel, method))

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no data from the broker in time")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError) as exc:
            raise Closed(str(exc)) from exc
        except TimeoutError as exc:
            raise TimeoutError("no data from the broker in time") from exc
        if not data:
            raise Closed("eof")
        self.buf += data

    def read_exact(self, n: int, timeout: float = WAIT) -> bytes:
        deadline = time.monotonic() + timeout
        while len(self.buf) < n:
            self._fill(deadline)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_until_eof(self, timeout: float = WAIT) -> bytes:
        """Everything the broker sends until it closes the socket."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._fill(deadline)
            except Closed:
                out, self.buf = self.buf, b""
                return out

    def read_frame(self, timeout: float | None = None, skip_heartbeats: bool = True) -> tuple[int, Any]:
        """(channel, decoded frame); a protocol header comes back as (-1, bytes)."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while True:
            if self.buf.startswith(b"AMQP") and len(self.buf) >= 8:
                header, self.buf = self.buf[:8], self.buf[8:]
                return -1, header
            if len(self.buf) >= 7:
                (size,) = struct.unpack_from(">I", self.buf, 3)
                if len(self.buf) >= size + 8:
                    try:
                        consumed, channel, value = pframe.unmarshal(self.buf)
                    except pamqp_exceptions.UnmarshalingException as exc:
                        raise AssertionError(f"broker sent a bad frame: {exc}") from exc
                    self.buf = self.buf[consumed:]
                    if skip_heartbeats and isinstance(value, pheartbeat.Heartbeat):
                        continue
                    return channel, value
            self._fill(deadline)

    def read_raw_frame(self, timeout: float | None = None) -> tuple[int, int, bytes]:
        """(frame type, channel, payload) undecoded; heartbeats skipped."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while True:
            head = self.read_exact(7, max(deadline - time.monotonic(), 0.001))
            ftype, channel, size = struct.unpack(">BHI", head)
            payload = self.read_exact(size + 1, max(deadline - time.monotonic(), 0.001))[:-1]
            if ftype != 8:
                return ftype, channel, payload

    def expect(self, cls: type, timeout: float | None = None) -> Any:
        _, value = self.read_frame(timeout)
        assert isinstance(value, cls), f"expected {cls.__name__}, got {value!r}"
        return value

    # -- closing

    def read_until_close(self, timeout: float = WAIT) -> Any | None:
        """Read until connection.close (answered with close-ok) or EOF;
        the Close method, or None when the socket just closed."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                _, value = self.read_frame(max(deadline - time.monotonic(), 0.001))
            except Closed:
                return None
            if isinstance(value, commands.Connection.Close):
                with contextlib.suppress(OSError):
                    self.send_method(commands.Connection.CloseOk())
                return value

    def expect_connection_close(self, timeout: float = WAIT, wait_eof: bool = True) -> Any:
        """Read until connection.close (skipping anything else), answer
        close-ok and (unless ``wait_eof`` is false) check that the broker
        then closes the socket."""
        deadline = time.monotonic() + timeout
        while True:
            chan, value = self.read_frame(max(deadline - time.monotonic(), 0.001))
            if isinstance(value, commands.Connection.Close):
                assert chan == 0, f"connection.close on channel {chan}"
                break
        with contextlib.suppress(OSError):
            self.send_frame(commands.Connection.CloseOk())
        if wait_eof:
            self.read_until_eof(timeout=max(deadline - time.monotonic(), 1.0))
        return value

    def wait_eof(self, timeout: float = WAIT) -> bool:
        """True once the broker has closed the socket (data is discarded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
                data = self.sock.recv(65536)
            except TimeoutError:
                return False
            except (OSError, ssl.SSLError):
                return True
            if not data:
                return True
        return False

    # -- handshake

    def start_ok(
        self,
        user: str | None = None,
        password: str | None = None,
        mechanism: str = "PLAIN",
        response: bytes | str | None = None,
        capabilities: dict[str, Any] | None = None,
    ) -> Any:
        self.send(PROTOCOL_HEADER)
        self.start = self.expect(commands.Connection.Start)
        if response is None:
            response = f"\0{user or self.user}\0{password or self.password}"
        if isinstance(response, bytes):  # pamqp wants str for longstr
            response = response.decode("latin-1")
        self.send_method(
            commands.Connection.StartOk(
                client_properties={
                    "product": "mqbroker-raw-test",
                    "capabilities": CAPS if capabilities is None else capabilities,
                },
                mechanism=mechanism,
                response=response,
                locale="en_US",
            )
        )
        return self.start

    def handshake(
        self,
        user: str | None = None,
        password: str | None = None,
        vhost: str | None = None,
        heartbeat: int = 0,
        *,
        frame_max: int | None = None,
        channel_max: int | None = None,
        **kw: Any,
    ) -> None:
        """Header, start-ok (PLAIN), tune-ok, open: up to open-ok."""
        self.start_ok(user, password, **kw)
        tune = self.expect(commands.Connection.Tune)
        self.frame_max = frame_max if frame_max is not None else tune.frame_max
        self.channel_max = channel_max if channel_max is not None else tune.channel_max
        self.send_method(
            commands.Connection.TuneOk(
                channel_max=self.channel_max, frame_max=self.frame_max, heartbeat=heartbeat
            )
        )
        self.send_method(commands.Connection.Open(virtual_host=vhost or self.vhost))
        self.expect(commands.Connection.OpenOk)

    def open_channel(self, channel: int = 1) -> None:
        self.send_method(commands.Channel.Open(), channel)
        chan, value = self.read_frame()
        assert chan == channel and isinstance(value, commands.Channel.OpenOk), value

    def mechanisms(self) -> list[str]:
        mech = self.start.mechanisms
        if isinstance(mech, bytes):
            mech = mech.decode()
        return str(mech).split()


def close_code(close: Any) -> tuple[int, str]:
    text = close.reply_text
    if isinstance(text, bytes):
        text = text.decode()
    return int(close.reply_code), str(text)
