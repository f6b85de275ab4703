"""``mqbrokerctl cluster``: the nodes, who leads, who is in sync."""

from __future__ import annotations

from mqbroker.ctl.api import Ctx, pass_ctx
from mqbroker.ctl.app import cli
from mqbroker.ctl.output import emit_json, out, show


@cli.command(name="cluster")
@pass_ctx
def cluster(ctx: Ctx) -> None:
    """Cluster nodes: role, in-sync, replication lag (any node answers)."""
    data = ctx.api.get("/api/cluster")
    if ctx.json:
        emit_json(data)
        return
    out.print(f"leader: {data.get('leader')}")
    show(ctx, "cluster", data.get("nodes", []))
