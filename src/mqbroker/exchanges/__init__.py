"""Exchange types: one routing strategy per file behind ``ExchangeType``.

``exchange_type(name)`` looks a declared type up in the registry;
``register()`` adds new ones.
"""

from .base import Binding, Destination, ExchangeType, FieldTable
from .direct import DirectExchange
from .fanout import FanoutExchange
from .headers import HeadersExchange
from .registry import EXCHANGE_TYPES, exchange_type, register
from .topic import TopicExchange

# Types that register themselves beyond the four AMQP ones.
from . import dedup, delayed, superstream  # noqa: E402,F401  isort: skip

__all__ = [
    "EXCHANGE_TYPES",
    "Binding",
    "Destination",
    "DirectExchange",
    "ExchangeType",
    "FanoutExchange",
    "FieldTable",
    "HeadersExchange",
    "TopicExchange",
    "exchange_type",
    "register",
]
