"""Broker subprocesses for crash and restart tests (``mqbroker_process``):
``python -m mqbroker serve`` on a data dir, killable with SIGKILL and
restartable on the same data (and port)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self


class BrokerStartError(RuntimeError):
    """The broker exited, or did not write its port file in time."""


class BrokerProcess:
    """``python -m mqbroker serve`` as a child process on one data dir.

    The port file and the log live next to the data dir (in its parent), so
    they survive a test wiping the data dir and never end up inside the
    LMDB environment directory.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 0,
        reuse_port: bool = False,
        host: str = "127.0.0.1",
        storage: str = "lmdb",
        extra_args: Sequence[str] = (),
        start_timeout: float = 30.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.storage = storage
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.reuse_port = reuse_port
        self._requested_port = port
        self._env = env
        parent = self.data_dir.parent
        parent.mkdir(parents=True, exist_ok=True)
        self.port_file = parent / f"{self.data_dir.name}.port"
        self.log_path = parent / f"{self.data_dir.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self.starts = 0
        # Monotonic seconds from spawn to the port file, per start.
        self.start_seconds: list[float] = []

    # --- state ------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("broker not started")
        return self._port

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.host}:{self.port}/%2F"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("broker not started")
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self, port: int) -> list[str]:
        return [
            sys.executable, "-m", "mqbroker", "serve",
            "--host", self.host, "--port", str(port),
            "--port-file", str(self.port_file),
            "--data-dir", str(self.data_dir),
            "--storage", self.storage,
            "--no-management",
            *self.extra_args,
        ]

    # --- lifecycle --------------------------------------------------------
    def start(self) -> BrokerProcess:
        if self.is_alive():
            raise RuntimeError(f"broker already running (pid {self.pid})")
        port = self._requested_port
        if self.reuse_port and self._port is not None:
            port = self._port
        self.port_file.unlink(missing_ok=True)
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(
                f"----- start #{self.starts}: port {port} "
                f"at {time.strftime('%H:%M:%S')} -----\n".encode()
            )
            log.flush()
            started = time.monotonic()
            self._proc = subprocess.Popen(
                self.command(port),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env,
                start_new_session=True,  # a ^C in pytest does not reach it
            )
        self._port = self._wait_port_file(started)
        self.start_seconds.append(time.monotonic() - started)
        return self

    def _wait_port_file(self, started: float) -> int:
        assert self._proc is not None
        deadline = started + self.start_timeout
        while True:
            try:
                text = self.port_file.read_text().strip()
            except FileNotFoundError:
                text = ""
            if text:
                return int(text)
            code = self._proc.poll()
            if code is not None:
                raise BrokerStartError(
                    f"broker exited with code {code} before listening; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise BrokerStartError(
                    f"broker wrote no port file within "
                    f"{self.start_timeout} s; log {self.log_path}:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.01)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit; its exit code."""
        if self._proc is None:
            raise RuntimeError("broker not started")
        return self._proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL (no clean-up of any kind) and reap."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(signal.SIGKILL)
        self._proc.wait(10)

    def terminate(self, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it has not exited after ``timeout``.
        Returns the exit code of the SIGTERM'd process (None if killed)."""
        if self._proc is None or self._proc.poll() is not None:
            return self.returncode
        self._proc.send_signal(signal.SIGTERM)
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    # -- the harness, where a subprocess can offer it

    @property
    def faults(self) -> ProcessFaults:
        return ProcessFaults(self)

    @property
    def clock(self) -> Any:
        raise RuntimeError(
            "a virtual clock needs the in-process broker: use the mqbroker fixture "
            "with @pytest.mark.mqbroker(virtual_clock=True)"
        )

    def peek(self, queue: str, vhost: str = "/") -> Any:
        raise RuntimeError(
            "peek needs the in-process broker (the mqbroker fixture); a subprocess "
            "can be read over AMQP or its management API"
        )

    def restart(self, *, kill: bool = False) -> BrokerProcess:
        """Stop (SIGTERM, or SIGKILL with ``kill=True``) and start again on
        the same data dir."""
        if kill:
            self.kill()
        else:
            self.terminate()
        return self.start()

    def stop(self) -> None:
        self.terminate()

    # --- diagnostics ------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __enter__(self) -> Self:
        if not self.is_alive():
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_alive() else "stopped"
        port = self._port if self._port is not None else "-"
        return f"<BrokerProcess {state} port={port} data_dir={self.data_dir}>"




_IN_PROCESS_ONLY = (
    "needs the in-process broker (the mqbroker fixture); a subprocess offers "
    "crash() (a real SIGKILL and restart)"
)


class ProcessFaults:
    """The faults a broker subprocess can really have: ``crash()`` is a
    SIGKILL and a restart on the same data dir (and port, with
    ``reuse_port=True``); the others need the in-process fixture."""

    def __init__(self, proc: BrokerProcess) -> None:
        self.proc = proc

    def crash(self) -> None:
        self.proc.restart(kill=True)

    def disconnect_all(self) -> None:
        raise RuntimeError(f"disconnect_all {_IN_PROCESS_ONLY}")

    def disk_alarm(self) -> Any:
        raise RuntimeError(f"disk_alarm {_IN_PROCESS_ONLY}")

    def memory_alarm(self) -> Any:
        raise RuntimeError(f"memory_alarm {_IN_PROCESS_ONLY}")

    def fail_writes(self) -> Any:
        raise RuntimeError(f"fail_writes {_IN_PROCESS_ONLY}")
