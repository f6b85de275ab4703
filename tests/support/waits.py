"""Bounded waits: the one polling loop every suite uses.

Two contracts over it. ``wait_until`` answers a question (did it happen in
time?) so a test can write ``assert wait_until(...), state`` and show the
state it saw; ``wait_for`` demands the condition and fails the test with
what it was waiting for. Either can pump a pika ``BlockingConnection``
while it waits, because pika delivers callbacks only from inside its own
I/O calls: a plain sleep would wait for a delivery that can never come.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

# Default bound for anything that waits on a broker.
WAIT = 10.0


def _poll(
    predicate: Callable[[], Any], timeout: float, interval: float, conn: Any
) -> Any:
    """``predicate``'s first truthy value, or its last value at timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        if conn is not None:
            conn.process_data_events(time_limit=interval)
        else:
            time.sleep(interval)


def wait_until(
    pred: Callable[[], Any],
    timeout: float = WAIT,
    *,
    step: float = 0.02,
    conn: Any = None,
) -> bool:
    """Poll ``pred`` until it holds or ``timeout`` passes; whether it held."""
    return bool(_poll(pred, timeout, step, conn))


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = WAIT,
    *,
    interval: float = 0.02,
    conn: Any = None,
    what: str = "condition",
) -> Any:
    """Poll ``predicate`` until truthy and return its value (pumping
    ``conn``'s I/O meanwhile); an AssertionError naming ``what`` if it is
    still falsy after ``timeout``."""
    value = _poll(predicate, timeout, interval, conn)
    if not value:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")
    return value
