"""A null AMQP 0-9-1 server: the load generator's yardstick.

It completes the handshake, answers every declaration with its -ok,
swallows publishes (counting them, confirming each read batch at once
with one ``basic.ack multiple``), and on ``basic.consume`` streams
pre-encoded deliveries (16+ byte bodies stamped like the producer's, from
producer id 0xFFFF) as fast as the socket takes them, within the prefetch
window. Nothing is routed or stored. ``mqbroker-perf --null-sink`` runs a
scenario against it to show how far the client itself goes.

    python -m mqbroker.perf.nullserver --port 5680 [--size 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from pamqp import commands
from pamqp import frame as pframe
from pamqp import header as pheader

from mqbroker.perf import frames as F

PROTOCOL_HEADER = pheader.ProtocolHeader().marshal()
FRAME_MAX = 131072


class _Consumer:
    def __init__(self, channel: int, tag: str, no_ack: bool, prefetch: int,
                 size: int) -> None:
        self.channel = channel
        self.tag = tag
        self.no_ack = no_ack
        self.prefetch = prefetch
        self.batch = F.DeliverBatch(channel, tag, size, 256,
                                    frame_max=FRAME_MAX)
        self.seq = 0
        self.active = True


class _Channel:
    def __init__(self) -> None:
        self.confirm = False
        self.published = 0
        self.prefetch = 0
        self.next_tag = 1
        self.acked = 0
        self.consumers: list[_Consumer] = []


class NullProtocol(asyncio.Protocol):
    def __init__(self, server: NullServer) -> None:
        self.server = server
        self.buf = bytearray()
        self.handshaken = False
        self.channels: dict[int, _Channel] = {}
        self.paused = False
        self.pump_scheduled = False
        self.transport: asyncio.Transport | None = None

    # --- asyncio callbacks ---------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(high=1 << 20, low=256 << 10)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._schedule_pump()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.handshaken:
            if len(buf) < 8:
                return
            if bytes(buf[:8]) != PROTOCOL_HEADER:
                self._write(PROTOCOL_HEADER)
                self._close()
                return
            del buf[:8]
            self.handshaken = True
            self._send(0, commands.Connection.Start(
                server_properties={"product": "mqbroker-perf-null",
                                   "version": "0",
                                   "capabilities": {
                                       "publisher_confirms": True,
                                       "basic.nack": True,
                                       "consumer_cancel_notify": True}},
                mechanisms="PLAIN", locales="en_US"))
        hdr = F.FRAME_HDR.unpack_from
        ids = F.METHOD_IDS.unpack_from
        u64 = F.U64.unpack_from
        pos = 0
        n = len(buf)
        touched: dict[int, int] = {}
        acked = False
        while n - pos >= 7:
            ftype, ch, size = hdr(buf, pos)
            fend = pos + 8 + size
            if fend > n:
                break
            if ftype == 1:
                cls, mid = ids(buf, pos + 7)
                if cls == 60 and mid == 40:
                    touched[ch] = touched.get(ch, 0) + 1
                elif cls == 60 and mid == 80:
                    c = self.channels.get(ch)
                    if c is not None:
                        tag = u64(buf, pos + 11)[0]
                        if buf[pos + 19] & 1:
                            c.acked = max(c.acked, tag)
                        else:
                            c.acked += 1
                        acked = True
                else:
                    self._method(ch, bytes(buf[pos:fend]))
                    if self.transport is None:
                        return
            pos = fend
        del buf[:pos]
        for ch, count in touched.items():
            c = self.channels.get(ch)
            if c is None:
                continue
            c.published += count
            if c.confirm:
                self._write(F.ack_frame(ch, c.published, multiple=True))
        if touched:
            self.server.published += sum(touched.values())
        if acked:
            self._schedule_pump()

    # --- methods -----------------------------------------------------------
    def _send(self, channel: int, value: Any) -> None:
        self._write(pframe.marshal(value, channel))

    def _write(self, data: bytes | memoryview) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def _method(self, ch: int, raw: bytes) -> None:
        _n, _c, v = pframe.unmarshal(raw)
        C = commands
        if isinstance(v, C.Connection.StartOk):
            self._send(0, C.Connection.Tune(channel_max=2047,
                                            frame_max=FRAME_MAX,
                                            heartbeat=0))
        elif isinstance(v, C.Connection.TuneOk):
            pass
        elif isinstance(v, C.Connection.Open):
            self._send(0, C.Connection.OpenOk())
        elif isinstance(v, C.Connection.Close):
            self._send(0, C.Connection.CloseOk())
            self._close()
        elif isinstance(v, C.Connection.CloseOk):
            self._close()
        elif isinstance(v, C.Channel.Open):
            self.channels[ch] = _Channel()
            self._send(ch, C.Channel.OpenOk())
        elif isinstance(v, C.Channel.Close):
            self.channels.pop(ch, None)
            self._send(ch, C.Channel.CloseOk())
        elif isinstance(v, C.Exchange.Declare):
            if not v.nowait:
                self._send(ch, C.Exchange.DeclareOk())
        elif isinstance(v, C.Exchange.Delete):
            if not v.nowait:
                self._send(ch, C.Exchange.DeleteOk())
        elif isinstance(v, C.Queue.Declare):
            if not v.nowait:
                self._send(ch, C.Queue.DeclareOk(
                    queue=v.queue or f"amq.gen-{id(self):x}",
                    message_count=0, consumer_count=0))
        elif isinstance(v, C.Queue.Bind):
            if not v.nowait:
                self._send(ch, C.Queue.BindOk())
        elif isinstance(v, C.Queue.Delete):
            if not v.nowait:
                self._send(ch, C.Queue.DeleteOk(message_count=0))
        elif isinstance(v, C.Queue.Purge):
            if not v.nowait:
                self._send(ch, C.Queue.PurgeOk(message_count=0))
        elif isinstance(v, C.Basic.Qos):
            c = self.channels.get(ch)
            if c is not None:
                c.prefetch = v.prefetch_count
            self._send(ch, C.Basic.QosOk())
        elif isinstance(v, C.Confirm.Select):
            c = self.channels.get(ch)
            if c is not None:
                c.confirm = True
            if not v.nowait:
                self._send(ch, C.Confirm.SelectOk())
        elif isinstance(v, C.Basic.Consume):
            c = self.channels.get(ch)
            if c is None:
                return
            tag = v.consumer_tag or f"null-{len(c.consumers)}"
            c.consumers.append(_Consumer(ch, tag, v.no_ack, c.prefetch,
                                         self.server.size))
            if not v.nowait:
                self._send(ch, C.Basic.ConsumeOk(consumer_tag=tag))
            self._schedule_pump()
        elif isinstance(v, C.Basic.Cancel):
            c = self.channels.get(ch)
            if c is not None:
                for cons in c.consumers:
                    if cons.tag == v.consumer_tag:
                        cons.active = False
                c.consumers = [x for x in c.consumers if x.active]
            if not v.nowait:
                self._send(ch, C.Basic.CancelOk(consumer_tag=v.consumer_tag))
        # anything else (nack, reject, recover, flow...): ignored

    # --- deliveries ----------------------------------------------------------
    def _schedule_pump(self) -> None:
        if not self.pump_scheduled and not self.paused:
            self.pump_scheduled = True
            asyncio.get_running_loop().call_soon(self._pump)

    def _pump(self) -> None:
        self.pump_scheduled = False
        if self.paused or self.transport is None:
            return
        more = False
        for c in self.channels.values():
            for cons in c.consumers:
                if not cons.active:
                    continue
                n = cons.batch.count
                if not cons.no_ack and cons.prefetch:
                    credit = cons.prefetch * len(c.consumers) - (
                        c.next_tag - 1 - c.acked)
                    if credit <= 0:
                        continue
                    n = min(n, credit)
                view = cons.batch.fill(n, c.next_tag, cons.seq,
                                       time.monotonic_ns())
                self._write(view)
                c.next_tag += n
                cons.seq += n
                self.server.delivered += n
                more = True
        if more:
            self._schedule_pump()


class NullServer:
    def __init__(self, size: int = 16) -> None:
        self.size = max(size, F.MIN_BODY)
        self.published = 0
        self.delivered = 0

    async def serve(self, host: str, port: int,
                    on_port: Any = None) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: NullProtocol(self), host,
                                          port, backlog=128)
        bound = server.sockets[0].getsockname()[1]
        if on_port is not None:
            on_port(bound)
        async with server:
            await server.serve_forever()


def serve_in_process(size: int, pipe: Any) -> None:
    """multiprocessing target: serve on a free port, send it on ``pipe``."""
    server = NullServer(size)
    asyncio.run(server.serve("127.0.0.1", 0, on_port=pipe.send))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mqbroker.perf.nullserver")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5680)
    parser.add_argument("--size", type=int, default=16,
                        help="body size of the generated deliveries")
    parser.add_argument("--port-file", type=Path)
    args = parser.parse_args(argv)

    def on_port(port: int) -> None:
        print(f"null AMQP server on {args.host}:{port} (pid {os.getpid()})",
              flush=True)
        if args.port_file:
            args.port_file.write_text(f"{port}\n")

    try:
        asyncio.run(NullServer(args.size).serve(args.host, args.port, on_port))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
