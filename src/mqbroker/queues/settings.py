"""A queue's effective settings: its ``x-`` arguments over its policy.

Strategy: the queue never reads raw arguments on the hot path; it reads one
frozen ``QueueSettings`` built when the queue is declared and rebuilt when a
policy changes. Arguments win over a policy's definition for the same key,
as in RabbitMQ, so a client's explicit declare is never overridden -- except
for the numeric limits (TTLs, lengths, delivery limit, consumer timeout),
where the lower of the two applies, as RabbitMQ's ``res_min`` does.
Queue type, priorities and single-active-consumer are declare-time only
(not policy keys), as in RabbitMQ.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# policy definition key -> queue argument
POLICY_KEYS = {
    "message-ttl": "x-message-ttl",
    "expires": "x-expires",
    "max-length": "x-max-length",
    "max-length-bytes": "x-max-length-bytes",
    "overflow": "x-overflow",
    "dead-letter-exchange": "x-dead-letter-exchange",
    "dead-letter-routing-key": "x-dead-letter-routing-key",
    "delivery-limit": "x-delivery-limit",
    "consumer-timeout": "x-consumer-timeout",
    "dead-letter-strategy": "x-dead-letter-strategy",
    "message-deduplication": "x-message-deduplication",
}

# Where both a policy and an argument set one of these, the lower wins.
MIN_KEYS = frozenset(
    (
        "x-message-ttl",
        "x-expires",
        "x-max-length",
        "x-max-length-bytes",
        "x-delivery-limit",
        "x-consumer-timeout",
    )
)


def _resolve(arg: str, policy_value: Any, arg_value: Any) -> Any:
    if arg not in MIN_KEYS:
        return arg_value
    p, a = _int(policy_value), _int(arg_value)
    if p is None or a is None:
        return arg_value if a is not None else policy_value
    if arg == "x-delivery-limit" and (p < 0 or a < 0):
        return max(p, a)  # -1 (unlimited) loses to any real limit
    return min(p, a)

# RabbitMQ 4: quorum queues have a delivery limit of 20 unless told.
QUORUM_DEFAULT_DELIVERY_LIMIT = 20


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class QueueSettings:
    message_ttl: int | None = None
    expires: int | None = None
    max_length: int | None = None
    max_length_bytes: int | None = None
    overflow: str = "drop-head"
    dead_letter_exchange: str | None = None
    dead_letter_routing_key: str | None = None
    delivery_limit: int | None = None
    max_priority: int | None = None
    queue_type: str = "classic"
    single_active_consumer: bool = False
    consumer_timeout: int | None = None
    deduplication: bool = False
    dead_letter_strategy: str = "at-most-once"
    policy: str | None = None

    @property
    def quorum(self) -> bool:
        return self.queue_type == "quorum"

    @property
    def at_least_once(self) -> bool:
        """RabbitMQ's at-least-once dead-lettering: quorum queues with
        ``x-overflow: reject-publish`` only (otherwise at-most-once)."""
        return (
            self.quorum
            and self.dead_letter_strategy == "at-least-once"
            and self.overflow == "reject-publish"
            and self.dead_letter_exchange is not None
        )

    @property
    def has_length_limit(self) -> bool:
        return self.max_length is not None or self.max_length_bytes is not None

    @property
    def counts_deliveries(self) -> bool:
        """Whether deliveries carry an ``x-delivery-count`` header."""
        return self.quorum or self.delivery_limit is not None

    @classmethod
    def build(
        cls,
        arguments: Mapping[str, Any],
        policy: str | None = None,
        definition: Mapping[str, Any] | None = None,
    ) -> QueueSettings:
        merged: dict[str, Any] = dict(arguments)
        for key, value in (definition or {}).items():
            arg = POLICY_KEYS.get(key)
            if arg is None:
                continue
            merged[arg] = _resolve(arg, value, merged[arg]) if arg in merged else value
        queue_type = _text(merged.get("x-queue-type")) or "classic"
        limit = _int(merged.get("x-delivery-limit"))
        if limit is None and queue_type == "quorum":
            limit = QUORUM_DEFAULT_DELIVERY_LIMIT
        if limit is not None and limit < 0:
            limit = None  # -1: unlimited
        priority = _int(merged.get("x-max-priority"))
        dlx = _text(merged.get("x-dead-letter-exchange"))
        return cls(
            message_ttl=_int(merged.get("x-message-ttl")),
            expires=_int(merged.get("x-expires")),
            max_length=_int(merged.get("x-max-length")),
            max_length_bytes=_int(merged.get("x-max-length-bytes")),
            overflow=_text(merged.get("x-overflow")) or "drop-head",
            dead_letter_exchange=dlx,
            dead_letter_routing_key=_text(merged.get("x-dead-letter-routing-key")),
            delivery_limit=limit,
            max_priority=priority if priority else None,
            queue_type=queue_type,
            single_active_consumer=bool(merged.get("x-single-active-consumer")),
            consumer_timeout=_int(merged.get("x-consumer-timeout")),
            deduplication=bool(merged.get("x-message-deduplication")),
            dead_letter_strategy=_text(merged.get("x-dead-letter-strategy")) or "at-most-once",
            policy=policy,
        )
