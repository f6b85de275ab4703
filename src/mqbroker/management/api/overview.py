"""The overview, node and identity endpoints (``/api/overview``, ``/api/nodes``, ``/api/whoami``):
read-only views of the broker for the dashboard and for RabbitMQ's tools.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from mqbroker.management import views
from mqbroker.management.context import Management
from mqbroker.management.routing import RouteTable
from mqbroker.management.web import (
    js,
    not_found,
    seg,
)

routes = RouteTable()


@routes("/api/overview", ["GET"])
async def overview(mgmt: Management, request: Request) -> Response:
    return js(views.overview_json(mgmt.stats, mgmt.listeners()))


@routes("/api/cluster-name", ["GET"])
async def cluster_name(mgmt: Management, request: Request) -> Response:
    return js({"name": "mqbroker"})


@routes("/api/whoami", ["GET"])
async def whoami(mgmt: Management, request: Request) -> Response:
    user = mgmt.broker.users.users[request.state.user]
    return js({"name": user.name, "tags": list(user.tags)})


@routes("/api/extensions", ["GET"])
async def extensions(mgmt: Management, request: Request) -> Response:
    return js([])


def node_json(mgmt: Management) -> dict[str, Any]:
    import psutil  # type: ignore[import-untyped]

    try:
        mem = psutil.Process().memory_info().rss
    except (psutil.Error, OSError):  # pragma: no cover
        mem = 0
    return {
        "name": views.NODE,
        "type": "disc",
        "running": True,
        "mem_used": mem,
        "uptime": int((time.time() - mgmt.broker.started_at) * 1000),
        "mem_alarm": False,
        "disk_free_alarm": False,
    }


@routes("/api/nodes", ["GET"])
async def nodes(mgmt: Management, request: Request) -> Response:
    return js([node_json(mgmt)])


@routes("/api/nodes/{node}", ["GET"])
async def node(mgmt: Management, request: Request) -> Response:
    if seg(request, "node") != views.NODE:
        raise not_found()
    return js(node_json(mgmt))


@routes("/api/mqbroker/history", ["GET"])
async def history(mgmt: Management, request: Request) -> Response:
    return js(list(mgmt.stats.history))

# -------------------------------------------------------- vhosts


@routes("/api/cluster", ["GET"])
async def cluster(mgmt: Management, request: Request) -> Response:
    """A cluster's leader answers with its nodes (followers relay this
    request to it); a single node reports itself as a one-node cluster."""
    status = mgmt.broker.cluster_status
    if status is not None:
        return js(status())
    return js({
        "leader": views.NODE,
        "nodes": [{
            "name": views.NODE, "role": "leader", "in_sync": True, "connected": True,
            "lag_bytes": 0, "amqp": None, "http": None,
        }],
    })
