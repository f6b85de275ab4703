"""An exchange as the broker sees it: metadata around a routing strategy.

Strategy: the routing strategy (``ExchangeType``) owns bindings; this
object owns what is declared about the exchange and the list of publish
hooks that apply to it (the type's own ``on_publish``, deduplication by
argument), computed once at declare so the publish path only loops over a
usually empty tuple.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mqbroker.exchanges.base import ExchangeType, FieldTable, Verdict
from mqbroker.exchanges.dedup import dedup_hook, deduplicates

if TYPE_CHECKING:
    from mqbroker.exchanges.base import PublishPort
    from mqbroker.model.message import Message

PublishHook = Callable[
    ["PublishPort", "Exchange", "Message", list[str], FieldTable | None], Verdict
]


class Exchange:
    __slots__ = (
        "vhost",
        "name",
        "type_name",
        "durable",
        "auto_delete",
        "internal",
        "arguments",
        "impl",
        "builtin",
        "policy",
        "dedup",
        "hooks",
    )

    def __init__(
        self,
        vhost: str,
        name: str,
        type_name: str,
        impl: ExchangeType,
        *,
        durable: bool,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: dict[str, Any] | None = None,
        builtin: bool = False,
    ) -> None:
        self.vhost = vhost
        self.name = name
        self.type_name = type_name
        self.impl = impl
        self.durable = durable
        self.auto_delete = auto_delete
        self.internal = internal
        self.arguments = arguments or {}
        self.builtin = builtin
        # The definition of the policy that applies (broker/policies.py).
        self.policy: dict[str, Any] | None = None
        # Deduplication cache (exchanges/dedup.py): None until first used,
        # False when the exchange does not deduplicate.
        self.dedup: Any = None
        self.hooks = _hooks_for(self)

    @property
    def alternate(self) -> str | None:
        """The ``alternate-exchange`` argument, else the policy's."""
        value = self.arguments.get("alternate-exchange")
        if value is None and self.policy is not None:
            value = self.policy.get("alternate-exchange")
        if isinstance(value, bytes | bytearray):
            value = bytes(value).decode("utf-8", "replace")
        return value if isinstance(value, str) and value else None

    def record(self) -> dict[str, Any]:
        return {
            "vhost": self.vhost,
            "name": self.name,
            "type": self.type_name,
            "durable": self.durable,
            "auto_delete": self.auto_delete,
            "internal": self.internal,
            "arguments": self.arguments,
        }


def _hooks_for(exchange: Exchange) -> tuple[PublishHook, ...]:
    hooks: list[PublishHook] = []
    if exchange.impl.has_publish_hook:
        hooks.append(exchange.impl.on_publish)
    if deduplicates(exchange):
        hooks.append(dedup_hook)
    return tuple(hooks)
