"""The HTTP management listener: RabbitMQ's management API subset, the
mqbroker extensions (move/replay, browse, route explain), ``/metrics`` and
the dashboard, served by hypercorn's trio worker inside the broker's loop.

Strategy: the ASGI app (Starlette) runs as tasks of the broker's own trio
loop, so a handler reads and changes broker state directly, between two
awaits, exactly like a connection task does; no locks, no threads. Every
endpoint is ``async def`` (Starlette would run a plain ``def`` in a worker
thread, which must never touch the broker). A handler that changed durable
state waits for the group commit that holds its writes before it answers.

Paths use RabbitMQ's conventions: names are percent-encoded path segments
(the default vhost is ``%2F``), so routing matches on the raw path and each
segment is decoded once.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict
from functools import partial
from importlib import resources
from typing import Any

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from mqbroker import errors
from mqbroker.broker import commands as cmd
from mqbroker.broker import definitions as defs
from mqbroker.broker import explain
from mqbroker.broker import messages as msgops
from mqbroker.broker import move as moves
from mqbroker.broker.broker import Broker
from mqbroker.broker.commands import Caller
from mqbroker.config import Config
from mqbroker.exchanges.base import Destination
from mqbroker.log import get_logger
from mqbroker.management import metrics, views
from mqbroker.queues.queue import Queue

log = get_logger("mqbroker.management")

Endpoint = Callable[[Request], Awaitable[Response]]
SAMPLE_INTERVAL_S = 1.0
DURABLE_WAIT_S = 30.0
MAX_MOVE_BATCH = 10_000


class HTTPError(Exception):
    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.error = error
        self.reason = reason


def not_found(reason: str = "Not Found") -> HTTPError:
    return HTTPError(404, "Object Not Found", reason)


def bad_request(reason: str) -> HTTPError:
    return HTTPError(400, "bad_request", reason)


def js(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(data, default=str, ensure_ascii=False),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def no_content(status: int = 204, headers: dict[str, str] | None = None) -> Response:
    return Response(b"", status_code=status, headers=headers)


def as_bool(value: Any, default: bool = False) -> bool:
    if value is None:
        return default
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "on")
    return bool(value)


def as_int(value: Any, default: int | None = None) -> int | None:
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise bad_request(f"not an integer: {value!r}") from None


def caller(request: Request) -> Caller:
    """The HTTP user acting in the request's vhost (commands.py)."""
    return Caller(request.state.user, vhost_param(request))


@contextlib.contextmanager
def refusals(*, publish: bool = False, detail: bool = False) -> Iterator[None]:
    """AMQP refusals as RabbitMQ's HTTP API answers them: a permission
    refusal on a topology command is 401 "Access refused." (with the AMQP
    text for get/move, ``detail``); anything refused while publishing is a
    400 carrying the AMQP code and text ("403 ACCESS_REFUSED - ...")."""
    try:
        yield
    except errors.AMQPError as exc:
        if publish:
            raise HTTPError(400, "bad_request", f"{exc.reply_code} {exc.reply_text}") from None
        if isinstance(exc, errors.AccessRefused):
            reason = exc.reply_text if detail else "Access refused."
            raise HTTPError(401, "not_authorised", reason) from None
        raise


def seg(request: Request, name: str) -> str:
    """A path parameter, percent-decoded once (routing saw it raw)."""
    return urllib.parse.unquote(request.path_params[name])


def vhost_param(request: Request) -> str:
    return seg(request, "vhost")


async def json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise bad_request(f"invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise bad_request("expected a JSON object")
    return data


class RawPathMiddleware:
    """Route on the undecoded path, so ``%2F`` stays inside its segment."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("raw_path"):
            scope = dict(scope)
            scope["path"] = scope["raw_path"].decode("latin-1")
        await self.app(scope, receive, send)


# ----------------------------------------------------------------- state


class Management:
    def __init__(self, broker: Broker, config: Config) -> None:
        self.broker = broker
        self.config = config
        self.stats = views.Stats(broker)
        self.port: int | None = None

    async def sample_forever(self) -> None:
        while True:
            try:
                self.stats.tick()
            except Exception:  # stats must never take the broker down
                log.exception("management.sample_failed")
            await trio.sleep(SAMPLE_INTERVAL_S)

    async def wait_durable(self, epoch: int) -> bool:
        """True once everything up to ``epoch`` is committed."""
        broker = self.broker
        if epoch <= 0 or not broker.store.durable:
            return True
        with trio.move_on_after(DURABLE_WAIT_S):
            while broker.committed_epoch < epoch:
                broker.request_commit()
                await trio.sleep(0.002)
            return True
        return False

    # -------------------------------------------------------- auth

    def authenticate(self, request: Request) -> str:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic" or not token:
            raise HTTPError(401, "not_authorised", "Login failed")
        try:
            name, _, password = (
                base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")
            )
        except (binascii.Error, UnicodeDecodeError):
            raise HTTPError(401, "not_authorised", "Login failed") from None
        users = self.broker.users
        if not users.check(name, password):
            raise HTTPError(401, "not_authorised", "Login failed")
        user = users.users[name]
        if not set(user.tags) & views.MANAGEMENT_TAGS:
            raise HTTPError(401, "not_authorised", "Not management user")
        loopback_only = getattr(self.config, "loopback_users", ())
        client = request.client.host if request.client else ""
        if name in loopback_only and not _is_loopback(client):
            raise HTTPError(401, "not_authorised", f"User '{name}' can only log in via localhost")
        return name

    def authorize(self, request: Request, user: str, need: frozenset[str] | None) -> None:
        """Tags as RabbitMQ uses them: ``administrator`` may do anything;
        ``need`` lists the tags an endpoint requires (None: any management
        tag); an endpoint about one vhost needs a permission there, unless
        the user is an administrator or monitoring."""
        tags = set(self.broker.users.users[user].tags)
        if "administrator" in tags:
            return
        if need is not None and not tags & need:
            # RabbitMQ answers every authorisation failure with 401.
            role = "policymaker" if "policymaker" in need else "administrator"
            raise HTTPError(401, "not_authorised", f"Not {role} user")
        vhost = request.path_params.get("vhost")
        if vhost is None:
            return
        name = urllib.parse.unquote(vhost)
        if request.method in ("GET", "HEAD") and "monitoring" in tags:
            return
        if not defs.list_permissions(self.broker, user=user, vhost=name):
            raise HTTPError(
                401, "not_authorised", "User not authorised to access virtual host"
            )

    # ------------------------------------------------------ helpers

    def vhost(self, name: str) -> Any:
        vhost = self.broker.vhosts.get(name)
        if vhost is None:
            raise not_found(f"no vhost '{name}'")
        return vhost

    def queue(self, vhost: str, name: str) -> Queue:
        queue: Queue | None = self.vhost(vhost).queues.get(name)
        if queue is None:
            raise not_found(f"no queue '{name}' in vhost '{vhost}'")
        return queue

    def session(self, name: str) -> Any:
        for session in self.broker.sessions:
            if views.connection_name(session, self.broker) == name:
                return session
        raise not_found(f"no connection '{name}'")

    def may_use(self, user: str, vhost: str) -> bool:
        tags = set(self.broker.users.users[user].tags)
        if tags & {"administrator", "monitoring"}:
            return True
        return bool(defs.list_permissions(self.broker, user=user, vhost=vhost))

    def vhosts_of(self, request: Request) -> list[Any]:
        if "vhost" in request.path_params:
            return [self.vhost(vhost_param(request))]
        user = request.state.user
        return [v for v in self.broker.vhosts.values() if self.may_use(user, v.name)]

    def queue_rows(self, vhosts: list[Any]) -> list[dict[str, Any]]:
        rows = []
        for vhost in vhosts:
            sources = explain.dead_letter_targets(vhost)
            for queue in vhost.queues.values():
                rows.append(views.queue_json(self.stats, vhost, queue, dl_sources=sources))
        return rows

    def listeners(self) -> list[dict[str, Any]]:
        out = [
            {
                "node": views.NODE,
                "protocol": "amqp",
                "ip_address": self.config.host,
                "port": self.amqp_port(),
            }
        ]
        if self.port is not None:
            out.append(
                {
                    "node": views.NODE,
                    "protocol": "http",
                    "ip_address": self.config.host,
                    "port": self.port,
                }
            )
        return out

    def amqp_port(self) -> int:
        for session in self.broker.sessions:
            local = views.local_addr(session, self.broker)
            return int(local.rpartition(":")[2] or 0)
        return self.config.port


# ------------------------------------------------------------ listings


def _pluck(item: dict[str, Any], path: str) -> Any:
    value: Any = item
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def listing(request: Request, items: list[dict[str, Any]]) -> Response:
    """RabbitMQ's list options: sort, sort_reverse, name filter, columns,
    and pagination (page, page_size) which wraps the list in an object."""
    query = request.query_params
    name = query.get("name")
    if name:
        if as_bool(query.get("use_regex")):
            import re

            try:
                pattern = re.compile(name)
            except re.error as exc:
                raise bad_request(f"bad regex: {exc}") from None
            items = [i for i in items if pattern.search(str(i.get("name", "")))]
        else:
            items = [i for i in items if name in str(i.get("name", ""))]
    sort = query.get("sort")
    if sort:
        def sort_key(item: dict[str, Any]) -> tuple[int, Any]:
            value = _pluck(item, sort)
            if value is None:
                return (0, "")
            if isinstance(value, int | float):
                return (1, value)
            return (2, str(value))

        items = sorted(items, key=sort_key, reverse=as_bool(query.get("sort_reverse")))
    columns = query.get("columns")
    if columns:
        wanted = [c for c in columns.split(",") if c]
        trimmed = []
        for item in items:
            row: dict[str, Any] = {}
            for col in wanted:
                value = _pluck(item, col)
                target = row
                parts = col.split(".")
                for part in parts[:-1]:
                    target = target.setdefault(part, {})
                target[parts[-1]] = value
            trimmed.append(row)
        items = trimmed
    page = as_int(query.get("page"))
    if page is not None:
        size = as_int(query.get("page_size"), 100) or 100
        total = len(items)
        start = (max(page, 1) - 1) * size
        chunk = items[start : start + size]
        return js(
            {
                "items": chunk,
                "page": page,
                "page_size": size,
                "page_count": max(1, -(-total // size)),
                "item_count": len(chunk),
                "filtered_count": total,
                "total_count": total,
            }
        )
    return js(items)


# ------------------------------------------------------------- the app


def build_app(mgmt: Management) -> ASGIApp:
    broker = mgmt.broker
    stats = mgmt.stats
    routes: list[Route] = []

    def api(
        path: str,
        methods: list[str],
        *,
        write_tags: frozenset[str] | None = None,
        read_tags: frozenset[str] | None = None,
    ) -> Callable[[Endpoint], Endpoint]:
        """Register an authenticated endpoint; ``write_tags``/``read_tags``:
        the tags (besides administrator) its non-GET/GET methods need."""

        def register(fn: Endpoint) -> Endpoint:
            async def endpoint(request: Request) -> Response:
                user = mgmt.authenticate(request)
                need = read_tags if request.method in ("GET", "HEAD") else write_tags
                mgmt.authorize(request, user, need)
                request.state.user = user
                return await fn(request)

            routes.append(Route(path, endpoint, methods=methods))
            return fn

        return register

    ADMIN = frozenset({"administrator"})
    POLICY = frozenset({"policymaker"})

    def sessions(request: Request) -> list[Any]:
        """Connections this user may see: all for administrator and
        monitoring, otherwise only the user's own (as in RabbitMQ)."""
        user = request.state.user
        tags = set(broker.users.users[user].tags)
        if tags & {"administrator", "monitoring"}:
            return list(broker.sessions)
        return [s for s in broker.sessions if s.user == user]

    # ------------------------------------------------------ overview

    @api("/api/overview", ["GET"])
    async def overview(request: Request) -> Response:
        return js(views.overview_json(stats, mgmt.listeners()))

    @api("/api/cluster-name", ["GET"])
    async def cluster_name(request: Request) -> Response:
        return js({"name": "mqbroker"})

    @api("/api/whoami", ["GET"])
    async def whoami(request: Request) -> Response:
        user = broker.users.users[request.state.user]
        return js({"name": user.name, "tags": list(user.tags)})

    @api("/api/extensions", ["GET"])
    async def extensions(request: Request) -> Response:
        return js([])

    def node_json() -> dict[str, Any]:
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
            "uptime": int((time.time() - broker.started_at) * 1000),
            "mem_alarm": False,
            "disk_free_alarm": False,
        }

    @api("/api/nodes", ["GET"])
    async def nodes(request: Request) -> Response:
        return js([node_json()])

    @api("/api/nodes/{node}", ["GET"])
    async def node(request: Request) -> Response:
        if seg(request, "node") != views.NODE:
            raise not_found()
        return js(node_json())

    @api("/api/mqbroker/history", ["GET"])
    async def history(request: Request) -> Response:
        return js(list(stats.history))

    # -------------------------------------------------------- vhosts

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

    @api("/api/vhosts", ["GET"])
    async def vhosts(request: Request) -> Response:
        return listing(request, [vhost_json(v) for v in mgmt.vhosts_of(request)])

    @api("/api/vhosts/{vhost}", ["GET", "PUT", "DELETE"], write_tags=ADMIN)
    async def vhost(request: Request) -> Response:
        name = vhost_param(request)
        if request.method == "GET":
            return js(vhost_json(mgmt.vhost(name)))
        if request.method == "PUT":
            created = defs.add_vhost(broker, name)
            return no_content(201 if created else 204)
        mgmt.vhost(name)
        defs.delete_vhost(broker, name)
        return no_content()

    # --------------------------------------------------------- users

    @api("/api/users", ["GET"], read_tags=ADMIN)
    async def users(request: Request) -> Response:
        return listing(request, [views.user_json(u) for u in broker.users.users.values()])

    @api("/api/users/{user}", ["GET", "PUT", "DELETE"], read_tags=ADMIN, write_tags=ADMIN)
    async def user(request: Request) -> Response:
        name = seg(request, "user")
        existing = broker.users.users.get(name)
        if request.method == "GET":
            if existing is None:
                raise not_found(f"no user '{name}'")
            return js(views.user_json(existing))
        if request.method == "DELETE":
            if not defs.delete_user(broker, name):
                raise not_found(f"no user '{name}'")
            return no_content()
        body = await json_body(request)
        tags = body.get("tags")
        if isinstance(tags, str):
            tags = [t.strip() for t in tags.split(",") if t.strip()]
        password = body.get("password")
        created = defs.put_user(
            broker,
            name,
            password=str(password) if password is not None else None,
            password_hash=body.get("password_hash"),
            tags=tags,
        )
        return no_content(201 if created else 204)

    # --------------------------------------------------- permissions

    @api("/api/permissions", ["GET"], read_tags=ADMIN)
    async def permissions(request: Request) -> Response:
        return listing(request, defs.list_permissions(broker))

    @api("/api/permissions/{vhost}/{user}", ["GET", "PUT", "DELETE"], read_tags=ADMIN, write_tags=ADMIN)
    async def permission(request: Request) -> Response:
        vhost_name, user_name = vhost_param(request), seg(request, "user")
        mgmt.vhost(vhost_name)
        if user_name not in broker.users.users:
            raise not_found(f"no user '{user_name}'")
        if request.method == "GET":
            rows = defs.list_permissions(broker, user=user_name, vhost=vhost_name)
            if not rows:
                raise not_found(f"no permissions for '{user_name}' in '{vhost_name}'")
            return js(rows[0])
        if request.method == "DELETE":
            defs.clear_permissions(broker, user_name, vhost_name)
            return no_content()
        body = await json_body(request)
        existed = bool(defs.list_permissions(broker, user=user_name, vhost=vhost_name))
        defs.set_permissions(
            broker,
            user_name,
            vhost_name,
            str(body.get("configure", "")),
            str(body.get("write", "")),
            str(body.get("read", "")),
        )
        return no_content(204 if existed else 201)

    @api("/api/users/{user}/permissions", ["GET"], read_tags=ADMIN)
    async def user_permissions(request: Request) -> Response:
        return js(defs.list_permissions(broker, user=seg(request, "user")))

    @api("/api/vhosts/{vhost}/permissions", ["GET"], read_tags=ADMIN)
    async def vhost_permissions(request: Request) -> Response:
        return js(defs.list_permissions(broker, vhost=vhost_param(request)))

    @api("/api/topic-permissions", ["GET"], read_tags=ADMIN)
    async def topic_permissions(request: Request) -> Response:
        return listing(request, defs.list_topic_permissions(broker))

    @api(
        "/api/topic-permissions/{vhost}/{user}", ["GET", "PUT", "DELETE"],
        read_tags=ADMIN, write_tags=ADMIN,
    )
    async def topic_permission(request: Request) -> Response:
        vhost_name, user_name = vhost_param(request), seg(request, "user")
        mgmt.vhost(vhost_name)
        if user_name not in broker.users.users:
            raise not_found(f"no user '{user_name}'")
        rows = defs.list_topic_permissions(broker, user=user_name, vhost=vhost_name)
        if request.method == "GET":
            if not rows:
                raise not_found()
            return js(rows)
        if request.method == "DELETE":
            exchange = request.query_params.get("exchange")
            if not defs.clear_topic_permissions(broker, user_name, vhost_name, exchange):
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
            broker, user_name, vhost_name, exchange, str(body["write"]), str(body["read"])
        )
        return no_content(204 if existed else 201)

    @api("/api/users/{user}/topic-permissions", ["GET"], read_tags=ADMIN)
    async def user_topic_permissions(request: Request) -> Response:
        return js(defs.list_topic_permissions(broker, user=seg(request, "user")))

    @api("/api/vhosts/{vhost}/topic-permissions", ["GET"], read_tags=ADMIN)
    async def vhost_topic_permissions(request: Request) -> Response:
        return js(defs.list_topic_permissions(broker, vhost=vhost_param(request)))

    # ------------------------------------------------------ policies

    def policy_rows(vhost: str | None = None) -> list[dict[str, Any]]:
        return [views.jsonable(p) for p in defs.list_policies(broker, vhost)]

    @api("/api/policies", ["GET"])
    async def policies(request: Request) -> Response:
        return listing(request, policy_rows())

    @api("/api/policies/{vhost}", ["GET"])
    async def vhost_policies(request: Request) -> Response:
        name = vhost_param(request)
        mgmt.vhost(name)
        return listing(request, policy_rows(name))

    @api("/api/policies/{vhost}/{name}", ["GET", "PUT", "DELETE"], write_tags=POLICY)
    async def policy(request: Request) -> Response:
        vhost_name, name = vhost_param(request), seg(request, "name")
        mgmt.vhost(vhost_name)
        found = [p for p in policy_rows(vhost_name) if p.get("name") == name]
        if request.method == "GET":
            if not found:
                raise not_found(f"no policy '{name}' in vhost '{vhost_name}'")
            return js(found[0])
        if request.method == "DELETE":
            if not defs.clear_policy(broker, vhost_name, name):
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
            broker,
            vhost_name,
            name,
            str(body["pattern"]),
            definition,
            priority=as_int(body.get("priority"), 0) or 0,
            apply_to=apply_to,
        )
        return no_content(204 if found else 201)

    # --------------------------------------------------- definitions

    @api("/api/definitions", ["GET", "POST"], read_tags=ADMIN, write_tags=ADMIN)
    async def definitions(request: Request) -> Response:
        if request.method == "GET":
            return js(views.export_definitions(broker))
        return await import_definitions(request, None)

    @api("/api/definitions/{vhost}", ["GET", "POST"], read_tags=ADMIN, write_tags=ADMIN)
    async def vhost_definitions(request: Request) -> Response:
        name = vhost_param(request)
        mgmt.vhost(name)
        if request.method == "GET":
            return js(views.export_definitions(broker, name))
        return await import_definitions(request, name)

    async def import_definitions(request: Request, only_vhost: str | None) -> Response:
        body = await json_body(request)

        def vh(record: dict[str, Any]) -> str:
            return only_vhost if only_vhost is not None else str(record.get("vhost", "/"))

        if only_vhost is None:
            for record in body.get("vhosts") or []:
                defs.add_vhost(broker, str(record["name"]))
            for record in body.get("users") or []:
                name = str(record["name"])
                tags = record.get("tags") or []
                if isinstance(tags, str):
                    tags = [t for t in tags.split(",") if t]
                if "password" in record:
                    defs.put_user(broker, name, password=str(record["password"]), tags=tags)
                elif str(record.get("password_hash", "")).startswith("pbkdf2-sha256$"):
                    defs.put_user(
                        broker, name, password_hash=str(record["password_hash"]), tags=tags
                    )
            for record in body.get("permissions") or []:
                if record.get("user") in broker.users.users and record.get("vhost") in broker.vhosts:
                    defs.set_permissions(
                        broker,
                        str(record["user"]),
                        str(record["vhost"]),
                        str(record.get("configure", "")),
                        str(record.get("write", "")),
                        str(record.get("read", "")),
                    )
            for record in body.get("topic_permissions") or []:
                if record.get("user") in broker.users.users and record.get("vhost") in broker.vhosts:
                    defs.set_topic_permission(
                        broker,
                        str(record["user"]),
                        str(record["vhost"]),
                        str(record.get("exchange", "")),
                        str(record.get("write", "")),
                        str(record.get("read", "")),
                    )
        # Imported definitions are the broker's own (an administrator's
        # endpoint): the command layer without a user, as RabbitMQ does.
        for record in body.get("exchanges") or []:
            mgmt.vhost(vh(record))
            cmd.declare_exchange(
                broker,
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
                broker,
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
                broker,
                Caller.internal(vh(record)),
                str(record["source"]),
                dest,
                str(record.get("routing_key", "")),
                record.get("arguments") or {},
            )
        for record in body.get("policies") or []:
            defs.set_policy(
                broker,
                vh(record),
                str(record["name"]),
                str(record.get("pattern", "")),
                record.get("definition") or {},
                priority=as_int(record.get("priority"), 0) or 0,
                apply_to=record.get("apply-to") or "all",
            )
        broker.request_commit()
        return no_content(204)

    # --------------------------------------------------- connections

    @api("/api/connections", ["GET"])
    async def connections(request: Request) -> Response:
        return listing(request, [views.connection_json(stats, s) for s in sessions(request)])

    @api("/api/vhosts/{vhost}/connections", ["GET"])
    async def vhost_connections(request: Request) -> Response:
        vhost = mgmt.vhost(vhost_param(request))
        return listing(
            request,
            [views.connection_json(stats, s) for s in sessions(request) if s.vhost is vhost],
        )

    @api("/api/connections/{name}", ["GET", "DELETE"])
    async def connection(request: Request) -> Response:
        session = mgmt.session(seg(request, "name"))
        if session not in sessions(request):
            raise not_found(f"no connection '{seg(request, 'name')}'")
        if request.method == "GET":
            return js(views.connection_json(stats, session))
        reason = request.headers.get("x-reason") or "Closed via management plugin"
        defs.close_session(broker, session, reason)
        return no_content()

    @api("/api/connections/{name}/channels", ["GET"])
    async def connection_channels(request: Request) -> Response:
        session = mgmt.session(seg(request, "name"))
        if session not in sessions(request):
            raise not_found(f"no connection '{seg(request, 'name')}'")
        return listing(
            request,
            [views.channel_json(broker, session, c) for c in session.channels.values()],
        )

    def all_channels(request: Request, vhost: Any = None) -> list[dict[str, Any]]:
        return [
            views.channel_json(broker, s, c)
            for s in sessions(request)
            if vhost is None or s.vhost is vhost
            for c in s.channels.values()
        ]

    @api("/api/channels", ["GET"])
    async def channels(request: Request) -> Response:
        return listing(request, all_channels(request))

    @api("/api/vhosts/{vhost}/channels", ["GET"])
    async def vhost_channels(request: Request) -> Response:
        return listing(request, all_channels(request, mgmt.vhost(vhost_param(request))))

    @api("/api/channels/{name}", ["GET"])
    async def channel(request: Request) -> Response:
        name = seg(request, "name")
        for row in all_channels(request):
            if row["name"] == name:
                return js(row)
        raise not_found(f"no channel '{name}'")

    @api("/api/consumers", ["GET"])
    async def consumers(request: Request) -> Response:
        return listing(request, consumer_rows(request, None))

    @api("/api/consumers/{vhost}", ["GET"])
    async def vhost_consumers(request: Request) -> Response:
        return listing(request, consumer_rows(request, mgmt.vhost(vhost_param(request))))

    def consumer_rows(request: Request, vhost: Any) -> list[dict[str, Any]]:
        return [
            views.consumer_json(broker, s, consumer)
            for s in sessions(request)
            if vhost is None or s.vhost is vhost
            for c in s.channels.values()
            for consumer in c.consumers.values()
        ]

    # ----------------------------------------------------- exchanges

    def exchange_name(request: Request) -> str:
        name = seg(request, "name")
        return "" if name == "amq.default" else name

    def exchange_of(request: Request) -> Any:
        vhost = mgmt.vhost(vhost_param(request))
        name = exchange_name(request)
        exchange = vhost.exchanges.get(name)
        if exchange is None:
            raise not_found(f"no exchange '{name}' in vhost '{vhost.name}'")
        return vhost, exchange

    @api("/api/exchanges", ["GET"])
    @api("/api/exchanges/{vhost}", ["GET"])
    async def exchanges(request: Request) -> Response:
        return listing(
            request,
            [
                views.exchange_json(broker, e)
                for v in mgmt.vhosts_of(request)
                for e in v.exchanges.values()
            ],
        )

    @api("/api/exchanges/{vhost}/{name}", ["GET", "PUT", "DELETE"])
    async def exchange(request: Request) -> Response:
        if request.method == "GET":
            _, found = exchange_of(request)
            return js(views.exchange_json(broker, found))
        vhost = mgmt.vhost(vhost_param(request))
        name = exchange_name(request)
        if request.method == "DELETE":
            if name not in vhost.exchanges:
                raise not_found(f"no exchange '{name}' in vhost '{vhost.name}'")
            with refusals():
                cmd.delete_exchange(
                    broker, caller(request), name,
                    if_unused=as_bool(request.query_params.get("if-unused")),
                )
            broker.request_commit()
            return no_content()
        body = await json_body(request)
        existed = name in vhost.exchanges
        with refusals():
            cmd.declare_exchange(
                broker,
                caller(request),
                name,
                str(body.get("type") or "direct"),
                durable=as_bool(body.get("durable"), True),
                auto_delete=as_bool(body.get("auto_delete")),
                internal=as_bool(body.get("internal")),
                arguments=body.get("arguments") or {},
            )
        broker.request_commit()
        return no_content(204 if existed else 201)

    @api("/api/exchanges/{vhost}/{name}/publish", ["POST"])
    async def publish(request: Request) -> Response:
        vhost, exchange = exchange_of(request)
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
                broker, vhost.name, exchange.name, str(body["routing_key"]), props, data,
                user=request.state.user,
            )
        await mgmt.wait_durable(result.epoch)
        return js({"routed": result.routed})

    @api("/api/exchanges/{vhost}/{name}/route", ["POST"])
    async def route_explain(request: Request) -> Response:
        vhost, exchange = exchange_of(request)
        body = await json_body(request)
        headers = body.get("headers")
        if headers is None and isinstance(body.get("properties"), dict):
            headers = body["properties"].get("headers")
        if headers is not None and not isinstance(headers, dict):
            raise bad_request("headers must be an object")
        return js(
            explain.explain_route(
                broker, vhost.name, exchange.name, str(body.get("routing_key", "")), headers
            )
        )

    @api("/api/exchanges/{vhost}/{name}/bindings/source", ["GET"])
    async def exchange_bindings_source(request: Request) -> Response:
        vhost, exchange = exchange_of(request)
        return listing(
            request,
            [views.binding_json(vhost.name, exchange.name, b) for b in exchange.impl.bindings()],
        )

    @api("/api/exchanges/{vhost}/{name}/bindings/destination", ["GET"])
    async def exchange_bindings_destination(request: Request) -> Response:
        vhost, exchange = exchange_of(request)
        dest = Destination("exchange", exchange.name)
        return listing(
            request,
            [
                views.binding_json(vhost.name, source, b)
                for source, b in vhost.bindings()
                if b.destination == dest
            ],
        )

    # -------------------------------------------------------- queues

    @api("/api/queues", ["GET"])
    @api("/api/queues/{vhost}", ["GET"])
    async def queues(request: Request) -> Response:
        return listing(request, mgmt.queue_rows(mgmt.vhosts_of(request)))

    @api("/api/queues/{vhost}/{name}", ["GET", "PUT", "DELETE"])
    async def queue(request: Request) -> Response:
        vhost_name, name = vhost_param(request), seg(request, "name")
        vhost = mgmt.vhost(vhost_name)
        if request.method == "GET":
            found = mgmt.queue(vhost_name, name)
            return js(
                views.queue_json(
                    stats,
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
                    broker,
                    caller(request),
                    name,
                    if_unused=as_bool(query.get("if-unused")),
                    if_empty=as_bool(query.get("if-empty")),
                )
            broker.request_commit()
            broker.run_dispatch()
            return no_content()
        body = await json_body(request)
        existed = name in vhost.queues
        arguments = dict(body.get("arguments") or {})
        with refusals():
            cmd.declare_queue(
                broker,
                caller(request),
                name,
                durable=as_bool(body.get("durable"), True),
                auto_delete=as_bool(body.get("auto_delete")),
                arguments=arguments,
            )
        broker.request_commit()
        return no_content(204 if existed else 201)

    @api("/api/queues/{vhost}/{name}/contents", ["DELETE"])
    async def purge(request: Request) -> Response:
        found = mgmt.queue(vhost_param(request), seg(request, "name"))
        with refusals():
            cmd.purge_queue(broker, caller(request), found.name)
        broker.request_commit()
        return no_content()

    @api("/api/queues/{vhost}/{name}/bindings", ["GET"])
    async def queue_bindings(request: Request) -> Response:
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

    @api("/api/queues/{vhost}/{name}/get", ["POST"])
    async def get(request: Request) -> Response:
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
            cmd.readable_queue(broker, caller(request), found.name)
        got, epoch = msgops.get_messages(broker, found, count, ackmode)
        await mgmt.wait_durable(epoch)
        out = []
        for item in got:
            row = views.message_json(item.message, encoding=encoding, truncate=truncate)
            row["redelivered"] = item.redelivered
            row["message_count"] = item.message_count
            out.append(row)
        return js(out)

    @api("/api/queues/{vhost}/{name}/messages", ["GET"])
    async def browse(request: Request) -> Response:
        found = mgmt.queue(vhost_param(request), seg(request, "name"))
        query = request.query_params
        encoding = query.get("encoding", "auto")
        truncate = as_int(query.get("truncate"), 50_000)
        items, cursor = msgops.browse(
            broker,
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

    async def move(request: Request, default_mode: str | None) -> Response:
        vhost_name, name = vhost_param(request), seg(request, "name")
        mgmt.queue(vhost_name, name)
        with refusals(detail=True):
            cmd.readable_queue(broker, caller(request), name)
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
                cmd.check_write(broker, caller(request), "exchange", "")
            elif mode == "exchange":
                cmd.check_write(broker, caller(request), "exchange", exchange or "")
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
            broker,
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

    @api("/api/queues/{vhost}/{name}/move", ["POST"])
    async def move_messages(request: Request) -> Response:
        return await move(request, None)

    @api("/api/queues/{vhost}/{name}/replay", ["POST"])
    async def replay_messages(request: Request) -> Response:
        return await move(request, "first-death")

    # ------------------------------------------------------ bindings

    @api("/api/bindings", ["GET"])
    @api("/api/bindings/{vhost}", ["GET"])
    async def bindings(request: Request) -> Response:
        return listing(
            request,
            [
                views.binding_json(v.name, source, b)
                for v in mgmt.vhosts_of(request)
                for source, b in v.bindings()
            ],
        )

    def binding_ends(request: Request) -> tuple[Any, str, Destination]:
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

    @api("/api/bindings/{vhost}/e/{source}/{dtype}/{dest}", ["GET", "POST"])
    async def binding_list(request: Request) -> Response:
        vhost, source, dest = binding_ends(request)
        if request.method == "GET":
            return listing(request, bindings_between(vhost, source, dest))
        body = await json_body(request)
        key = str(body.get("routing_key", ""))
        arguments = body.get("arguments") or {}
        if not isinstance(arguments, dict):
            raise bad_request("arguments must be an object")
        with refusals():
            cmd.bind(broker, caller(request), source, dest, key, arguments)
        broker.request_commit()
        props = views.properties_key(key, arguments)
        return no_content(201, headers={"Location": urllib.parse.quote(props, safe="~")})

    @api("/api/bindings/{vhost}/e/{source}/{dtype}/{dest}/{props}", ["GET", "DELETE"])
    async def binding(request: Request) -> Response:
        vhost, source, dest = binding_ends(request)
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
                        broker, caller(request), source, dest, b.routing_key, b.args_dict()
                    )
                break
        broker.request_commit()
        return no_content()

    # -------------------------------------------------------- health

    def alarms() -> list[str]:
        found = getattr(broker, "alarms", None)
        return sorted(str(a) for a in found) if found else []

    @api("/api/health/checks/alarms", ["GET"])
    @api("/api/health/checks/local-alarms", ["GET"])
    async def health_alarms(request: Request) -> Response:
        active = alarms()
        if active:
            return js(
                {"status": "failed", "reason": "resource alarm(s) in effect", "alarms": active},
                503,
            )
        return js({"status": "ok"})

    @api("/api/health/checks/virtual-hosts", ["GET"])
    async def health_vhosts(request: Request) -> Response:
        return js({"status": "ok"})

    @api("/api/aliveness-test/{vhost}", ["GET"])
    async def aliveness(request: Request) -> Response:
        vhost = mgmt.vhost(vhost_param(request))
        queue = vhost.declare_queue("aliveness-test", owner=None, durable=False)
        props = views.properties_from_json({})
        msgops.publish(broker, vhost.name, "", queue.name, props, b"test_message")
        got, _ = msgops.get_messages(broker, queue, 1, "ack_requeue_false")
        if not got or got[0].message.body != b"test_message":
            return js({"status": "failed", "reason": "message did not come back"}, 503)
        return js({"status": "ok"})

    # -------------------------------------------- metrics, dashboard

    async def prometheus(request: Request) -> Response:
        return Response(metrics.render(stats), media_type=metrics.CONTENT_TYPE)

    dashboard_html = (
        resources.files("mqbroker.management").joinpath("static/index.html").read_bytes()
    )

    async def dashboard(request: Request) -> Response:
        return Response(
            dashboard_html,
            media_type="text/html; charset=utf-8",
            headers={"Cache-Control": "no-cache"},
        )

    async def api_not_found(request: Request) -> Response:
        mgmt.authenticate(request)
        raise not_found()

    routes.append(Route("/metrics", prometheus, methods=["GET"]))
    routes.append(Route("/", dashboard, methods=["GET"]))
    routes.append(Route("/index.html", dashboard, methods=["GET"]))
    routes.append(Route("/api/{rest:path}", api_not_found))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPError)
        headers = None
        if exc.status == 401:
            headers = {"WWW-Authenticate": 'Basic realm="mqbroker Management"'}
        return js({"error": exc.error, "reason": exc.reason}, exc.status, headers)

    async def amqp_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, errors.AMQPError)
        if isinstance(exc, errors.NotFound):
            return js({"error": "Object Not Found", "reason": exc.text}, 404)
        if isinstance(exc, errors.AccessRefused | errors.AuthFailure):
            return js({"error": "access_refused", "reason": exc.text}, 403)
        if isinstance(exc, errors.ChannelError | errors.NotAllowed | errors.NotImplemented_):
            return js({"error": "bad_request", "reason": exc.text}, 400)
        return js({"error": "internal_error", "reason": exc.text}, 500)

    async def starlette_http(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        reason = getattr(exc, "detail", "") or "error"
        error = {404: "Object Not Found", 405: "Method Not Allowed"}.get(status, "error")
        return js({"error": error, "reason": str(reason)}, status)

    async def internal(request: Request, exc: Exception) -> Response:
        log.exception("management.internal_error", path=request.url.path)
        return js({"error": "internal_error", "reason": type(exc).__name__}, 500)

    from starlette.exceptions import HTTPException

    app = Starlette(
        routes=routes,
        exception_handlers={
            HTTPError: http_error,
            errors.AMQPError: amqp_error,
            HTTPException: starlette_http,
            Exception: internal,
        },
    )
    return RawPathMiddleware(app)


# -------------------------------------------------------------- serving


def _is_loopback(host: str) -> bool:
    import ipaddress

    try:
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


async def serve_management(
    broker: Broker,
    config: Config,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``config.management_port`` (0: any free port) until
    cancelled; reports the bound port through ``task_status``."""
    from hypercorn.config import Config as HyperConfig
    from hypercorn.trio import serve

    mgmt = Management(broker, config)
    app = build_app(mgmt)
    hyper = HyperConfig()
    hyper.bind = [_bind(config.host, int(config.management_port or 0))]
    hyper.accesslog = None
    hyper.errorlog = logging.getLogger("mqbroker.management.hypercorn")
    hyper.graceful_timeout = 1.0
    hyper.keep_alive_timeout = 30
    hyper.include_server_header = False
    if config.management_tls:
        if config.tls_certfile is None or config.tls_keyfile is None:
            raise ValueError("management_tls needs tls_certfile and tls_keyfile")
        hyper.certfile = str(config.tls_certfile)
        hyper.keyfile = str(config.tls_keyfile)
        if config.tls_cafile is not None:
            hyper.ca_certs = str(config.tls_cafile)
    async with trio.open_nursery() as nursery:
        mgmt.stats.tick()
        binds = await nursery.start(partial(serve, app, hyper, mode="asgi"))  # type: ignore[arg-type]
        port = int(binds[0].rsplit(":", 1)[1])
        mgmt.port = port
        nursery.start_soon(mgmt.sample_forever)
        log.info("management.listening", host=config.host, port=port)
        task_status.started(port)
