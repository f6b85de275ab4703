"""Virtual hosts, users, permissions and topic permissions: the
administrator's endpoints, all through ``broker/definitions.py`` so AMQP,
HTTP and definitions import change access state the same way.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from mqbroker.broker import definitions as defs
from mqbroker.management import views
from mqbroker.management.context import Management
from mqbroker.management.routing import ADMIN, RouteTable
from mqbroker.management.web import (
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


def vhost_json(vhost: Any) -> dict[str, Any]:
    ready = sum(q.message_count for q in vhost.queues.values())
    unacked = sum(q.unacked for q in vhost.queues.values())
    return {
        "name": vhost.name,
        "description": "",
        "tags": [],
        "tracing": False,
        "messages": ready + unacked,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
        "cluster_state": {views.NODE: "running"},
    }


@routes("/api/vhosts", ["GET"])
async def vhosts(mgmt: Management, request: Request) -> Response:
    return listing(request, [vhost_json(v) for v in mgmt.vhosts_of(request)])


@routes("/api/vhosts/{vhost}", ["GET", "PUT", "DELETE"], write_tags=ADMIN)
async def vhost(mgmt: Management, request: Request) -> Response:
    name = vhost_param(request)
    if request.method == "GET":
        return js(vhost_json(mgmt.vhost(name)))
    if request.method == "PUT":
        created = defs.add_vhost(mgmt.broker, name)
        return no_content(201 if created else 204)
    mgmt.vhost(name)
    defs.delete_vhost(mgmt.broker, name)
    return no_content()

# --------------------------------------------------------- users


@routes("/api/users", ["GET"], read_tags=ADMIN)
async def users(mgmt: Management, request: Request) -> Response:
    return listing(request, [views.user_json(u) for u in mgmt.broker.users.users.values()])


@routes("/api/users/{user}", ["GET", "PUT", "DELETE"], read_tags=ADMIN, write_tags=ADMIN)
async def user(mgmt: Management, request: Request) -> Response:
    name = seg(request, "user")
    existing = mgmt.broker.users.users.get(name)
    if request.method == "GET":
        if existing is None:
            raise not_found(f"no user '{name}'")
        return js(views.user_json(existing))
    if request.method == "DELETE":
        if not defs.delete_user(mgmt.broker, name):
            raise not_found(f"no user '{name}'")
        return no_content()
    body = await json_body(request)
    tags = body.get("tags")
    if isinstance(tags, str):
        tags = [t.strip() for t in tags.split(",") if t.strip()]
    password = body.get("password")
    created = defs.put_user(
        mgmt.broker,
        name,
        password=str(password) if password is not None else None,
        password_hash=body.get("password_hash"),
        tags=tags,
    )
    return no_content(201 if created else 204)

# --------------------------------------------------- permissions


@routes("/api/permissions", ["GET"], read_tags=ADMIN)
async def permissions(mgmt: Management, request: Request) -> Response:
    return listing(request, defs.list_permissions(mgmt.broker))


@routes("/api/permissions/{vhost}/{user}", ["GET", "PUT", "DELETE"], read_tags=ADMIN, write_tags=ADMIN)
async def permission(mgmt: Management, request: Request) -> Response:
    vhost_name, user_name = vhost_param(request), seg(request, "user")
    mgmt.vhost(vhost_name)
    if user_name not in mgmt.broker.users.users:
        raise not_found(f"no user '{user_name}'")
    if request.method == "GET":
        rows = defs.list_permissions(mgmt.broker, user=user_name, vhost=vhost_name)
        if not rows:
            raise not_found(f"no permissions for '{user_name}' in '{vhost_name}'")
        return js(rows[0])
    if request.method == "DELETE":
        defs.clear_permissions(mgmt.broker, user_name, vhost_name)
        return no_content()
    body = await json_body(request)
    existed = bool(defs.list_permissions(mgmt.broker, user=user_name, vhost=vhost_name))
    defs.set_permissions(
        mgmt.broker,
        user_name,
        vhost_name,
        str(body.get("configure", "")),
        str(body.get("write", "")),
        str(body.get("read", "")),
    )
    return no_content(204 if existed else 201)


@routes("/api/users/{user}/permissions", ["GET"], read_tags=ADMIN)
async def user_permissions(mgmt: Management, request: Request) -> Response:
    return js(defs.list_permissions(mgmt.broker, user=seg(request, "user")))


@routes("/api/vhosts/{vhost}/permissions", ["GET"], read_tags=ADMIN)
async def vhost_permissions(mgmt: Management, request: Request) -> Response:
    return js(defs.list_permissions(mgmt.broker, vhost=vhost_param(request)))


@routes("/api/topic-permissions", ["GET"], read_tags=ADMIN)
async def topic_permissions(mgmt: Management, request: Request) -> Response:
    return listing(request, defs.list_topic_permissions(mgmt.broker))


@routes(
    "/api/topic-permissions/{vhost}/{user}", ["GET", "PUT", "DELETE"],
    read_tags=ADMIN, write_tags=ADMIN,
)
async def topic_permission(mgmt: Management, request: Request) -> Response:
    vhost_name, user_name = vhost_param(request), seg(request, "user")
    mgmt.vhost(vhost_name)
    if user_name not in mgmt.broker.users.users:
        raise not_found(f"no user '{user_name}'")
    rows = defs.list_topic_permissions(mgmt.broker, user=user_name, vhost=vhost_name)
    if request.method == "GET":
        if not rows:
            raise not_found()
        return js(rows)
    if request.method == "DELETE":
        exchange = request.query_params.get("exchange")
        if not defs.clear_topic_permissions(mgmt.broker, user_name, vhost_name, exchange):
            raise not_found()
        return no_content()
    body = await json_body(request)
    missing = [k for k in ("exchange", "write", "read") if k not in body]
    if missing:
        raise bad_request(
            "[" + ",".join(f"{{key_missing,{k}}}" for k in missing) + "]"
        )
    exchange = str(body["exchange"])
    existed = any(r["exchange"] == exchange for r in rows)
    defs.set_topic_permission(
        mgmt.broker, user_name, vhost_name, exchange, str(body["write"]), str(body["read"])
    )
    return no_content(204 if existed else 201)


@routes("/api/users/{user}/topic-permissions", ["GET"], read_tags=ADMIN)
async def user_topic_permissions(mgmt: Management, request: Request) -> Response:
    return js(defs.list_topic_permissions(mgmt.broker, user=seg(request, "user")))


@routes("/api/vhosts/{vhost}/topic-permissions", ["GET"], read_tags=ADMIN)
async def vhost_topic_permissions(mgmt: Management, request: Request) -> Response:
    return js(defs.list_topic_permissions(mgmt.broker, vhost=vhost_param(request)))

# ------------------------------------------------------ policies
