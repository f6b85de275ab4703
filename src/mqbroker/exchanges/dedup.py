"""The exchange-level deduplication guard (see ``model/dedup.py``).

Strategy: a publish hook. The plugin's exchange type
``x-message-deduplication`` routes like fanout; any other exchange declared
with ``x-message-deduplication: true`` gets the same hook. A duplicate is
dropped before routing (a mandatory publish then gets ``basic.return``, as
with the plugin) and is still confirmed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from mqbroker import errors
from mqbroker.exchanges.base import FieldTable, Verdict
from mqbroker.exchanges.fanout import FanoutExchange
from mqbroker.exchanges.registry import register
from mqbroker.model.dedup import (
    DEDUP_TYPE,
    DEFAULT_CACHE_SIZE,
    DedupCache,
    dedup_key,
    positive_int,
    truthy,
)
from mqbroker.model.message import Message

if TYPE_CHECKING:
    from mqbroker.exchanges.base import PublishPort
    from mqbroker.exchanges.exchange import Exchange


@register
class DedupExchange(FanoutExchange):
    """The plugin's exchange type: fanout routing behind a dedup cache."""

    type_name: ClassVar[str] = DEDUP_TYPE

    @classmethod
    def from_arguments(cls, arguments: dict[str, Any]) -> DedupExchange:
        if positive_int(arguments.get("x-cache-size")) is None:
            raise errors.PreconditionFailed(
                "Missing or invalid argument, 'x-cache-size' must be an "
                "integer greater than 0"
            )
        if "x-cache-ttl" in arguments and positive_int(arguments["x-cache-ttl"]) is None:
            raise errors.PreconditionFailed(
                "Invalid argument, 'x-cache-ttl' must be an integer greater than 0"
            )
        return cls()


def exchange_cache(exchange: Exchange) -> DedupCache | None:
    cache = exchange.dedup
    if cache is None:
        args = exchange.arguments
        if exchange.type_name == DEDUP_TYPE or truthy(args.get("x-message-deduplication")):
            cache = DedupCache(
                positive_int(args.get("x-cache-size")) or DEFAULT_CACHE_SIZE,
                positive_int(args.get("x-cache-ttl")) or 0,
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
    ttl = positive_int(headers.get("x-cache-ttl")) if headers else None
    return cache.check_and_add(key, now_ms, ttl)




def dedup_hook(
    port: PublishPort,
    exchange: Exchange,
    message: Message,
    keys: list[str],
    headers: FieldTable | None,
) -> Verdict:
    """The publish hook: drop a duplicate, route anything else."""
    if exchange_duplicate(exchange, message, port.now_ms()):
        return Verdict.DROP
    return Verdict.ROUTE


def deduplicates(exchange: Exchange) -> bool:
    return exchange.type_name == DEDUP_TYPE or truthy(
        exchange.arguments.get("x-message-deduplication")
    )
