"""Message deduplication: keys and the bounded cache, shared by the
exchange-level and the queue-level guard.

Why: an opt-in idempotency guard for producers.

Strategy: a producer that lost a publisher confirm (connection dropped
before the ack) publishes again; with deduplication on, the second copy is
recognised by its key and dropped -- but still confirmed (``basic.ack``), so
the retry loop ends and the message is enqueued once. The key is the
``x-deduplication-header`` header, else the ``message_id`` property;
a message with neither is never a duplicate. Semantics follow the
``rabbitmq-message-deduplication`` plugin (noxdafox), also built into
LavinMQ:

- **Queue level**: a queue declared with ``x-message-deduplication: true``
  (or a policy ``message-deduplication: true``) refuses a message whose key
  belongs to a message still in the queue: ready, or delivered and not yet
  acknowledged. The key is released when that message is acked, dropped,
  dead-lettered, expired or purged; a requeue keeps it. The index is rebuilt
  from the stored messages at start-up, so it survives a restart (the
  plugin's in-memory cache does not).
- **Exchange level**: the exchange type ``x-message-deduplication`` (the
  plugin's; routes like ``fanout``; ``x-cache-size`` required) or any
  exchange declared with ``x-message-deduplication: true`` (LavinMQ's way;
  ``x-cache-size`` defaults to 128) keeps the keys it saw in a bounded LRU
  cache; ``x-cache-ttl`` (ms, exchange argument, or per message as a
  header) bounds how long a key counts. A duplicate is not routed (a
  mandatory publish gets ``basic.return``, as with the plugin) and is
  confirmed. The exchange cache lives in memory only, as in the plugin.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

from mqbroker.model.message import Message

DEDUP_TYPE = "x-message-deduplication"
HEADER = "x-deduplication-header"
DEFAULT_CACHE_SIZE = 128


def text(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return value


def _hashable(value: Any) -> Hashable:
    value = text(value)
    if isinstance(value, list | tuple):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value  # type: ignore[no-any-return]


def dedup_key(message: Message) -> Hashable | None:
    """The ``x-deduplication-header`` header, else the message id."""
    props = message.props
    headers = props.headers
    if isinstance(headers, dict) and headers.get(HEADER) is not None:
        return ("h", _hashable(headers[HEADER]))
    message_id = props.message_id
    if message_id:
        return ("id", text(message_id))
    return None


def truthy(value: Any) -> bool:
    value = text(value)
    if isinstance(value, str):
        return value.lower() in ("true", "1", "yes")
    return bool(value)


def positive_int(value: Any) -> int | None:
    value = text(value)
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value


class DedupCache:
    """At most ``size`` keys, least recently *added* evicted first, each
    forgotten ``ttl_ms`` after it was added (0: never)."""

    __slots__ = ("_keys", "size", "ttl_ms")

    def __init__(self, size: int = DEFAULT_CACHE_SIZE, ttl_ms: int = 0) -> None:
        self.size = size
        self.ttl_ms = ttl_ms
        self._keys: OrderedDict[Hashable, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def contains(self, key: Hashable, now_ms: int) -> bool:
        expires = self._keys.get(key)
        if expires is None:
            return False
        if expires and expires <= now_ms:
            del self._keys[key]
            return False
        return True

    def add(self, key: Hashable, now_ms: int, ttl_ms: int | None = None) -> None:
        ttl = self.ttl_ms if ttl_ms is None else ttl_ms
        self._keys[key] = now_ms + ttl if ttl else 0
        self._keys.move_to_end(key)
        while len(self._keys) > self.size:
            self._keys.popitem(last=False)

    def check_and_add(
        self, key: Hashable, now_ms: int, ttl_ms: int | None = None
    ) -> bool:
        """True if ``key`` is a duplicate; otherwise remember it."""
        if self.contains(key, now_ms):
            return True
        self.add(key, now_ms, ttl_ms)
        return False

    def discard(self, key: Hashable) -> None:
        self._keys.pop(key, None)

    def clear(self) -> None:
        self._keys.clear()
