"""Queues: list, declare, delete, purge, bindings, get and browse; every
change through the command layer with the caller's permissions.
"""

from __future__ import annotations

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
    as_int,
    bad_request,
    caller,
    js,
    json_body,
    listing,
    no_content,
    refusals,
    seg,
    vhost_param,
)

routes = RouteTable()


@routes("/api/queues", ["GET"])
@routes("/api/queues/{vhost}", ["GET"])
async def queues(mgmt: Management, request: Request) -> Response:
    return listing(request, mgmt.queue_rows(mgmt.vhosts_of(request)))


@routes("/api/queues/{vhost}/{name}", ["GET", "PUT", "DELETE"])
async def queue(mgmt: Management, request: Request) -> Response:
    vhost_name, name = vhost_param(request), seg(request, "name")
    vhost = mgmt.vhost(vhost_name)
    if request.method == "GET":
        found = mgmt.queue(vhost_name, name)
        return js(
            views.queue_json(
                mgmt.stats,
                vhost,
                found,
                dl_sources=explain.dead_letter_targets(vhost),
            )
        )
    if request.method == "DELETE":
        mgmt.queue(vhost_name, name)
        query = request.query_params
        with refusals():
            cmd.delete_queue(
                mgmt.broker,
                caller(request),
                name,
                if_unused=as_bool(query.get("if-unused")),
                if_empty=as_bool(query.get("if-empty")),
            )
        mgmt.broker.request_commit()
        mgmt.broker.run_dispatch()
        return no_content()
    body = await json_body(request)
    existed = name in vhost.queues
    arguments = dict(body.get("arguments") or {})
    with refusals():
        cmd.declare_queue(
            mgmt.broker,
            caller(request),
            name,
            durable=as_bool(body.get("durable"), True),
            auto_delete=as_bool(body.get("auto_delete")),
            arguments=arguments,
        )
    mgmt.broker.request_commit()
    return no_content(204 if existed else 201)


@routes("/api/queues/{vhost}/{name}/contents", ["DELETE"])
async def purge(mgmt: Management, request: Request) -> Response:
    found = mgmt.queue(vhost_param(request), seg(request, "name"))
    with refusals():
        cmd.purge_queue(mgmt.broker, caller(request), found.name)
    mgmt.broker.request_commit()
    return no_content()


@routes("/api/queues/{vhost}/{name}/bindings", ["GET"])
async def queue_bindings(mgmt: Management, request: Request) -> Response:
    vhost_name, name = vhost_param(request), seg(request, "name")
    mgmt.queue(vhost_name, name)
    dest = Destination("queue", name)
    return listing(
        request,
        [
            views.binding_json(vhost_name, source, b)
            for source, b in mgmt.vhost(vhost_name).bindings()
            if b.destination == dest
        ],
    )


@routes("/api/queues/{vhost}/{name}/get", ["POST"])
async def get(mgmt: Management, request: Request) -> Response:
    found = mgmt.queue(vhost_param(request), seg(request, "name"))
    body = await json_body(request)
    ackmode = str(body.get("ackmode", "ack_requeue_true"))
    if ackmode not in msgops.ACKMODES:
        raise bad_request(f"unknown ackmode '{ackmode}'")
    encoding = str(body.get("encoding", "auto"))
    if encoding not in ("auto", "base64"):
        raise bad_request(f"unknown encoding '{encoding}'")
    count = as_int(body.get("count"), 1) or 1
    truncate = as_int(body.get("truncate"))
    with refusals(detail=True):
        cmd.readable_queue(mgmt.broker, caller(request), found.name)
    got, epoch = msgops.get_messages(mgmt.broker, found, count, ackmode)
    await mgmt.wait_durable(epoch)
    out = []
    for item in got:
        row = views.message_json(item.message, encoding=encoding, truncate=truncate)
        row["redelivered"] = item.redelivered
        row["message_count"] = item.message_count
        out.append(row)
    return js(out)


@routes("/api/queues/{vhost}/{name}/messages", ["GET"])
async def browse(mgmt: Management, request: Request) -> Response:
    found = mgmt.queue(vhost_param(request), seg(request, "name"))
    query = request.query_params
    encoding = query.get("encoding", "auto")
    truncate = as_int(query.get("truncate"), 50_000)
    items, cursor = msgops.browse(
        mgmt.broker,
        found,
        after=as_int(query.get("after"), 0) or 0,
        limit=min(as_int(query.get("limit"), 50) or 50, 1000),
        state=query.get("state", "ready"),
    )
    rows = []
    for item in items:
        row = views.message_json(item.message, encoding=encoding, truncate=truncate)
        row.update(
            {
                "seq": item.seq,
                "state": item.state,
                "redelivered": item.redelivered,
                "delivery_count": item.delivery_count,
            }
        )
        if item.consumer_tag is not None:
            row["consumer_tag"] = item.consumer_tag
        if item.channel is not None:
            row["channel"] = item.channel
        rows.append(row)
    return js({"items": rows, "next": cursor, "messages_ready": found.message_count})
