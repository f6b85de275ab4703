"""Bindings between exchanges and queues/exchanges, with RabbitMQ's
``properties_key`` addressing; bind/unbind through the command layer.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from mqbroker.broker import commands as cmd
from mqbroker.exchanges.base import Destination
from mqbroker.management import views
from mqbroker.management.context import Management
from mqbroker.management.routing import RouteTable
from mqbroker.management.web import (
    bad_request,
    caller,
    js,
    json_body,
    listing,
    no_content,
    not_found,
    refusals,
    seg,
    vhost_param,
)

routes = RouteTable()


@routes("/api/bindings", ["GET"])
@routes("/api/bindings/{vhost}", ["GET"])
async def bindings(mgmt: Management, request: Request) -> Response:
    return listing(
        request,
        [
            views.binding_json(v.name, source, b)
            for v in mgmt.vhosts_of(request)
            for source, b in v.bindings()
        ],
    )


def binding_ends(mgmt: Management, request: Request) -> tuple[Any, str, Destination]:
    vhost = mgmt.vhost(vhost_param(request))
    source = seg(request, "source")
    source = "" if source == "amq.default" else source
    kind = {"q": "queue", "e": "exchange"}.get(request.path_params["dtype"])
    if kind is None:
        raise not_found()
    dest = Destination(kind, seg(request, "dest"))  # type: ignore[arg-type]
    if source not in vhost.exchanges:
        raise not_found(f"no exchange '{source}' in vhost '{vhost.name}'")
    if kind == "queue" and dest.name not in vhost.queues:
        raise not_found(f"no queue '{dest.name}' in vhost '{vhost.name}'")
    if kind == "exchange" and dest.name not in vhost.exchanges:
        raise not_found(f"no exchange '{dest.name}' in vhost '{vhost.name}'")
    return vhost, source, dest


def bindings_between(vhost: Any, source: str, dest: Destination) -> list[dict[str, Any]]:
    return [
        views.binding_json(vhost.name, source, b)
        for b in vhost.exchanges[source].impl.bindings()
        if b.destination == dest
    ]


@routes("/api/bindings/{vhost}/e/{source}/{dtype}/{dest}", ["GET", "POST"])
async def binding_list(mgmt: Management, request: Request) -> Response:
    vhost, source, dest = binding_ends(mgmt, request)
    if request.method == "GET":
        return listing(request, bindings_between(vhost, source, dest))
    body = await json_body(request)
    key = str(body.get("routing_key", ""))
    arguments = body.get("arguments") or {}
    if not isinstance(arguments, dict):
        raise bad_request("arguments must be an object")
    with refusals():
        cmd.bind(mgmt.broker, caller(request), source, dest, key, arguments)
    mgmt.broker.request_commit()
    props = views.properties_key(key, arguments)
    return no_content(201, headers={"Location": urllib.parse.quote(props, safe="~")})


@routes("/api/bindings/{vhost}/e/{source}/{dtype}/{dest}/{props}", ["GET", "DELETE"])
async def binding(mgmt: Management, request: Request) -> Response:
    vhost, source, dest = binding_ends(mgmt, request)
    props = seg(request, "props")
    for row in bindings_between(vhost, source, dest):
        if row["properties_key"] == props:
            break
    else:
        raise not_found("no such binding")
    if request.method == "GET":
        return js(row)
    for b in vhost.exchanges[source].impl.bindings():
        if b.destination == dest and views.properties_key(b.routing_key, b.args_dict()) == props:
            with refusals():
                cmd.unbind(
                    mgmt.broker, caller(request), source, dest, b.routing_key, b.args_dict()
                )
            break
    mgmt.broker.request_commit()
    return no_content()

