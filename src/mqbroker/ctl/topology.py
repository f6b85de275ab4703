"""Declaring and deleting queues, exchanges and bindings, and purging:
each one HTTP call, refused by the broker exactly as over AMQP.
"""

from __future__ import annotations

import click

from mqbroker.ctl.api import Ctx, fail, pass_ctx
from mqbroker.ctl.app import cli
from mqbroker.ctl.output import (
    done,
    parse_pairs,
)


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




@cli.command()
@click.argument("queue")
@pass_ctx
def purge(ctx: Ctx, queue: str) -> None:
    """Remove every ready message from a queue."""
    api = ctx.api
    before = api.get(api.path("queues", api.q(api.vhost), api.q(queue))).get("messages_ready", 0)
    api.call("DELETE", api.path("queues", api.q(api.vhost), api.q(queue), "contents"))
    done(ctx, {"purged": queue, "messages": before})


