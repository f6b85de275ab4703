"""Looking at messages and sending them: peek (browse without taking),
get, publish and route explain.
"""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.table import Table

from mqbroker.ctl.api import Ctx, pass_ctx
from mqbroker.ctl.app import cli
from mqbroker.ctl.output import (
    done,
    emit_json,
    fmt_time,
    fmt_value,
    out,
    parse_pairs,
    string_pairs,
)


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
        from mqbroker.ctl import amqp

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


