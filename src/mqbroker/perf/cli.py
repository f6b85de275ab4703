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
import urllib.parse
from typing import Any

from mqbroker.perf import phases
from mqbroker.perf.client import DEFAULT_URL, AMQPError
from mqbroker.perf.harness import (
    MB,
    BrokerSampler,
    Worker,
    find_listener_pid,
    queue_depth,
    setup,
    teardown,
)
from mqbroker.perf.plan import make_plan


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
            result = phases.run_backlog(args, plan, conn, sampler,
                                        producers, consumers, errors)
        else:
            result = phases.run_timed(args, plan, sampler, producers,
                                      consumers, errors)
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
        phases.account_all(args, plan, producers, consumers, result)
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
