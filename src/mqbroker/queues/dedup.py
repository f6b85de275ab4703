"""Message deduplication: an opt-in idempotency guard for producers.

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
from typing import TYPE_CHECKING, Any, ClassVar

from mqbroker import errors
from mqbroker.exchanges.fanout import FanoutExchange
from mqbroker.exchanges.registry import register

if TYPE_CHECKING:
    from mqbroker.core.exchange import Exchange
    from mqbroker.core.message import Message

DEDUP_TYPE = "x-message-deduplication"
HEADER = "x-deduplication-header"
DEFAULT_CACHE_SIZE = 128


def _text(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return value


def _hashable(value: Any) -> Hashable:
    value = _text(value)
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
        return ("id", _text(message_id))
    return None


def _truthy(value: Any) -> bool:
    value = _text(value)
    if isinstance(value, str):
        return value.lower() in ("true", "1", "yes")
    return bool(value)


def _positive_int(value: Any) -> int | None:
    value = _text(value)
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


# --------------------------------------------------------------- exchanges


@register
class DedupExchange(FanoutExchange):
    """The plugin's exchange type: fanout routing behind a dedup cache."""

    type_name: ClassVar[str] = DEDUP_TYPE

    @classmethod
    def from_arguments(cls, arguments: dict[str, Any]) -> DedupExchange:
        if _positive_int(arguments.get("x-cache-size")) is None:
            raise errors.PreconditionFailed(
                "Missing or invalid argument, 'x-cache-size' must be an "
                "integer greater than 0"
            )
        if "x-cache-ttl" in arguments and _positive_int(arguments["x-cache-ttl"]) is None:
            raise errors.PreconditionFailed(
                "Invalid argument, 'x-cache-ttl' must be an integer greater than 0"
            )
        return cls()


def exchange_cache(exchange: Exchange) -> DedupCache | None:
    cache = exchange.dedup
    if cache is None:
        args = exchange.arguments
        if exchange.type_name == DEDUP_TYPE or _truthy(args.get("x-message-deduplication")):
            cache = DedupCache(
                _positive_int(args.get("x-cache-size")) or DEFAULT_CACHE_SIZE,
                _positive_int(args.get("x-cache-ttl")) or 0,
            )
        else:
            cache = False
        exchange.dedup = cache
    return cache if isinstance(cache, DedupCache) else None


def exchange_duplicate(exchange: Exchange, message: Message, now_ms: int) -> bool:
    """True when the exchange deduplicates and has seen this key."""
    cache = exchange.dedup
    if cache is False:
        return False
    cache = exchange_cache(exchange)
    if cache is None:
        return False
    key = dedup_key(message)
    if key is None:
        return False
    headers = message.headers
    ttl = _positive_int(headers.get("x-cache-ttl")) if headers else None
    return cache.check_and_add(key, now_ms, ttl)


# ------------------------------------------------------------------ queues


class QueueDedup:
    """Keys of the messages a queue holds (ready or unacked)."""

    __slots__ = ("_by_key", "_by_msg", "duplicates")

    def __init__(self) -> None:
        self._by_key: dict[Hashable, int] = {}
        self._by_msg: dict[int, Hashable] = {}
        self.duplicates = 0

    def __len__(self) -> int:
        return len(self._by_key)

    def is_duplicate(self, message: Message) -> tuple[bool, Hashable | None]:
        key = dedup_key(message)
        if key is None:
            return False, None
        if key in self._by_key:
            self.duplicates += 1
            return True, key
        return False, key

    def add(self, key: Hashable | None, msg_id: int) -> None:
        if key is None:
            return
        self._by_key[key] = msg_id
        self._by_msg[msg_id] = key

    def release(self, msg_id: int) -> None:
        key = self._by_msg.pop(msg_id, None)
        if key is not None and self._by_key.get(key) == msg_id:
            del self._by_key[key]

    def clear(self) -> None:
        self._by_key.clear()
        self._by_msg.clear()

