"""The mqbroker extension that moves or replays dead-lettered messages
(``/api/queues/{vhost}/{name}/move`` and ``/replay``), in bounded batches.
"""

from __future__ import annotations

from dataclasses import asdict

from starlette.requests import Request
from starlette.responses import Response

from mqbroker.broker import commands as cmd
from mqbroker.broker import move as moves
from mqbroker.log import get_logger
from mqbroker.management.context import Management
from mqbroker.management.routing import RouteTable
from mqbroker.management.web import (
    as_bool,
    as_int,
    bad_request,
    caller,
    js,
    json_body,
    refusals,
    seg,
    vhost_param,
)

routes = RouteTable()
log = get_logger("mqbroker.management")
MAX_MOVE_BATCH = 10_000


async def move(mgmt: Management, request: Request, default_mode: str | None) -> Response:
    vhost_name, name = vhost_param(request), seg(request, "name")
    mgmt.queue(vhost_name, name)
    with refusals(detail=True):
        cmd.readable_queue(mgmt.broker, caller(request), name)
    body = await json_body(request)
    dest = body.get("destination") or {}
    if not isinstance(dest, dict):
        raise bad_request("destination must be an object")
    mode = dest.get("type") or default_mode
    if mode not in ("queue", "exchange", "origin", "first-death"):
        raise bad_request(
            "destination.type must be one of queue, exchange, origin, first-death"
        )
    if mode == "queue" and not dest.get("queue"):
        raise bad_request("destination.queue is required")
    if mode == "exchange" and dest.get("exchange") is None:
        raise bad_request("destination.exchange is required")
    exchange = dest.get("exchange")
    if exchange == "amq.default":
        exchange = ""
    with refusals(detail=True):
        if mode == "queue":
            cmd.check_write(mgmt.broker, caller(request), "exchange", "")
        elif mode == "exchange":
            cmd.check_write(mgmt.broker, caller(request), "exchange", exchange or "")
    target = moves.MoveTarget(
        mode,
        queue=dest.get("queue"),
        exchange=exchange,
        routing_key=dest.get("routing_key"),
    )
    spec = body.get("filter") or {}
    headers = spec.get("headers") or {}
    if not isinstance(headers, dict):
        raise bad_request("filter.headers must be an object")
    filt = moves.MoveFilter(
        reason=spec.get("reason"),
        headers=tuple(sorted((str(k), str(v)) for k, v in headers.items())),
    )
    count = as_int(body.get("count"), 1000) or 0
    result = moves.move_batch(
        mgmt.broker,
        vhost_name,
        name,
        target,
        count=max(0, min(count, MAX_MOVE_BATCH)),
        after=as_int(body.get("after"), 0) or 0,
        filter=filt if (filt.reason or filt.headers) else None,
        dry_run=as_bool(body.get("dry_run")),
        stamp=as_bool(body.get("stamp"), True),
    )
    durable = await mgmt.wait_durable(result.epoch)
    out = asdict(result)
    out["durable"] = durable
    if result.moved:
        log.info(
            "management.moved",
            vhost=vhost_name,
            queue=name,
            target=mode,
            moved=result.moved,
            dry_run=as_bool(body.get("dry_run")),
            user=request.state.user,
        )
    return js(out)


@routes("/api/queues/{vhost}/{name}/move", ["POST"])
async def move_messages(mgmt: Management, request: Request) -> Response:
    return await move(mgmt, request, None)


@routes("/api/queues/{vhost}/{name}/replay", ["POST"])
async def replay_messages(mgmt: Management, request: Request) -> Response:
    return await move(mgmt, request, "first-death")

