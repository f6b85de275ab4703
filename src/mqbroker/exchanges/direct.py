"""Direct exchange: a message goes where its routing key equals the key.

Strategy: one dict from routing key to the destinations bound with it, so
``route()`` is a single lookup however many bindings there are. Each key
holds a count per destination, not a set: two bindings that differ only in
their arguments are distinct, and unbinding one of them must not stop the
other from routing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import ClassVar

from .base import Binding, Destination, ExchangeType, FieldTable


class DirectExchange(ExchangeType):
    type_name: ClassVar[str] = "direct"

    def __init__(self) -> None:
        super().__init__()
        self._by_key: dict[str, Counter[Destination]] = {}

    def route(
        self, routing_key: str, headers: FieldTable | None
    ) -> Iterable[Destination]:
        found = self._by_key.get(routing_key)
        return list(found) if found else []

    def _added(self, binding: Binding) -> None:
        counts = self._by_key.setdefault(binding.routing_key, Counter())
        counts[binding.destination] += 1

    def _removed(self, binding: Binding) -> None:
        counts = self._by_key[binding.routing_key]
        counts[binding.destination] -= 1
        if counts[binding.destination] <= 0:
            del counts[binding.destination]
        if not counts:
            del self._by_key[binding.routing_key]
