"""Shared helpers for the integration suite.

Every test here talks to a real AMQP 0-9-1 broker through the ``broker``
fixture (mqbroker in-process, or any external broker when
``MQBROKER_EXTERNAL_URL`` is set, e.g. RabbitMQ for differential runs).

Because an external broker is shared by every test, all names are unique
(see ``uniq``) and everything a test creates is either exclusive /
auto-delete or registered with ``cleanup`` so that it is deleted at
teardown.

Nothing here blocks without a bound: pika calls go through
``process_data_events(time_limit=...)`` loops with deadlines, raw sockets
have timeouts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from itest_support import assert_broker_healthy

from support.names import unique_name
from support.raw import RawClient


@pytest.fixture
def uniq() -> Callable[..., str]:
    """``uniq("queue")`` -> ``"itest.queue.<12 hex>"``."""
    return unique_name


@pytest.fixture
def healthy(broker: Any) -> Callable[[], None]:
    return lambda: assert_broker_healthy(broker)


@pytest.fixture
def raw(broker: Any) -> Iterator[Callable[..., RawClient]]:
    opened: list[RawClient] = []

    def factory(timeout: float = 5.0) -> RawClient:
        r = RawClient.for_broker(broker, timeout)
        opened.append(r)
        return r

    yield factory
    for r in opened:
        r.close()
