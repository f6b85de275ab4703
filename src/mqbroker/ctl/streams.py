"""Streams and consumer groups: ``mqbrokerctl streams``, ``groups`` and
``groups reset GROUP STREAM --to first|last|OFFSET|TIME``."""

from __future__ import annotations

import datetime as _dt

import click

from mqbroker.ctl.api import Ctx, fail, pass_ctx
from mqbroker.ctl.app import cli
from mqbroker.ctl.output import emit_json, fmt_value, out, show


@cli.command(name="streams")
@click.option("--all-vhosts", "-A", is_flag=True, help="every vhost, not just --vhost")
@pass_ctx
def streams(ctx: Ctx, all_vhosts: bool) -> None:
    """Streams: partitions, first/last offset, messages, bytes, segments, retention."""
    api = ctx.api
    rows = api.get("/api/streams" if all_vhosts else f"/api/streams/{api.q(api.vhost)}")
    show(ctx, "streams", rows)


@cli.group(name="groups", invoke_without_command=True)
@click.option("--all-vhosts", "-A", is_flag=True, help="every vhost, not just --vhost")
@click.pass_context
def groups(click_ctx: click.Context, all_vhosts: bool) -> None:
    """Consumer groups: committed offset, lag and owner per partition."""
    if click_ctx.invoked_subcommand is not None:
        return
    ctx = click_ctx.find_object(Ctx)
    assert ctx is not None
    api = ctx.api
    rows = api.get("/api/stream-groups" if all_vhosts else f"/api/stream-groups/{api.q(api.vhost)}")
    show(ctx, "groups", rows)


@groups.command(name="reset")
@click.argument("group")
@click.argument("stream")
@click.option("--to", "to", required=True, metavar="first|last|OFFSET|TIME",
              help="an offset, first, last, or an ISO time (2026-12-01T10:00:00Z)")
@pass_ctx
def reset(ctx: Ctx, group: str, stream: str, to: str) -> None:
    """Move GROUP's committed offset on STREAM (only with no live member)."""
    target: object = to
    if to not in ("first", "last") and not to.lstrip("-").isdigit():
        try:
            when = _dt.datetime.fromisoformat(to.replace("Z", "+00:00"))
        except ValueError:
            fail(f"--to: not first, last, an offset or an ISO time: {to!r}")
        if when.tzinfo is None:
            when = when.replace(tzinfo=_dt.UTC)
        target = {"timestamp": int(when.timestamp())}
    api = ctx.api
    data = api.call("POST", f"/api/stream-groups/{api.q(api.vhost)}/{api.q(group)}/reset",
                    {"stream": stream, "to": target})
    if ctx.json:
        emit_json(data)
    else:
        out.print(f"group '{group}' on '{stream}' resumes at offset {fmt_value(data.get('committed_offset'))}")
