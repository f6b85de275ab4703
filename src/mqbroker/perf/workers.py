"""Producer and consumer processes (started with multiprocessing, spawn).

Each talks to the orchestrator over a ``multiprocessing`` pipe:

- worker -> ``("ready", info)`` once connected and set up;
- orchestrator -> ``("start", t0_ns, t_end_ns, count)``: producers send
  from ``t0_ns`` until ``t_end_ns`` (or ``count`` messages when it is
  non-zero); consumers start consuming at once;
- consumer -> ``("progress", received, last_receive_ns)`` every 100 ms;
- orchestrator -> ``("stop",)`` (consumers only);
- worker -> ``("result", dict)`` or ``("error", text)``.

The hot loops use a non-blocking socket, pre-encoded frames (frames.py)
and one ``send`` per batch of messages; pamqp only sees the rare frames.
"""

from __future__ import annotations

import collections
import os
import select
import socket
import time
import traceback
from multiprocessing.connection import Connection as Pipe
from typing import Any

from mqbroker.perf import frames as F
from mqbroker.perf.client import AMQPError, Connection, decode_method
from mqbroker.perf.stats import LINEAR_US, Histogram

POLLIN = select.POLLIN
POLLOUT = select.POLLOUT
RECV_BUF = 4 << 20
TARGET_SEND_BYTES = 128 << 10
MAX_BATCH = 1000


class Closed(RuntimeError):
    pass


def _rare_frame(raw: bytes, sock: socket.socket) -> Any:
    """A method frame off the hot path: raise on channel/connection close,
    otherwise return the pamqp value (consume-ok, blocked, cancel...)."""
    from pamqp import commands

    value = decode_method(raw)
    if isinstance(value, commands.Connection.Close):
        try:
            sock.send(F.frame(F.FRAME_METHOD, 0, b"\x00\x0a\x00\x33"))
        except OSError:
            pass
        raise AMQPError(f"connection closed by broker: {value.reply_code} "
                        f"{value.reply_text}")
    if isinstance(value, commands.Channel.Close):
        raise AMQPError(f"channel closed by broker: {value.reply_code} "
                        f"{value.reply_text}")
    if isinstance(value, commands.Basic.Cancel):
        raise AMQPError(f"consumer cancelled by broker: {value.consumer_tag}")
    return value


def _sleep_until(t_ns: int) -> None:
    while True:
        d = t_ns - time.monotonic_ns()
        if d <= 0:
            return
        time.sleep(min(d / 1e9, 0.05))


# --------------------------------------------------------------------------
# producer


class _Confirms:
    """Outstanding publisher confirms, kept as batches [first, last, ts]."""

    def __init__(self, hist: Histogram) -> None:
        self.batches: collections.deque[list[int]] = collections.deque()
        self.singles: set[int] = set()
        self.confirmed = 0
        self.nacked = 0
        self.hist = hist

    def sent(self, first: int, last: int, ts: int) -> None:
        self.batches.append([first, last, ts])

    def ack(self, tag: int, multiple: bool, nack: bool, now: int) -> None:
        batches = self.batches
        if multiple:
            while batches and batches[0][0] <= tag:
                b = batches[0]
                hi = min(b[1], tag)
                n = hi - b[0] + 1
                if self.singles:
                    inside = [t for t in self.singles if b[0] <= t <= hi]
                    n -= len(inside)
                    self.singles.difference_update(inside)
                self._done(n, now - b[2], nack)
                if hi == b[1]:
                    batches.popleft()
                else:
                    b[0] = hi + 1
            return
        for b in batches:
            if b[0] <= tag <= b[1]:
                if tag == b[0]:
                    b[0] += 1
                    if b[0] > b[1]:
                        batches.remove(b)
                else:
                    self.singles.add(tag)
                self._done(1, now - b[2], nack)
                return

    def _done(self, n: int, lat_ns: int, nack: bool) -> None:
        if n <= 0:
            return
        if nack:
            self.nacked += n
        else:
            self.confirmed += n
            self.hist.add(lat_ns // 1000, n)


def run_producer(cfg: dict[str, Any], pipe: Pipe) -> None:
    try:
        result = _producer(cfg, pipe)
        pipe.send(("result", result))
    except BaseException as exc:  # noqa: BLE001 - report everything
        pipe.send(("error", f"producer {cfg.get('id')}: {exc!r}\n"
                   f"{traceback.format_exc()}"))


def _producer(cfg: dict[str, Any], pipe: Pipe) -> dict[str, Any]:
    conn = Connection(cfg["url"], name=f"perf-producer-{cfg['id']}")
    ch = 1
    conn.channel_open(ch)
    confirm = int(cfg.get("confirm") or 0)
    if confirm:
        conn.confirm_select(ch)
    size = int(cfg["size"])
    probe = F.PublishBatch(ch, cfg["exchange"], cfg["routing_keys"], size, 1,
                           persistent=cfg["persistent"],
                           frame_max=conn.frame_max)
    count = max(1, min(MAX_BATCH, TARGET_SEND_BYTES // probe.message_len))
    if confirm:
        count = min(count, confirm)
    batch = F.PublishBatch(ch, cfg["exchange"], cfg["routing_keys"], size,
                           count, persistent=cfg["persistent"],
                           frame_max=conn.frame_max, producer_id=cfg["id"])
    pipe.send(("ready", {"pid": os.getpid(), "product": conn.product,
                         "version": conn.version}))
    msg = pipe.recv()
    assert msg[0] == "start", msg
    _tag, t0, t_end, limit = msg
    rate = float(cfg.get("rate") or 0)

    sock = conn.sock
    sock.setblocking(False)
    poller = select.poll()
    poller.register(sock, POLLIN)
    poll_rw = select.poll()
    poll_rw.register(sock, POLLIN | POLLOUT)
    inbuf = bytearray(conn.buffer)
    conn.buffer.clear()
    confirm_hist = Histogram()
    confirms = _Confirms(confirm_hist)
    hdr = F.FRAME_HDR.unpack_from
    ids = F.METHOD_IDS.unpack_from
    u64 = F.U64.unpack_from
    blocked = [False]

    def read_incoming() -> None:
        while True:
            try:
                data = sock.recv(1 << 16)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            if not data:
                raise Closed("broker closed the connection")
            inbuf.extend(data)
            if len(data) < (1 << 16):
                break
        if not inbuf:
            return
        now = time.monotonic_ns()
        pos = 0
        n = len(inbuf)
        while n - pos >= 7:
            ftype, _ch, fsize = hdr(inbuf, pos)
            fend = pos + 8 + fsize
            if fend > n:
                break
            if ftype == 1:
                cls, mid = ids(inbuf, pos + 7)
                if cls == 60 and (mid == 80 or mid == 120):
                    tag = u64(inbuf, pos + 11)[0]
                    multiple = bool(inbuf[pos + 19] & 1)
                    confirms.ack(tag, multiple, mid == 120, now)
                else:
                    value = _rare_frame(bytes(inbuf[pos:fend]), sock)
                    name = type(value).__name__
                    if name == "Blocked":
                        blocked[0] = True
                    elif name == "Unblocked":
                        blocked[0] = False
            pos = fend
        del inbuf[:pos]

    hard_deadline = (t_end or (t0 + 600 * 10**9)) + 60 * 10**9

    def send_all(view: memoryview) -> None:
        while view:
            try:
                sent = sock.send(view)
                view = view[sent:]
            except BlockingIOError:
                for _fd, ev in poll_rw.poll(100):
                    if ev & POLLIN:
                        read_incoming()
                if time.monotonic_ns() > hard_deadline:
                    raise TimeoutError("broker stopped reading for 60 s")
            except InterruptedError:
                pass

    seq = 0
    sent_window = 0
    confirmed_at_end = 0
    _sleep_until(t0)
    cpu0 = time.process_time()
    started = time.monotonic_ns()
    per_ns = 1e9 / rate if rate > 0 else 0.0
    while True:
        now = time.monotonic_ns()
        if t_end and now >= t_end:
            break
        if limit and seq >= limit:
            break
        n = count
        if limit:
            n = min(n, limit - seq)
        if confirm:
            outstanding = seq - confirms.confirmed - confirms.nacked
            room = confirm - outstanding
            if room <= 0:
                for _ in poller.poll(50):
                    read_incoming()
                continue
            n = min(n, room)
        if rate > 0:
            due = int((now - t0) / per_ns) + 1 - seq
            if due <= 0:
                wait_ms = (t0 + seq * per_ns - now) / 1e6
                if poller.poll(max(0, int(wait_ms))):
                    read_incoming()
                elif wait_ms < 1:
                    time.sleep(max(wait_ms, 0) / 1000)
                continue
            n = min(n, due)
        ts = time.monotonic_ns()
        view = batch.fill(n, seq, ts)
        if confirm:
            confirms.sent(seq + 1, seq + n, ts)
        send_all(view)
        seq += n
        read_incoming()
    stopped = time.monotonic_ns()
    sent_window = seq
    confirmed_at_end = confirms.confirmed
    # wait for the outstanding confirms (not counted in the rate)
    if confirm:
        deadline = time.monotonic_ns() + int(cfg.get("confirm_wait_s", 15) * 1e9)
        while (confirms.confirmed + confirms.nacked < seq
               and time.monotonic_ns() < deadline):
            if poller.poll(50):
                read_incoming()
    sock.setblocking(True)
    conn.buffer = inbuf
    close_started = time.monotonic_ns()
    conn.close(wait=120.0)
    close_s = (time.monotonic_ns() - close_started) / 1e9
    return {
        "role": "producer",
        "id": cfg["id"],
        "sent": seq,
        "sent_window": sent_window,
        "confirmed": confirms.confirmed,
        "confirmed_window": confirmed_at_end,
        "nacked": confirms.nacked,
        "unconfirmed": seq - confirms.confirmed - confirms.nacked
        if confirm else 0,
        "started_ns": started,
        "stopped_ns": stopped,
        "confirm_hist": confirm_hist.to_state(),
        "message_len": batch.message_len,
        "close_s": round(close_s, 3),
        "cpu_s": time.process_time() - cpu0,
        "batch": count,
    }


# --------------------------------------------------------------------------
# consumer


def run_consumer(cfg: dict[str, Any], pipe: Pipe) -> None:
    try:
        result = _consumer(cfg, pipe)
        pipe.send(("result", result))
    except BaseException as exc:  # noqa: BLE001
        pipe.send(("error", f"consumer {cfg.get('id')}: {exc!r}\n"
                   f"{traceback.format_exc()}"))


def _consumer(cfg: dict[str, Any], pipe: Pipe) -> dict[str, Any]:
    conn = Connection(cfg["url"], name=f"perf-consumer-{cfg['id']}")
    ch = 1
    conn.channel_open(ch)
    autoack = bool(cfg["autoack"])
    prefetch = int(cfg.get("prefetch") or 0)
    multi = max(1, int(cfg.get("multi_ack_every") or 1))
    if not autoack and prefetch:
        conn.basic_qos(ch, prefetch)
        multi = min(multi, prefetch)
    queues: list[tuple[int, str]] = [tuple(q) for q in cfg["queues"]]
    # per consumer tag: {producer id: 0/1 byte map of sequence numbers}
    maps_by_tag: dict[bytes, dict[int, bytearray]] = {}
    tag_queue: dict[bytes, int] = {}
    for qidx, _name in queues:
        tag = f"perf-c{cfg['id']}-q{qidx}".encode()
        maps_by_tag[tag] = {}
        tag_queue[tag] = qidx
    pipe.send(("ready", {"pid": os.getpid()}))
    msg = pipe.recv()
    assert msg[0] == "start", msg
    _t, t0, t_end, _limit = msg
    cpu0 = time.process_time()
    for qidx, name in queues:
        conn.basic_consume(ch, name, f"perf-c{cfg['id']}-q{qidx}",
                           no_ack=autoack, arguments=cfg.get("consume_args"))

    sock = conn.sock
    sock.setblocking(False)
    poller = select.poll()
    poller.register(sock, POLLIN)
    poll_out = select.poll()
    poll_out.register(sock, POLLOUT)
    buf = bytearray(RECV_BUF)
    mv = memoryview(buf)
    end = len(conn.buffer)
    buf[:end] = conn.buffer
    conn.buffer.clear()

    hist = Histogram()
    linear = hist.linear
    hdr = F.FRAME_HDR.unpack_from
    ids = F.METHOD_IDS.unpack_from
    u64 = F.U64.unpack_from
    stamp = F.BODY_STAMP.unpack_from
    ack_pack = F.ACK_FRAME.pack
    shift = F.PRODUCER_SHIFT
    mask = F.SEQ_MASK
    lin_max = LINEAR_US

    received = 0
    prev_received = 0
    received_window = 0
    dups = 0
    redelivered = 0
    foreign = 0
    first_ns = 0
    last_ns = 0
    body_left = 0
    need_stamp = False
    cur_tag = 0
    cur_maps: dict[int, bytearray] = {}
    unacked = 0
    last_tag = 0
    acks: list[bytes] = []
    next_report = time.monotonic_ns() + 100_000_000
    stop = False
    cancelling: set[str] = set()
    cancel_deadline = 0
    # after the last cancel-ok, deliveries the broker had already handed
    # to the channel may still follow (RabbitMQ): read until quiet
    quiet_ns = 300_000_000
    quiet_until = 0
    cancel_complete = False
    single = len(maps_by_tag) == 1
    if single:
        cur_maps = next(iter(maps_by_tag.values()))

    def begin_cancel() -> None:
        nonlocal cancel_deadline
        from pamqp import commands
        from pamqp import frame as pframe

        out = []
        for tag in maps_by_tag:
            cancelling.add(tag.decode())
            out.append(pframe.marshal(
                commands.Basic.Cancel(consumer_tag=tag.decode()), ch))
        send_all(b"".join(out))
        cancel_deadline = time.monotonic_ns() + 30 * 10**9

    def send_all(data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[sock.send(view):]
            except BlockingIOError:
                poll_out.poll(100)
            except InterruptedError:
                pass

    while True:
        try:
            n = sock.recv_into(mv[end:], RECV_BUF - end)
        except BlockingIOError:
            if unacked:
                send_all(ack_pack(1, ch, 13, 60, 80, last_tag, 1, 0xCE))
                unacked = 0
            if stop:
                t = time.monotonic_ns()
                if not cancelling and not quiet_until:
                    quiet_until = t + quiet_ns
                    cancel_complete = True
                if (quiet_until and t > quiet_until) or t > cancel_deadline:
                    break
            poller.poll(20)
            now = time.monotonic_ns()
            if now >= next_report:
                next_report = now + 100_000_000
                pipe.send(("progress", received, last_ns))
                if not stop and pipe.poll() and pipe.recv()[0] == "stop":
                    stop = True
                    begin_cancel()
            continue
        except InterruptedError:
            continue
        if n == 0:
            raise Closed("broker closed the connection")
        now = time.monotonic_ns()
        in_window = now <= t_end or not t_end
        end += n
        pos = 0
        while end - pos >= 7:
            ftype, _c, size = hdr(buf, pos)
            fend = pos + 8 + size
            if fend > end:
                break
            if ftype == 3:
                if need_stamp:
                    need_stamp = False
                    ident, ts = stamp(buf, pos + 7)
                    received += 1
                    lat = (now - ts) // 1000
                    if in_window:
                        received_window += 1
                        if 0 <= lat < lin_max:
                            linear[lat] += 1
                        else:
                            hist.add_coarse(lat)
                    pid = ident >> shift
                    seq = ident & mask
                    bm = cur_maps.get(pid)
                    if bm is None:
                        bm = cur_maps[pid] = bytearray(1 << 16)
                    if seq >= len(bm):
                        bm.extend(bytes(max(len(bm), seq + 1 - len(bm))))
                    if bm[seq]:
                        dups += 1
                    else:
                        bm[seq] = 1
                body_left -= size
                if body_left <= 0 and not autoack:
                    if multi == 1:
                        acks.append(ack_pack(1, ch, 13, 60, 80, cur_tag, 0,
                                             0xCE))
                    else:
                        unacked += 1
                        last_tag = cur_tag
                        if unacked >= multi:
                            acks.append(ack_pack(1, ch, 13, 60, 80, cur_tag,
                                                 1, 0xCE))
                            unacked = 0
            elif ftype == 1:
                cls, mid = ids(buf, pos + 7)
                if cls == 60 and mid == 60:
                    ln = buf[pos + 11]
                    if not single:
                        tag = bytes(buf[pos + 12:pos + 12 + ln])
                    cur_tag = u64(buf, pos + 12 + ln)[0]
                    if buf[pos + 20 + ln] & 1:
                        redelivered += 1
                    if not single:
                        m = maps_by_tag.get(tag)
                        if m is None:
                            m = maps_by_tag.setdefault(tag, {})
                        cur_maps = m
                else:
                    value = _rare_frame(bytes(buf[pos:fend]), sock)
                    if type(value).__name__ == "CancelOk":
                        cancelling.discard(value.consumer_tag)
            elif ftype == 2:
                body_left = u64(buf, pos + 11)[0]
                need_stamp = True
                if body_left < 16:
                    # not one of ours: count it, do not stamp-check it
                    need_stamp = False
                    foreign += 1
                    received += 1
                    if body_left == 0 and not autoack:
                        acks.append(ack_pack(1, ch, 13, 60, 80, cur_tag, 0,
                                             0xCE))
            pos = fend
        if pos:
            rem = end - pos
            if rem:
                buf[0:rem] = buf[pos:end]
            end = rem
        if received != prev_received:
            if not first_ns:
                first_ns = now
            last_ns = now
            prev_received = received
        if acks:
            send_all(b"".join(acks))
            acks.clear()
        if now >= next_report:
            next_report = now + 100_000_000
            pipe.send(("progress", received, last_ns))
            if not stop and pipe.poll() and pipe.recv()[0] == "stop":
                stop = True
                begin_cancel()
        if stop:
            if not cancelling:
                cancel_complete = True
                quiet_until = now + quiet_ns  # data came: wait again
            elif now > cancel_deadline:
                break
    if unacked:
        send_all(ack_pack(1, ch, 13, 60, 80, last_tag, 1, 0xCE))
    sock.setblocking(True)
    conn.buffer = bytearray()
    conn.close()
    maps = {}
    for tag, per_pid in maps_by_tag.items():
        q = tag_queue.get(tag, -1)
        for pid, bm in per_pid.items():
            maps[(q, pid)] = bytes(bm)
    return {
        "role": "consumer",
        "id": cfg["id"],
        "received": received,
        "received_window": received_window,
        "duplicated": dups,
        "redelivered": redelivered,
        "foreign": foreign,
        "cancel_complete": cancel_complete,
        "cpu_s": time.process_time() - cpu0,
        "first_ns": first_ns,
        "last_ns": last_ns,
        "hist": hist.to_state(),
        "maps": maps,
    }
