"""What a stream accepts at declare and at consume, in RabbitMQ's words.

Strategy: pure functions over the decoded argument tables, so the rules are
unit-testable and the queue type only sees validated values. Texts are
RabbitMQ 3.10's (checked by tests/streams against it); where RabbitMQ
crashes the channel with 541 on a bad ``x-stream-offset`` we answer a 406
that says what was wrong.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from typing import Any

from mqbroker import errors

MAX_SEGMENT_SIZE_LIMIT = 3_000_000_000
DEFAULT_SEGMENT_BYTES = 500_000_000
# Arguments RabbitMQ refuses on a stream.
REFUSED = (
    "x-message-ttl", "x-dead-letter-exchange", "x-dead-letter-routing-key",
    "x-max-length", "x-max-priority", "x-single-active-consumer", "x-overflow",
    "x-expires", "x-queue-mode", "x-delivery-limit", "x-queue-master-locator",
    "x-dead-letter-strategy", "x-message-deduplication",
)
_AGE = re.compile(r"^([0-9]+)([YMDhms])$")
_UNIT_S = {"Y": 365 * 86400, "M": 30 * 86400, "D": 86400, "h": 3600, "m": 60, "s": 1}


def _text(value: Any) -> Any:
    return bytes(value).decode("utf-8", "replace") if isinstance(value, bytes | bytearray) else value


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        for bits, name in ((8, "byte"), (16, "short"), (32, "signedint")):
            if -(1 << (bits - 1)) <= value < (1 << (bits - 1)):
                return name
        return "long"
    if isinstance(value, str | bytes):
        return "longstr"
    return {float: "double", dict: "table", list: "array"}.get(type(value), "void")


def parse_age(value: Any) -> int | None:
    """``"7D"`` -> ms; None if it is not RabbitMQ's age syntax (or 0)."""
    match = _AGE.match(_text(value)) if isinstance(_text(value), str) else None
    if match is None or int(match.group(1)) == 0:
        return None
    return int(match.group(1)) * _UNIT_S[match.group(2)] * 1000


@dataclass(frozen=True, slots=True)
class Retention:
    max_bytes: int | None
    max_age_ms: int | None
    segment_bytes: int


def check_declare(
    arguments: dict[str, Any], *, name: str, vhost: str,
    durable: bool, exclusive: bool, auto_delete: bool,
) -> None:
    where = f"for queue '{name}' in vhost '{vhost}'"
    for prop, refused in (
        ("exclusive-owner", exclusive), ("non-durable", not durable), ("auto-delete", auto_delete)
    ):
        if refused:
            raise errors.PreconditionFailed(f"invalid property '{prop}' {where}")
    for arg in REFUSED:
        if arg in arguments:
            raise errors.PreconditionFailed(
                f"invalid arg '{arg}' {where} of queue type rabbit_stream_queue"
            )
    if "x-max-age" in arguments:
        age = arguments["x-max-age"]
        if not isinstance(_text(age), str):
            raise errors.PreconditionFailed(
                f"invalid arg 'x-max-age' {where}: {{unacceptable_type,{_type_name(age)}}}"
            )
        if parse_age(age) is None:
            raise errors.PreconditionFailed(f"invalid arg 'x-max-age' {where}: invalid_max_age")
    for arg in ("x-max-length-bytes", "x-stream-max-segment-size-bytes"):
        if arg not in arguments:
            continue
        value = arguments[arg]
        if isinstance(value, bool) or not isinstance(value, int):
            raise errors.PreconditionFailed(
                f"invalid arg '{arg}' {where}: \"expected integer, got {_type_name(value)}\""
            )
        if value < 0:
            raise errors.PreconditionFailed(f"invalid arg '{arg}' {where}: {{value_negative,{value}}}")
    segment = arguments.get("x-stream-max-segment-size-bytes")
    if isinstance(segment, int) and segment > MAX_SEGMENT_SIZE_LIMIT:
        raise errors.PreconditionFailed(
            "Exceeded max value for x-stream-max-segment-size-bytes"
        )


def retention(arguments: dict[str, Any], policy: dict[str, Any]) -> Retention:
    """Policies win over arguments, as in RabbitMQ."""
    def pick(policy_key: str, arg: str) -> Any:
        return policy[policy_key] if policy_key in policy else arguments.get(arg)

    age = pick("max-age", "x-max-age")
    size = pick("max-length-bytes", "x-max-length-bytes")
    segment = pick("stream-max-segment-size-bytes", "x-stream-max-segment-size-bytes")
    return Retention(
        max_bytes=size if isinstance(size, int) and not isinstance(size, bool) else None,
        max_age_ms=parse_age(age) if age is not None else None,
        segment_bytes=(
            min(segment, MAX_SEGMENT_SIZE_LIMIT)
            if isinstance(segment, int) and not isinstance(segment, bool) and segment > 0
            else DEFAULT_SEGMENT_BYTES
        ),
    )


# ---------------------------------------------------------------- consume


@dataclass(frozen=True, slots=True)
class StartSpec:
    """Where a consumer starts: ``kind`` first/last/next/offset/timestamp."""

    kind: str
    value: int = 0  # the offset, or the time in ms


def start_spec(value: Any, now_ms: int) -> StartSpec:
    """``x-stream-offset``: first, last, next, an offset, an AMQP
    timestamp (seconds) or an interval back from now ("1h")."""
    if value is None:
        return StartSpec("next")
    text = _text(value)
    if isinstance(text, str):
        if text in ("first", "last", "next"):
            return StartSpec(text)
        age = parse_age(text)
        if age is not None:
            return StartSpec("timestamp", now_ms - age)
    elif isinstance(value, datetime.datetime):
        stamp = value if value.tzinfo else value.replace(tzinfo=datetime.UTC)
        return StartSpec("timestamp", int(stamp.timestamp()) * 1000)
    elif isinstance(value, int) and not isinstance(value, bool):
        return StartSpec("offset", max(value, 0))
    raise errors.PreconditionFailed(
        f"invalid arg 'x-stream-offset': {value!r} is not first, last, next, an "
        "offset, a timestamp or an interval such as \"1h\""
    )


@dataclass(frozen=True, slots=True)
class StreamFilter:
    values: frozenset[str]
    match_unfiltered: bool

    def passes(self, value: str | None) -> bool:
        if value is None:
            return self.match_unfiltered
        return value in self.values


def consume_filter(arguments: dict[str, Any]) -> StreamFilter | None:
    raw = arguments.get("x-stream-filter")
    if raw is None:
        return None
    items = raw if isinstance(raw, list) else [raw]
    values = [_text(v) for v in items]
    if not values or not all(isinstance(v, str) for v in values):
        raise errors.PreconditionFailed(
            "invalid arg 'x-stream-filter': a string or an array of strings"
        )
    unfiltered = arguments.get("x-stream-match-unfiltered", False)
    if not isinstance(unfiltered, bool):
        raise errors.PreconditionFailed("invalid arg 'x-stream-match-unfiltered': a boolean")
    return StreamFilter(frozenset(values), unfiltered)
