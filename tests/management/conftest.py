"""Fixtures of the management suite (helpers live in mgmt_support.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from mgmt_support import Ctl, Mgmt


@pytest.fixture
def mgmt(mqbroker_management: Any) -> Iterator[Mgmt]:
    """A broker with its management API; ``mgmt.http`` is logged in."""
    if mqbroker_management.management_port is None:
        pytest.skip("the broker under test has no management listener")
    with httpx.Client(
        base_url=f"http://127.0.0.1:{mqbroker_management.management_port}",
        auth=("guest", "guest"),
        timeout=30,
    ) as client:
        yield Mgmt(mqbroker_management, client)


@pytest.fixture
def ctl(mgmt: Mgmt) -> Ctl:
    """Runs the ``mqbrokerctl`` console script against ``mgmt``."""
    return Ctl(mgmt)
