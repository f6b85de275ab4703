"""Policies and definitions export/import. Imported topology goes
through the command layer (``Caller.internal``), so an import validates
exactly like an AMQP declare.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from mqbroker.broker import commands as cmd
from mqbroker.broker import definitions as defs
from mqbroker.broker.commands import Caller
from mqbroker.exchanges.base import Destination
from mqbroker.management import views
from mqbroker.management.context import Management
from mqbroker.management.routing import ADMIN, POLICY, RouteTable
from mqbroker.management.web import (
    as_bool,
    as_int,
    bad_request,
    js,
    json_body,
    listing,
    no_content,
    not_found,
    seg,
    vhost_param,
)

routes = RouteTable()


def policy_rows(mgmt: Management, vhost: str | None = None) -> list[dict[str, Any]]:
    return [views.jsonable(p) for p in defs.list_policies(mgmt.broker, vhost)]


@routes("/api/policies", ["GET"])
async def policies(mgmt: Management, request: Request) -> Response:
    return listing(request, policy_rows(mgmt, ))


@routes("/api/policies/{vhost}", ["GET"])
async def vhost_policies(mgmt: Management, request: Request) -> Response:
    name = vhost_param(request)
    mgmt.vhost(name)
    return listing(request, policy_rows(mgmt, name))


@routes("/api/policies/{vhost}/{name}", ["GET", "PUT", "DELETE"], write_tags=POLICY)
async def policy(mgmt: Management, request: Request) -> Response:
    vhost_name, name = vhost_param(request), seg(request, "name")
    mgmt.vhost(vhost_name)
    found = [p for p in policy_rows(mgmt, vhost_name) if p.get("name") == name]
    if request.method == "GET":
        if not found:
            raise not_found(f"no policy '{name}' in vhost '{vhost_name}'")
        return js(found[0])
    if request.method == "DELETE":
        if not defs.clear_policy(mgmt.broker, vhost_name, name):
            raise not_found(f"no policy '{name}' in vhost '{vhost_name}'")
        return no_content()
    body = await json_body(request)
    if "pattern" not in body or "definition" not in body:
        raise bad_request("pattern and definition are required")
    definition = body["definition"]
    if isinstance(definition, str):
        try:
            definition = json.loads(definition)
        except ValueError:
            raise bad_request("definition must be a JSON object") from None
    if not isinstance(definition, dict):
        raise bad_request("definition must be a JSON object")
    apply_to = body.get("apply-to") or "all"
    if apply_to not in ("all", "queues", "exchanges", "classic_queues", "quorum_queues", "streams"):
        raise bad_request(f"invalid apply-to '{apply_to}'")
    defs.set_policy(
        mgmt.broker,
        vhost_name,
        name,
        str(body["pattern"]),
        definition,
        priority=as_int(body.get("priority"), 0) or 0,
        apply_to=apply_to,
    )
    return no_content(204 if found else 201)

# --------------------------------------------------- definitions


@routes("/api/definitions", ["GET", "POST"], read_tags=ADMIN, write_tags=ADMIN)
async def definitions(mgmt: Management, request: Request) -> Response:
    if request.method == "GET":
        return js(views.export_definitions(mgmt.broker))
    return await import_definitions(mgmt, request, None)


@routes("/api/definitions/{vhost}", ["GET", "POST"], read_tags=ADMIN, write_tags=ADMIN)
async def vhost_definitions(mgmt: Management, request: Request) -> Response:
    name = vhost_param(request)
    mgmt.vhost(name)
    if request.method == "GET":
        return js(views.export_definitions(mgmt.broker, name))
    return await import_definitions(mgmt, request, name)


async def import_definitions(mgmt: Management, request: Request, only_vhost: str | None) -> Response:
    body = await json_body(request)

    def vh(record: dict[str, Any]) -> str:
        return only_vhost if only_vhost is not None else str(record.get("vhost", "/"))

    if only_vhost is None:
        for record in body.get("vhosts") or []:
            defs.add_vhost(mgmt.broker, str(record["name"]))
        for record in body.get("users") or []:
            name = str(record["name"])
            tags = record.get("tags") or []
            if isinstance(tags, str):
                tags = [t for t in tags.split(",") if t]
            if "password" in record:
                defs.put_user(mgmt.broker, name, password=str(record["password"]), tags=tags)
            elif str(record.get("password_hash", "")).startswith("pbkdf2-sha256$"):
                defs.put_user(
                    mgmt.broker, name, password_hash=str(record["password_hash"]), tags=tags
                )
        for record in body.get("permissions") or []:
            if record.get("user") in mgmt.broker.users.users and record.get("vhost") in mgmt.broker.vhosts:
                defs.set_permissions(
                    mgmt.broker,
                    str(record["user"]),
                    str(record["vhost"]),
                    str(record.get("configure", "")),
                    str(record.get("write", "")),
                    str(record.get("read", "")),
                )
        for record in body.get("topic_permissions") or []:
            if record.get("user") in mgmt.broker.users.users and record.get("vhost") in mgmt.broker.vhosts:
                defs.set_topic_permission(
                    mgmt.broker,
                    str(record["user"]),
                    str(record["vhost"]),
                    str(record.get("exchange", "")),
                    str(record.get("write", "")),
                    str(record.get("read", "")),
                )
    # Imported definitions are the mgmt.broker's own (an administrator's
    # endpoint): the command layer without a user, as RabbitMQ does.
    for record in body.get("exchanges") or []:
        mgmt.vhost(vh(record))
        cmd.declare_exchange(
            mgmt.broker,
            Caller.internal(vh(record)),
            str(record["name"]),
            str(record.get("type", "direct")),
            durable=as_bool(record.get("durable"), True),
            auto_delete=as_bool(record.get("auto_delete")),
            internal=as_bool(record.get("internal")),
            arguments=record.get("arguments") or {},
        )
    for record in body.get("queues") or []:
        mgmt.vhost(vh(record))
        cmd.declare_queue(
            mgmt.broker,
            Caller.internal(vh(record)),
            str(record["name"]),
            durable=as_bool(record.get("durable"), True),
            auto_delete=as_bool(record.get("auto_delete")),
            arguments=record.get("arguments") or {},
        )
    for record in body.get("bindings") or []:
        mgmt.vhost(vh(record))
        dest = (
            Destination("exchange", str(record["destination"]))
            if record.get("destination_type") == "exchange"
            else Destination("queue", str(record["destination"]))
        )
        cmd.bind(
            mgmt.broker,
            Caller.internal(vh(record)),
            str(record["source"]),
            dest,
            str(record.get("routing_key", "")),
            record.get("arguments") or {},
        )
    for record in body.get("policies") or []:
        defs.set_policy(
            mgmt.broker,
            vh(record),
            str(record["name"]),
            str(record.get("pattern", "")),
            record.get("definition") or {},
            priority=as_int(record.get("priority"), 0) or 0,
            apply_to=record.get("apply-to") or "all",
        )
    mgmt.broker.request_commit()
    return no_content(204)

# --------------------------------------------------- connections
