"""Cluster processes for tests and benchmarks: a throwaway etcd, and
broker nodes joined through it with fixed ports per node (a node keeps
its ports across restarts, as a client's host list expects), the HTTP API
on each, SIGKILL and restart."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path
from typing import Any

from mqbroker.testing.process import BrokerProcess

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


class EtcdProcess:
    """One etcd member on free loopback ports, its data in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.client_port, self.peer_port = free_ports(2)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def start(self, timeout: float = 30.0) -> EtcdProcess:
        self.directory.mkdir(parents=True, exist_ok=True)
        peer = f"http://127.0.0.1:{self.peer_port}"
        with open(self.directory.with_suffix(".log"), "ab") as log:
            self.proc = subprocess.Popen(
                [ETCD, "--name", "t", "--data-dir", str(self.directory / "data"),
                 "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                 "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                 "--initial-cluster", f"t={peer}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as response:
                    if json.loads(response.read()).get("health") == "true":
                        return self
            except (OSError, ValueError):
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"etcd did not start (log {self.directory.with_suffix('.log')})")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


def free_ports(n: int) -> list[int]:
    sockets = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class ClusterNode(BrokerProcess):
    def __init__(self, name: str, data_dir: Path, etcd: str, *, size: int = 3,
                 prefix: str = "t/", log_level: str = "info") -> None:
        self.name = name
        self.log_level = log_level
        self.amqp_port, self.http_port, self.repl_port = free_ports(3)
        self.etcd = etcd
        self.size = size
        self.prefix = prefix
        super().__init__(data_dir, port=self.amqp_port, reuse_port=True, start_timeout=60.0)

    def command(self, port: int) -> list[str]:
        cmd = super().command(port)
        cmd.remove("--no-management")
        return [*cmd, "--management-port", str(self.http_port), "--node-name", self.name,
                "--cluster-etcd", self.etcd, "--cluster-port", str(self.repl_port),
                "--cluster-size", str(self.size), "--cluster-prefix", self.prefix,
                "--cluster-lease-ttl", "2", "--log-level", self.log_level]

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/%2F"

    def api(self, path: str, timeout: float = 2.0) -> Any:
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}")
        request.add_header("Authorization", "Basic " + b64encode(b"guest:guest").decode())
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())


def cluster_status(nodes: list[ClusterNode]) -> dict[str, Any] | None:
    """/api/cluster from the first node that answers."""
    for node in nodes:
        if not node.is_alive():
            continue
        try:
            return node.api("/api/cluster")  # type: ignore[no-any-return]
        except (OSError, urllib.error.URLError, ValueError):
            continue
    return None


def wait_in_sync(nodes: list[ClusterNode], names: set[str], timeout: float = 60.0) -> dict[str, Any]:
    """Until a leader reports every one of ``names`` in sync."""
    deadline = time.monotonic() + timeout
    status: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        status = cluster_status(nodes)
        if status and {n["name"] for n in status["nodes"] if n["in_sync"]} >= names:
            return status
        time.sleep(0.2)
    raise AssertionError(f"not in sync within {timeout} s: {status}")
