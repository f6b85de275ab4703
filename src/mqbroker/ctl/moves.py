"""Moving and replaying dead-lettered messages in batches.

Strategy: every command is one or a few HTTP calls; the broker does the
work. Tables (rich) are for people, ``--format json`` prints the API's JSON
for scripts. ``move``/``replay`` only *drive* batches: the broker moves each
batch atomically (one store transaction: removed from the source and
enqueued at the destination together), so an interrupted run (Ctrl-C, a
crash of either side) loses and duplicates nothing, and running the same
command again finishes the job.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import click
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from mqbroker.ctl.api import Ctx, pass_ctx
from mqbroker.ctl.app import cli
from mqbroker.ctl.output import (
    emit_json,
    err,
    out,
    string_pairs,
)


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
    from mqbroker.ctl import amqp
    from mqbroker.ctl.deaths import MoveFilter, MoveTarget

    assert ctx.amqp is not None
    target = MoveTarget(
        destination["type"],
        queue=destination.get("queue"),
        exchange=destination.get("exchange"),
        routing_key=destination.get("routing_key"),
    )
    filt = MoveFilter(reason=reason, headers=tuple(sorted(headers.items())))
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


