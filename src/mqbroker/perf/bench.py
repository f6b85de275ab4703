"""``make bench``: issue 7's fixed scenario set, mqbroker against RabbitMQ.

    python -m mqbroker.perf.bench [--quick] [--only NAME[,NAME]] [--runs N]
        [--time S] [--no-rabbitmq] [--output FILE]

Each scenario starts a fresh mqbroker subprocess (``python -m mqbroker
serve`` on a temporary data dir) and, when RabbitMQ answers on
``$RABBITMQ_URL`` (default amqp://guest:guest@127.0.0.1:5672/%2F), runs
against both in the same pass, alternating mqbroker and RabbitMQ run by run
so machine noise hits both alike. Medians of ``--runs`` (default 3) runs
per broker; the table gives mqbroker/RabbitMQ ratios next to the issue's
targets and the RabbitMQ figures quoted there. ``null`` (the load
generator against its null server) runs once per bench and shows the
harness's own ceiling. Results (every run) go to a JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mqbroker.perf import cli, harness, idle
from mqbroker.perf.client import Connection

RABBITMQ_DEFAULT = "amqp://guest:guest@127.0.0.1:5672/%2F"


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    args: tuple[str, ...]
    metric: str  # result key
    unit: str
    higher_is_better: bool = True
    target: str = ""  # the issue's target for mqbroker/RabbitMQ
    target_ratio: float | None = None
    issue_rabbitmq: str = ""  # the RabbitMQ figure quoted in the issue
    extra: tuple[tuple[str, str, bool, str, float | None, str], ...] = ()
    # restart mqbroker before every run (RSS figures need a fresh process:
    # CPython keeps freed memory for reuse)
    fresh_broker: bool = False
    # "perf": an mqbroker-perf run; "idle": perf/idle.py's connection count
    runner: str = "perf"


SCENARIOS: list[Scenario] = [
    Scenario("transient", "transient 16 B publish->consume, auto-ack",
             ("--size", "16", "--autoack"), "received_rate", "msg/s",
             target=">= 1.0", target_ratio=1.0, issue_rabbitmq="123,000"),
    Scenario("manual-ack", "16 B, manual acks, prefetch 100",
             ("--size", "16", "--prefetch", "100"), "received_rate", "msg/s",
             issue_rabbitmq="75,000"),
    Scenario("persistent-confirm",
             "persistent + confirms (100 outstanding) + manual acks",
             ("--size", "16", "--persistent", "--confirm", "100",
              "--prefetch", "100"), "confirmed_rate", "msg/s",
             target=">= 1.0", target_ratio=1.0, issue_rabbitmq="32,000"),
    Scenario("fanout-10", "10-queue fanout, deliveries/s (2 consumers)",
             ("--size", "16", "--fanout-queues", "10", "--consumers", "2",
              "--autoack"), "received_rate", "deliveries/s",
             target=">= 0.7", target_ratio=0.7, issue_rabbitmq="98,000"),
    Scenario("topic-100", "topic exchange, 100 bindings",
             ("--size", "16", "--exchange-type", "topic",
              "--topic-bindings", "100", "--autoack"), "received_rate",
             "msg/s", issue_rabbitmq="31,000"),
    Scenario("1kb-4x4", "1 KB, 4 producers x 4 queues x 4 consumers",
             ("--size", "1024", "--producers", "4", "--consumers", "4",
              "--queues", "4", "--autoack"), "received_rate", "msg/s"),
    Scenario("64kb", "64 KB bodies, auto-ack",
             ("--size", "65536", "--autoack"), "received_rate", "msg/s"),
    Scenario("latency-1k", "end-to-end latency p50 at 1,000 msg/s",
             ("--size", "16", "--rate", "1000", "--prefetch", "100"),
             "latency_p50_ms", "ms", higher_is_better=False,
             target="<= 1.5", target_ratio=1.5, issue_rabbitmq="0.15",
             extra=(("latency_p99_ms", "ms", False, "", None, ""),)),
    Scenario("backlog-200k", "200,000 x 1 KB backlog drain (prefetch 100)",
             ("--size", "1024", "--backlog", "200000", "--prefetch", "100"),
             "drain_rate", "msg/s", target=">= 1.0", target_ratio=1.0,
             issue_rabbitmq="47,000",
             fresh_broker=True,
             extra=(("broker_rss_backlog_mb", "MB", False, "<= 1.0", 1.0,
                     ""),
                    ("broker_rss_growth_mb", "MB", False, "", None,
                     "1,300"),
                    ("fill_rate", "msg/s", True, "", None, ""))),
    Scenario("stream-live",
             "stream: 64 B publish + confirms (200 outstanding), read live",
             ("--size", "64", "--confirm", "200", "--prefetch", "500",
              "--multi-ack-every", "50", "--stream-offset", "next"),
             "confirmed_rate", "msg/s", target=">= 1.2", target_ratio=1.2,
             extra=(("received_rate", "msg/s", True, "", None, ""),)),
    Scenario("stream-replay-300k",
             "stream: replay 300,000 x 1 KB from first (prefetch 1000)",
             ("--size", "1024", "--backlog", "300000", "--prefetch", "1000",
              "--multi-ack-every", "100", "--stream-offset", "first"),
             "drain_rate", "msg/s", target=">= 2.0", target_ratio=2.0,
             fresh_broker=True,
             extra=(("broker_rss_backlog_mb", "MB", False, "", None, ""),
                    ("broker_rss_growth_mb", "MB", False, "", None, ""))),
    Scenario("idle-connections",
             "broker RSS per idle connection (300 connections, 1 channel each)",
             ("--connections", "300"), "rss_per_connection_kb", "KiB",
             higher_is_better=False, fresh_broker=True, runner="idle"),
]

NULL_SCENARIOS: list[tuple[str, tuple[str, ...], str]] = [
    ("publish", ("--consumers", "0", "--size", "16"), "sent_rate"),
    ("publish+confirm 100", ("--consumers", "0", "--size", "16",
                             "--confirm", "100"), "confirmed_rate"),
    ("consume auto-ack", ("--producers", "0", "--size", "16",
                          "--autoack"), "received_rate"),
    ("consume prefetch 100", ("--producers", "0", "--size", "16",
                              "--prefetch", "100"), "received_rate"),
]


# --------------------------------------------------------------------------
# brokers


class MQBroker:
    """``python -m mqbroker serve`` on a fresh temporary data dir."""

    name = "mqbroker"

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="mqbroker-perf-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> MQBroker:
        port_file = self.tmp / "port"
        log = open(self.tmp / "broker.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mqbroker", "serve", "--host",
             "127.0.0.1", "--port", "0", "--port-file", str(port_file),
             "--data-dir", str(self.tmp / "data"), "--no-management",
             "--log-level", "warning"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if port_file.exists() and port_file.read_text().strip():
                self.port = int(port_file.read_text())
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"mqbroker did not start; see "
                           f"{self.tmp / 'broker.log'}")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.tmp, ignore_errors=True)


@dataclass
class RabbitMQ:
    url: str
    pid: int
    version: str
    name: str = "rabbitmq"


def find_rabbitmq(url: str | None, explicit: bool) -> RabbitMQ | None:
    url = url or RABBITMQ_DEFAULT
    try:
        conn = Connection(url, timeout=3, name="perf-probe")
    except OSError:
        return None
    except Exception:  # noqa: BLE001 - refused login and the like
        return None
    version = conn.version
    conn.close()
    pid = harness.find_listener_pid(url)
    if pid and not explicit:
        try:
            import psutil  # type: ignore[import-untyped]

            name = psutil.Process(pid).name()
        except Exception:  # noqa: BLE001
            name = ""
        if name and "beam" not in name:
            # something else (an mqbroker from `make run`?) holds the port
            return None
    return RabbitMQ(url, pid, version)


# --------------------------------------------------------------------------
# running


def run_idle(url: str, pid: int, argv: list[str]) -> dict[str, Any]:
    count = int(argv[argv.index("--connections") + 1])
    try:
        return idle.measure(url, pid, count)
    except Exception as exc:  # noqa: BLE001 - a failed run is a result
        return {"errors": [f"{type(exc).__name__}: {exc}"]}


def run_perf(url: str, pid: int, argv: list[str]) -> dict[str, Any]:
    args = cli.build_parser().parse_args(
        ["--url", url, "--broker-pid", str(pid), "--json", *argv])
    try:
        return cli.run(args)
    except Exception as exc:  # noqa: BLE001 - a failed run is a result
        return {"errors": [f"{type(exc).__name__}: {exc}"]}


def _median(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


@dataclass
class Row:
    scenario: str
    title: str
    metric: str
    unit: str
    higher: bool
    target: str
    target_ratio: float | None
    issue: str
    mq: list[float | None] = field(default_factory=list)
    rabbit: list[float | None] = field(default_factory=list)

    @property
    def mq_median(self) -> float | None:
        return _median(self.mq)  # type: ignore[arg-type]

    @property
    def rabbit_median(self) -> float | None:
        return _median(self.rabbit)  # type: ignore[arg-type]

    @property
    def ratio(self) -> float | None:
        a, b = self.mq_median, self.rabbit_median
        if a is None or not b:
            return None
        return a / b

    @property
    def verdict(self) -> str:
        r = self.ratio
        if r is None or self.target_ratio is None:
            return ""
        good = r >= self.target_ratio if self.higher \
            else r <= self.target_ratio
        return "met" if good else "MISSED"


def fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "-"
    if unit == "ms":
        return f"{v:.3f}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.1f}"


def table(rows: list[Row], have_rabbit: bool) -> str:
    head = ["scenario", "metric", "mqbroker", "RabbitMQ", "ratio",
            "target", "", "issue's RabbitMQ"]
    lines = [head]
    for r in rows:
        ratio = r.ratio
        lines.append([
            r.scenario, f"{r.metric} ({r.unit})", fmt(r.mq_median, r.unit),
            fmt(r.rabbit_median, r.unit) if have_rabbit else "n/a",
            f"{ratio:.2f}" if ratio is not None else "-",
            r.target, r.verdict, r.issue])
    widths = [max(len(str(line[i])) for line in lines)
              for i in range(len(head))]
    out = []
    for k, line in enumerate(lines):
        out.append("  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)
                             for i, (c, w) in enumerate(zip(line, widths))))
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def markdown(rows: list[Row], have_rabbit: bool) -> str:
    out = ["| scenario | metric | mqbroker | RabbitMQ | mqbroker/RabbitMQ "
           "| target | | issue's RabbitMQ |",
           "|---|---|---:|---:|---:|---|---|---:|"]
    for r in rows:
        ratio = r.ratio
        out.append(
            f"| {r.scenario} | {r.metric} ({r.unit}) | "
            f"{fmt(r.mq_median, r.unit)} | "
            f"{fmt(r.rabbit_median, r.unit) if have_rabbit else 'n/a'} | "
            f"{f'{ratio:.2f}' if ratio is not None else '-'} | {r.target} | "
            f"{r.verdict} | {r.issue} |")
    return "\n".join(out)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import psutil

        mem = round(psutil.virtual_memory().total / 2**30, 1)
    except Exception:  # noqa: BLE001
        mem = None
    return {"nproc": os.cpu_count(), "cpu": cpu, "mem_gib": mem,
            "kernel": platform.release(),
            "python": platform.python_version()}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def summary_of(result: dict[str, Any]) -> str:
    keys = ("sent_rate", "received_rate", "confirmed_rate",
            "latency_p50_ms", "drain_rate", "broker_rss_backlog_mb",
            "broker_rss_growth_mb", "rss_per_connection_kb", "lost",
            "duplicated", "remaining",
            "broker_cpu_us_per_msg", "producer_cpu_s", "consumer_cpu_s")
    parts = [f"{k}={result.get(k)}" for k in keys if k in result]
    if result.get("errors"):
        parts.append(f"errors={result['errors']}")
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mqbroker.perf.bench")
    p.add_argument("--quick", action="store_true",
                   help="1 run per scenario, 3 s each, 50,000 backlog")
    p.add_argument("--only", default="",
                   help="comma-separated scenario names (or 'null')")
    p.add_argument("--runs", type=int, default=0)
    p.add_argument("--time", type=float, default=0)
    p.add_argument("--no-rabbitmq", action="store_true")
    p.add_argument("--no-null", action="store_true",
                   help="skip the load generator's null-sink figures")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)
    runs = args.runs or (1 if args.quick else 3)
    seconds = args.time or (3.0 if args.quick else 6.0)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    known = {s.name for s in SCENARIOS} | {"null"}
    if only - known:
        p.error(f"unknown scenario(s) {sorted(only - known)}; "
                f"known: {sorted(known)}")
    scenarios = [s for s in SCENARIOS if not only or s.name in only]
    do_null = not args.no_null and (not only or "null" in only)

    env_url = os.environ.get("RABBITMQ_URL")
    rabbit = None if args.no_rabbitmq else find_rabbitmq(env_url,
                                                         bool(env_url))
    info = machine()
    log(f"machine: {info}")
    log(f"RabbitMQ: {rabbit.version + ' at ' + cli._redact(rabbit.url) if rabbit else 'not reachable: mqbroker only'}")
    log(f"{runs} run(s) per scenario and broker, {seconds:g} s each")

    results: dict[str, Any] = {
        "machine": info, "runs": runs, "seconds": seconds,
        "rabbitmq": rabbit.version if rabbit else None,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "scenarios": {}, "null": {},
    }
    rows: list[Row] = []
    problems: list[str] = []
    started = time.monotonic()

    if do_null:
        for label, extra, metric in NULL_SCENARIOS:
            args_ = cli.build_parser().parse_args(
                ["--null-sink", "--json", "--time", str(seconds), *extra])
            res = cli.run(args_)
            results["null"][label] = res
            log(f"null sink  {label:24s} {res.get(metric)} msg/s "
                f"({metric})")

    for sc in scenarios:
        argv_ = list(sc.args)
        if sc.runner == "idle":
            pass
        elif "--backlog" in argv_:
            if args.quick:
                argv_[argv_.index("--backlog") + 1] = "50000"
        else:
            argv_ += ["--time", str(seconds)]
        if sc.runner == "perf":
            argv_ += ["--drain-timeout", "20"]
        row_specs = [(sc.metric, sc.unit, sc.higher_is_better, sc.target,
                      sc.target_ratio, sc.issue_rabbitmq), *sc.extra]
        srows = [Row(sc.name, sc.title, m, u, h, t, tr, iss)
                 for (m, u, h, t, tr, iss) in row_specs]
        per: dict[str, list[dict[str, Any]]] = {"mqbroker": [],
                                                 "rabbitmq": []}
        broker = MQBroker().start()
        try:
            for i in range(runs):
                targets: list[tuple[str, str, int]] = [
                    ("mqbroker", broker.url, broker.pid)]
                if rabbit is not None:
                    targets.append(("rabbitmq", rabbit.url, rabbit.pid))
                if i % 2:
                    targets.reverse()
                for name, url, pid in targets:
                    if name == "mqbroker" and sc.fresh_broker and i > 0:
                        broker.stop()
                        broker = MQBroker().start()
                        url, pid = broker.url, broker.pid
                    if name == "mqbroker" and not broker.alive():
                        problems.append(f"{sc.name}: mqbroker died; "
                                        f"restarted")
                        broker.stop()
                        broker = MQBroker().start()
                        url, pid = broker.url, broker.pid
                    runner = run_idle if sc.runner == "idle" else run_perf
                    res = runner(url, pid, argv_)
                    res["run"] = i
                    per[name].append(res)
                    log(f"{sc.name:20s} run {i + 1}/{runs} {name:9s} "
                        f"{summary_of(res)}")
                    for r in srows:
                        (r.mq if name == "mqbroker" else r.rabbit).append(
                            res.get(r.metric))
                    if res.get("lost") or res.get("duplicated") or \
                            res.get("errors"):
                        problems.append(
                            f"{sc.name} run {i + 1} {name}: lost="
                            f"{res.get('lost')} duplicated="
                            f"{res.get('duplicated')} errors="
                            f"{res.get('errors')}")
        finally:
            broker.stop()
        rows.extend(srows)
        results["scenarios"][sc.name] = {
            "title": sc.title, "args": argv_, "runs": per,
            "medians": {r.metric: {"mqbroker": r.mq_median,
                                   "rabbitmq": r.rabbit_median,
                                   "ratio": r.ratio} for r in srows},
        }

    results["elapsed_s"] = round(time.monotonic() - started, 1)
    results["problems"] = problems
    out = args.output or Path("bench-results") / \
        f"perf-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))

    print()
    if results["null"]:
        print("load generator against its null server (one run each):")
        for label, res in results["null"].items():
            metric = next(m for lab, _a, m in NULL_SCENARIOS if lab == label)
            print(f"  {label:24s} {fmt(res.get(metric))} msg/s")
        print()
    if rows:
        print(f"medians of {runs} run(s), {seconds:g} s each "
              f"(ratio = mqbroker / RabbitMQ):")
        print(table(rows, rabbit is not None))
        print()
        print(markdown(rows, rabbit is not None))
    for prob in problems:
        print(f"problem: {prob}")
    print(f"\nresults: {out}  ({results['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
