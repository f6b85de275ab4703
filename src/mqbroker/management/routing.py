"""The route table: each resource module (``management/api/``) registers
its endpoints on a ``RouteTable`` with the path, the methods and the tags
they need; ``http.build_app`` wraps each one with authentication and
authorisation. So no endpoint can forget the check, and the whole API is
one list that can be read (and tested) without starting a server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

if TYPE_CHECKING:
    from mqbroker.management.context import Management

Handler = Callable[["Management", Request], Awaitable[Response]]

ADMIN = frozenset({"administrator"})
POLICY = frozenset({"policymaker"})


@dataclass(frozen=True)
class ApiRoute:
    """One authenticated endpoint. ``read_tags``/``write_tags``: the tags
    (besides administrator) its GET/other methods need; None: any
    management user (vhost access is still checked)."""

    path: str
    methods: tuple[str, ...]
    handler: Handler
    read_tags: frozenset[str] | None
    write_tags: frozenset[str] | None


class RouteTable:
    def __init__(self) -> None:
        self.routes: list[ApiRoute] = []

    def __call__(
        self,
        path: str,
        methods: list[str],
        *,
        write_tags: frozenset[str] | None = None,
        read_tags: frozenset[str] | None = None,
    ) -> Callable[[Handler], Handler]:
        def register(fn: Handler) -> Handler:
            self.routes.append(ApiRoute(path, tuple(methods), fn, read_tags, write_tags))
            return fn

        return register
