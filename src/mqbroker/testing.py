"""pytest plugin: a real mqbroker for your tests.

Usage (the plugin is registered through the ``pytest11`` entry point, so
installing mqbroker is enough)::

    def test_roundtrip(mqbroker):
        conn = pika.BlockingConnection(pika.URLParameters(mqbroker.url))

Fixtures:
- ``mqbroker``: a fresh broker per test, in-process (a trio loop in a
  thread), on a free port with a temporary data dir.
- ``mqbroker_session``: one broker for the whole session (cheaper).
- ``broker``: alias of ``mqbroker`` used by mqbroker's own suite.

Set ``MQBROKER_EXTERNAL_URL=amqp://guest:guest@127.0.0.1:5672/%2F`` to run
the same tests against another broker (RabbitMQ, for differential runs).
"""

from __future__ import annotations

import os
import tempfile
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class BrokerHandle:
    host: str
    port: int
    data_dir: Path | None
    vhost: str = "/"
    user: str = "guest"
    password: str = "guest"
    management_port: int | None = None

    @property
    def url(self) -> str:
        vhost = urllib.parse.quote(self.vhost, safe="")
        return (
            f"amqp://{self.user}:{self.password}@{self.host}:{self.port}/"
            f"{vhost}"
        )

    @property
    def external(self) -> bool:
        return self.data_dir is None


def _external() -> BrokerHandle | None:
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


def _start(tmp: Path, **overrides: object) -> Iterator[BrokerHandle]:
    external = _external()
    if external is not None:
        yield external
        return
    from mqbroker.config import Config
    from mqbroker.server.embedded import EmbeddedBroker

    config = Config(host="127.0.0.1", port=0, data_dir=tmp, **overrides)  # type: ignore[arg-type]
    with EmbeddedBroker(config) as running:
        yield BrokerHandle(
            host="127.0.0.1",
            port=running.port,
            data_dir=tmp,
            management_port=running.management_port,
        )


@pytest.fixture
def mqbroker(tmp_path: Path) -> Iterator[BrokerHandle]:
    yield from _start(tmp_path / "mqbroker-data")


@pytest.fixture
def broker(mqbroker: BrokerHandle) -> BrokerHandle:
    return mqbroker


@pytest.fixture(scope="session")
def mqbroker_session() -> Iterator[BrokerHandle]:
    with tempfile.TemporaryDirectory(prefix="mqbroker-") as tmp:
        yield from _start(Path(tmp))
