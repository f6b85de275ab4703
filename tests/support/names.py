"""Unique names for queues and exchanges. The pika suites also run against
one shared external broker (``MQBROKER_EXTERNAL_URL``), so every name a
test declares must be its own; the suite prefix tells whose a leftover
is."""

from __future__ import annotations

import uuid


def unique_name(prefix: str = "t", suite: str = "itest") -> str:
    return f"{suite}.{prefix}.{uuid.uuid4().hex[:12]}"
