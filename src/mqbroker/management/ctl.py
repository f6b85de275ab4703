"""``mqbrokerctl``: operate a running mqbroker through its HTTP API.

Strategy: every command is one or a few HTTP calls; the broker does the
work. Tables (rich) are for people, ``--format json`` prints the API's JSON
for scripts. ``move``/``replay`` only *drive* batches: the broker moves each
batch atomically (one store transaction: removed from the source and
enqueued at the destination together), so an interrupted run (Ctrl-C, a
crash of either side) loses and duplicates nothing, and running the same
command again finishes the job.
"""

from __future__ import annotations

import base64
import datetime as _dt
import http.client
import json
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

out = Console(highlight=False, soft_wrap=False)
err = Console(stderr=True, highlight=False)


# ---------------------------------------------------------------- client


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


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


# ----------------------------------------------------------- formatting


def pluck(item: dict[str, Any], path: str) -> Any:
    value: Any = item
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def fmt_rate(value: Any) -> str:
    return "" if value is None else f"{float(value):.1f}"


def fmt_age(value: Any) -> str:
    if not value:
        return "-"
    seconds = float(value)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def fmt_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False) if value else ""
    return str(value)


def fmt_time(value: Any) -> str:
    if not value:
        return ""
    return _dt.datetime.fromtimestamp(int(value), tz=_dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


Column = tuple[str, str, Callable[[Any], str]]

COLUMNS: dict[str, list[Column]] = {
    "queues": [
        ("vhost", "vhost", fmt_value),
        ("name", "name", fmt_value),
        ("ready", "messages_ready", fmt_value),
        ("unacked", "messages_unacknowledged", fmt_value),
        ("consumers", "consumers", fmt_value),
        ("publish/s", "message_stats.publish_details.rate", fmt_rate),
        ("deliver/s", "message_stats.deliver_get_details.rate", fmt_rate),
        ("ack/s", "message_stats.ack_details.rate", fmt_rate),
        ("oldest ready", "oldest_ready_age_seconds", fmt_age),
        ("DLQ", "is_dead_letter_queue", lambda v: "DLQ" if v else ""),
        ("policy", "policy", fmt_value),
    ],
    "exchanges": [
        ("vhost", "vhost", fmt_value),
        ("name", "name", lambda v: v or "(AMQP default)"),
        ("type", "type", fmt_value),
        ("durable", "durable", fmt_value),
        ("auto_delete", "auto_delete", fmt_value),
        ("internal", "internal", fmt_value),
        ("arguments", "arguments", fmt_value),
    ],
    "bindings": [
        ("vhost", "vhost", fmt_value),
        ("source", "source", lambda v: v or "(AMQP default)"),
        ("destination", "destination", fmt_value),
        ("type", "destination_type", fmt_value),
        ("routing_key", "routing_key", fmt_value),
        ("arguments", "arguments", fmt_value),
    ],
    "connections": [
        ("name", "name", fmt_value),
        ("user", "user", fmt_value),
        ("vhost", "vhost", fmt_value),
        ("channels", "channels", fmt_value),
        ("client", "client_properties.product", fmt_value),
        ("state", "state", fmt_value),
    ],
    "channels": [
        ("name", "name", fmt_value),
        ("user", "user", fmt_value),
        ("consumers", "consumer_count", fmt_value),
        ("unacked", "messages_unacknowledged", fmt_value),
        ("prefetch", "prefetch_count", fmt_value),
        ("confirm", "confirm", fmt_value),
        ("tx", "transactional", fmt_value),
    ],
    "consumers": [
        ("queue", "queue.name", fmt_value),
        ("tag", "consumer_tag", fmt_value),
        ("channel", "channel_details.name", fmt_value),
        ("ack", "ack_required", fmt_value),
        ("prefetch", "prefetch_count", fmt_value),
        ("unacked", "messages_unacknowledged", fmt_value),
    ],
    "vhosts": [
        ("name", "name", fmt_value),
        ("messages", "messages", fmt_value),
        ("ready", "messages_ready", fmt_value),
        ("unacked", "messages_unacknowledged", fmt_value),
    ],
    "users": [("name", "name", fmt_value), ("tags", "tags", lambda v: ",".join(v or []))],
    "permissions": [
        ("user", "user", fmt_value),
        ("vhost", "vhost", fmt_value),
        ("configure", "configure", fmt_value),
        ("write", "write", fmt_value),
        ("read", "read", fmt_value),
    ],
    "policies": [
        ("vhost", "vhost", fmt_value),
        ("name", "name", fmt_value),
        ("pattern", "pattern", fmt_value),
        ("apply-to", "apply-to", fmt_value),
        ("priority", "priority", fmt_value),
        ("definition", "definition", fmt_value),
    ],
}


def table(title: str, columns: list[Column], rows: Iterable[dict[str, Any]]) -> Table:
    result = Table(title=title, title_justify="left")
    for header, _path, _fmt in columns:
        numeric = header in (
            "ready", "unacked", "consumers", "channels", "messages", "publish/s",
            "deliver/s", "ack/s", "prefetch", "priority",
        )
        result.add_column(
            header,
            justify="right" if numeric else "left",
            no_wrap=header in ("name", "source", "destination", "queue", "tag"),
        )
    for row in rows:
        result.add_row(*[fmt(pluck(row, path)) for _h, path, fmt in columns])
    return result


def show(ctx: Ctx, kind: str, rows: list[dict[str, Any]]) -> None:
    if ctx.json:
        emit_json(rows)
        return
    columns = COLUMNS[kind]
    # Leave out columns that say nothing for these rows (one vhost, no policy).
    if len({r.get("vhost") for r in rows}) <= 1:
        columns = [c for c in columns if c[0] != "vhost"]
    if not any(r.get("policy") for r in rows):
        columns = [c for c in columns if c[0] != "policy"]
    out.print(table(kind, columns, rows))


def parse_pairs(pairs: Iterable[str], what: str) -> dict[str, Any]:
    """``key=value`` options; a value that parses as JSON is used as JSON
    (numbers, true/false, arrays), anything else as a string."""
    result: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"{what} must be KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            result[key] = json.loads(value)
        except ValueError:
            result[key] = value
    return result


def string_pairs(pairs: Iterable[str], what: str) -> dict[str, str]:
    result = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"{what} must be KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        result[key] = value
    return result


# ------------------------------------------------------------------ root


@click.group(context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "MQBROKERCTL"})
@click.option("--url", default="http://127.0.0.1:15672", show_default=True, help="management API base URL")
@click.option("--user", "-u", default="guest", show_default=True)
@click.option("--password", "-p", default="guest", show_default=True)
@click.option("--vhost", "-V", default="/", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--timeout", default=60.0, show_default=True, help="HTTP timeout in seconds")
@click.option(
    "--amqp",
    metavar="URL",
    default=None,
    help="peek/move/replay over plain AMQP (amqp://user:pass@host:5672/%2F) instead of the HTTP API",
)
@click.version_option(package_name="mqbroker")
@click.pass_context
def cli(ctx: click.Context, url: str, user: str, password: str, vhost: str, fmt: str, timeout: float, amqp: str | None) -> None:
    """Operate a running mqbroker (RabbitMQ-compatible management API)."""
    ctx.obj = Ctx(Api(url, user, password, vhost, timeout), fmt, amqp)


@cli.command()
@pass_ctx
def overview(ctx: Ctx) -> None:
    """Broker totals and message rates."""
    data = ctx.api.get("/api/overview")
    if ctx.json:
        emit_json(data)
        return
    stats = data.get("message_stats", {})
    totals = data.get("queue_totals", {})
    objects = data.get("object_totals", {})
    grid = Table(title=f"mqbroker {data.get('product_version')}", title_justify="left", show_header=False)
    grid.add_column("what")
    grid.add_column("value", justify="right")
    for label, value in (
        ("publish/s", fmt_rate(pluck(stats, "publish_details.rate"))),
        ("deliver/s", fmt_rate(pluck(stats, "deliver_get_details.rate"))),
        ("ack/s", fmt_rate(pluck(stats, "ack_details.rate"))),
        ("messages ready", totals.get("messages_ready")),
        ("messages unacked", totals.get("messages_unacknowledged")),
        ("connections", objects.get("connections")),
        ("channels", objects.get("channels")),
        ("consumers", objects.get("consumers")),
        ("queues", objects.get("queues")),
        ("exchanges", objects.get("exchanges")),
        ("uptime", fmt_age(data.get("uptime_s"))),
        ("speaks as", f"RabbitMQ {data.get('rabbitmq_version')}"),
    ):
        grid.add_row(label, fmt_value(value))
    out.print(grid)


# ------------------------------------------------------------------ list


@cli.group(name="list")
def list_() -> None:
    """List objects (queues, exchanges, bindings, connections, ...)."""


def _lister(kind: str, per_vhost: bool) -> None:
    @list_.command(name=kind, help=f"List {kind}.")
    @click.option("--all-vhosts", "-A", is_flag=True, help="every vhost, not just --vhost")
    @pass_ctx
    def command(ctx: Ctx, all_vhosts: bool) -> None:
        api = ctx.api
        if per_vhost and not all_vhosts:
            rows = api.get(api.path(kind, api.q(api.vhost)))
        else:
            rows = api.get(api.path(kind))
        if kind == "bindings" or kind == "exchanges":
            rows = sorted(rows, key=lambda r: (r.get("vhost", ""), r.get("name", r.get("source", ""))))
        elif rows and "name" in rows[0]:
            rows = sorted(rows, key=lambda r: (str(r.get("vhost", "")), str(r.get("name"))))
        show(ctx, kind, rows)


for _kind, _per_vhost in (
    ("queues", True),
    ("exchanges", True),
    ("bindings", True),
    ("consumers", True),
    ("connections", False),
    ("channels", False),
    ("vhosts", False),
    ("users", False),
    ("permissions", False),
    ("policies", False),
):
    _lister(_kind, _per_vhost)


# ------------------------------------------------------- declare / delete


@cli.group()
def declare() -> None:
    """Declare a queue, an exchange or a binding."""


@declare.command(name="queue")
@click.argument("name")
@click.option("--durable/--transient", default=True, show_default=True)
@click.option("--auto-delete", is_flag=True)
@click.option("--arg", "args", multiple=True, metavar="KEY=VALUE", help="queue argument (x-message-ttl=60000)")
@pass_ctx
def declare_queue(ctx: Ctx, name: str, durable: bool, auto_delete: bool, args: tuple[str, ...]) -> None:
    api = ctx.api
    api.call(
        "PUT",
        api.path("queues", api.q(api.vhost), api.q(name)),
        {"durable": durable, "auto_delete": auto_delete, "arguments": parse_pairs(args, "--arg")},
    )
    done(ctx, {"declared": "queue", "name": name})


@declare.command(name="exchange")
@click.argument("name")
@click.option("--type", "type_", default="direct", show_default=True)
@click.option("--durable/--transient", default=True, show_default=True)
@click.option("--auto-delete", is_flag=True)
@click.option("--internal", is_flag=True)
@click.option("--arg", "args", multiple=True, metavar="KEY=VALUE")
@pass_ctx
def declare_exchange(ctx: Ctx, name: str, type_: str, durable: bool, auto_delete: bool, internal: bool, args: tuple[str, ...]) -> None:
    api = ctx.api
    api.call(
        "PUT",
        api.path("exchanges", api.q(api.vhost), api.q(name)),
        {
            "type": type_,
            "durable": durable,
            "auto_delete": auto_delete,
            "internal": internal,
            "arguments": parse_pairs(args, "--arg"),
        },
    )
    done(ctx, {"declared": "exchange", "name": name})


@declare.command(name="binding")
@click.argument("source")
@click.argument("destination")
@click.option("--destination-type", type=click.Choice(["queue", "exchange"]), default="queue", show_default=True)
@click.option("--routing-key", "-k", default="")
@click.option("--arg", "args", multiple=True, metavar="KEY=VALUE")
@pass_ctx
def declare_binding(ctx: Ctx, source: str, destination: str, destination_type: str, routing_key: str, args: tuple[str, ...]) -> None:
    api = ctx.api
    api.call(
        "POST",
        api.path("bindings", api.q(api.vhost), "e", api.q(source), destination_type[0], api.q(destination)),
        {"routing_key": routing_key, "arguments": parse_pairs(args, "--arg")},
    )
    done(ctx, {"declared": "binding", "source": source, "destination": destination, "routing_key": routing_key})


@cli.group()
def delete() -> None:
    """Delete a queue, an exchange or a binding."""


@delete.command(name="queue")
@click.argument("name")
@click.option("--if-empty", is_flag=True)
@click.option("--if-unused", is_flag=True)
@pass_ctx
def delete_queue(ctx: Ctx, name: str, if_empty: bool, if_unused: bool) -> None:
    api = ctx.api
    api.call(
        "DELETE",
        api.path("queues", api.q(api.vhost), api.q(name)),
        **{"if-empty": "true" if if_empty else None, "if-unused": "true" if if_unused else None},
    )
    done(ctx, {"deleted": "queue", "name": name})


@delete.command(name="exchange")
@click.argument("name")
@click.option("--if-unused", is_flag=True)
@pass_ctx
def delete_exchange(ctx: Ctx, name: str, if_unused: bool) -> None:
    api = ctx.api
    api.call(
        "DELETE",
        api.path("exchanges", api.q(api.vhost), api.q(name)),
        **{"if-unused": "true" if if_unused else None},
    )
    done(ctx, {"deleted": "exchange", "name": name})


@delete.command(name="binding")
@click.argument("source")
@click.argument("destination")
@click.option("--destination-type", type=click.Choice(["queue", "exchange"]), default="queue", show_default=True)
@click.option("--routing-key", "-k", default="")
@click.option("--arg", "args", multiple=True, metavar="KEY=VALUE")
@pass_ctx
def delete_binding(ctx: Ctx, source: str, destination: str, destination_type: str, routing_key: str, args: tuple[str, ...]) -> None:
    api = ctx.api
    base = api.path("bindings", api.q(api.vhost), "e", api.q(source), destination_type[0], api.q(destination))
    arguments = parse_pairs(args, "--arg")
    for row in api.get(base):
        if row["routing_key"] == routing_key and row.get("arguments", {}) == arguments:
            api.call("DELETE", base + "/" + api.q(row["properties_key"]))
            done(ctx, {"deleted": "binding", "source": source, "destination": destination, "routing_key": routing_key})
            return
    fail("no such binding")


def done(ctx: Ctx, data: dict[str, Any]) -> None:
    if ctx.json:
        emit_json(data)
    else:
        out.print(", ".join(f"{k}: {v}" for k, v in data.items()))


@cli.command()
@click.argument("queue")
@pass_ctx
def purge(ctx: Ctx, queue: str) -> None:
    """Remove every ready message from a queue."""
    api = ctx.api
    before = api.get(api.path("queues", api.q(api.vhost), api.q(queue))).get("messages_ready", 0)
    api.call("DELETE", api.path("queues", api.q(api.vhost), api.q(queue), "contents"))
    done(ctx, {"purged": queue, "messages": before})


# ------------------------------------------------------- messages


def death_summary(deaths: list[dict[str, Any]]) -> str:
    parts = []
    for death in deaths:
        keys = ",".join(death.get("routing-keys") or [])
        parts.append(
            f"{death.get('reason')} in '{death.get('queue')}' "
            f"(exchange '{death.get('exchange')}', keys {keys or '-'}) "
            f"x{death.get('count')} at {fmt_time(death.get('time'))}"
        )
    return "\n".join(parts)


@cli.command()
@click.argument("queue")
@click.option("--count", "-n", default=20, show_default=True)
@click.option("--after", default=0, help="cursor: show messages with seq greater than this")
@click.option("--state", type=click.Choice(["ready", "unacked", "all"]), default="ready", show_default=True)
@click.option("--truncate", default=200, show_default=True, help="payload bytes to show")
@pass_ctx
def peek(ctx: Ctx, queue: str, count: int, after: int, state: str, truncate: int) -> None:
    """Show messages without consuming them (order and redelivered flags
    are untouched), with each message's decoded x-death history."""
    api = ctx.api
    if ctx.amqp:
        from mqbroker.management import amqp

        data = amqp.peek(ctx.amqp, queue, count, truncate)
    else:
        data = api.get(
            api.path("queues", api.q(api.vhost), api.q(queue), "messages"),
            after=after, limit=count, state=state, truncate=truncate,
        )
    if ctx.json:
        emit_json(data)
        return
    result = Table(title=f"{queue}: {data.get('messages_ready')} ready", title_justify="left")
    for header in ("seq", "state", "routing key", "headers", "death (x-death)", "payload"):
        result.add_column(header)
    for item in data["items"]:
        headers = {
            k: v
            for k, v in (item.get("properties", {}).get("headers") or {}).items()
            if k != "x-death" and not k.startswith(("x-first-death-", "x-last-death-"))
        }
        result.add_row(
            str(item["seq"]),
            item["state"] + (" (redelivered)" if item.get("redelivered") else ""),
            f"{item.get('exchange') or '(default)'} / {item.get('routing_key')}",
            fmt_value(headers),
            death_summary(item.get("x_death") or []),
            str(item.get("payload")),
        )
    out.print(result)
    if data.get("next") is not None:
        out.print(f"more: mqbrokerctl peek {queue} --after {data['next']}")


@cli.command()
@click.argument("queue")
@click.option("--count", "-n", default=1, show_default=True)
@click.option(
    "--ackmode",
    type=click.Choice(["ack_requeue_true", "reject_requeue_true", "ack_requeue_false", "reject_requeue_false"]),
    default="ack_requeue_true",
    show_default=True,
)
@click.option("--encoding", type=click.Choice(["auto", "base64"]), default="auto", show_default=True)
@click.option("--truncate", type=int, default=None)
@pass_ctx
def get(ctx: Ctx, queue: str, count: int, ackmode: str, encoding: str, truncate: int | None) -> None:
    """Fetch messages like RabbitMQ's management 'get' (requeue modes
    reorder nothing but set redelivered; use 'peek' to leave them as is)."""
    api = ctx.api
    rows = api.call(
        "POST",
        api.path("queues", api.q(api.vhost), api.q(queue), "get"),
        {"count": count, "ackmode": ackmode, "encoding": encoding, "truncate": truncate},
    )
    if ctx.json:
        emit_json(rows)
        return
    result = Table(title=f"{queue}: {len(rows)} message(s)", title_justify="left")
    for header in ("exchange", "routing key", "redelivered", "left", "properties", "payload"):
        result.add_column(header)
    for row in rows:
        result.add_row(
            row.get("exchange") or "(default)",
            row.get("routing_key", ""),
            fmt_value(row.get("redelivered")),
            str(row.get("message_count")),
            fmt_value(row.get("properties")),
            str(row.get("payload")),
        )
    out.print(result)


@cli.command()
@click.argument("exchange")
@click.argument("routing_key")
@click.argument("payload", required=False)
@click.option("--header", "-H", "headers", multiple=True, metavar="KEY=VALUE")
@click.option("--property", "-P", "props", multiple=True, metavar="KEY=VALUE", help="content_type=..., message_id=...")
@click.option("--persistent/--transient", default=True, show_default=True)
@pass_ctx
def publish(ctx: Ctx, exchange: str, routing_key: str, payload: str | None, headers: tuple[str, ...], props: tuple[str, ...], persistent: bool) -> None:
    """Publish one message (PAYLOAD, or standard input). Use "" or
    amq.default for the default exchange."""
    api = ctx.api
    body = payload if payload is not None else sys.stdin.read()
    properties: dict[str, Any] = string_pairs(props, "--property")
    if headers:
        properties["headers"] = parse_pairs(headers, "--header")
    properties["delivery_mode"] = 2 if persistent else 1
    result = api.call(
        "POST",
        api.path("exchanges", api.q(api.vhost), api.q(exchange or "amq.default"), "publish"),
        {"routing_key": routing_key, "payload": body, "payload_encoding": "string", "properties": properties},
    )
    done(ctx, {"routed": result.get("routed")})
    if not result.get("routed"):
        sys.exit(2)


@cli.command()
@click.argument("exchange")
@click.argument("routing_key", default="")
@click.option("--header", "-H", "headers", multiple=True, metavar="KEY=VALUE")
@pass_ctx
def route(ctx: Ctx, exchange: str, routing_key: str, headers: tuple[str, ...]) -> None:
    """Explain where a message with ROUTING_KEY (and headers) would go."""
    api = ctx.api
    data = api.call(
        "POST",
        api.path("exchanges", api.q(api.vhost), api.q(exchange or "amq.default"), "route"),
        {"routing_key": routing_key, "headers": parse_pairs(headers, "--header")},
    )
    if ctx.json:
        emit_json(data)
        return
    if data["queues"]:
        out.print(f"routed to {len(data['queues'])} queue(s):")
        for queue in data["queues"]:
            hops = []
            for hop in queue["via"]:
                if "alternate_exchange" in hop:
                    hops.append(f"'{hop['exchange'] or '(default)'}' -> alternate-exchange")
                else:
                    hops.append(
                        f"'{hop['exchange'] or '(default)'}' binding '{hop['binding_key']}' "
                        f"(key '{hop['routing_key']}')"
                    )
            out.print(f"  {queue['name']}  via " + " -> ".join(hops))
    else:
        out.print("[yellow]routed nowhere[/yellow]")
    for step in data["exchanges"]:
        out.print(
            f"exchange '{step['exchange'] or '(default)'}' ({step['type']}): "
            f"{len(step['matched'])} of {step['bindings_total']} binding(s) matched"
            + (f", alternate-exchange '{step['alternate_exchange']}'" if step.get("alternate_exchange") else "")
        )
    for note in data["notes"]:
        out.print(f"note: {note}")


# ----------------------------------------------------------- move/replay


def drive_moves(
    ctx: Ctx,
    queue: str,
    endpoint: str,
    destination: dict[str, Any],
    *,
    count: int | None,
    reason: str | None,
    headers: dict[str, str],
    batch: int,
    rate: float | None,
    dry_run: bool,
    stamp: bool,
) -> None:
    if ctx.amqp:
        drive_amqp_moves(
            ctx, queue, destination, count=count, reason=reason, headers=headers,
            batch=batch, dry_run=dry_run, stamp=stamp,
        )
        return
    api = ctx.api
    path = api.path("queues", api.q(api.vhost), api.q(queue), endpoint)
    info = api.get(api.path("queues", api.q(api.vhost), api.q(queue)))
    start_depth = int(info.get("messages_ready", 0))
    total = count if count is not None else start_depth
    if rate is not None and rate > 0:
        batch = max(1, min(batch, int(rate)))
    filt: dict[str, Any] = {}
    if reason:
        filt["reason"] = reason
    if headers:
        filt["headers"] = headers
    moved = skipped = unroutable = 0
    after = 0
    plan: list[dict[str, Any]] = []
    started = time.monotonic()
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=ctx.json or not err.is_terminal,
    )
    interrupted = False
    with progress:
        task = progress.add_task(f"{'dry run' if dry_run else endpoint} {queue}", total=total or None)
        try:
            while count is None or moved < count:
                want = batch if count is None else min(batch, count - moved)
                result = api.call(
                    "POST",
                    path,
                    {
                        "count": want,
                        "after": after,
                        "destination": destination,
                        "filter": filt,
                        "dry_run": dry_run,
                        "stamp": stamp,
                    },
                )
                moved += result["moved"]
                skipped += result["skipped"]
                unroutable += result["unroutable"] + result.get("looped", 0)
                if dry_run:
                    plan.extend(result.get("plan", []))
                    after = result["cursor"]
                else:
                    # Moved entries are gone; only what stayed is skipped.
                    after = result["cursor"]
                progress.update(task, completed=moved)
                if result["done"]:
                    break
                if result["examined"] == 0:
                    break
                if rate:
                    ahead = moved / rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
        except KeyboardInterrupt:
            interrupted = True
    summary = {
        "queue": queue,
        "destination": destination,
        "moved" if not dry_run else "would_move": moved,
        "skipped_by_filter": skipped,
        "left_in_place_unroutable": unroutable,
        "dry_run": dry_run,
        "interrupted": interrupted,
        "seconds": round(time.monotonic() - started, 2),
    }
    if dry_run:
        summary["plan"] = plan[:1000]
    if ctx.json:
        emit_json(summary)
    else:
        verb = "would move" if dry_run else "moved"
        out.print(
            f"{verb} {moved} message(s) from '{queue}'"
            + (f"; {skipped} did not match the filter" if skipped else "")
            + (f"; {unroutable} left in place (their destination reached no queue)" if unroutable else "")
        )
        if dry_run:
            for row in plan[:20]:
                out.print(f"  seq {row['seq']}: -> exchange '{row['exchange'] or '(default)'}' key '{row['routing_key']}' -> {', '.join(row['queues'])}")
            if len(plan) > 20:
                out.print(f"  ... and {len(plan) - 20} more")
        if interrupted:
            err.print(
                "[yellow]interrupted[/yellow]: every batch is moved atomically by the "
                "broker, so nothing was lost or duplicated; run the same command again "
                "to move the rest."
            )
    if interrupted:
        sys.exit(130)


def drive_amqp_moves(
    ctx: Ctx,
    queue: str,
    destination: dict[str, Any],
    *,
    count: int | None,
    reason: str | None,
    headers: dict[str, str],
    batch: int,
    dry_run: bool,
    stamp: bool,
) -> None:
    from mqbroker.broker import move as moves
    from mqbroker.management import amqp

    assert ctx.amqp is not None
    target = moves.MoveTarget(
        destination["type"],
        queue=destination.get("queue"),
        exchange=destination.get("exchange"),
        routing_key=destination.get("routing_key"),
    )
    filt = moves.MoveFilter(reason=reason, headers=tuple(sorted(headers.items())))
    started = time.monotonic()
    result = amqp.move(
        ctx.amqp, queue, target, count=count,
        filter=filt if (reason or headers) else None,
        batch=batch, dry_run=dry_run, stamp=stamp,
    )
    summary = {
        "queue": queue,
        "destination": destination,
        "moved" if not dry_run else "would_move": result.moved,
        "skipped_by_filter": result.skipped,
        "left_in_place_unroutable": result.unroutable,
        "dry_run": dry_run,
        "interrupted": result.interrupted,
        "seconds": round(time.monotonic() - started, 2),
        "via": "amqp",
    }
    if dry_run:
        summary["plan"] = result.plan[:1000]
    if ctx.json:
        emit_json(summary)
    else:
        verb = "would move" if dry_run else "moved"
        out.print(
            f"{verb} {result.moved} message(s) from '{queue}' over AMQP"
            + (f"; {result.skipped} did not match the filter" if result.skipped else "")
            + (f"; {result.unroutable} left in place (unroutable)" if result.unroutable else "")
        )
        if result.interrupted:
            err.print(
                "[yellow]interrupted[/yellow] after the batch in flight was confirmed "
                "and acked; run the same command again to move the rest."
            )
    if result.interrupted:
        sys.exit(130)


def common_move_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.option("--count", "-n", type=int, default=None, help="move at most N messages"),
            click.option("--all", "all_", is_flag=True, help="move every (matching) message"),
            click.option("--reason", help="only messages whose last death reason is this (rejected, expired, maxlen, delivery_limit)"),
            click.option("--header", "-H", "headers", multiple=True, metavar="KEY=VALUE", help="only messages with this header value (e.g. x-first-death-queue=orders)"),
            click.option("--batch", default=500, show_default=True, help="messages per atomic batch"),
            click.option("--rate", type=float, default=None, help="at most this many messages per second"),
            click.option("--dry-run", is_flag=True, help="show what would move, change nothing"),
            click.option("--no-stamp", is_flag=True, help="do not add x-replayed-count/x-replayed-at headers"),
        ]
    ):
        fn = option(fn)
    return fn


def check_count(count: int | None, all_: bool) -> int | None:
    if count is None and not all_:
        raise click.UsageError("say how many: --count N or --all")
    if count is not None and all_:
        raise click.UsageError("--count and --all exclude each other")
    return count


@cli.command()
@click.argument("queue")
@click.option("--to-queue", help="move into this queue")
@click.option("--to-exchange", help="publish to this exchange (\"\" = default exchange)")
@click.option("--routing-key", "-k", default=None, help="with --to-exchange; default: each message's own key")
@click.option("--to-origin", is_flag=True, help="back to the queue each message last died in (x-death)")
@common_move_options
@pass_ctx
def move(
    ctx: Ctx, queue: str, to_queue: str | None, to_exchange: str | None, routing_key: str | None,
    to_origin: bool, count: int | None, all_: bool, reason: str | None, headers: tuple[str, ...],
    batch: int, rate: float | None, dry_run: bool, no_stamp: bool,
) -> None:
    """Move messages out of QUEUE (typically a DLQ), in atomic batches."""
    chosen = [x for x in (to_queue is not None, to_exchange is not None, to_origin) if x]
    if len(chosen) != 1:
        raise click.UsageError("choose one destination: --to-queue, --to-exchange or --to-origin")
    if to_queue is not None:
        destination: dict[str, Any] = {"type": "queue", "queue": to_queue}
    elif to_exchange is not None:
        destination = {"type": "exchange", "exchange": to_exchange, "routing_key": routing_key}
    else:
        destination = {"type": "origin"}
    drive_moves(
        ctx, queue, "move", destination,
        count=check_count(count, all_), reason=reason,
        headers=string_pairs(headers, "--header"), batch=batch, rate=rate,
        dry_run=dry_run, stamp=not no_stamp,
    )


@cli.command()
@click.argument("queue")
@common_move_options
@pass_ctx
def replay(
    ctx: Ctx, queue: str, count: int | None, all_: bool, reason: str | None,
    headers: tuple[str, ...], batch: int, rate: float | None, dry_run: bool, no_stamp: bool,
) -> None:
    """Republish dead-lettered messages to the exchange and routing keys
    they first died from (x-first-death-exchange, x-death routing-keys)."""
    drive_moves(
        ctx, queue, "replay", {"type": "first-death"},
        count=check_count(count, all_), reason=reason,
        headers=string_pairs(headers, "--header"), batch=batch, rate=rate,
        dry_run=dry_run, stamp=not no_stamp,
    )


# ------------------------------------------------------------ definitions


@cli.group()
def definitions() -> None:
    """Export or import definitions (RabbitMQ's JSON format)."""


@definitions.command(name="export")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True), default="-")
@pass_ctx
def definitions_export(ctx: Ctx, file: str) -> None:
    data = ctx.api.get("/api/definitions")
    text = json.dumps(data, indent=2, ensure_ascii=False)
    if file == "-":
        click.echo(text)
    else:
        with open(file, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
        if not ctx.json:
            err.print(f"exported {len(data.get('queues', []))} queue(s), {len(data.get('exchanges', []))} exchange(s), {len(data.get('bindings', []))} binding(s) to {file}")


@definitions.command(name="import")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@pass_ctx
def definitions_import(ctx: Ctx, file: str) -> None:
    if file == "-":
        data = json.load(sys.stdin)
    else:
        with open(file, encoding="utf-8") as fh:
            data = json.load(fh)
    ctx.api.call("POST", "/api/definitions", data)
    done(ctx, {"imported": file})


# ---------------------------------------------------------------- policies


@cli.group()
def policies() -> None:
    """List, set and clear policies."""


@policies.command(name="list")
@pass_ctx
def policies_list(ctx: Ctx) -> None:
    show(ctx, "policies", ctx.api.get("/api/policies"))


@policies.command(name="set")
@click.argument("name")
@click.argument("pattern")
@click.argument("definition")
@click.option("--apply-to", type=click.Choice(["all", "queues", "exchanges"]), default="all", show_default=True)
@click.option("--priority", default=0, show_default=True)
@pass_ctx
def policies_set(ctx: Ctx, name: str, pattern: str, definition: str, apply_to: str, priority: int) -> None:
    """Set policy NAME for names matching PATTERN to DEFINITION (JSON)."""
    try:
        parsed = json.loads(definition)
    except ValueError as exc:
        raise click.BadParameter(f"DEFINITION is not JSON: {exc}") from None
    api = ctx.api
    api.call(
        "PUT",
        api.path("policies", api.q(api.vhost), api.q(name)),
        {"pattern": pattern, "definition": parsed, "apply-to": apply_to, "priority": priority},
    )
    done(ctx, {"policy": name, "set": True})


@policies.command(name="clear")
@click.argument("name")
@pass_ctx
def policies_clear(ctx: Ctx, name: str) -> None:
    api = ctx.api
    api.call("DELETE", api.path("policies", api.q(api.vhost), api.q(name)))
    done(ctx, {"policy": name, "cleared": True})


# ------------------------------------------------------ users, vhosts, ...


@cli.group()
def users() -> None:
    """Manage users."""


@users.command(name="list")
@pass_ctx
def users_list(ctx: Ctx) -> None:
    show(ctx, "users", ctx.api.get("/api/users"))


@users.command(name="add")
@click.argument("name")
@click.argument("password")
@click.option("--tags", default="", help="comma-separated: administrator,management,...")
@pass_ctx
def users_add(ctx: Ctx, name: str, password: str, tags: str) -> None:
    api = ctx.api
    api.call("PUT", api.path("users", api.q(name)), {"password": password, "tags": tags})
    done(ctx, {"user": name, "added": True})


@users.command(name="delete")
@click.argument("name")
@pass_ctx
def users_delete(ctx: Ctx, name: str) -> None:
    api = ctx.api
    api.call("DELETE", api.path("users", api.q(name)))
    done(ctx, {"user": name, "deleted": True})


@cli.group()
def vhosts() -> None:
    """Manage virtual hosts."""


@vhosts.command(name="list")
@pass_ctx
def vhosts_list(ctx: Ctx) -> None:
    show(ctx, "vhosts", ctx.api.get("/api/vhosts"))


@vhosts.command(name="add")
@click.argument("name")
@pass_ctx
def vhosts_add(ctx: Ctx, name: str) -> None:
    api = ctx.api
    api.call("PUT", api.path("vhosts", api.q(name)))
    done(ctx, {"vhost": name, "added": True})


@vhosts.command(name="delete")
@click.argument("name")
@pass_ctx
def vhosts_delete(ctx: Ctx, name: str) -> None:
    api = ctx.api
    api.call("DELETE", api.path("vhosts", api.q(name)))
    done(ctx, {"vhost": name, "deleted": True})


@cli.group()
def permissions() -> None:
    """Manage permissions (configure/write/read regexes per user and vhost)."""


@permissions.command(name="list")
@pass_ctx
def permissions_list(ctx: Ctx) -> None:
    show(ctx, "permissions", ctx.api.get("/api/permissions"))


@permissions.command(name="set")
@click.argument("user")
@click.option("--configure", default=".*", show_default=True)
@click.option("--write", default=".*", show_default=True)
@click.option("--read", default=".*", show_default=True)
@pass_ctx
def permissions_set(ctx: Ctx, user: str, configure: str, write: str, read: str) -> None:
    api = ctx.api
    api.call(
        "PUT",
        api.path("permissions", api.q(api.vhost), api.q(user)),
        {"configure": configure, "write": write, "read": read},
    )
    done(ctx, {"user": user, "vhost": api.vhost, "set": True})


@permissions.command(name="clear")
@click.argument("user")
@pass_ctx
def permissions_clear(ctx: Ctx, user: str) -> None:
    api = ctx.api
    api.call("DELETE", api.path("permissions", api.q(api.vhost), api.q(user)))
    done(ctx, {"user": user, "vhost": api.vhost, "cleared": True})


@cli.command(name="close-connection")
@click.argument("name")
@click.option("--reason", default="Closed via mqbrokerctl", show_default=True)
@pass_ctx
def close_connection(ctx: Ctx, name: str, reason: str) -> None:
    """Close a client connection (see 'list connections' for names)."""
    api = ctx.api
    api.headers["X-Reason"] = reason
    api.call("DELETE", api.path("connections", api.q(name)))
    done(ctx, {"closed": name})


@cli.command()
@pass_ctx
def health(ctx: Ctx) -> None:
    """Alarms and an aliveness test of the vhost (exit 1 when unhealthy)."""
    api = ctx.api
    status, raw = api.request("GET", "/api/health/checks/alarms")
    try:
        alarms = json.loads(raw)
    except ValueError:
        fail(f"GET /api/health/checks/alarms: {status}")
    alive = api.get(api.path("aliveness-test", api.q(api.vhost)))
    data = {"alarms": alarms, "aliveness": alive}
    healthy = alarms.get("status") == "ok" and alive.get("status") == "ok"
    if ctx.json:
        emit_json(data)
    else:
        out.print(f"alarms: {alarms.get('status')}; aliveness of '{api.vhost}': {alive.get('status')}")
    if not healthy:
        sys.exit(1)


def main() -> None:
    cli(prog_name="mqbrokerctl")


if __name__ == "__main__":
    main()
