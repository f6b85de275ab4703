"""Headers exchange: binding arguments matched against message headers.

Strategy: no index helps an all/any match over arbitrary keys, so
``route()`` checks every binding, as RabbitMQ does; but each binding's
arguments are parsed once, at bind time, into a mode and a list of
(key, normalised value) pairs, and per publish only the header keys some
binding compares are normalised. Normalising makes plain ``==`` give
RabbitMQ's loose comparison: a decoded field table has lost its wire
types, so int widths, int and float (``1 == 1.0``), and byte array and
string (both become bytes) compare equal, while booleans are tagged so
that ``True`` never equals ``1`` as it would in Python. A void (``None``)
value on either side only requires the key to be present.

``x-match`` is ``all`` (the default), ``any``, ``all-with-x`` or
``any-with-x``; keys starting with ``x-`` take part only in the ``-with-x``
modes, and ``x-match`` itself never does. So ``{x-match: all}`` alone
matches every message and ``{x-match: any}`` alone matches none.
"""

from __future__ import annotations

import calendar
import datetime
import decimal
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import PreconditionFailed
from ..protocol.table import TypedArray
from .base import Binding, Destination, ExchangeType, FieldTable

X_MATCH_MODES = ("all", "any", "all-with-x", "any-with-x")


class _Void:
    """The normalised form of an AMQP void (``None``) value."""

    def __repr__(self) -> str:
        return "VOID"


VOID = _Void()


def normalise(value: Any) -> Any:
    """The value in the form RabbitMQ's comparison sees it."""
    if value is None:
        return VOID
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, datetime.datetime):
        # An AMQP timestamp is an integer count of seconds.
        return calendar.timegm(value.utctimetuple())
    if isinstance(value, decimal.Decimal):
        return ("decimal", value.as_tuple())
    if isinstance(value, Mapping):
        items = sorted(value.items(), key=lambda item: str(item[0]))
        return ("table", tuple((str(k), normalise(v)) for k, v in items))
    if isinstance(value, list | tuple):
        encoded = value.encoded if isinstance(value, TypedArray) else None
        return ArrayValue(tuple(normalise(v) for v in value), encoded or None)
    return value


@dataclass(frozen=True, slots=True, eq=False)
class ArrayValue:
    """An array header or binding value. When both sides kept their wire
    encoding they match only element for element with the same types, as
    RabbitMQ 3.10 compares arrays (``["a", int 1]`` is not ``["a", long
    1]``); otherwise (a binding made over HTTP, or recovered from the
    store) the loose comparison of the decoded values applies."""

    items: tuple[Any, ...]
    encoded: bytes | None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ArrayValue):
            return NotImplemented
        if self.encoded is not None and other.encoded is not None:
            return self.encoded == other.encoded
        return self.items == other.items

    def __hash__(self) -> int:
        return hash(self.items)


@dataclass(frozen=True, slots=True)
class _Spec:
    match_any: bool
    pairs: tuple[tuple[str, Any], ...]

    def matches(self, headers: Mapping[str, Any]) -> bool:
        for key, wanted in self.pairs:
            hit = key in headers and (
                wanted is VOID or headers[key] == wanted
            )
            if self.match_any and hit:
                return True
            if not self.match_any and not hit:
                return False
        return not self.match_any


def _compile(arguments: Mapping[str, Any]) -> _Spec:
    mode = arguments.get("x-match", "all")
    with_x = mode in ("all-with-x", "any-with-x")
    pairs = tuple(
        (key, normalise(value))
        for key, value in arguments.items()
        if key != "x-match" and (with_x or not key.startswith("x-"))
    )
    return _Spec(mode in ("any", "any-with-x"), pairs)


class HeadersExchange(ExchangeType):
    type_name: ClassVar[str] = "headers"
    key_only: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self._specs: dict[Binding, _Spec] = {}
        # Header keys some binding compares: only those get normalised.
        self._keys: Counter[str] = Counter()

    def validate_binding(
        self, routing_key: str, arguments: FieldTable
    ) -> None:
        if "x-match" not in arguments:
            return
        mode = arguments["x-match"]
        if not isinstance(mode, str):
            raise PreconditionFailed(
                f"Invalid x-match field type {_amqp_type(mode)} "
                f"(value {_erlang(mode)}); expected longstr"
            )
        if mode not in X_MATCH_MODES:
            raise PreconditionFailed(
                f"Invalid x-match field value {_erlang(mode)}; "
                "expected all, any, all-with-x, or any-with-x"
            )

    def route(
        self, routing_key: str, headers: FieldTable | None
    ) -> Iterable[Destination]:
        if not self._specs:
            return []
        message = {
            key: normalise(value)
            for key, value in (headers or {}).items()
            if key in self._keys
        }
        return {
            binding.destination
            for binding, spec in self._specs.items()
            if spec.matches(message)
        }

    def _added(self, binding: Binding) -> None:
        spec = self._specs[binding] = _compile(binding.args_dict())
        self._keys.update(key for key, _ in spec.pairs)

    def _removed(self, binding: Binding) -> None:
        spec = self._specs.pop(binding)
        self._keys.subtract(key for key, _ in spec.pairs)
        self._keys += Counter()  # drops the keys that reached zero


def _amqp_type(value: Any) -> str:
    """RabbitMQ's name for the field type a decoded value came from."""
    kinds: tuple[tuple[type | tuple[type, ...], str], ...] = (
        (type(None), "void"),
        (bool, "bool"),
        (int, "long"),
        (float, "double"),
        (decimal.Decimal, "decimal"),
        ((bytes, bytearray), "binary"),
        (datetime.datetime, "timestamp"),
        (Mapping, "table"),
        ((list, tuple), "array"),
    )
    for kind, name in kinds:
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _erlang(value: Any) -> str:
    """Roughly how RabbitMQ's ``~tp`` prints a field value in an error."""
    if value is None:
        return "undefined"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        value = value.encode("utf-8")
    if isinstance(value, bytes | bytearray):
        text = bytes(value).decode("utf-8", "replace")
        return '<<"' + text.replace("\\", "\\\\").replace('"', '\\"') + '">>'
    return repr(value)
