"""What every HTTP endpoint shares: the error type RabbitMQ's API answers
with, JSON responses, path and body parsing, how AMQP refusals become HTTP
answers, and RabbitMQ's list options (sort, filter, columns, pages).

Strategy: endpoints raise ``HTTPError`` (or an AMQP error from the command
layer) and never build error responses themselves, so the answer to a
refusal is decided in one place (``refusals`` and ``http.build_app``).
"""

from __future__ import annotations

import contextlib
import json
import re
import urllib.parse
from collections.abc import Iterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from mqbroker import errors
from mqbroker.broker.commands import Caller


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
