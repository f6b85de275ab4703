"""The HTTP client ``mqbrokerctl`` is built on: one ``Api`` per run (base
URL, credentials, vhost, timeout), errors turned into one-line failures.

Strategy: http.client, not a dependency: the tool talks to one API with
JSON bodies and basic auth, and must start fast.
"""

from __future__ import annotations

import base64
import http.client
import json
import sys
import urllib.parse
from typing import Any, NoReturn

import click
from rich.console import Console

err = Console(stderr=True, highlight=False)


class Api:
    """A small client for the management API over one keep-alive HTTP
    connection (the standard library's: a CLI run is a few requests, and
    starting fast matters more than anything a bigger client offers)."""

    def __init__(self, url: str, user: str, password: str, vhost: str, timeout: float) -> None:
        parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https"):
            fail(f"unsupported URL scheme in {url!r}")
        self.base = url.rstrip("/")
        self.scheme = parts.scheme
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self.vhost = vhost
        self.timeout = timeout
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}", "Accept": "application/json"}
        self._conn: http.client.HTTPConnection | None = None

    @staticmethod
    def q(name: str) -> str:
        return urllib.parse.quote(name, safe="")

    def path(self, *parts: str) -> str:
        return "/api/" + "/".join(parts)

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
            self._conn = cls(self.host, self.port, timeout=self.timeout)
        return self._conn

    def request(self, method: str, path: str, body: Any = None, **params: Any) -> tuple[int, bytes]:
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        target = self.prefix + path + (f"?{query}" if query else "")
        payload = json.dumps(body).encode() if body is not None else None
        headers = dict(self.headers)
        if payload is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, target, body=payload, headers=headers)
                response = conn.getresponse()
                return response.status, response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self._conn = None
                conn.close()
                if attempt == 2 or method not in ("GET", "PUT", "DELETE"):
                    fail(f"connection to {self.base} lost: {exc}")
            except OSError as exc:
                self._conn = None
                fail(f"cannot reach {self.base}: {exc}")
        raise AssertionError("unreachable")

    def call(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        status, raw = self.request(method, path, body, **params)
        if status >= 400:
            try:
                data = json.loads(raw)
                reason = data.get("reason") or data.get("error")
            except ValueError:
                reason = raw[:200].decode("utf-8", "replace")
            fail(f"{method} {path}: {status} {reason}")
        if not raw:
            return None
        return json.loads(raw)

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, **params)


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[red]error:[/red] {message}")
    sys.exit(code)


class Ctx:
    def __init__(self, api: Api, fmt: str, amqp: str | None = None) -> None:
        self.api = api
        self.fmt = fmt
        self.amqp = amqp

    @property
    def json(self) -> bool:
        return self.fmt == "json"


pass_ctx = click.make_pass_decorator(Ctx)

