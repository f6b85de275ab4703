"""The one routing interface every exchange type implements.

Strategy: an exchange type is a small object that owns its bindings and
answers ``route()``. It knows nothing about queues, vhosts or the exchange
graph: destinations are opaque hashable keys, and the router
(``broker/router.py``) walks exchange-to-exchange edges, alternate exchanges
and CC/BCC itself. This mirrors ``rabbit_exchange_type`` (route, validate,
add/remove binding) so each type stays one short file.

A type that must see the whole message before routing (the delayed
exchange holds it, the deduplicating one drops repeats) overrides
``on_publish``; the publish pipeline runs every hook of an exchange
(``Exchange.hooks``) and knows none of them by name. Hooks reach the broker
only through ``PublishPort``, so this package imports nothing above it.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from ..protocol.table import TypedArray

if TYPE_CHECKING:
    from mqbroker.exchanges.exchange import Exchange
    from mqbroker.model.message import Message
    from mqbroker.persistence.store import Store

FieldTable = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a binding leads: a queue or (exchange-to-exchange) an exchange."""

    kind: Literal["queue", "exchange"]
    name: str


@dataclass(frozen=True, slots=True)
class Binding:
    destination: Destination
    routing_key: str
    # Kept as a hashable, order-independent snapshot so that "unbind with the
    # same arguments" can find the binding again, as RabbitMQ requires.
    arguments: tuple[tuple[str, Any], ...] = ()

    @staticmethod
    def freeze(arguments: FieldTable | None) -> tuple[tuple[str, Any], ...]:
        return freeze_table(arguments)

    def args_dict(self) -> dict[str, Any]:
        return thaw_table(self.arguments)


def freeze_table(table: FieldTable | None) -> tuple[tuple[str, Any], ...]:
    """A hashable, order-independent form of an AMQP field table."""
    if not table:
        return ()
    return tuple(sorted((k, _freeze(v)) for k, v in table.items()))


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return ("__table__", freeze_table(value))
    if isinstance(value, TypedArray) and value.encoded:  # keeps its wire types
        return ("__typed_array__", (value.encoded, tuple(_freeze(v) for v in value)))
    if isinstance(value, list | tuple):
        return ("__array__", tuple(_freeze(v) for v in value))
    if isinstance(value, bytearray):
        return bytes(value)
    return value


def thaw_table(frozen: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    return {k: _thaw(v) for k, v in frozen}


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple) and len(value) == 2:
        tag, inner = value
        if tag == "__table__":
            return thaw_table(inner)
        if tag == "__array__":
            return [_thaw(v) for v in inner]
        if tag == "__typed_array__":
            typed = TypedArray(_thaw(v) for v in inner[1])
            typed.encoded = inner[0]
            return typed
    return value


class Verdict(enum.Enum):
    """What a publish hook decided."""

    ROUTE = "route"  # go on: route the message now
    DROP = "drop"  # route it nowhere (a duplicate): still confirmed
    HELD = "held"  # kept by the exchange in memory, routed later
    HELD_DURABLE = "held-durable"  # kept and written to the store


class TimerTarget(Protocol):
    """Something the broker's timer wakes at ``next_deadline()``."""

    deleted: bool

    def next_deadline(self) -> int | None: ...

    def expire(self, now_ms: int) -> int: ...

    def idle_expired(self, now_ms: int) -> bool: ...

    def dispatch(self, now_ms: int) -> None: ...


class PublishPort(Protocol):
    """What a publish hook may ask of the broker (implemented by the
    broker's publish pipeline)."""

    @property
    def store(self) -> Store: ...

    def now_ms(self) -> int: ...

    def new_msg_id(self) -> int: ...

    def schedule(self, target: TimerTarget) -> None: ...

    def request_commit(self) -> None: ...

    def exchange_alive(self, exchange: Exchange) -> bool:
        """The exchange is still declared (not deleted or replaced)."""

    def release(self, exchange: Exchange, message: Message, keys: list[str]) -> bool:
        """Route a message held earlier through the publish pipeline now;
        True when that wrote to the durable store."""


class ExchangeType(abc.ABC):
    """One exchange's bindings and its matching rule."""

    # True when ``route()`` looks at the routing key only, never at the
    # headers: the router may then cache its answer per routing key.
    key_only: ClassVar[bool] = True

    type_name: ClassVar[str]

    def __init__(self) -> None:
        self._bindings: set[Binding] = set()
        # destination -> its bindings here: deleting a queue (say, the
        # thousand exclusive queues of a closing connection) must not scan
        # every binding of the default exchange once per queue.
        self._by_dest: dict[Destination, set[Binding]] = {}

    # True when ``on_publish`` does something: the pipeline calls it then.
    has_publish_hook: ClassVar[bool] = False

    def validate_binding(self, routing_key: str, arguments: FieldTable) -> None:
        """Raise an ``AMQPError`` (406) for a binding this type cannot hold."""

    def on_publish(
        self,
        port: PublishPort,
        exchange: Exchange,
        message: Message,
        keys: list[str],
        headers: FieldTable | None,
    ) -> Verdict:
        """See the whole message before routing (``has_publish_hook``)."""
        return Verdict.ROUTE

    def on_delete(self) -> None:
        """The exchange is being deleted."""

    def bind(
        self,
        destination: Destination,
        routing_key: str,
        arguments: FieldTable | None = None,
    ) -> bool:
        """Add a binding; False if an identical one already existed."""
        binding = Binding(destination, routing_key, freeze_table(arguments))
        if binding in self._bindings:
            return False
        self.validate_binding(routing_key, arguments or {})
        self._bindings.add(binding)
        self._by_dest.setdefault(destination, set()).add(binding)
        self._added(binding)
        return True

    def unbind(
        self,
        destination: Destination,
        routing_key: str,
        arguments: FieldTable | None = None,
    ) -> bool:
        """Remove the binding with exactly these arguments; False if absent."""
        binding = Binding(destination, routing_key, freeze_table(arguments))
        if binding not in self._bindings:
            return False
        self._bindings.remove(binding)
        self._forget_dest(binding)
        self._removed(binding)
        return True

    def _forget_dest(self, binding: Binding) -> None:
        found = self._by_dest.get(binding.destination)
        if found is not None:
            found.discard(binding)
            if not found:
                del self._by_dest[binding.destination]

    def bindings_to(self, destination: Destination) -> list[Binding]:
        """The bindings to one destination, without a scan."""
        return list(self._by_dest.get(destination, ()))

    def remove_destination(self, destination: Destination) -> int:
        """Drop every binding to ``destination`` (queue or exchange deleted)."""
        gone = self.bindings_to(destination)
        for binding in gone:
            self._bindings.remove(binding)
            self._forget_dest(binding)
            self._removed(binding)
        return len(gone)

    def bindings(self) -> Iterator[Binding]:
        return iter(self._bindings)

    def __len__(self) -> int:
        return len(self._bindings)

    @abc.abstractmethod
    def route(
        self, routing_key: str, headers: FieldTable | None
    ) -> Iterable[Destination]:
        """Destinations this exchange's own bindings select (may repeat)."""

    @abc.abstractmethod
    def _added(self, binding: Binding) -> None:
        """Index a new binding (the set of bindings is already updated)."""

    @abc.abstractmethod
    def _removed(self, binding: Binding) -> None:
        """Drop a binding from the index."""
