"""Streams and consumer groups (mqbroker extensions): per stream its
offsets, size and retention; per group and partition its committed
offset, lag and owner; and resetting a group's offset."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from mqbroker.broker import streams_view as sv
from mqbroker.management.context import Management
from mqbroker.management.routing import ADMIN, RouteTable
from mqbroker.management.web import (
    bad_request,
    js,
    json_body,
    listing,
    refusals,
    seg,
    vhost_param,
)

routes = RouteTable()


@routes("/api/streams", ["GET"])
@routes("/api/streams/{vhost}", ["GET"])
async def streams(mgmt: Management, request: Request) -> Response:
    names = {v.name for v in mgmt.vhosts_of(request)}
    return listing(request, [r for r in sv.stream_rows(mgmt.broker) if r["vhost"] in names])


@routes("/api/stream-groups", ["GET"])
@routes("/api/stream-groups/{vhost}", ["GET"])
async def groups(mgmt: Management, request: Request) -> Response:
    names = {v.name for v in mgmt.vhosts_of(request)}
    return listing(request, [r for r in sv.group_rows(mgmt.broker) if r["vhost"] in names])


# Moving a group's committed offset rewrites what its consumers will
# read: an administrator's operation, as definitions and users are.
@routes("/api/stream-groups/{vhost}/{group}/reset", ["POST"], write_tags=ADMIN)
async def reset(mgmt: Management, request: Request) -> Response:
    vhost = mgmt.vhost(vhost_param(request))
    body = await json_body(request)
    stream, to = body.get("stream"), body.get("to")
    if not isinstance(stream, str) or to is None:
        raise bad_request("stream and to are required")
    with refusals():
        offset = sv.reset_group(mgmt.broker, vhost, seg(request, "group"), stream, to)
    await mgmt.wait_durable(mgmt.broker.write_epoch)
    return js({"group": seg(request, "group"), "stream": stream, "committed_offset": offset})
