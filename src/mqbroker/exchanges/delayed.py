"""The ``x-delayed-message`` exchange: publish now, route later.

Semantics of the well-known plugin (rabbitmq-delayed-message-exchange):
- declared with type ``x-delayed-message`` and the argument
  ``x-delayed-type`` naming the routing type used underneath (direct,
  topic, fanout, headers...); without it, or with an unknown type, the
  declare fails with 406;
- a message with an ``x-delay`` header (milliseconds; an integer, or a
  string of digits) greater than 0 is held by the exchange and routed when
  it is due, through the exchange's bindings as they are *then*; without
  ``x-delay``, or with ``x-delay`` <= 0, it is routed at once;
- a delayed message is delivered with ``x-delay`` negated (``-5000``), the
  plugin's way of saying "this one was delayed";
- held messages are ordered by due time, not by arrival; a held message
  that finds no queue when due is dropped (``mandatory`` cannot apply: the
  publisher is long gone), and the publish itself is confirmed when the
  message is safely held;
- the per-message ``expiration`` starts counting when the message reaches
  its queue.

Durability: a persistent message held by a durable exchange is written
through the store, under the queue-like key ``store_key(vhost,
"amq.delayed-" + exchange)`` (a name clients cannot declare), with
``StoredEntry.expires_at`` = its due time, so confirms wait for the disk
and a restart (even ``kill -9``) loses nothing: ``recover()`` rebuilds the
held messages of every durable delayed exchange and drops the entries of
exchanges that are gone. Transient messages, or any message held by a
transient exchange, live in memory only, as with the plugin. Releasing a
message writes its queue entries and removes the held entry in the same
store batch (one transaction).

Timers: each delayed exchange's ``HeldMessages`` is a ``TimerTarget``
(``next_deadline``, ``expire``, ``idle_expired``, ``dispatch``,
``deleted``), so ``port.schedule(held)`` wakes it when the first message is
due; there is one timer task for the whole broker. Holding is the type's
publish hook (``on_publish``) and a release goes back through the publish
pipeline (``PublishPort.release``), so this module imports nothing above
the exchanges layer.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from mqbroker import errors
from mqbroker.exchanges.base import (
    Binding,
    Destination,
    ExchangeType,
    FieldTable,
    PublishPort,
    Verdict,
)
from mqbroker.exchanges.direct import DirectExchange
from mqbroker.exchanges.registry import EXCHANGE_TYPES, register
from mqbroker.model.headers import sender_keys, with_header
from mqbroker.model.keys import name_of_key, store_key
from mqbroker.model.message import Message
from mqbroker.persistence.store import StoredEntry, StoredMessage
from mqbroker.protocol.table import Typed

if TYPE_CHECKING:
    from mqbroker.exchanges.exchange import Exchange

DELAYED_TYPE = "x-delayed-message"
HELD_PREFIX = "amq.delayed-"


def _text(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return value


def delay_of(headers: FieldTable | None) -> int:
    """The ``x-delay`` header in ms (0 when absent, invalid or <= 0)."""
    if not headers:
        return 0
    value = _text(headers.get("x-delay"))
    if isinstance(value, bool) or value is None:
        return 0
    if isinstance(value, str):
        text = value.strip()
        if not text.lstrip("-").isdigit():
            return 0
        value = int(text)
    if isinstance(value, float):
        value = int(value)
    if not isinstance(value, int):
        return 0
    return max(value, 0)


@register
class DelayedExchange(ExchangeType):
    """Routing is the underlying type's; holding is ``HeldMessages``'."""

    type_name: ClassVar[str] = DELAYED_TYPE
    key_only: ClassVar[bool] = False  # conservative: never cached
    has_publish_hook: ClassVar[bool] = True

    def __init__(self, inner: ExchangeType | None = None) -> None:
        super().__init__()
        self.inner = inner if inner is not None else DirectExchange()
        self.held: HeldMessages | None = None

    @classmethod
    def from_arguments(cls, arguments: dict[str, Any]) -> DelayedExchange:
        name = _text(arguments.get("x-delayed-type"))
        impl = EXCHANGE_TYPES.get(name) if isinstance(name, str) else None
        if impl is None or impl is cls or getattr(impl, "from_arguments", None):
            raise errors.PreconditionFailed(
                "Invalid argument, 'x-delayed-type' must be an existing exchange type"
            )
        return cls(impl())

    def on_publish(
        self,
        port: PublishPort,
        exchange: Exchange,
        message: Message,
        keys: list[str],
        headers: FieldTable | None,
    ) -> Verdict:
        """Hold a message with ``x-delay`` > 0; route anything else now."""
        delay = delay_of(headers)
        if delay <= 0:
            return Verdict.ROUTE
        held = self.held_messages(port, exchange)
        if held.hold(message, keys, delay, port.now_ms()):
            return Verdict.HELD_DURABLE
        return Verdict.HELD

    def held_messages(self, port: PublishPort, exchange: Exchange) -> HeldMessages:
        if self.held is None or self.held.deleted:
            self.held = HeldMessages(port, exchange)
        return self.held

    def on_delete(self) -> None:
        """The exchange is deleted: its held messages are dropped now (and
        their store entries with them, so a new exchange of the same name
        starts empty)."""
        if self.held is not None:
            self.held.drop_all()

    # every binding operation is the underlying type's
    def validate_binding(self, routing_key: str, arguments: FieldTable) -> None:
        self.inner.validate_binding(routing_key, arguments)

    def bind(
        self, destination: Destination, routing_key: str, arguments: FieldTable | None = None
    ) -> bool:
        return self.inner.bind(destination, routing_key, arguments)

    def unbind(
        self, destination: Destination, routing_key: str, arguments: FieldTable | None = None
    ) -> bool:
        return self.inner.unbind(destination, routing_key, arguments)

    def remove_destination(self, destination: Destination) -> int:
        return self.inner.remove_destination(destination)

    def bindings_to(self, destination: Destination) -> list[Binding]:
        return self.inner.bindings_to(destination)

    def bindings(self) -> Iterator[Binding]:
        return self.inner.bindings()

    def __len__(self) -> int:
        return len(self.inner)

    def route(self, routing_key: str, headers: FieldTable | None) -> Iterable[Destination]:
        return self.inner.route(routing_key, headers)

    def _added(self, binding: Binding) -> None:  # pragma: no cover - delegated
        pass

    def _removed(self, binding: Binding) -> None:  # pragma: no cover - delegated
        pass


class _Held:
    __slots__ = ("delay", "due", "keys", "message", "persisted", "seq")

    def __init__(
        self, due: int, seq: int, message: Message, keys: list[str], delay: int, persisted: bool
    ) -> None:
        self.due = due
        self.seq = seq
        self.message = message
        self.keys = keys
        self.delay = delay
        self.persisted = persisted

    def __lt__(self, other: _Held) -> bool:
        return (self.due, self.seq) < (other.due, other.seq)


class HeldMessages:
    """The messages one delayed exchange holds, as a timer target."""

    def __init__(self, port: PublishPort, exchange: Exchange) -> None:
        self.port = port
        self.vhost = exchange.vhost
        self.exchange = exchange
        self.name = HELD_PREFIX + exchange.name
        self.key = store_key(exchange.vhost, self.name)
        self.heap: list[_Held] = []
        self.next_seq = 1
        self.deleted = False
        self.released = 0

    def __len__(self) -> int:
        return len(self.heap)

    # -- what the broker's timer calls
    def next_deadline(self) -> int | None:
        return self.heap[0].due if self.heap else None

    def idle_expired(self, now_ms: int) -> bool:
        return False

    def dispatch(self, now_ms: int) -> None:
        pass

    def expire(self, now_ms: int) -> int:
        """Route every message that is due; the count released."""
        port = self.port
        if not port.exchange_alive(self.exchange):
            self.drop_all()
            return 0
        store = port.store
        count = 0
        wrote = False
        heap = self.heap
        while heap and heap[0].due <= now_ms:
            held = heapq.heappop(heap)
            message = held.message
            copy = with_header(message, "x-delay", Typed("l", -held.delay))
            copy = Message(
                port.new_msg_id(), copy.exchange, copy.routing_key,
                copy.properties_raw, copy.body,
            )
            wrote |= port.release(self.exchange, copy, held.keys)
            if held.persisted:
                store.remove_entry(self.key, held.seq, message.msg_id)
                wrote = True
            count += 1
        self.released += count
        if wrote and store.durable:
            port.request_commit()
        return count

    # -- holding
    def hold(self, message: Message, keys: list[str], delay: int, now_ms: int) -> bool:
        """Hold a message for ``delay`` ms; True if it was written durably."""
        seq = self.next_seq
        self.next_seq += 1
        due = now_ms + delay
        persisted = self.exchange.durable and message.persistent
        if persisted:
            self.port.store.enqueue(
                self.key,
                StoredEntry(seq, message.msg_id, size=len(message.body), expires_at=due),
                StoredMessage(
                    message.exchange, message.routing_key,
                    message.properties_raw, message.body,
                ),
            )
        heapq.heappush(self.heap, _Held(due, seq, message, keys, delay, persisted))
        self.port.schedule(self)
        return persisted and self.port.store.durable

    def drop_all(self) -> None:
        """The exchange is gone: its held messages go with it."""
        if any(h.persisted for h in self.heap):
            self.port.store.drop_queue(self.key)
        self.heap.clear()
        self.deleted = True

    def restore(self, stored: Any, message: Message) -> None:
        headers = message.headers
        keys = [message.routing_key] + sender_keys(headers, "CC")
        delay = delay_of(headers)
        heapq.heappush(
            self.heap, _Held(stored.expires_at, stored.seq, message, keys, delay, True)
        )
        if stored.seq >= self.next_seq:
            self.next_seq = stored.seq + 1


def is_held_key(key: str) -> bool:
    """``store_key(vhost, "amq.delayed-...")``: a delayed exchange's."""
    name = name_of_key(key)
    return name is not None and name.startswith(HELD_PREFIX)
