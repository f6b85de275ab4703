"""Benchmark: a large persistent backlog: publish, restart, drain.

    python -m mqbroker.bench.backlog [--messages 1000000] [--body-size 1024]
        [--publishers 4] [--window 256] [--prefetch 1000] [--data-dir D]

1. Publish ``--messages`` persistent messages (``--body-size`` bytes, a
   sequence number in ``message_id``) to one durable queue, from
   ``--publishers`` aio-pika connections with up to ``--window`` confirms
   outstanding each; every message is confirmed.
2. Stop the broker (SIGTERM) and start it again on the same data dir;
   recovery time = spawn to port file (``BrokerProcess``), plus the
   broker's own ``recovery.done seconds=`` log figure.
3. Drain with one consumer (prefetch ``--prefetch``, one multi-ack per
   ``--prefetch // 2`` messages), checking that every sequence number
   arrives exactly once.

The broker's memory is sampled every ``--sample-interval`` s throughout
(``/proc/<pid>/status``): RSS, and its split into anonymous memory (what
the broker holds: objects, buffers) and mapped file pages (LMDB's memory
map: reads map store pages into the process; the kernel can drop them at
any time, they are page cache). Peaks are reported per phase.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mqbroker.bench import machine_info, proc_memory

QUEUE = "bench.backlog"
MiB = 1 << 20


@dataclass
class Sampler:
    """Samples the broker's memory in a thread; peaks per phase."""

    interval: float
    pid: int = 0
    phase: str = "start"
    peaks: dict[str, dict[str, int]] = field(default_factory=dict)
    samples: list[tuple[float, str, int, int, int]] = field(
        default_factory=list
    )
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.wait(self.interval):
            self.sample(t0)

    def sample(self, t0: float = 0.0) -> None:
        if not self.pid:
            return
        mem = proc_memory(self.pid)
        if not mem["rss"]:
            return
        self.samples.append((round(time.monotonic() - t0, 2), self.phase,
                             mem["rss"], mem["anon"], mem["file"]))
        peak = self.peaks.setdefault(self.phase, {"rss": 0, "anon": 0,
                                                  "file": 0})
        for key in peak:
            peak[key] = max(peak[key], mem[key])

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


# -------------------------------------------------------------- publish


async def publish(
    url: str, total: int, publishers: int, window: int, body_size: int,
    progress: bool,
) -> tuple[float, int]:
    """Publish ``total`` messages; returns (seconds, nacks)."""
    import aio_pika
    from aiormq import spec

    pad = b"x" * body_size
    next_seq = 0
    nacks = 0
    confirmed = 0
    conns = [await aio_pika.connect(url, timeout=30)
             for _ in range(publishers)]
    channels = [await c.channel(publisher_confirms=True) for c in conns]
    await channels[0].declare_queue(QUEUE, durable=True)
    started = time.monotonic()
    last_report = started

    async def worker(ch: Any) -> None:
        nonlocal next_seq, nacks, confirmed, last_report
        ex = ch.default_exchange
        while next_seq < total:
            seq = next_seq
            next_seq += 1
            head = f"{seq}:".encode()
            body = head + pad[: max(0, body_size - len(head))]
            result = await ex.publish(
                aio_pika.Message(
                    body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    message_id=str(seq),
                ),
                routing_key=QUEUE, timeout=120,
            )
            if not isinstance(result, spec.Basic.Ack):
                nacks += 1
            confirmed += 1
            now = time.monotonic()
            if progress and now - last_report > 10:
                last_report = now
                print(f"  published {confirmed} "
                      f"({confirmed / (now - started):.0f}/s)",
                      file=sys.stderr, flush=True)

    await asyncio.gather(*(worker(ch) for ch in channels
                           for _ in range(window)))
    seconds = time.monotonic() - started
    for c in conns:
        await c.close()
    return seconds, nacks


# ---------------------------------------------------------------- drain


async def drain(url: str, total: int, prefetch: int,
                progress: bool) -> tuple[float, int, int]:
    """Consume everything; returns (seconds, received, duplicates)."""
    import aio_pika

    seen = bytearray(total)
    received = 0
    dupes = 0
    conn = await aio_pika.connect(url, timeout=30)
    ch = await conn.channel()
    await ch.set_qos(prefetch_count=prefetch)
    queue = await ch.declare_queue(QUEUE, durable=True)
    finished = asyncio.Event()
    every = max(1, prefetch // 2)
    started = time.monotonic()
    last_report = started
    last_msg: list[Any] = [None]

    async def on_message(message: Any) -> None:
        nonlocal received, dupes, last_report
        seq = int(message.message_id)
        if 0 <= seq < total:
            if seen[seq]:
                dupes += 1
            seen[seq] = 1
        received += 1
        last_msg[0] = message
        if received % every == 0:
            await message.ack(multiple=True)
            last_msg[0] = None
        now = time.monotonic()
        if progress and now - last_report > 10:
            last_report = now
            print(f"  drained {received} ({received / (now - started):.0f}/s)",
                  file=sys.stderr, flush=True)
        if received >= total:
            finished.set()

    tag = await queue.consume(on_message)
    try:
        await asyncio.wait_for(finished.wait(), timeout=3600)
    finally:
        if last_msg[0] is not None:
            await last_msg[0].ack(multiple=True)
        seconds = time.monotonic() - started
        await queue.cancel(tag)
        await conn.close()
    missing = total - sum(seen)
    if missing:
        print(f"  MISSING {missing} messages after the drain",
              file=sys.stderr, flush=True)
    return seconds, received, dupes


# ----------------------------------------------------------------- main


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _recovery_log(log: str) -> dict[str, Any]:
    """The last ``recovery.done`` line's fields."""
    found: dict[str, Any] = {}
    for line in log.splitlines():
        if "recovery.done" in line:
            found = dict(re.findall(r"(\w+)=(\S+)", line))
    return found


def main(argv: list[str] | None = None) -> int:
    from mqbroker.testing import BrokerProcess

    parser = argparse.ArgumentParser(
        prog="python -m mqbroker.bench.backlog",
        description="publish a persistent backlog, restart, drain; RSS",
    )
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--body-size", type=int, default=1024)
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--prefetch", type=int, default=1000)
    parser.add_argument("--sample-interval", type=float, default=0.5)
    parser.add_argument("--settle", type=float, default=3.0,
                        help="idle seconds sampled after the publish and "
                        "after the restart")
    parser.add_argument("--data-dir", type=Path,
                        help="parent dir for the broker's data (default: tmp)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the data dir (printed) afterwards")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    progress = not args.quiet

    tmp = Path(tempfile.mkdtemp(prefix="mqbroker-backlog-", dir=args.data_dir))
    data_dir = tmp / "data"
    sampler = Sampler(args.sample_interval)
    sampler.start()
    broker = BrokerProcess(data_dir, start_timeout=600)
    result: dict[str, Any] = {"messages": args.messages,
                              "body_size": args.body_size,
                              "publishers": args.publishers,
                              "window": args.window,
                              "prefetch": args.prefetch}
    try:
        broker.start()
        sampler.pid = broker.pid
        sampler.phase = "idle"
        time.sleep(1)
        sampler.phase = "publish"
        print(f"publishing {args.messages} messages...", file=sys.stderr)
        seconds, nacks = asyncio.run(publish(
            broker.url, args.messages, args.publishers, args.window,
            args.body_size, progress,
        ))
        result["publish_seconds"] = round(seconds, 1)
        result["publish_rate"] = round(args.messages / seconds)
        result["nacks"] = nacks
        sampler.phase = "after_publish"
        time.sleep(args.settle)
        result["data_dir_bytes"] = _du(data_dir)

        sampler.phase = "restart"
        print("restarting...", file=sys.stderr)
        broker.terminate(timeout=120)
        sampler.pid = 0
        broker.start()
        sampler.pid = broker.pid
        sampler.sample()
        result["recovery_seconds"] = round(broker.start_seconds[-1], 2)
        rec = _recovery_log(broker.log_text())
        result["recovery_log"] = rec
        time.sleep(args.settle)

        sampler.phase = "drain"
        print("draining...", file=sys.stderr)
        seconds, received, dupes = asyncio.run(
            drain(broker.url, args.messages, args.prefetch, progress)
        )
        result["drain_seconds"] = round(seconds, 1)
        result["drain_rate"] = round(received / seconds)
        result["received"] = received
        result["duplicates"] = dupes
        sampler.phase = "after_drain"
        time.sleep(args.settle)
    finally:
        sampler.stop()
        broker.terminate(timeout=120)
        info = machine_info(tmp)
        if args.keep:
            print(f"data kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    peaks = {phase: {k: round(v / MiB, 1) for k, v in peak.items()}
             for phase, peak in sampler.peaks.items()}
    result["peak_mib"] = peaks
    result["rss_limit_ok"] = all(p["rss"] < 400 for p in peaks.values())
    print(f"machine: {info}")
    print(f"{args.messages} persistent messages of {args.body_size} B; "
          f"{args.publishers} publishers x window {args.window}; "
          f"drain prefetch {args.prefetch}")
    print(f"  publish: {result['publish_seconds']} s, "
          f"{result['publish_rate']} msgs/s, nacks {nacks}; data dir "
          f"{result['data_dir_bytes'] / MiB:.0f} MiB")
    print(f"  recovery: {result['recovery_seconds']} s to listening "
          f"(broker log: {rec.get('seconds', '?')} s, "
          f"{rec.get('messages', '?')} messages)")
    print(f"  drain: {result['drain_seconds']} s, {result['drain_rate']} "
          f"msgs/s, received {result['received']}, duplicates {dupes}")
    print(f"  {'phase':<14} {'peak RSS':>9} {'anon':>9} {'file':>9}  (MiB)")
    for phase, peak in peaks.items():
        print(f"  {phase:<14} {peak['rss']:>9.1f} {peak['anon']:>9.1f} "
              f"{peak['file']:>9.1f}")
    print(json.dumps({"bench": "backlog", "machine": info, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
