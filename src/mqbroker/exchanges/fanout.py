"""Fanout exchange: every bound destination gets every message.

Strategy: keep a count per destination, so ``route()`` returns the distinct
destinations without scanning bindings, and a destination bound twice (same
key or different keys or arguments) stays routed until its last binding
goes. The routing key and headers are ignored, as AMQP specifies.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import ClassVar

from .base import Binding, Destination, ExchangeType, FieldTable


class FanoutExchange(ExchangeType):
    type_name: ClassVar[str] = "fanout"

    def __init__(self) -> None:
        super().__init__()
        self._counts: Counter[Destination] = Counter()

    def route(
        self, routing_key: str, headers: FieldTable | None
    ) -> Iterable[Destination]:
        return list(self._counts)

    def _added(self, binding: Binding) -> None:
        self._counts[binding.destination] += 1

    def _removed(self, binding: Binding) -> None:
        self._counts[binding.destination] -= 1
        if self._counts[binding.destination] <= 0:
            del self._counts[binding.destination]
