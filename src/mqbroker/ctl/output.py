"""How ``mqbrokerctl`` shows things: rich tables for people (one column
set per object kind), JSON for scripts, and the small parsers of KEY=VALUE
options.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable, Iterable
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from mqbroker.ctl.api import Ctx

out = Console(highlight=False, soft_wrap=False)
err = Console(stderr=True, highlight=False)



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
        ("msgs/s", "messages_details.rate", fmt_rate),
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
    "streams": [
        ("vhost", "vhost", fmt_value),
        ("name", "name", fmt_value),
        ("super stream", "super_stream", fmt_value),
        ("first", "first_offset", fmt_value),
        ("last", "last_offset", fmt_value),
        ("messages", "messages", fmt_value),
        ("bytes", "bytes", fmt_value),
        ("segments", "segments", fmt_value),
        ("max age", "retention.max_age_seconds", fmt_age),
        ("max bytes", "retention.max_bytes", fmt_value),
    ],
    "groups": [
        ("vhost", "vhost", fmt_value),
        ("group", "group", fmt_value),
        ("stream", "stream", fmt_value),
        ("committed", "committed_offset", fmt_value),
        ("lag", "lag", fmt_value),
        ("owner", "owner", fmt_value),
    ],
    "cluster": [
        ("node", "name", fmt_value),
        ("role", "role", fmt_value),
        ("in sync", "in_sync", fmt_value),
        ("connected", "connected", fmt_value),
        ("lag bytes", "lag_bytes", fmt_value),
        ("amqp", "amqp", fmt_value),
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
            "ready", "unacked", "consumers", "channels", "messages", "msgs/s", "publish/s",
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
    # Rates come from the broker's samplers; an API (or an older broker) that
    # does not report them gets no empty rate columns.
    if rows:
        columns = [
            c for c in columns
            if c[2] is not fmt_rate or any(pluck(r, c[1]) is not None for r in rows)
        ]
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

def done(ctx: Ctx, data: dict[str, Any]) -> None:
    if ctx.json:
        emit_json(data)
    else:
        out.print(", ".join(f"{k}: {v}" for k, v in data.items()))
