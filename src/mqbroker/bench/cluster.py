"""Benchmark: persistent publishing with confirms, one node vs a 3-node
cluster (issue 15).

    python -m mqbroker.bench.cluster [--runs 3] [--time 8] [--output FILE]

The same load as ``make bench``'s persistent-confirm scenario (16 B,
persistent, 100 confirms outstanding, manual acks, prefetch 100) against:
a single broker; the leader of a 3-node cluster on one etcd (all on this
machine); and the same cluster through a follower (the bytes relayed to
the leader). Runs alternate so machine noise hits all alike; medians.

Where the time goes in a cluster: each batch is fsynced on the leader,
then shipped to both followers, applied to their stores and fsynced there,
and only then confirmed; one batch is in replication at a time. So a
batch costs about two fsyncs plus a round trip instead of one fsync, and
three brokers (plus the load generator) share this machine's cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from mqbroker.perf.bench import MQBroker, run_perf
from mqbroker.testing.cluster import (
    ClusterNode,
    EtcdProcess,
    cluster_status,
    wait_in_sync,
)

ARGS = ["--size", "16", "--persistent", "--confirm", "100", "--prefetch", "100"]


def _rate(result: dict[str, Any]) -> float | None:
    value = result.get("confirmed_rate")
    return float(value) if value else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--time", type=float, default=8.0, help="seconds per run")
    parser.add_argument("--output", type=Path, help="write every run as JSON here")
    args = parser.parse_args(argv)
    if not shutil.which("etcd") and not Path("/usr/bin/etcd").exists():
        print("etcd is not installed: no cluster benchmark")
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="mqbroker-cluster-bench-"))
    etcd = EtcdProcess(tmp / "etcd").start()
    nodes = [ClusterNode(f"n{i}", tmp / f"n{i}", etcd.url, log_level="warning")
             for i in (1, 2, 3)]
    single = MQBroker().start()
    runs: dict[str, list[float | None]] = {"single": [], "leader": [], "follower": []}
    try:
        for node in nodes:
            node.start()
        wait_in_sync(nodes, {n.name for n in nodes})
        status = cluster_status(nodes)
        assert status is not None
        leader = next(n for n in nodes if n.name == status["leader"])
        follower = next(n for n in nodes if n is not leader)
        perf = [*ARGS, "--time", str(args.time)]
        for i in range(args.runs):
            for name, url, pid in (
                ("single", single.url, single.pid),
                ("leader", leader.amqp_url, leader.pid),
                ("follower", follower.amqp_url, leader.pid),
            ):
                result = run_perf(url, pid, perf)
                runs[name].append(_rate(result))
                print(f"run {i + 1} {name:8}: {_rate(result) or 0:>9,.0f} msg/s confirmed"
                      + (f"  errors: {result['errors']}" if result.get("errors") else ""),
                      flush=True)
    finally:
        for node in nodes:
            node.kill()
        single.stop()
        etcd.stop()
        time.sleep(0.2)
        shutil.rmtree(tmp, ignore_errors=True)
    medians = {
        k: statistics.median([v for v in vals if v]) if any(vals) else None
        for k, vals in runs.items()
    }
    print("\npersistent + confirms (100 outstanding), medians of", args.runs)
    base = medians["single"]
    for name, value in medians.items():
        ratio = f"{value / base:.2f}x single" if value and base else ""
        print(f"  {name:8} {value or 0:>9,.0f} msg/s  {ratio}")
    if args.output:
        args.output.write_text(json.dumps({"runs": runs, "medians": medians}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
