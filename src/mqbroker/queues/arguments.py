"""Validation of queue ``x-`` arguments at declare time.

Strategy: refuse a bad argument when the queue is declared (406, with
RabbitMQ's wording) rather than misbehave later; unknown ``x-`` arguments
are accepted and ignored, as RabbitMQ does.
"""

from __future__ import annotations

from typing import Any

from mqbroker import errors

QUEUE_TYPES = ("classic", "quorum")
OVERFLOW_MODES = ("drop-head", "reject-publish", "reject-publish-dlx")


def _text(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return value


def _int_arg(arguments: dict[str, Any], name: str, *, minimum: int) -> None:
    if name not in arguments:
        return
    value = arguments[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise errors.PreconditionFailed(
            f"invalid arg '{name}' for queue: {value!r} is not an integer"
        )
    if value < minimum:
        raise errors.PreconditionFailed(
            f"invalid arg '{name}' for queue: {value} is below {minimum}"
        )


def check_queue_arguments(
    arguments: dict[str, Any], *, durable: bool, exclusive: bool
) -> None:
    _int_arg(arguments, "x-message-ttl", minimum=0)
    _int_arg(arguments, "x-expires", minimum=1)
    _int_arg(arguments, "x-max-length", minimum=0)
    _int_arg(arguments, "x-max-length-bytes", minimum=0)
    _int_arg(arguments, "x-delivery-limit", minimum=-1)
    if "x-max-priority" in arguments:
        _int_arg(arguments, "x-max-priority", minimum=0)
        if arguments["x-max-priority"] > 255:
            raise errors.PreconditionFailed(
                "invalid arg 'x-max-priority' for queue: "
                f"{arguments['x-max-priority']} is above 255"
            )
    overflow = _text(arguments.get("x-overflow"))
    if overflow is not None and overflow not in OVERFLOW_MODES:
        raise errors.PreconditionFailed(
            f"invalid arg 'x-overflow' for queue: {overflow!r}"
        )
    queue_type = _text(arguments.get("x-queue-type"))
    if queue_type == "stream":
        raise errors.PreconditionFailed(
            "invalid arg 'x-queue-type': stream queues are not supported by "
            "mqbroker yet"
        )
    if queue_type is not None and queue_type not in QUEUE_TYPES:
        raise errors.PreconditionFailed(
            f"invalid arg 'x-queue-type' for queue: unknown type {queue_type!r}"
        )
    if queue_type == "quorum" and (not durable or exclusive):
        raise errors.PreconditionFailed(
            "invalid property 'non-durable' for queue: quorum queues must be "
            "durable and non-exclusive"
            if not durable
            else "invalid property 'exclusive-owner' for queue: quorum queues "
            "cannot be exclusive"
        )
