"""The handle a test gets: where the broker is, and (in-process) the
harness: ``clock.advance``, ``peek``, ``faults``.

Strategy: the handle is a frozen description of the broker (host, port,
credentials) plus a small mutable ``_Live`` holder for the in-process
broker behind it, so a simulated crash can replace the broker while the
test keeps the same handle and the same URL. Every harness call runs on
the broker's loop (``trio.from_thread``); with ``MQBROKER_EXTERNAL_URL``
the harness-only features skip the test with a reason.
"""

from __future__ import annotations

import contextlib
import os
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import trio

EXTERNAL_SKIP = "needs the in-process mqbroker (the harness is not available with MQBROKER_EXTERNAL_URL)"


class _Live:
    """The in-process broker behind a handle (replaced by ``crash()``)."""

    def __init__(self, embedded: Any, virtual_clock: bool) -> None:
        self.embedded = embedded
        self.virtual_clock = virtual_clock
        self.clock_offset = 0.0

    @property
    def harness(self) -> Any:
        return self.embedded.info.harness

    def call(self, fn: Any, *args: Any) -> Any:
        return trio.from_thread.run(fn, *args, trio_token=self.embedded._token)

    def call_sync(self, fn: Any, *args: Any) -> Any:
        return trio.from_thread.run_sync(fn, *args, trio_token=self.embedded._token)


@dataclass(frozen=True)
class BrokerHandle:
    host: str
    port: int
    data_dir: Path | None
    vhost: str = "/"
    user: str = "guest"
    password: str = "guest"
    management_port: int | None = None
    live: _Live | None = field(default=None, compare=False, repr=False)

    @property
    def url(self) -> str:
        vhost = urllib.parse.quote(self.vhost, safe="")
        return f"amqp://{self.user}:{self.password}@{self.host}:{self.port}/{vhost}"

    @property
    def external(self) -> bool:
        return self.data_dir is None

    def _live(self) -> _Live:
        if self.live is None:
            pytest.skip(EXTERNAL_SKIP)
        return self.live

    # ------------------------------------------------------------ harness

    @property
    def clock(self) -> Clock:
        """The broker's time (``@pytest.mark.mqbroker(virtual_clock=True)``)."""
        live = self._live()
        if not live.virtual_clock:
            raise RuntimeError(
                "mqbroker.clock needs @pytest.mark.mqbroker(virtual_clock=True) on the test"
            )
        return Clock(live)

    def peek(self, queue: str, vhost: str = "/") -> list[Any]:
        """The queue's messages in order, without consuming them (objects
        with .body, .properties, .headers, .redelivered, .routing_key; a
        stream's also have .offset)."""
        live = self._live()
        result: list[Any] = live.call_sync(live.harness.peek, vhost, queue)
        return result

    @property
    def faults(self) -> Faults:
        return Faults(self._live())


class Clock:
    def __init__(self, live: _Live) -> None:
        self._live = live

    def advance(self, seconds: float) -> None:
        """Move time forward; returns once every timer that fell due fired
        and its effects (dead-lettering, releases, commits, frames) are done."""
        self._live.clock_offset += seconds
        self._live.call(self._live.harness.advance, seconds)


class Faults:
    def __init__(self, live: _Live) -> None:
        self._live = live

    def disconnect_all(self) -> None:
        """Every client connection drops without a close handshake."""
        self._live.call(self._live.harness.disconnect_all)

    def crash(self) -> None:
        """As if the process got SIGKILL: nothing more is written, what was
        committed recovers; the broker is back on the same URL on return."""
        live = self._live
        old = live.embedded
        live.call_sync(setattr, live.harness, "crashed", True)
        old.stop()
        config = replace(old.config, port=old.port)
        live.embedded = start_embedded(config, live.virtual_clock, live.clock_offset)

    @contextlib.contextmanager
    def _alarm(self, kind: str) -> Iterator[None]:
        live = self._live
        live.call_sync(live.harness.set_alarm, kind, True)
        try:
            yield
        finally:
            live.call_sync(live.harness.set_alarm, kind, False)

    def disk_alarm(self) -> contextlib.AbstractContextManager[None]:
        """Publishers get connection.blocked until the block ends."""
        return self._alarm("disk")

    def memory_alarm(self) -> contextlib.AbstractContextManager[None]:
        return self._alarm("memory")

    @contextlib.contextmanager
    def fail_writes(self) -> Iterator[None]:
        """Storage writes fail: persistent publishes are basic.nack'ed,
        nothing acked before is lost, the broker keeps serving."""
        live = self._live
        live.call_sync(live.harness.fail_writes, True)
        try:
            yield
        finally:
            live.call_sync(live.harness.fail_writes, False)


def start_embedded(config: Any, virtual_clock: bool, offset: float = 0.0) -> Any:
    from mqbroker.server.embedded import EmbeddedBroker

    embedded = EmbeddedBroker(config).start()
    if virtual_clock:
        assert embedded.info is not None and embedded.info.harness is not None
        harness = embedded.info.harness

        def install() -> None:
            harness.use_virtual_clock().offset_s = offset

        trio.from_thread.run_sync(install, trio_token=embedded._token)
    return embedded


def external() -> BrokerHandle | None:
    url = os.environ.get("MQBROKER_EXTERNAL_URL")
    if not url:
        return None
    parts = urllib.parse.urlparse(url)
    vhost = urllib.parse.unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    return BrokerHandle(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5672,
        data_dir=None,
        vhost=vhost,
        user=parts.username or "guest",
        password=parts.password or "guest",
    )


def start(tmp: Path, *, virtual_clock: bool = False, **overrides: object) -> Iterator[BrokerHandle]:
    found = external()
    if found is not None:
        yield found
        return
    from mqbroker.config import Config

    config = Config(host="127.0.0.1", port=0, data_dir=tmp, **overrides)  # type: ignore[arg-type]
    live = _Live(start_embedded(config, virtual_clock), virtual_clock)
    try:
        yield BrokerHandle(
            host="127.0.0.1",
            port=live.embedded.port,
            data_dir=tmp,
            management_port=live.embedded.management_port,
            live=live,
        )
    finally:
        live.embedded.stop()
