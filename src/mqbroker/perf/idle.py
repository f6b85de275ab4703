"""Broker memory per idle connection (issue 7's memory figures).

Opens N connections, each with one open channel (what pika or kombu holds
open between messages), waits for the broker to settle, and reads the
broker's RSS before and after with psutil: the difference divided by N is
the memory one idle client costs. The connections are closed afterwards.
Used by ``make bench`` (scenario ``idle-connections``) against both brokers.
"""

from __future__ import annotations

import time
from typing import Any

from mqbroker.perf.client import Connection


def _rss_mb(pid: int) -> float:
    import psutil  # type: ignore[import-untyped]

    return float(psutil.Process(pid).memory_info().rss) / 2**20


def measure(url: str, pid: int, count: int = 300, settle_s: float = 1.0) -> dict[str, Any]:
    connections: list[Connection] = []
    before = _rss_mb(pid)
    errors: list[str] = []
    try:
        for n in range(count):
            conn = Connection(url, timeout=10, name=f"perf-idle-{n}")
            connections.append(conn)
            conn.channel_open(1)
        time.sleep(settle_s)
        after = _rss_mb(pid)
    except Exception as exc:  # noqa: BLE001 - a failed run is a result
        errors.append(f"{type(exc).__name__}: {exc}")
        after = _rss_mb(pid)
    finally:
        for conn in connections:
            try:
                conn.close(wait=2.0)
            except Exception:  # noqa: BLE001
                conn.abort()
    opened = len(connections)
    return {
        "connections": opened,
        "broker_rss_before_mb": round(before, 1),
        "broker_rss_after_mb": round(after, 1),
        "rss_per_connection_kb": (
            round((after - before) * 1024 / opened, 1) if opened else None
        ),
        "errors": errors,
    }
