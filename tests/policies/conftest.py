"""Fixtures for the queue-policy suite.

``broker`` is overridden here: an in-process mqbroker whose ``Broker``
object the test can reach (``broker.core``, ``broker.call(fn, ...)`` runs
``fn`` on the broker's loop thread, as the management API does), or, with
``MQBROKER_EXTERNAL_URL`` set, the external broker (RabbitMQ) for
differential runs. ``policy`` sets policies on either: through
``broker.policies`` in-process, through ``rabbitmqctl`` on RabbitMQ.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from policy_support import (
    PolicyBroker,
    start_embedded,
    unique,
)

from mqbroker.testing.handle import external as _external


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PolicyBroker]:
    external = _external()
    if external is not None:
        yield PolicyBroker(
            host=external.host,
            port=external.port,
            vhost=external.vhost,
            user=external.user,
            password=external.password,
        )
        return
    handle = start_embedded(tmp_path / "data")
    try:
        yield handle
    finally:
        handle.embedded.stop()


@pytest.fixture
def inproc(broker: PolicyBroker) -> PolicyBroker:
    """The broker, when the test needs mqbroker's internals."""
    if broker.external:
        pytest.skip("needs the in-process mqbroker")
    return broker


@dataclass
class Policies:
    broker: PolicyBroker
    names: list[str] = field(default_factory=list)

    def set(
        self,
        name: str,
        pattern: str,
        definition: dict[str, Any],
        *,
        priority: int = 0,
        apply_to: str = "all",
    ) -> None:
        self.names.append(name)
        if self.broker.external:
            _ctl(
                "set_policy", "-p", self.broker.vhost, "--priority", str(priority),
                "--apply-to", apply_to, name, pattern, json.dumps(definition),
            )
        else:
            self.broker.call(
                self.broker.core.policies.set_policy,
                self.broker.vhost, name, pattern, definition,
                priority=priority, apply_to=apply_to,
            )

    def clear(self, name: str) -> None:
        if self.broker.external:
            _ctl("clear_policy", "-p", self.broker.vhost, name)
        else:
            self.broker.call(self.broker.core.policies.clear_policy, self.broker.vhost, name)

    def clear_all(self) -> None:
        for name in self.names:
            with contextlib.suppress(Exception):
                self.clear(name)


def _ctl(*args: str) -> None:
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is needed to set policies on the external broker")
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def policy(broker: PolicyBroker) -> Iterator[Policies]:
    p = Policies(broker)
    yield p
    p.clear_all()


@pytest.fixture
def uniq() -> Callable[..., str]:
    return unique


@pytest.fixture
def scratch_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mqbroker-policies-") as tmp:
        yield Path(tmp)
