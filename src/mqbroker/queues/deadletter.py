"""Dead-lettering: the ``x-death`` history and where a dead letter goes.

Strategy: a dead-lettered message is a new message (new id) published to
the queue's dead-letter exchange; this module computes its content-header
properties and routing keys exactly as RabbitMQ (3.10, checked by the
differential tests in tests/policies) writes them:
- headers are edited on the raw bytes: every value the publisher sent keeps
  its field-table type tag (an ``I`` stays an ``I``), and only the headers
  RabbitMQ touches are re-encoded; the edited table is sorted by key, as
  RabbitMQ's ``set_table_value`` leaves it;
- ``x-death`` is a list of tables, one per (queue, reason), newest first; a
  repeat death increments ``count`` (a long-long) and moves that entry to
  the front, keeping its first ``time``; a message's very first death
  entry lists its keys as count, reason, queue, time, exchange,
  routing-keys[, original-expiration], later new or updated entries are
  sorted by key (RabbitMQ's ``sort_field_table``);
- ``original-expiration`` is recorded and the ``expiration`` property
  removed, so the copy does not expire again on the way;
- ``x-first-death-*`` are set once, ``x-last-death-*`` (RabbitMQ 3.13+)
  every time;
- routing keys are the original key plus CC (never BCC), unless the queue
  sets ``x-dead-letter-routing-key``, which replaces them all and drops the
  CC header;
- a cycle (the target queue is in the death history, this death included,
  with no ``rejected`` on the way) drops the message for that queue, so a
  queue dead-lettering expired messages to itself drops them at once.

The raw header editing itself lives in ``model/headers.py``.
"""

from __future__ import annotations

import datetime
import struct
from typing import Any

from pamqp import decode as pdecode

from mqbroker.model.headers import (
    RawItems,
    edit_headers,
    join_array,
    join_table,
    sender_keys,
    sorted_items,
    split_array,
    split_table,
)
from mqbroker.model.message import Message
from mqbroker.protocol.table import Typed, encode_value

# ------------------------------------------------------------------ deaths


def _text(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return value


def _decode_entry(encoded: bytes) -> dict[str, Any] | None:
    if not encoded or encoded[:1] != b"F":
        return None
    try:
        _, table = pdecode.field_table(encoded[1:])
    except (ValueError, TypeError, KeyError, IndexError, struct.error, RecursionError):
        return None
    return table


def prior_deaths(message: Message) -> list[dict[str, Any]]:
    headers = message.headers or {}
    deaths = headers.get("x-death")
    if not isinstance(deaths, list):
        return []
    return [d for d in deaths if isinstance(d, dict)]


def is_cycle(deaths: list[tuple[str | None, str | None]], target_queue: str) -> bool:
    """RabbitMQ's ``is_cycle``: ``deaths`` is the history *including* this
    death, newest first, as (queue, reason); a dead letter reaching a queue
    it already died in, with no ``rejected`` on the way, is dropped."""
    for queue, reason in deaths:
        if reason == "rejected":
            return False
        if queue == target_queue:
            return True
    return False


def dead_letter_properties(
    message: Message,
    queue: str,
    reason: str,
    now: datetime.datetime,
    routing_key_override: str | None = None,
) -> tuple[bytes, list[tuple[str | None, str | None]]]:
    """-> (raw properties of the dead-lettered copy, the death history
    including this death as (queue, reason), newest first)."""
    props = message.props
    headers = message.headers or {}
    keys = [message.routing_key] + sender_keys(headers, "CC")
    history: list[tuple[str | None, str | None]] = []

    def new_entry(sort: bool) -> bytes:
        entry: RawItems = [
            ("count", encode_value(Typed("l", 1))),
            ("reason", encode_value(reason)),
            ("queue", encode_value(queue)),
            ("time", encode_value(Typed("T", now))),
            ("exchange", encode_value(message.exchange)),
            ("routing-keys", encode_value(list(keys))),
        ]
        expiration = props.expiration
        if expiration is not None:
            entry.append(("original-expiration", encode_value(_text(expiration))))
        return b"F" + join_table(sorted_items(entry) if sort else entry)

    def edit(items: RawItems) -> RawItems:
        table = dict(items)
        drop = {"x-delivery-count"}
        if routing_key_override is not None:
            drop.add("CC")
        existing = table.get("x-death")
        if existing is not None and existing[:1] == b"A":
            elements = split_array(existing)
            found = None
            others = []
            for element in elements:
                decoded = _decode_entry(element)
                if (
                    found is None
                    and decoded is not None
                    and _text(decoded.get("queue")) == queue
                    and _text(decoded.get("reason")) == reason
                ):
                    found = (element, decoded)
                    continue
                others.append(element)
                history.append(
                    (_text(decoded.get("queue")), _text(decoded.get("reason")))
                    if decoded is not None
                    else (None, None)
                )
            if found is not None:
                entry_items, _ = split_table(found[0], 1)
                count = found[1].get("count")
                count = count if isinstance(count, int) else 0
                entry_items = [(k, v) for k, v in entry_items if k != "count"]
                entry_items.append(("count", encode_value(Typed("l", count + 1))))
                first = b"F" + join_table(sorted_items(entry_items))
            else:
                first = new_entry(sort=True)
            x_death = join_array([first] + others)
        else:
            x_death = join_array([new_entry(sort=False)])
        history.insert(0, (queue, reason))
        out = {k: v for k, v in table.items() if k not in drop}
        out["x-death"] = x_death
        for suffix, value in (
            ("reason", reason), ("queue", queue), ("exchange", message.exchange)
        ):
            out.setdefault(f"x-first-death-{suffix}", encode_value(value))
            out[f"x-last-death-{suffix}"] = encode_value(value)
        return sorted_items(list(out.items()))

    raw = edit_headers(message.properties_raw, edit, drop_expiration=True)
    return raw, history


def dead_letter_keys(message: Message, override: str | None) -> list[str]:
    if override is not None:
        return [override]
    return [message.routing_key] + sender_keys(message.headers, "CC")
