"""A small blocking AMQP 0-9-1 client: pamqp for the handshake and the
rare methods (declare, bind, qos, consume, close), a raw socket that the
producer and consumer loops then drive themselves (``socket``, ``buffer``).
"""

from __future__ import annotations

import socket
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

from pamqp import commands
from pamqp import frame as pframe
from pamqp import header as pheader
from pamqp.base import Frame

from mqbroker.perf.frames import FRAME_HDR

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


class AMQPError(RuntimeError):
    """The broker closed the channel or the connection."""


@dataclass(frozen=True)
class URL:
    host: str
    port: int
    user: str
    password: str
    vhost: str

    @classmethod
    def parse(cls, url: str) -> URL:
        parts = urllib.parse.urlparse(url)
        if parts.scheme not in ("amqp", ""):
            raise ValueError(f"unsupported URL scheme {parts.scheme!r}")
        path = parts.path.removeprefix("/")
        vhost = urllib.parse.unquote(path) if path else "/"
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 5672,
            user=urllib.parse.unquote(parts.username or "guest"),
            password=urllib.parse.unquote(parts.password or "guest"),
            vhost=vhost,
        )


def split_frames(buf: bytearray) -> list[bytes]:
    """Remove and return the complete frames at the start of ``buf``."""
    out = []
    pos = 0
    n = len(buf)
    while n - pos >= 7:
        _t, _ch, size = FRAME_HDR.unpack_from(buf, pos)
        end = pos + 7 + size + 1
        if end > n:
            break
        out.append(bytes(buf[pos:end]))
        pos = end
    del buf[:pos]
    return out


class Connection:
    """Blocking connection with one or more channels; RPCs wait for their
    reply, skipping nothing silently: an unexpected close raises."""

    def __init__(self, url: str, *, timeout: float = 15.0,
                 heartbeat: int = 0, name: str = "mqbroker-perf") -> None:
        self.url = URL.parse(url)
        self.timeout = timeout
        self.sock = socket.create_connection((self.url.host, self.url.port),
                                             timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, opt, 1 << 20)
            except OSError:
                pass
        self.buffer = bytearray()
        self.frame_max = 131072
        self.server_properties: dict[str, Any] = {}
        self._handshake(heartbeat, name)

    # --- low level --------------------------------------------------------
    def send_frame(self, channel: int, value: Frame) -> None:
        self.sock.sendall(pframe.marshal(value, channel))

    def read_frame(self) -> tuple[int, Any]:
        deadline = time.monotonic() + self.timeout
        while True:
            frames = self._peek_frame()
            if frames is not None:
                return frames
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no frame from the broker")
            self.sock.settimeout(remaining)
            data = self.sock.recv(1 << 16)
            if not data:
                raise ConnectionError("broker closed the connection")
            self.buffer += data

    def _peek_frame(self) -> tuple[int, Any] | None:
        buf = self.buffer
        if len(buf) < 7:
            return None
        _t, _ch, size = FRAME_HDR.unpack_from(buf, 0)
        end = 7 + size + 1
        if len(buf) < end:
            return None
        consumed, channel, value = pframe.unmarshal(bytes(buf[:end]))
        del buf[:consumed]
        return channel, value

    def wait_for(self, channel: int, *types: type) -> Any:
        while True:
            ch, value = self.read_frame()
            if isinstance(value, commands.Connection.Close):
                self._send_quiet(0, commands.Connection.CloseOk())
                raise AMQPError(f"connection closed by broker: "
                                f"{value.reply_code} {value.reply_text}")
            if isinstance(value, commands.Channel.Close):
                self._send_quiet(ch, commands.Channel.CloseOk())
                raise AMQPError(f"channel {ch} closed by broker: "
                                f"{value.reply_code} {value.reply_text}")
            if ch == channel and isinstance(value, types):
                return value
            # heartbeats, blocked/unblocked, stray acks: ignore

    def rpc(self, channel: int, method: Frame, *replies: type) -> Any:
        self.send_frame(channel, method)
        return self.wait_for(channel, *replies)

    def _send_quiet(self, channel: int, value: Frame) -> None:
        try:
            self.send_frame(channel, value)
        except OSError:
            pass

    # --- handshake ----------------------------------------------------------
    def _handshake(self, heartbeat: int, name: str) -> None:
        self.sock.sendall(pheader.ProtocolHeader().marshal())
        start = self.wait_for(0, commands.Connection.Start)
        self.server_properties = dict(start.server_properties or {})
        response = f"\0{self.url.user}\0{self.url.password}"
        self.send_frame(0, commands.Connection.StartOk(
            client_properties={
                "product": name,
                "connection_name": name,
                "capabilities": {
                    "publisher_confirms": True,
                    "basic.nack": True,
                    "consumer_cancel_notify": True,
                    "connection.blocked": True,
                },
            },
            mechanism="PLAIN", response=response, locale="en_US"))
        tune = self.wait_for(0, commands.Connection.Tune)
        self.frame_max = tune.frame_max or 131072
        channel_max = tune.channel_max or 2047
        self.send_frame(0, commands.Connection.TuneOk(
            channel_max=channel_max, frame_max=self.frame_max,
            heartbeat=heartbeat))
        self.rpc(0, commands.Connection.Open(virtual_host=self.url.vhost),
                 commands.Connection.OpenOk)

    @property
    def product(self) -> str:
        value = self.server_properties.get("product", "")
        return value.decode() if isinstance(value, bytes) else str(value)

    @property
    def version(self) -> str:
        value = self.server_properties.get("version", "")
        return value.decode() if isinstance(value, bytes) else str(value)

    # --- channel-level helpers -----------------------------------------------
    def channel_open(self, channel: int = 1) -> int:
        self.rpc(channel, commands.Channel.Open(), commands.Channel.OpenOk)
        return channel

    def exchange_declare(self, channel: int, name: str, type_: str, *,
                         durable: bool = False,
                         auto_delete: bool = False) -> None:
        self.rpc(channel, commands.Exchange.Declare(
            exchange=name, exchange_type=type_, durable=durable,
            auto_delete=auto_delete), commands.Exchange.DeclareOk)

    def exchange_delete(self, channel: int, name: str) -> None:
        self.rpc(channel, commands.Exchange.Delete(exchange=name),
                 commands.Exchange.DeleteOk)

    def queue_declare(self, channel: int, name: str, *, durable: bool = False,
                      passive: bool = False,
                      arguments: dict[str, Any] | None = None
                      ) -> commands.Queue.DeclareOk:
        ok: commands.Queue.DeclareOk = self.rpc(channel, commands.Queue.Declare(
            queue=name, durable=durable, passive=passive,
            arguments=arguments or {}), commands.Queue.DeclareOk)
        return ok

    def queue_bind(self, channel: int, queue: str, exchange: str,
                   routing_key: str) -> None:
        self.rpc(channel, commands.Queue.Bind(
            queue=queue, exchange=exchange, routing_key=routing_key),
            commands.Queue.BindOk)

    def queue_delete(self, channel: int, name: str) -> int:
        ok = self.rpc(channel, commands.Queue.Delete(queue=name),
                      commands.Queue.DeleteOk)
        return int(ok.message_count)

    def queue_purge(self, channel: int, name: str) -> int:
        ok = self.rpc(channel, commands.Queue.Purge(queue=name),
                      commands.Queue.PurgeOk)
        return int(ok.message_count)

    def basic_qos(self, channel: int, prefetch: int) -> None:
        self.rpc(channel, commands.Basic.Qos(prefetch_count=prefetch),
                 commands.Basic.QosOk)

    def confirm_select(self, channel: int) -> None:
        self.rpc(channel, commands.Confirm.Select(), commands.Confirm.SelectOk)

    def basic_consume(self, channel: int, queue: str, tag: str, *,
                      no_ack: bool, arguments: dict[str, Any] | None = None) -> None:
        """Sends basic.consume without waiting: the consume-ok is read by
        the consumer loop, with the deliveries that may follow it."""
        self.send_frame(channel, commands.Basic.Consume(
            queue=queue, consumer_tag=tag, no_ack=no_ack, arguments=arguments or {}))

    def close(self, wait: float = 5.0) -> None:
        """connection.close, then wait up to ``wait`` s for close-ok. A
        publisher must wait long: until close-ok the broker may still be
        reading what was sent (RabbitMQ's credit flow pauses the reading),
        and closing the socket earlier resets it and loses those messages.
        """
        try:
            self.sock.settimeout(self.timeout)
            self.send_frame(0, commands.Connection.Close(
                reply_code=200, reply_text="bye", class_id=0, method_id=0))
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                try:
                    self.timeout = max(0.1, deadline - time.monotonic())
                    ch, value = self.read_frame()
                except (OSError, TimeoutError, ConnectionError):
                    break
                if isinstance(value, (commands.Connection.CloseOk,
                                      commands.Connection.Close)):
                    break
        except OSError:
            pass
        finally:
            self.abort()

    def abort(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def decode_method(payload_frame: bytes) -> Any:
    """pamqp's view of one complete frame (for the rare methods)."""
    _consumed, _ch, value = pframe.unmarshal(payload_frame)
    return value


