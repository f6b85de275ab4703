"""Health checks and the aliveness test RabbitMQ's tooling calls.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from mqbroker.broker import messages as msgops
from mqbroker.management import views
from mqbroker.management.context import Management
from mqbroker.management.routing import RouteTable
from mqbroker.management.web import (
    js,
    vhost_param,
)

routes = RouteTable()


def alarms(mgmt: Management) -> list[str]:
    found = getattr(mgmt.broker, "alarms", None)
    return sorted(str(a) for a in found) if found else []


@routes("/api/health/checks/alarms", ["GET"])
@routes("/api/health/checks/local-alarms", ["GET"])
async def health_alarms(mgmt: Management, request: Request) -> Response:
    active = alarms(mgmt)
    if active:
        return js(
            {"status": "failed", "reason": "resource alarm(s) in effect", "alarms": active},
            503,
        )
    return js({"status": "ok"})


@routes("/api/health/checks/virtual-hosts", ["GET"])
async def health_vhosts(mgmt: Management, request: Request) -> Response:
    return js({"status": "ok"})


@routes("/api/aliveness-test/{vhost}", ["GET"])
async def aliveness(mgmt: Management, request: Request) -> Response:
    vhost = mgmt.vhost(vhost_param(request))
    queue = vhost.declare_queue("aliveness-test", owner=None, durable=False)
    props = views.properties_from_json({})
    msgops.publish(mgmt.broker, vhost.name, "", queue.name, props, b"test_message")
    got, _ = msgops.get_messages(mgmt.broker, queue, 1, "ack_requeue_false")
    if not got or got[0].message.body != b"test_message":
        return js({"status": "failed", "reason": "message did not come back"}, 503)
    return js({"status": "ok"})
