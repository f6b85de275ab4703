"""Helpers for the management suite (the fixtures are in conftest.py):
the broker handle with its httpx client, x-death headers as RabbitMQ writes
them, and a runner for the ``mqbrokerctl`` console script."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pika

import support.waits


@dataclass
class Mgmt:
    handle: Any
    http: httpx.Client

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.handle.management_port}"

    @property
    def amqp_url(self) -> str:
        return self.handle.url

    def pika(self) -> pika.BlockingConnection:
        params = pika.URLParameters(self.amqp_url)
        params.heartbeat = 30
        return pika.BlockingConnection(params)

    def queue(self, name: str, vhost: str = "/") -> dict[str, Any]:
        response = self.http.get(f"/api/queues/{q(vhost)}/{q(name)}")
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    def wait_for(
        self, predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition"
    ) -> None:
        support.waits.wait_for(predicate, timeout, interval=0.05, what=what)

    def wait_ready(self, name: str, count: int, timeout: float = 10.0) -> None:
        self.wait_for(
            lambda: self.queue(name)["messages_ready"] == count,
            timeout,
            f"{name} to hold {count} ready messages",
        )


def q(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def death_headers(
    queue: str = "work",
    reason: str = "rejected",
    exchange: str = "",
    routing_key: str = "work",
    count: int = 1,
) -> dict[str, Any]:
    """Headers of a message dead-lettered once, as RabbitMQ writes them."""
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    return {
        "x-death": [
            {
                "count": count,
                "reason": reason,
                "queue": queue,
                "time": when,
                "exchange": exchange,
                "routing-keys": [routing_key],
            }
        ],
        "x-first-death-exchange": exchange,
        "x-first-death-queue": queue,
        "x-first-death-reason": reason,
    }


def ctl_command() -> list[str]:
    script = Path(sys.executable).parent / "mqbrokerctl"
    if script.exists():
        return [str(script)]
    found = shutil.which("mqbrokerctl")
    if found:
        return [found]
    return [sys.executable, "-m", "mqbroker.ctl.cli"]


@dataclass
class Ctl:
    mgmt: Mgmt

    def argv(self, *args: str, fmt: str = "json") -> list[str]:
        return [*ctl_command(), "--url", self.mgmt.base_url, "--format", fmt, *args]

    def run(
        self, *args: str, fmt: str = "json", ok: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, COLUMNS="200", NO_COLOR="1")
        proc = subprocess.run(
            self.argv(*args, fmt=fmt),
            capture_output=True,
            check=False,
            text=True,
            timeout=120,
            env=env,
            input=input,
        )
        if ok and proc.returncode != 0:
            raise AssertionError(
                f"mqbrokerctl {' '.join(args)} exited {proc.returncode}\n"
                f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
            )
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args).stdout)

    def popen(self, *args: str, fmt: str = "json") -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(*args, fmt=fmt),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # A shell runs background jobs with SIGINT ignored, and the
            # child would inherit that: give it the default disposition so
            # the test's SIGINT reaches it like a user's Ctrl-C.
            preexec_fn=_default_sigint,
        )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def channel(m: Mgmt) -> Iterator[Any]:
    conn = m.pika()
    try:
        yield conn.channel()
    finally:
        with contextlib.suppress(Exception):
            conn.close()
