"""Bounded waits."""

from __future__ import annotations

import time
from collections.abc import Callable

# Default bound for anything that waits on a broker.
WAIT = 10.0


def wait_until(pred: Callable[[], bool], timeout: float = WAIT, step: float = 0.02) -> bool:
    """Poll ``pred`` until it holds or ``timeout`` passes; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())
