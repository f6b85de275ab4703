"""Exchanges: list, declare, delete, publish, route explain and their
bindings. Declare/delete/publish go through the command layer and the one
publish pipeline, so HTTP refuses what AMQP refuses.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from mqbroker.broker import commands as cmd
from mqbroker.broker import explain
from mqbroker.broker import messages as msgops
from mqbroker.exchanges.base import Destination
from mqbroker.management import views
from mqbroker.management.context import Management
from mqbroker.management.routing import RouteTable
from mqbroker.management.web import (
    as_bool,
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


def exchange_name(request: Request) -> str:
    name = seg(request, "name")
    return "" if name == "amq.default" else name


def exchange_of(mgmt: Management, request: Request) -> Any:
    vhost = mgmt.vhost(vhost_param(request))
    name = exchange_name(request)
    exchange = vhost.exchanges.get(name)
    if exchange is None:
        raise not_found(f"no exchange '{name}' in vhost '{vhost.name}'")
    return vhost, exchange


@routes("/api/exchanges", ["GET"])
@routes("/api/exchanges/{vhost}", ["GET"])
async def exchanges(mgmt: Management, request: Request) -> Response:
    return listing(
        request,
        [
            views.exchange_json(mgmt.broker, e)
            for v in mgmt.vhosts_of(request)
            for e in v.exchanges.values()
        ],
    )


@routes("/api/exchanges/{vhost}/{name}", ["GET", "PUT", "DELETE"])
async def exchange(mgmt: Management, request: Request) -> Response:
    if request.method == "GET":
        _, found = exchange_of(mgmt, request)
        return js(views.exchange_json(mgmt.broker, found))
    vhost = mgmt.vhost(vhost_param(request))
    name = exchange_name(request)
    if request.method == "DELETE":
        if name not in vhost.exchanges:
            raise not_found(f"no exchange '{name}' in vhost '{vhost.name}'")
        with refusals():
            cmd.delete_exchange(
                mgmt.broker, caller(request), name,
                if_unused=as_bool(request.query_params.get("if-unused")),
            )
        mgmt.broker.request_commit()
        return no_content()
    body = await json_body(request)
    existed = name in vhost.exchanges
    with refusals():
        cmd.declare_exchange(
            mgmt.broker,
            caller(request),
            name,
            str(body.get("type") or "direct"),
            durable=as_bool(body.get("durable"), True),
            auto_delete=as_bool(body.get("auto_delete")),
            internal=as_bool(body.get("internal")),
            arguments=body.get("arguments") or {},
        )
    mgmt.broker.request_commit()
    return no_content(204 if existed else 201)


@routes("/api/exchanges/{vhost}/{name}/publish", ["POST"])
async def publish(mgmt: Management, request: Request) -> Response:
    vhost, exchange = exchange_of(mgmt, request)
    body = await json_body(request)
    if "routing_key" not in body:
        raise bad_request("routing_key is required")
    encoding = body.get("payload_encoding", "string")
    payload = body.get("payload", "")
    if encoding == "base64":
        try:
            data = base64.b64decode(payload, validate=True)
        except binascii.Error:
            raise bad_request("payload is not valid base64") from None
    elif encoding == "string":
        data = str(payload).encode("utf-8")
    else:
        raise bad_request(f"unknown payload_encoding '{encoding}'")
    try:
        props = views.properties_from_json(body.get("properties"))
    except (ValueError, TypeError) as exc:
        raise bad_request(f"bad properties: {exc}") from None
    if "delivery_mode" in body and props.delivery_mode is None:
        props.delivery_mode = int(body["delivery_mode"])
    with refusals(publish=True):
        result = msgops.publish(
            mgmt.broker, vhost.name, exchange.name, str(body["routing_key"]), props, data,
            user=request.state.user,
        )
    await mgmt.wait_durable(result.epoch)
    return js({"routed": result.routed})


@routes("/api/exchanges/{vhost}/{name}/route", ["POST"])
async def route_explain(mgmt: Management, request: Request) -> Response:
    vhost, exchange = exchange_of(mgmt, request)
    body = await json_body(request)
    headers = body.get("headers")
    if headers is None and isinstance(body.get("properties"), dict):
        headers = body["properties"].get("headers")
    if headers is not None and not isinstance(headers, dict):
        raise bad_request("headers must be an object")
    return js(
        explain.explain_route(
            mgmt.broker, vhost.name, exchange.name, str(body.get("routing_key", "")), headers
        )
    )


@routes("/api/exchanges/{vhost}/{name}/bindings/source", ["GET"])
async def exchange_bindings_source(mgmt: Management, request: Request) -> Response:
    vhost, exchange = exchange_of(mgmt, request)
    return listing(
        request,
        [views.binding_json(vhost.name, exchange.name, b) for b in exchange.impl.bindings()],
    )


@routes("/api/exchanges/{vhost}/{name}/bindings/destination", ["GET"])
async def exchange_bindings_destination(mgmt: Management, request: Request) -> Response:
    vhost, exchange = exchange_of(mgmt, request)
    dest = Destination("exchange", exchange.name)
    return listing(
        request,
        [
            views.binding_json(vhost.name, source, b)
            for source, b in vhost.bindings()
            if b.destination == dest
        ],
    )

