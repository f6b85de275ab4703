"""The HTTP management listener: RabbitMQ's management API subset, the
mqbroker extensions (move/replay, browse, route explain), ``/metrics`` and
the dashboard, served by hypercorn's trio worker inside the broker's loop.

Strategy: the ASGI app (Starlette) runs as tasks of the broker's own trio
loop, so a handler reads and changes broker state directly, between two
awaits, exactly like a connection task does; no locks, no threads. Every
endpoint is ``async def`` (Starlette would run a plain ``def`` in a worker
thread, which must never touch the broker). A handler that changed durable
state waits for the group commit that holds its writes before it answers.

The endpoints live in ``management/api/`` (one module per resource, each a
route table); this module wraps each with authentication and
authorisation, adds ``/metrics`` and the dashboard, and is the one place
errors become HTTP answers.

Paths use RabbitMQ's conventions: names are percent-encoded path segments
(the default vhost is ``%2F``), so routing matches on the raw path and each
segment is decoded once.
"""

from __future__ import annotations

import logging
from functools import partial
from importlib import resources

import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from mqbroker import errors
from mqbroker.broker.broker import Broker
from mqbroker.config import Config
from mqbroker.log import get_logger
from mqbroker.management import metrics
from mqbroker.management.api import TABLES
from mqbroker.management.context import Management
from mqbroker.management.routing import ApiRoute
from mqbroker.management.web import HTTPError, RawPathMiddleware, js, not_found

log = get_logger("mqbroker.management")


def _endpoint(mgmt: Management, route: ApiRoute) -> Route:
    async def endpoint(request: Request) -> Response:
        user = mgmt.authenticate(request)
        need = route.read_tags if request.method in ("GET", "HEAD") else route.write_tags
        mgmt.authorize(request, user, need)
        request.state.user = user
        return await route.handler(mgmt, request)

    return Route(route.path, endpoint, methods=list(route.methods))


def build_app(mgmt: Management) -> ASGIApp:
    routes = [_endpoint(mgmt, r) for table in TABLES for r in table.routes]
    stats = mgmt.stats

    # -------------------------------------------- metrics, dashboard

    async def prometheus(request: Request) -> Response:
        return Response(metrics.render(stats), media_type=metrics.CONTENT_TYPE)

    static = resources.files("mqbroker.management").joinpath("static")
    dashboard_html = static.joinpath("index.html").read_bytes()
    # The page's scripts beside it (static/*.js), read once like the page;
    # only these names are served, so no path ever reaches the filesystem.
    scripts = {f.name: f.read_bytes() for f in static.iterdir() if f.name.endswith(".js")}

    async def dashboard(request: Request) -> Response:
        return Response(
            dashboard_html,
            media_type="text/html; charset=utf-8",
            headers={"Cache-Control": "no-cache"},
        )

    async def script(request: Request) -> Response:
        body = scripts.get(request.path_params["name"])
        if body is None:
            raise not_found()
        return Response(
            body,
            media_type="text/javascript; charset=utf-8",
            headers={"Cache-Control": "no-cache"},
        )

    async def api_not_found(request: Request) -> Response:
        mgmt.authenticate(request)
        raise not_found()

    routes.append(Route("/metrics", prometheus, methods=["GET"]))
    routes.append(Route("/", dashboard, methods=["GET"]))
    routes.append(Route("/index.html", dashboard, methods=["GET"]))
    routes.append(Route("/static/{name}", script, methods=["GET"]))
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
