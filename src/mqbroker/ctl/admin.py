"""Definitions, policies, users, vhosts, permissions, closing
connections and the health check.
"""

from __future__ import annotations

import json
import sys

import click

from mqbroker.ctl.api import Ctx, fail, pass_ctx
from mqbroker.ctl.app import cli
from mqbroker.ctl.output import (
    done,
    emit_json,
    err,
    out,
    show,
)


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

