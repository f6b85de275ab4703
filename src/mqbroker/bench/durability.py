"""Benchmark: confirmed persistent publishing, 1 / 4 / 16 publishers.

    python -m mqbroker.bench.durability [--publishers 1,4,16] [--seconds 5]
        [--window 64] [--body-size 1024] [--client-procs 1] [--data-dir D]

What it shows: the group commit. Each publisher has its own connection and
channel in confirm mode and keeps up to ``--window`` publishes awaiting
their confirm (aio-pika, ``publisher_confirms=True``, ``window`` coroutines
each publishing and awaiting in a loop). A confirm is only sent after the
LMDB commit holding the message was fsync'd, so with one publisher and
window 1 every message pays a whole fsync; with more publishers (or a
window) one commit covers many messages.

How commits are counted, without instrumenting the broker: LMDB numbers its
write transactions, and a read-only handle on the live environment (another
process may open it; LMDB is multi-process) reports the last committed id.
The broker opens LMDB with ``sync=True``, so every write transaction is one
durable commit: one ``fdatasync`` of the data file plus the meta page
written through LMDB's ``O_DSYNC`` descriptor. commits/s is therefore the
fsync rate (``fsyncs/s`` in the table).

Each run: a fresh durable queue, connect, 1 s warm-up, then ``--seconds``
measured (only confirms that arrive inside the window count; latency is
publish call to confirm), then the queue is deleted. CPU use of the broker
(psutil) and of the client processes is reported, because on a small
machine the Python client may be what limits the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from array import array
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from mqbroker.bench import lmdb_last_txnid, machine_info

WARMUP_S = 1.0
CONNECT_S = 2.5  # time given to the clients to connect before the start


@dataclass
class PhaseResult:
    publishers: int
    window: int
    seconds: float
    messages: int
    msgs_per_s: float
    commits: int | None
    fsyncs_per_s: float | None
    msgs_per_commit: float | None
    latency_p50_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    broker_cpu_pct: float
    client_cpu_pct: float
    errors: int


# ------------------------------------------------------------ clients


async def _publishers(
    url: str, queue: str, count: int, window: int, body_size: int,
    start_at: float, stop_at: float,
) -> tuple[array[float], array[float], int]:
    import aio_pika

    body = b"x" * body_size
    done = array("d")
    lat = array("d")
    errors = 0
    conns = [await aio_pika.connect(url, timeout=30) for _ in range(count)]
    channels = [await c.channel(publisher_confirms=True) for c in conns]
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))

    async def loop(ch: Any) -> None:
        nonlocal errors
        ex = ch.default_exchange
        message = aio_pika.Message(
            body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT
        )
        while True:
            t0 = time.monotonic()
            if t0 >= stop_at:
                return
            try:
                await ex.publish(message, routing_key=queue, timeout=60)
            except Exception:  # noqa: BLE001  (counted, reported)
                errors += 1
                return
            t1 = time.monotonic()
            done.append(t1)
            lat.append(t1 - t0)

    await asyncio.gather(*(loop(ch) for ch in channels
                           for _ in range(window)))
    for c in conns:
        await c.close()
    return done, lat, errors


def client_worker(
    url: str, queue: str, count: int, window: int, body_size: int,
    start_at: float, stop_at: float,
) -> tuple[list[float], list[float], int, float, float]:
    """One client process: ``count`` publishers. Returns confirm times,
    latencies, errors, and CPU seconds used between start and stop."""
    cpu0 = time.process_time()
    done, lat, errors = asyncio.run(_publishers(
        url, queue, count, window, body_size, start_at, stop_at
    ))
    cpu = time.process_time() - cpu0
    return list(done), list(lat), errors, cpu, time.monotonic() - start_at


def _noop() -> int:
    import aio_pika  # noqa: F401  (warm the worker: import once)

    return 0


# --------------------------------------------------------------- phases


def _declare(url: str, queue: str, delete: bool = False) -> None:
    import pika  # type: ignore[import-untyped]

    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        if delete:
            ch.queue_delete(queue)
        else:
            ch.queue_declare(queue, durable=True)
    finally:
        conn.close()


def run_phase(
    broker: Any, pool: ProcessPoolExecutor, *, publishers: int, window: int,
    seconds: float, body_size: int, client_procs: int,
) -> PhaseResult:
    import psutil  # type: ignore[import-untyped]

    queue = f"bench.durability.p{publishers}"
    _declare(broker.url, queue)
    procs = max(1, min(client_procs, publishers))
    shares = [publishers // procs + (i < publishers % procs)
              for i in range(procs)]
    start_at = time.monotonic() + CONNECT_S
    measure_from = start_at + WARMUP_S
    stop_at = measure_from + seconds
    futures = [
        pool.submit(client_worker, broker.url, queue, share, window,
                    body_size, start_at, stop_at)
        for share in shares
    ]
    bproc = psutil.Process(broker.pid)
    time.sleep(max(0.0, measure_from - time.monotonic()))
    txn0 = lmdb_last_txnid(broker.data_dir)
    cpu0 = sum(bproc.cpu_times()[:2])
    t0 = time.monotonic()
    time.sleep(max(0.0, stop_at - time.monotonic()))
    txn1 = lmdb_last_txnid(broker.data_dir)
    cpu1 = sum(bproc.cpu_times()[:2])
    elapsed = time.monotonic() - t0
    done: list[float] = []
    lat: list[float] = []
    errors = 0
    client_cpu = 0.0
    client_wall = 0.0
    for fut in futures:
        d, la, err, cpu, wall = fut.result(timeout=seconds + 120)
        for t, x in zip(d, la):
            if measure_from <= t < stop_at:
                done.append(t)
                lat.append(x)
        errors += err
        client_cpu += cpu
        client_wall = max(client_wall, wall)
    _declare(broker.url, queue, delete=True)
    lat.sort()
    n = len(done)
    commits = None if txn0 is None or txn1 is None else txn1 - txn0

    def pct(p: float) -> float:
        return round(lat[min(n - 1, int(p * n))] * 1000, 2) if n else 0.0

    return PhaseResult(
        publishers=publishers,
        window=window,
        seconds=round(elapsed, 2),
        messages=n,
        msgs_per_s=round(n / elapsed, 1),
        commits=commits,
        fsyncs_per_s=None if commits is None else round(commits / elapsed, 1),
        msgs_per_commit=(
            None if not commits else round(n / commits, 1)
        ),
        latency_p50_ms=round(statistics.median(lat) * 1000, 2) if n else 0.0,
        latency_p99_ms=pct(0.99),
        latency_max_ms=round(lat[-1] * 1000, 2) if n else 0.0,
        broker_cpu_pct=round(100 * (cpu1 - cpu0) / elapsed, 1),
        client_cpu_pct=round(100 * client_cpu / max(client_wall, 1e-9), 1),
        errors=errors,
    )


def format_table(results: list[PhaseResult]) -> str:
    head = (
        f"{'publishers':>10} {'window':>6} {'msgs/s':>9} {'fsyncs/s':>9} "
        f"{'msgs/fsync':>10} {'p50 ms':>7} {'p99 ms':>7} {'broker CPU':>10} "
        f"{'client CPU':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r.publishers:>10} {r.window:>6} {r.msgs_per_s:>9.0f} "
            f"{(r.fsyncs_per_s or 0):>9.0f} {(r.msgs_per_commit or 0):>10.1f} "
            f"{r.latency_p50_ms:>7.2f} {r.latency_p99_ms:>7.2f} "
            f"{r.broker_cpu_pct:>9.0f}% {r.client_cpu_pct:>9.0f}%"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from mqbroker.testing import BrokerProcess

    parser = argparse.ArgumentParser(
        prog="python -m mqbroker.bench.durability",
        description="confirmed persistent publishing: msgs/s vs fsyncs/s",
    )
    parser.add_argument("--publishers", default="1,4,16",
                        help="comma-separated publisher counts")
    parser.add_argument("--windows", default="1,64",
                        help="comma-separated confirm windows per publisher")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--body-size", type=int, default=1024)
    parser.add_argument("--client-procs", type=int, default=1,
                        help="client processes the publishers are spread on")
    parser.add_argument("--data-dir", type=Path,
                        help="parent dir for the broker's data (default: tmp)")
    args = parser.parse_args(argv)
    counts = [int(x) for x in args.publishers.split(",")]
    windows = [int(x) for x in args.windows.split(",")]

    with tempfile.TemporaryDirectory(
        prefix="mqbroker-bench-", dir=args.data_dir
    ) as tmp:
        data_dir = Path(tmp) / "data"
        broker = BrokerProcess(data_dir).start()
        results: list[PhaseResult] = []
        ctx = get_context("spawn")
        try:
            with ProcessPoolExecutor(args.client_procs, mp_context=ctx) as pool:
                for _ in range(args.client_procs):
                    pool.submit(_noop).result()
                for window in windows:
                    for count in counts:
                        result = run_phase(
                            broker, pool, publishers=count, window=window,
                            seconds=args.seconds, body_size=args.body_size,
                            client_procs=args.client_procs,
                        )
                        results.append(result)
                        print(
                            f"  publishers={count} window={window}: "
                            f"{result.msgs_per_s:.0f} msgs/s, "
                            f"{result.fsyncs_per_s} fsyncs/s",
                            file=sys.stderr, flush=True,
                        )
        finally:
            broker.terminate()
        info = machine_info(data_dir.parent)
    print(f"machine: {info}")
    print(f"body {args.body_size} B, persistent, durable queue, "
          f"{args.seconds} s per run after {WARMUP_S} s warm-up, "
          f"{args.client_procs} client process(es)")
    print(format_table(results))
    print(json.dumps({
        "bench": "durability",
        "machine": info,
        "body_size": args.body_size,
        "client_procs": args.client_procs,
        "results": [asdict(r) for r in results],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
