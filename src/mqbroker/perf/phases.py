"""The two ways a run measures, after the workers are ready: a timed
run (``--time``: everyone starts at one instant, rates over the window)
and a backlog run (``--backlog``: fill the queues first, then drain),
plus the accounting of every sequence number at the end. Kept apart from
the command line (cli.py) so that each reads as one job: cli parses and
reports, this module drives the workers and turns their results into
numbers."""

from __future__ import annotations

import argparse
import time
from typing import Any

from mqbroker.perf.client import Connection
from mqbroker.perf.harness import MB, BrokerSampler, Worker, queue_depth
from mqbroker.perf.plan import Plan
from mqbroker.perf.stats import Histogram, account, summarize


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


def run_timed(args: argparse.Namespace, plan: Plan, sampler: BrokerSampler,
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


def run_backlog(args: argparse.Namespace, plan: Plan, conn: Connection,
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


def account_all(args: argparse.Namespace, plan: Plan, producers: list[Worker],
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
