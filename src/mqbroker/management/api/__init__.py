"""The HTTP API, one module per resource; ``TABLES`` is the whole route
table in matching order (more specific paths of a resource first, as each
module lists them)."""

from __future__ import annotations

from mqbroker.management.api import (
    access,
    bindings,
    connections,
    exchanges,
    health,
    move,
    overview,
    policies,
    queues,
    streams,
)
from mqbroker.management.routing import RouteTable

TABLES: tuple[RouteTable, ...] = (
    overview.routes,
    access.routes,
    policies.routes,
    connections.routes,
    exchanges.routes,
    queues.routes,
    move.routes,
    bindings.routes,
    health.routes,
    streams.routes,
)
