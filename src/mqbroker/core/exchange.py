"""An exchange as the broker sees it: metadata around a routing strategy."""

from __future__ import annotations

from typing import Any

from mqbroker.exchanges.base import ExchangeType


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
        # The definition of the policy that applies (queues/policies.py).
        self.policy: dict[str, Any] | None = None
        # Deduplication cache (queues/dedup.py): None until first used,
        # False when the exchange does not deduplicate.
        self.dedup: Any = None

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
