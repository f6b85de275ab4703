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
