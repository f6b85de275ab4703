"""The root command (global options) and the commands every session
starts with: ``overview`` and ``list``.
"""

from __future__ import annotations

import click
from rich.table import Table

from mqbroker.ctl.api import Api, Ctx, pass_ctx
from mqbroker.ctl.output import (
    emit_json,
    fmt_age,
    fmt_rate,
    fmt_value,
    out,
    pluck,
    show,
)


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


