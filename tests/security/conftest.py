"""Fixtures for the security suite: brokers with a reachable ``Broker``.

The plugin's ``broker`` fixture hides the broker object (it may be an
external RabbitMQ); these tests need to add users, raise alarms and count
sessions, so they start ``EmbeddedBroker`` themselves and run management
calls on the broker's own trio thread (``SecBroker.call``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
import trio

from mqbroker.config import Config
from mqbroker.server.embedded import EmbeddedBroker


class SecBroker:
    """A running embedded broker plus helpers."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.embedded = EmbeddedBroker(config)

    def start(self) -> SecBroker:
        self.embedded.start()
        return self

    def stop(self) -> None:
        self.embedded.stop()

    def flush(self) -> None:
        """Wait until every change made so far is committed to the store.

        (A stop right after a change may otherwise cancel the group
        committer between taking its batch and writing it.)"""
        committer = self.broker.request_commit.__self__  # GroupCommitter.notify
        trio.from_thread.run(committer.flush, trio_token=self.embedded._token)

    def restart(self, **overrides: Any) -> SecBroker:
        self.flush()
        self.stop()
        if overrides:
            self.config = self.config.with_overrides(**overrides)
        self.embedded = EmbeddedBroker(self.config)
        return self.start()

    @property
    def info(self) -> Any:
        assert self.embedded.info is not None
        return self.embedded.info

    @property
    def broker(self) -> Any:
        return self.info.broker

    @property
    def access(self) -> Any:
        return self.broker.access

    @property
    def port(self) -> int:
        return int(self.info.port)

    @property
    def tls_port(self) -> int:
        return int(self.info.tls_port)

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the broker's loop thread (broker state is
        single-threaded) and return its result."""
        token = self.embedded._token
        return trio.from_thread.run_sync(lambda: fn(*args), trio_token=token)

    def params(
        self,
        user: str = "guest",
        password: str = "guest",
        vhost: str = "/",
        host: str | None = None,
        **overrides: Any,
    ) -> pika.ConnectionParameters:
        kwargs: dict[str, Any] = dict(
            host=host or self.host,
            port=self.port,
            virtual_host=vhost,
            credentials=pika.PlainCredentials(user, password),
            connection_attempts=1,
            socket_timeout=5,
            stack_timeout=10,
            blocked_connection_timeout=None,
            heartbeat=30,
        )
        kwargs.update(overrides)
        return pika.ConnectionParameters(**kwargs)

    def connect(self, **kw: Any) -> pika.BlockingConnection:
        return pika.BlockingConnection(self.params(**kw))

    def sessions(self) -> int:
        return int(self.call(lambda: len(self.broker.sessions)))

    def tcp_connections(self) -> int:
        return int(self.call(lambda: self.access.tcp_connections))


@pytest.fixture
def make_broker(tmp_path: Path) -> Iterator[Callable[..., SecBroker]]:
    """``make_broker(**config_overrides)`` starts an embedded broker on a
    free port with a fresh data dir; all are stopped at teardown."""
    started: list[SecBroker] = []

    def factory(**overrides: Any) -> SecBroker:
        data_dir = overrides.pop("data_dir", tmp_path / f"data{len(started)}")
        base = dict(host="127.0.0.1", port=0, data_dir=data_dir, management_port=None)
        base.update(overrides)
        config = Config(**base)  # type: ignore[arg-type]
        b = SecBroker(config)
        started.append(b)
        return b.start()

    yield factory
    for b in started:
        with contextlib.suppress(Exception):
            b.stop()


@pytest.fixture
def sec_broker(make_broker: Callable[..., SecBroker]) -> SecBroker:
    return make_broker()
