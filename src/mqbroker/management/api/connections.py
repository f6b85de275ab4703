"""Connections, channels and consumers: what a user may see (all of
them for administrator and monitoring, else their own, as RabbitMQ), and
closing a connection from the API.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from mqbroker.broker import definitions as defs
from mqbroker.management import views
from mqbroker.management.context import Management
from mqbroker.management.routing import RouteTable
from mqbroker.management.web import (
    js,
    listing,
    no_content,
    not_found,
    seg,
    vhost_param,
)

routes = RouteTable()


@routes("/api/connections", ["GET"])
async def connections(mgmt: Management, request: Request) -> Response:
    return listing(request, [views.connection_json(mgmt.stats, s) for s in mgmt.visible_sessions(request)])


@routes("/api/vhosts/{vhost}/connections", ["GET"])
async def vhost_connections(mgmt: Management, request: Request) -> Response:
    vhost = mgmt.vhost(vhost_param(request))
    return listing(
        request,
        [views.connection_json(mgmt.stats, s) for s in mgmt.visible_sessions(request) if s.vhost is vhost],
    )


@routes("/api/connections/{name}", ["GET", "DELETE"])
async def connection(mgmt: Management, request: Request) -> Response:
    session = mgmt.session(seg(request, "name"))
    if session not in mgmt.visible_sessions(request):
        raise not_found(f"no connection '{seg(request, 'name')}'")
    if request.method == "GET":
        return js(views.connection_json(mgmt.stats, session))
    reason = request.headers.get("x-reason") or "Closed via management plugin"
    defs.close_session(mgmt.broker, session, reason)
    return no_content()


@routes("/api/connections/{name}/channels", ["GET"])
async def connection_channels(mgmt: Management, request: Request) -> Response:
    session = mgmt.session(seg(request, "name"))
    if session not in mgmt.visible_sessions(request):
        raise not_found(f"no connection '{seg(request, 'name')}'")
    return listing(
        request,
        [views.channel_json(mgmt.broker, session, c) for c in session.channels.values()],
    )


def all_channels(mgmt: Management, request: Request, vhost: Any = None) -> list[dict[str, Any]]:
    return [
        views.channel_json(mgmt.broker, s, c)
        for s in mgmt.visible_sessions(request)
        if vhost is None or s.vhost is vhost
        for c in s.channels.values()
    ]


@routes("/api/channels", ["GET"])
async def channels(mgmt: Management, request: Request) -> Response:
    return listing(request, all_channels(mgmt, request))


@routes("/api/vhosts/{vhost}/channels", ["GET"])
async def vhost_channels(mgmt: Management, request: Request) -> Response:
    return listing(request, all_channels(mgmt, request, mgmt.vhost(vhost_param(request))))


@routes("/api/channels/{name}", ["GET"])
async def channel(mgmt: Management, request: Request) -> Response:
    name = seg(request, "name")
    for row in all_channels(mgmt, request):
        if row["name"] == name:
            return js(row)
    raise not_found(f"no channel '{name}'")


@routes("/api/consumers", ["GET"])
async def consumers(mgmt: Management, request: Request) -> Response:
    return listing(request, consumer_rows(mgmt, request, None))


@routes("/api/consumers/{vhost}", ["GET"])
async def vhost_consumers(mgmt: Management, request: Request) -> Response:
    return listing(request, consumer_rows(mgmt, request, mgmt.vhost(vhost_param(request))))


def consumer_rows(mgmt: Management, request: Request, vhost: Any) -> list[dict[str, Any]]:
    return [
        views.consumer_json(mgmt.broker, s, consumer)
        for s in mgmt.visible_sessions(request)
        if vhost is None or s.vhost is vhost
        for c in s.channels.values()
        for consumer in c.consumers.values()
    ]

