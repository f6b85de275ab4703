"""Exchange type names to the classes that implement them.

Strategy: one module-level table, filled at import with the four AMQP
types and open through ``register()``, so later types (x-delayed-message,
x-consistent-hash) add themselves without this module knowing about them,
as ``rabbit_registry`` does. An unknown name is a channel error (406), as
in RabbitMQ releases since 2024, not the older 503 connection close.
"""

from __future__ import annotations

from typing import TypeVar

from ..errors import PreconditionFailed
from .base import ExchangeType
from .direct import DirectExchange
from .fanout import FanoutExchange
from .headers import HeadersExchange
from .topic import TopicExchange

E = TypeVar("E", bound=type[ExchangeType])

EXCHANGE_TYPES: dict[str, type[ExchangeType]] = {}


def register(cls: E) -> E:
    """Make ``cls`` declarable under its ``type_name`` (usable as a decorator).

    Registering another class under a taken name is a programming error.
    """
    name = cls.type_name
    taken = EXCHANGE_TYPES.get(name)
    if taken is not None and taken is not cls:
        raise ValueError(
            f"exchange type '{name}' is already {taken.__qualname__}"
        )
    EXCHANGE_TYPES[name] = cls
    return cls


def exchange_type(name: str) -> type[ExchangeType]:
    """The class for an ``exchange.declare`` type; 406 if there is none."""
    try:
        return EXCHANGE_TYPES[name]
    except KeyError:
        raise PreconditionFailed(f"unknown exchange type '{name}'") from None


for _cls in (DirectExchange, FanoutExchange, TopicExchange, HeadersExchange):
    register(_cls)
