"""Topic permissions: which routing keys a user may use on a topic exchange.

Strategy, as RabbitMQ's ``rabbit_auth_backend_internal``: a topic
permission belongs to (user, vhost, exchange) and holds two regular
expressions. ``write`` is matched against the routing key of a message
published to a *topic* exchange, ``read`` against the binding key of a
queue or exchange bound to one; with no topic permission for that
exchange, everything is allowed (they only restrict what the ordinary
permissions already allow). ``{username}`` and ``{vhost}`` in a pattern
are replaced by the caller's values first. A refusal is a channel-level
403 with RabbitMQ's text.

The publish path asks ``active`` first, so a broker without topic
permissions pays one attribute read per publish.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mqbroker import errors

if TYPE_CHECKING:
    from mqbroker.persistence.store import Store

TOPIC = "topic"


@dataclass(frozen=True)
class TopicPermission:
    user: str
    vhost: str
    exchange: str
    write: str = ".*"
    read: str = ".*"

    def __post_init__(self) -> None:
        for perm in ("write", "read"):
            pattern = getattr(self, perm)
            if not isinstance(pattern, str):
                raise TypeError(f"{perm} must be a string")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(
                    f"invalid {perm} regular expression {pattern!r}: {exc}"
                ) from None

    def allows(self, perm: str, key: str) -> bool:
        pattern = getattr(self, perm)
        pattern = pattern.replace("{username}", re.escape(self.user)).replace(
            "{vhost}", re.escape(self.vhost)
        )
        return re.search(pattern, key) is not None

    def record(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "vhost": self.vhost,
            "exchange": self.exchange,
            "write": self.write,
            "read": self.read,
        }

    @property
    def key(self) -> str:
        return f"{len(self.user)}:{self.user}:{len(self.vhost)}:{self.vhost}:{self.exchange}"


class TopicPermissions:
    """Every topic permission, stored as ``topic_permission`` definitions."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._by_key: dict[tuple[str, str, str], TopicPermission] = {}

    @property
    def active(self) -> bool:
        return bool(self._by_key)

    def recover(self) -> int:
        self._by_key.clear()
        for _, record in self.store.definitions("topic_permission"):
            try:
                perm = TopicPermission(
                    record["user"], record["vhost"], record["exchange"],
                    record.get("write", ""), record.get("read", ""),
                )
            except (KeyError, ValueError, TypeError):
                continue
            self._by_key[(perm.user, perm.vhost, perm.exchange)] = perm
        return len(self._by_key)

    def set(self, perm: TopicPermission) -> None:
        self._by_key[(perm.user, perm.vhost, perm.exchange)] = perm
        self.store.put_definition("topic_permission", perm.key, perm.record())

    def clear(self, user: str, vhost: str, exchange: str | None = None) -> int:
        """Remove one (``exchange``) or all of a user's in a vhost."""
        gone = [
            p for (u, v, x), p in self._by_key.items()
            if u == user and v == vhost and (exchange is None or x == exchange)
        ]
        for perm in gone:
            del self._by_key[(perm.user, perm.vhost, perm.exchange)]
            self.store.delete_definition("topic_permission", perm.key)
        return len(gone)

    def forget(self, *, user: str | None = None, vhost: str | None = None) -> None:
        """A user or a vhost was deleted: its topic permissions go too."""
        for perm in list(self.list(user=user, vhost=vhost)):
            self.clear(perm.user, perm.vhost, perm.exchange)

    def list(
        self, *, user: str | None = None, vhost: str | None = None
    ) -> Iterator[TopicPermission]:
        for (u, v, _), perm in sorted(self._by_key.items()):
            if (user is None or u == user) and (vhost is None or v == vhost):
                yield perm

    def check(self, user: str, vhost: str, exchange: str, perm: str, key: str) -> None:
        """403 unless ``user`` may ``perm`` ("write"/"read") ``key``."""
        found = self._by_key.get((user, vhost, exchange))
        if found is None or found.allows(perm, key):
            return
        raise errors.AccessRefused(
            f"access to topic '{key}' in exchange '{exchange}' in vhost "
            f"'{vhost}' refused for user '{user}'"
        )
