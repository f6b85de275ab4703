"""What a perf run stands on: sampling the broker process (RSS, CPU),
the worker processes (producers, consumers) and the queues they use.

Strategy: kept apart from ``cli.py`` (arguments, the run's phases, the
report) so each reads as one job; nothing here knows the command line.
"""

from __future__ import annotations

import time
from typing import Any

from mqbroker.perf.client import URL, AMQPError, Connection
from mqbroker.perf.plan import Plan

# broker process sampling


def find_listener_pid(url: str) -> int:
    """The pid of the local process listening on the URL's port (0 if it
    cannot be told: remote host, or not permitted)."""
    try:
        import psutil  # type: ignore[import-untyped]

        u = URL.parse(url)
        if u.host not in ("127.0.0.1", "localhost", "::1", "0.0.0.0"):
            return 0
        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and \
                    c.laddr.port == u.port and c.pid:
                return int(c.pid)
    except Exception:  # noqa: BLE001 - best effort
        return 0
    return 0


class BrokerSampler:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.proc = None
        if pid:
            try:
                import psutil

                self.proc = psutil.Process(pid)
            except Exception:  # noqa: BLE001
                self.proc = None
        self.rss_max = 0
        self.samples: list[int] = []

    def rss(self) -> int:
        if self.proc is None:
            return 0
        try:
            value = int(self.proc.memory_info().rss)
        except Exception:  # noqa: BLE001
            return 0
        self.rss_max = max(self.rss_max, value)
        return value

    def cpu(self) -> float:
        if self.proc is None:
            return 0.0
        try:
            t = self.proc.cpu_times()
            return float(t.user + t.system)
        except Exception:  # noqa: BLE001
            return 0.0


MB = 1024 * 1024


# --------------------------------------------------------------------------
# running


class Worker:
    def __init__(self, ctx: Any, role: str, cfg: dict[str, Any]) -> None:
        from mqbroker.perf import workers

        self.role = role
        self.cfg = cfg
        self.pipe, child = ctx.Pipe()
        target = workers.run_producer if role == "producer" \
            else workers.run_consumer
        self.proc = ctx.Process(target=target, args=(cfg, child), daemon=True)
        self.proc.start()
        child.close()
        self.result: dict[str, Any] | None = None
        self.error: str | None = None
        self.progress = (0, 0)
        self.ready_info: dict[str, Any] = {}

    def poll(self) -> None:
        """Consume whatever the worker has sent."""
        try:
            while self.result is None and self.error is None and \
                    self.pipe.poll():
                msg = self.pipe.recv()
                kind = msg[0]
                if kind == "ready":
                    self.ready_info = msg[1]
                elif kind == "progress":
                    self.progress = (msg[1], msg[2])
                elif kind == "result":
                    self.result = msg[1]
                elif kind == "error":
                    self.error = msg[1]
        except (EOFError, OSError):
            if self.result is None and self.error is None:
                self.error = f"{self.role} {self.cfg['id']} died " \
                    f"(exit code {self.proc.exitcode})"

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready_info:
            if self.error:
                raise RuntimeError(self.error)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.role} {self.cfg['id']} not ready")
            if self.pipe.poll(0.05):
                self.poll()
            elif not self.proc.is_alive():
                self.poll()
                if not self.ready_info:
                    raise RuntimeError(self.error or f"{self.role} died")

    def send(self, msg: tuple[Any, ...]) -> None:
        try:
            self.pipe.send(msg)
        except (BrokenPipeError, OSError):
            pass

    @property
    def done(self) -> bool:
        return self.result is not None or self.error is not None

    def stop(self) -> None:
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)


def _reset_queue(conn: Connection, ch: int, name: str) -> int:
    try:
        conn.queue_delete(ch, name)
    except AMQPError:
        conn.channel_open(ch)
    return ch


def setup(plan: Plan, url: str) -> Connection:
    a = plan.args
    conn = Connection(url, name="perf-setup")
    ch = conn.channel_open(1)
    if plan.exchange:
        try:
            conn.exchange_delete(ch, plan.exchange)
        except AMQPError:
            conn.channel_open(ch)
        conn.exchange_declare(ch, plan.exchange, plan.exchange_type,
                              durable=a.persistent)
    stream = getattr(a, "stream_offset", None) is not None
    for q in plan.queues:
        _reset_queue(conn, ch, q)
        conn.queue_declare(
            ch, q, durable=a.persistent or stream,
            arguments={"x-queue-type": "stream"} if stream else None,
        )
    for q, key in plan.bindings:
        conn.queue_bind(ch, q, plan.exchange, key)
    return conn


def queue_depth(conn: Connection, plan: Plan) -> int:
    total = 0
    for q in plan.queues:
        ok = conn.queue_declare(1, q, passive=True)
        total += int(ok.message_count or 0)
    return total


def teardown(conn: Connection, plan: Plan) -> None:
    try:
        for q in plan.queues:
            conn.queue_delete(1, q)
        if plan.exchange:
            conn.exchange_delete(1, plan.exchange)
    except (AMQPError, OSError, TimeoutError):
        pass
    conn.close()

