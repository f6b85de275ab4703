"""``mqbroker-perf``: a PerfTest-style load generator for AMQP 0-9-1.

    mqbroker-perf --url amqp://guest:guest@127.0.0.1:5672/%2F \\
        --producers 1 --consumers 1 --size 16 --time 10 --autoack

Producers and consumers are separate processes (multiprocessing, spawn),
each with its own lean client (workers.py). The orchestrator (this
process) declares the topology, starts everyone at the same instant,
samples the broker's RSS and CPU (``--broker-pid``, or the process that
listens on the URL's port when it runs here), drains, accounts for every
sequence number and prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
import urllib.parse
from typing import Any

from mqbroker.perf.client import DEFAULT_URL, AMQPError, Connection
from mqbroker.perf.harness import (
    MB,
    BrokerSampler,
    Worker,
    find_listener_pid,
    queue_depth,
    setup,
    teardown,
)
from mqbroker.perf.plan import Plan, make_plan
from mqbroker.perf.stats import Histogram, account, summarize


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mqbroker-perf",
        description="AMQP 0-9-1 throughput and latency (PerfTest-style)")
    p.add_argument("--url", default=DEFAULT_URL)
    p.add_argument("--producers", "-x", type=int, default=1)
    p.add_argument("--consumers", "-y", type=int, default=1,
                   help="consumer processes; queues are shared out among "
                        "them (several queues per consumer when fewer "
                        "consumers than queues)")
    p.add_argument("--queues", type=int, default=1)
    p.add_argument("--size", "-s", type=int, default=16,
                   help="body bytes (>= 16: producer, sequence, timestamp)")
    p.add_argument("--rate", "-r", type=float, default=0,
                   help="total publish rate, msg/s (0 = as fast as possible)")
    p.add_argument("--time", "-z", type=float, default=10.0,
                   help="seconds of publishing")
    p.add_argument("--persistent", action="store_true",
                   help="durable queues and exchange, delivery_mode 2")
    p.add_argument("--confirm", "-c", type=int, default=0,
                   help="publisher confirms, at most N outstanding per "
                        "producer (0 = no confirms)")
    p.add_argument("--prefetch", "-q", type=int, default=0,
                   help="basic.qos prefetch count (manual acks)")
    p.add_argument("--multi-ack-every", "-A", type=int, default=1,
                   help="ack with multiple=true every N messages")
    p.add_argument("--autoack", "-a", action="store_true")
    p.add_argument("--exchange-type", "-t", default="direct",
                   choices=("direct", "fanout", "topic"))
    p.add_argument("--fanout-queues", type=int, default=0,
                   help="fanout exchange with N queues (sets "
                        "--exchange-type fanout --queues N)")
    p.add_argument("--topic-bindings", type=int, default=100,
                   help="topic: number of bindings (keys perf.tNNN.*, "
                        "spread over the queues)")
    p.add_argument("--stream-offset", default=None, metavar="first|next|...",
                   help="stream queues (x-queue-type stream, durable); "
                        "consumers read from this x-stream-offset "
                        "(needs --prefetch: streams refuse auto-ack)")
    p.add_argument("--backlog", type=int, default=0,
                   help="publish N messages with no consumer, then drain "
                        "them: fill and drain rates, broker RSS growth")
    p.add_argument("--broker-pid", type=int, default=0,
                   help="pid of the broker, for RSS and CPU (default: the "
                        "local process listening on the URL's port)")
    p.add_argument("--drain-timeout", type=float, default=30.0,
                   help="seconds to wait for consumers to catch up after "
                        "the producers stop")
    p.add_argument("--null-sink", action="store_true",
                   help="run against a built-in null AMQP server instead "
                        "of --url (measures the load generator)")
    p.add_argument("--json", action="store_true",
                   help="print only the JSON line (no human summary)")
    return p

def run(args: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    null_proc = None
    url = args.url
    if args.null_sink:
        from mqbroker.perf.nullserver import serve_in_process

        parent, child = ctx.Pipe()
        null_proc = ctx.Process(target=serve_in_process,
                                args=(args.size, child), daemon=True)
        null_proc.start()
        if not parent.poll(30):
            raise RuntimeError("null server did not start")
        port = parent.recv()
        url = f"amqp://guest:guest@127.0.0.1:{port}/%2F"
        args.broker_pid = null_proc.pid
    try:
        return _run(args, ctx, url)
    finally:
        if null_proc is not None:
            null_proc.terminate()
            null_proc.join(5)


def _run(args: argparse.Namespace, ctx: Any, url: str) -> dict[str, Any]:
    if args.size < 16:
        raise SystemExit("--size must be >= 16")
    plan = make_plan(args)
    if args.multi_ack_every > 1 and args.prefetch and \
            args.multi_ack_every > args.prefetch:
        raise SystemExit("--multi-ack-every must be <= --prefetch")
    conn = setup(plan, url)
    product = f"{conn.product} {conn.version}".strip()
    broker_pid = args.broker_pid or find_listener_pid(url)
    sampler = BrokerSampler(broker_pid)
    errors: list[str] = []
    P = len(plan.producer_keys)
    per_producer_rate = (args.rate / P) if (args.rate and P) else 0
    consumers = [Worker(ctx, "consumer", {
        "id": c, "url": url, "queues": qs, "autoack": args.autoack,
        "prefetch": args.prefetch, "multi_ack_every": args.multi_ack_every,
        "consume_args": (
            {"x-stream-offset": args.stream_offset} if args.stream_offset else {}
        ),
    }) for c, qs in enumerate(plan.consumer_queues)]
    producers = [Worker(ctx, "producer", {
        "id": p, "url": url, "exchange": plan.exchange,
        "routing_keys": keys, "size": args.size,
        "persistent": args.persistent, "confirm": args.confirm,
        "rate": per_producer_rate,
    }) for p, keys in enumerate(plan.producer_keys)]
    workers = consumers + producers
    result: dict[str, Any] = {}
    try:
        for w in workers:
            w.wait_ready(60)
        rss_start = sampler.rss()
        if args.backlog:
            result = _run_backlog(args, plan, conn, sampler, producers,
                                  consumers, errors)
        else:
            result = _run_timed(args, plan, sampler, producers, consumers,
                                errors)
        result["broker_rss_start_mb"] = round(rss_start / MB, 1)
        result["broker_rss_max_mb"] = round(sampler.rss_max / MB, 1)
        rss_end = sampler.rss()
        result["broker_rss_end_mb"] = round(rss_end / MB, 1)
        # what is still queued is not lost (unacked ones went back)
        try:
            remaining = queue_depth(conn, plan)
        except (AMQPError, OSError, TimeoutError) as exc:
            errors.append(f"queue depth: {exc}")
            remaining = 0
        result["remaining"] = remaining
        _account(args, plan, producers, consumers, result)
    finally:
        for w in workers:
            w.send(("stop",))
        for w in workers:
            w.stop()
        teardown(conn, plan)
    for w in workers:
        if w.error:
            errors.append(w.error.strip().splitlines()[0])
    params = {k: v for k, v in vars(args).items()
              if k not in ("url", "json")}
    out: dict[str, Any] = {
        "tool": "mqbroker-perf",
        "broker": product,
        "url": _redact(url),
        "params": params,
        **result,
        "broker_pid": broker_pid or None,
        "errors": errors,
    }
    return out


def _redact(url: str) -> str:
    u = urllib.parse.urlparse(url)
    if u.password:
        netloc = u.netloc.replace(f":{u.password}@", ":***@")
        u = u._replace(netloc=netloc)
    return u.geturl()


def _gather(workers: list[Worker], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for w in workers:
            w.poll()
        if all(w.done for w in workers):
            return
        time.sleep(0.02)


def _drain(consumers: list[Worker], expected: int, timeout: float,
           sampler: BrokerSampler, idle_s: float = 2.0) -> None:
    """Wait until the consumers have ``expected`` deliveries, or nothing
    arrives for ``idle_s``, or ``timeout``."""
    deadline = time.monotonic() + timeout
    last_total = -1
    last_change = time.monotonic()
    next_rss = 0.0
    while time.monotonic() < deadline:
        for w in consumers:
            w.poll()
        total = sum(w.progress[0] for w in consumers)
        if total >= expected or all(w.done for w in consumers):
            return
        now = time.monotonic()
        if total != last_total:
            last_total = total
            last_change = now
        elif now - last_change > idle_s:
            return
        if now >= next_rss:
            sampler.rss()
            next_rss = now + 0.25
        time.sleep(0.02)


def _expected_deliveries(plan: Plan, sent: int) -> int:
    return sent * (len(plan.queues) if plan.fanout else 1)


def _run_timed(args: argparse.Namespace, plan: Plan, sampler: BrokerSampler,
               producers: list[Worker], consumers: list[Worker],
               errors: list[str]) -> dict[str, Any]:
    t0 = time.monotonic_ns() + 300_000_000
    t_end = t0 + int(args.time * 1e9)
    for w in consumers + producers:
        w.send(("start", t0, t_end, 0))
    while time.monotonic_ns() < t0:
        time.sleep(0.001)
    cpu0 = sampler.cpu()
    while time.monotonic_ns() < t_end:
        sampler.rss()
        for w in consumers + producers:
            w.poll()
        time.sleep(min(0.25, max(0.0, (t_end - time.monotonic_ns()) / 1e9)))
    cpu1 = sampler.cpu()
    sampler.rss()
    _gather(producers, 150)
    sent = sum((w.result or {}).get("sent", 0) for w in producers)
    _drain(consumers, _expected_deliveries(plan, sent), args.drain_timeout,
           sampler)
    for w in consumers:
        w.send(("stop",))
    _gather(consumers, 60)
    duration = (t_end - t0) / 1e9
    out = _rates(producers, consumers, duration)
    received_window = out["received"]
    out["broker_cpu_s"] = round(cpu1 - cpu0, 3)
    denom = received_window or out["sent"]
    out["broker_cpu_us_per_msg"] = round((cpu1 - cpu0) / denom * 1e6, 2) \
        if denom and sampler.proc is not None else None
    return out


def _rates(producers: list[Worker], consumers: list[Worker],
           duration: float) -> dict[str, Any]:
    pr = [w.result or {} for w in producers]
    cr = [w.result or {} for w in consumers]
    sent = sum(r.get("sent_window", 0) for r in pr)
    confirmed = sum(r.get("confirmed_window", 0) for r in pr)
    received = sum(r.get("received_window", 0) for r in cr)
    hist = Histogram()
    for r in cr:
        if r.get("hist"):
            hist.merge(Histogram.from_state(r["hist"]))
    chist = Histogram()
    for r in pr:
        if r.get("confirm_hist"):
            chist.merge(Histogram.from_state(r["confirm_hist"]))
    out: dict[str, Any] = {
        "duration_s": round(duration, 3),
        "sent": sent,
        "received": received,
        "confirmed": confirmed,
        "sent_rate": round(sent / duration, 1) if duration else None,
        "received_rate": round(received / duration, 1) if duration else None,
        "confirmed_rate": round(confirmed / duration, 1)
        if duration else None,
        "nacked": sum(r.get("nacked", 0) for r in pr),
        "received_total": sum(r.get("received", 0) for r in cr),
        "redelivered": sum(r.get("redelivered", 0) for r in cr),
        # the load generator's own CPU, to compare with the broker's
        "producer_cpu_s": round(sum(r.get("cpu_s", 0.0) for r in pr), 3),
        "consumer_cpu_s": round(sum(r.get("cpu_s", 0.0) for r in cr), 3),
        # how long the broker took to answer the producers' close: what
        # it was still reading of their unconfirmed publishes
        "producer_close_max_s": max((r.get("close_s", 0.0) for r in pr),
                                    default=None),
    }
    out.update(summarize(hist, "latency"))
    out.update(summarize(chist, "confirm_latency"))
    return out


def _run_backlog(args: argparse.Namespace, plan: Plan, conn: Connection,
                 sampler: BrokerSampler, producers: list[Worker],
                 consumers: list[Worker], errors: list[str]
                 ) -> dict[str, Any]:
    rss_before = sampler.rss()
    t0 = time.monotonic_ns() + 100_000_000
    for w, n in zip(producers, plan.producer_counts):
        w.send(("start", t0, 0, n))
    while not all(w.done for w in producers):
        for w in producers:
            w.poll()
        sampler.rss()
        time.sleep(0.05)
    t_pub = max(((w.result or {}).get("stopped_ns", t0) for w in producers),
                default=t0)
    sent = sum((w.result or {}).get("sent", 0) for w in producers)
    expected = _expected_deliveries(plan, sent)
    # wait for the broker to have them all queued
    deadline = time.monotonic() + 120
    depth = 0
    while time.monotonic() < deadline:
        depth = queue_depth(conn, plan)
        if depth >= expected:
            break
        sampler.rss()
        time.sleep(0.1)
    t_queued = time.monotonic_ns()
    time.sleep(0.5)
    rss_full = sampler.rss()
    if depth < expected:
        errors.append(f"backlog: only {depth} of {expected} queued")
    cpu0 = sampler.cpu()
    c0 = time.monotonic_ns()
    for w in consumers:
        w.send(("start", c0, 0, 0))
    _drain(consumers, expected, max(args.drain_timeout, 120), sampler,
           idle_s=5.0)
    cpu1 = sampler.cpu()
    for w in consumers:
        w.send(("stop",))
    _gather(consumers, 60)
    cr = [w.result or {} for w in consumers]
    received = sum(r.get("received", 0) for r in cr)
    last = max((r.get("last_ns", 0) for r in cr), default=0)
    drain_s = (last - c0) / 1e9 if last > c0 else None
    fill_s = (t_pub - t0) / 1e9
    out = _rates(producers, consumers, drain_s or 0.0)
    out.update({
        "backlog": expected,
        "backlog_queued": depth,
        "fill_rate": round(sent / fill_s, 1) if fill_s > 0 else None,
        "fill_queued_s": round((t_queued - t0) / 1e9, 3),
        "drain_s": round(drain_s, 3) if drain_s else None,
        "drain_rate": round(received / drain_s, 1) if drain_s else None,
        "broker_rss_before_backlog_mb": round(rss_before / MB, 1),
        "broker_rss_backlog_mb": round(rss_full / MB, 1),
        "broker_rss_growth_mb": round((rss_full - rss_before) / MB, 1),
        "broker_cpu_s": round(cpu1 - cpu0, 3),
        "broker_cpu_us_per_msg": round((cpu1 - cpu0) / received * 1e6, 2)
        if received and sampler.proc is not None else None,
    })
    out["received_rate"] = out["drain_rate"]
    out["sent_rate"] = out["fill_rate"]
    if confirmed := sum((w.result or {}).get("confirmed", 0)
                        for w in producers):
        out["confirmed_rate"] = round(confirmed / fill_s, 1) \
            if fill_s > 0 else None
    return out


def _account(args: argparse.Namespace, plan: Plan, producers: list[Worker],
             consumers: list[Worker], out: dict[str, Any]) -> None:
    if args.null_sink:
        out["lost"] = None
        out["duplicated"] = None
        return
    sent = {int((w.result or {}).get("id", i)): int(
        (w.result or {}).get("sent", 0)) for i, w in enumerate(producers)}
    # nacked messages were refused by the broker: not expected
    maps: dict[tuple[int, int], list[bytes]] = {}
    dup_inside = 0
    for w in consumers:
        r = w.result or {}
        dup_inside += int(r.get("duplicated", 0))
        for (q, pid), bm in (r.get("maps") or {}).items():
            maps.setdefault((q, pid), []).append(bm)
    lost, dup, unexpected = account(sent, maps, len(plan.queues), plan.fanout)
    nacked = sum(int((w.result or {}).get("nacked", 0)) for w in producers)
    out["lost"] = max(0, lost - out.get("remaining", 0) - nacked)
    out["unreceived"] = lost
    out["duplicated"] = dup + dup_inside
    out["unexpected"] = unexpected
    out["verified"] = all(w.result is not None for w in producers + consumers)\
        and all((w.result or {}).get("cancel_complete", False)
                for w in consumers)


def human(result: dict[str, Any]) -> str:
    def f(key: str, unit: str = "") -> str:
        v = result.get(key)
        return "-" if v is None else f"{v:,}{unit}" if isinstance(v, int) \
            else f"{v:,.3f}{unit}" if isinstance(v, float) and v < 10 \
            else f"{v:,.0f}{unit}" if isinstance(v, float) else f"{v}{unit}"

    lines = [
        f"broker {result.get('broker')}  ({result.get('url')})",
        f"sent {f('sent_rate', ' msg/s')}  received "
        f"{f('received_rate', ' msg/s')}  confirmed "
        f"{f('confirmed_rate', ' msg/s')}",
        f"latency p50/p95/p99 {f('latency_p50_ms')}/{f('latency_p95_ms')}/"
        f"{f('latency_p99_ms')} ms  confirm {f('confirm_latency_p50_ms')}/"
        f"{f('confirm_latency_p95_ms')}/{f('confirm_latency_p99_ms')} ms",
        f"broker RSS {f('broker_rss_start_mb')} -> max "
        f"{f('broker_rss_max_mb')} MB  CPU {f('broker_cpu_us_per_msg')} "
        f"us/msg  lost {f('lost')}  duplicated {f('duplicated')}  "
        f"remaining {f('remaining')}",
    ]
    if "drain_rate" in result:
        lines.append(
            f"backlog {f('backlog')}: fill {f('fill_rate', ' msg/s')}, "
            f"drain {f('drain_rate', ' msg/s')}, RSS growth "
            f"{f('broker_rss_growth_mb', ' MB')}")
    for e in result.get("errors") or []:
        lines.append(f"error: {e}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except (AMQPError, OSError, TimeoutError, RuntimeError) as exc:
        print(json.dumps({"tool": "mqbroker-perf", "errors": [str(exc)]}))
        return 1
    if not args.json:
        print(human(result), file=sys.stderr)
    print(json.dumps(result, sort_keys=False))
    return 1 if result.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
