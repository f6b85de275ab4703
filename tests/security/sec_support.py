"""Plain helpers for the security suite: a raw AMQP client over a socket,
frame builders for malformed input, and bounded waits.

Every read has a timeout; nothing here can block a test forever.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import time
from collections.abc import Callable
from typing import Any

from pamqp import commands
from pamqp import exceptions as pamqp_exceptions
from pamqp import frame as pframe
from pamqp import heartbeat as pheartbeat

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
WAIT = 10.0

CAPS = {
    "authentication_failure_close": True,
    "connection.blocked": True,
    "consumer_cancel_notify": True,
    "publisher_confirms": True,
}


def raw_frame(ftype: int, channel: int, payload: bytes, end: int = 0xCE) -> bytes:
    return struct.pack(">BHI", ftype, channel, len(payload)) + payload + bytes((end,))


def method_frame(channel: int, method: Any) -> bytes:
    return pframe.marshal(method, channel)


def wait_until(pred: Callable[[], bool], timeout: float = WAIT, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


class Closed(Exception):
    """The broker closed the socket."""


class RawClient:
    """A hand-driven AMQP 0-9-1 client (optionally over TLS)."""

    def __init__(
        self,
        host: str,
        port: int,
        timeout: float = WAIT,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str = "localhost",
    ) -> None:
        sock = socket.create_connection((host, port), timeout=timeout)
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(sock, server_hostname=server_hostname)
        self.sock = sock
        self.timeout = timeout
        self.buf = b""
        self.start: Any = None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_method(self, method: Any, channel: int = 0) -> None:
        self.send(method_frame(channel, method))

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no frame from the broker in time")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError) as exc:
            raise Closed(str(exc)) from exc
        except TimeoutError as exc:
            raise TimeoutError("no frame from the broker in time") from exc
        if not data:
            raise Closed("eof")
        self.buf += data

    def read_frame(self, timeout: float | None = None) -> tuple[int, Any]:
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
                    if isinstance(value, pheartbeat.Heartbeat):
                        continue
                    return channel, value
            self._fill(deadline)

    def expect(self, cls: type, timeout: float | None = None) -> Any:
        channel, value = self.read_frame(timeout)
        assert isinstance(value, cls), f"expected {cls.__name__}, got {value!r}"
        return value

    def read_until_close(self, timeout: float = WAIT) -> Any | None:
        """Read until connection.close (answered with close-ok) or EOF;
        the Close method, or None when the socket just closed."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                channel, value = self.read_frame(max(deadline - time.monotonic(), 0.001))
            except Closed:
                return None
            if isinstance(value, commands.Connection.Close):
                with contextlib.suppress(OSError):
                    self.send_method(commands.Connection.CloseOk())
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
        user: str = "guest",
        password: str = "guest",
        mechanism: str = "PLAIN",
        response: bytes | str | None = None,
        capabilities: dict[str, Any] | None = None,
    ) -> Any:
        self.send(PROTOCOL_HEADER)
        self.start = self.expect(commands.Connection.Start)
        if response is None:
            response = f"\0{user}\0{password}"
        if isinstance(response, bytes):  # pamqp wants str for longstr
            response = response.decode("latin-1")
        self.send_method(
            commands.Connection.StartOk(
                client_properties={
                    "product": "mqbroker-security-test",
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
        user: str = "guest",
        password: str = "guest",
        vhost: str = "/",
        heartbeat: int = 0,
        **kw: Any,
    ) -> None:
        self.start_ok(user, password, **kw)
        tune = self.expect(commands.Connection.Tune)
        self.send_method(
            commands.Connection.TuneOk(
                channel_max=tune.channel_max, frame_max=tune.frame_max, heartbeat=heartbeat
            )
        )
        self.send_method(commands.Connection.Open(virtual_host=vhost))
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
