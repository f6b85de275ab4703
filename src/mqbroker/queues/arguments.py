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
DEAD_LETTER_STRATEGIES = ("at-most-once", "at-least-once")


def _text(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return value


_AMQP_TYPE_NAMES = (
    (bool, "bool"),
    (str, "longstr"),
    (bytes, "longstr"),
    (float, "double"),
    (dict, "table"),
    (list, "array"),
)


def _type_name(value: Any) -> str:
    for cls, name in _AMQP_TYPE_NAMES:
        if isinstance(value, cls):
            return name
    return "void" if value is None else type(value).__name__


def _int_arg(
    arguments: dict[str, Any], name: str, where: str, *, minimum: int
) -> None:
    """RabbitMQ's wording: ``invalid arg 'x-expires' for queue 'q' in vhost
    '/': {value_zero,0}``."""
    if name not in arguments:
        return
    value = arguments[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise errors.PreconditionFailed(
            f"invalid arg '{name}' {where}: "
            f'"expected integer, got {_type_name(value)}"'
        )
    if value < minimum:
        reason = (
            f"{{value_zero,{value}}}"
            if value == 0
            else f"{{value_negative,{value}}}"
        )
        raise errors.PreconditionFailed(f"invalid arg '{name}' {where}: {reason}")


def _int_type_name(value: int) -> str:
    """The narrowest signed tag a client library (pamqp) encodes an int
    with: RabbitMQ names the wire type in its refusal."""
    for bits, name in ((8, "byte"), (16, "short"), (32, "signedint")):
        if -(1 << (bits - 1)) <= value < (1 << (bits - 1)):
            return name
    return "long"


def _check_dead_letter(arguments: dict[str, Any], where: str, name: str, vhost: str) -> None:
    dlx = arguments.get("x-dead-letter-exchange")
    if dlx is not None and not isinstance(dlx, str | bytes):
        kind = (
            _int_type_name(dlx)
            if isinstance(dlx, int) and not isinstance(dlx, bool)
            else _type_name(dlx)
        )
        raise errors.PreconditionFailed(
            f"invalid type '{kind}' for arg 'x-dead-letter-exchange' in queue "
            f"'{name}' in vhost '{vhost}'"
        )
    if "x-dead-letter-routing-key" in arguments and dlx is None:
        raise errors.PreconditionFailed(
            f"invalid arg 'x-dead-letter-routing-key' {where}: "
            "routing_key_but_no_dlx_defined"
        )


def _check_quorum(
    arguments: dict[str, Any], where: str, *, durable: bool, exclusive: bool, auto_delete: bool
) -> None:
    """What a quorum queue cannot be (RabbitMQ 3.10's refusals)."""
    for prop, refused in (
        ("exclusive-owner", exclusive),
        ("non-durable", not durable),
        ("auto-delete", auto_delete),
    ):
        if refused:
            raise errors.PreconditionFailed(f"invalid property '{prop}' {where}")
    if "x-max-priority" in arguments:
        raise errors.PreconditionFailed(
            f"invalid arg 'x-max-priority' {where} of queue type rabbit_quorum_queue"
        )


def check_server_named(arguments: dict[str, Any]) -> None:
    """A server-named queue must be one that may die with its connection."""
    queue_type = _text(arguments.get("x-queue-type"))
    if queue_type in ("quorum", "stream"):
        raise errors.PreconditionFailed(
            f"Cannot declare a server-named queue for type rabbit_{queue_type}_queue"
        )


def check_queue_arguments(
    arguments: dict[str, Any],
    *,
    durable: bool,
    exclusive: bool,
    auto_delete: bool = False,
    name: str = "",
    vhost: str = "/",
) -> None:
    where = f"for queue '{name}' in vhost '{vhost}'"
    _check_dead_letter(arguments, where, name, vhost)
    sac = arguments.get("x-single-active-consumer")
    if sac is not None and not isinstance(sac, bool):
        raise errors.PreconditionFailed(
            f"invalid arg 'x-single-active-consumer' {where}: "
            f"{{unacceptable_type,{_type_name(sac)}}}"
        )
    _int_arg(arguments, "x-message-ttl", where, minimum=0)
    _int_arg(arguments, "x-expires", where, minimum=1)
    _int_arg(arguments, "x-max-length", where, minimum=0)
    _int_arg(arguments, "x-max-length-bytes", where, minimum=0)
    _int_arg(arguments, "x-delivery-limit", where, minimum=-1)
    _int_arg(arguments, "x-consumer-timeout", where, minimum=0)
    if "x-max-priority" in arguments:
        _int_arg(arguments, "x-max-priority", where, minimum=0)
        if arguments["x-max-priority"] > 255:
            raise errors.PreconditionFailed(
                f"invalid arg 'x-max-priority' {where}: "
                f"{{max_value_exceeded,{arguments['x-max-priority']}}}"
            )
    overflow = _text(arguments.get("x-overflow"))
    if overflow is not None and overflow not in OVERFLOW_MODES:
        raise errors.PreconditionFailed(
            f"invalid arg 'x-overflow' {where}: invalid_overflow"
        )
    strategy = _text(arguments.get("x-dead-letter-strategy"))
    if strategy is not None and strategy not in DEAD_LETTER_STRATEGIES:
        raise errors.PreconditionFailed(
            f"invalid arg 'x-dead-letter-strategy' {where}: invalid_dlx_strategy"
        )
    queue_type = _text(arguments.get("x-queue-type"))
    if queue_type == "stream":
        raise errors.PreconditionFailed(
            "invalid arg 'x-queue-type': stream queues are not supported by "
            "mqbroker yet"
        )
    if queue_type is not None and queue_type not in QUEUE_TYPES:
        raise errors.PreconditionFailed(
            f"invalid arg 'x-queue-type' {where}: "
            f"\"unsupported queue type '{queue_type}'\""
        )
    if queue_type == "quorum":
        _check_quorum(
            arguments, where, durable=durable, exclusive=exclusive, auto_delete=auto_delete
        )
