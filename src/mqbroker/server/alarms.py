"""Resource alarms: block publishers while memory or disk runs short.

Strategy (RabbitMQ's ``rabbit_alarm`` and "Memory and Disk Alarms"): a
periodic task compares the broker's RSS with
``vm_memory_high_watermark_bytes`` and the data dir's free space with
``disk_free_limit_bytes``; the store's group committer reports a full map
(``StoreFullError``) as a disk alarm too. While any alarm is raised every
connection that publishes is blocked: it gets ``connection.blocked`` with
the reason ("low on memory" / "low on disk") when it advertised the
``connection.blocked`` capability, and its reader stops, so TCP
backpressure holds the publisher. Connections that only consume are left
alone, so consumers keep draining the queues that caused the alarm. When
the last alarm clears, blocked connections get ``connection.unblocked`` and
their readers resume. The per-connection part lives in
``Session.set_blocked`` and the connection task's reader.

Sources are independent ("memory", "disk", "store-full"); the broker is
blocked while any one of them is raised.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import psutil  # type: ignore[import-untyped]
import trio

from mqbroker.broker.broker import Broker
from mqbroker.log import get_logger

log = get_logger("mqbroker.alarms")

MEMORY = "memory"
DISK = "disk"
STORE_FULL = "store-full"
REASONS = {MEMORY: "low on memory", DISK: "low on disk", STORE_FULL: "low on disk"}


class Alarms:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.config = broker.config
        self.active: dict[str, str] = {}  # source -> detail (for the log)
        self._process = psutil.Process()
        self.last_rss = 0
        self.last_disk_free: int | None = None

    # ---------------------------------------------------------- sources

    def raise_alarm(self, source: str, detail: str = "") -> None:
        if source in self.active:
            return
        self.active[source] = detail
        log.warning("alarm.raised", source=source, detail=detail)
        self._apply()

    def clear_alarm(self, source: str) -> None:
        if self.active.pop(source, None) is None:
            return
        log.info("alarm.cleared", source=source)
        self._apply()

    @property
    def reason(self) -> str | None:
        for source in (MEMORY, DISK, STORE_FULL):
            if source in self.active:
                return REASONS[source]
        for source in self.active:  # a source added by a test or plugin
            return REASONS.get(source, f"low on {source}")
        return None

    def _apply(self) -> None:
        reason = self.reason
        broker = self.broker
        if reason == broker.alarm:
            return
        broker.alarm = reason
        for session in list(broker.sessions):
            if not session.closed:
                session.set_blocked(reason)
        broker.run_dispatch()  # wake the writers: blocked/unblocked frames

    # ------------------------------------------- group committer hooks

    def store_full(self, exc: Exception) -> None:
        self.raise_alarm(STORE_FULL, str(exc))

    def store_recovered(self) -> None:
        self.clear_alarm(STORE_FULL)

    # ------------------------------------------------------------ checks

    def check_memory(self) -> None:
        limit = self.config.vm_memory_high_watermark_bytes
        if limit is None:
            return
        self.last_rss = rss = self._process.memory_info().rss
        if rss > limit:
            self.raise_alarm(MEMORY, f"rss {rss} > watermark {limit}")
        else:
            self.clear_alarm(MEMORY)

    def check_disk(self) -> None:
        limit = self.config.disk_free_limit_bytes
        data_dir = self.config.data_dir
        if limit is None or data_dir is None or self.config.storage == "memory":
            return
        path = Path(data_dir)
        while not path.exists() and path != path.parent:
            path = path.parent
        try:
            free = shutil.disk_usage(path).free
        except OSError:
            return
        self.last_disk_free = free
        if free < limit:
            self.raise_alarm(DISK, f"free {free} < limit {limit}")
        else:
            self.clear_alarm(DISK)

    def check(self) -> None:
        self.check_memory()
        self.check_disk()

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self.check()
        task_status.started()
        interval = max(self.config.alarm_check_interval_s, 0.01)
        while True:
            await trio.sleep(interval)
            self.check()
