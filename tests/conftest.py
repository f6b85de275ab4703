"""Fixtures shared by every suite that talks to a broker through pika.

Each suite provides its own ``broker`` fixture (the ``mqbroker.testing``
plugin's, or an override such as tests/policies'); the fixtures here use
whichever applies to the requesting test.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pytest

from support.blocking import Cleanup, pika_params


@pytest.fixture
def connect(broker: Any) -> Iterator[Callable[..., pika.BlockingConnection]]:
    """Factory for pika BlockingConnections, all closed at teardown."""
    opened: list[pika.BlockingConnection] = []

    def factory(**overrides: Any) -> pika.BlockingConnection:
        conn = pika.BlockingConnection(pika_params(broker, **overrides))
        opened.append(conn)
        return conn

    yield factory
    for conn in opened:
        with contextlib.suppress(Exception):
            if conn.is_open:
                conn.close()


@pytest.fixture
def conn(connect: Callable[..., pika.BlockingConnection]) -> pika.BlockingConnection:
    return connect()


@pytest.fixture
def ch(conn: pika.BlockingConnection) -> Any:
    return conn.channel()


@pytest.fixture
def cleanup(broker: Any) -> Iterator[Cleanup]:
    """Register durable / shared names to delete at teardown."""
    c = Cleanup(broker)
    yield c
    c.run()
