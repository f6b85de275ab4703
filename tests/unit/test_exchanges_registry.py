from collections.abc import Iterable, Iterator
from typing import ClassVar

import pytest

from mqbroker.errors import PreconditionFailed
from mqbroker.exchanges import (
    EXCHANGE_TYPES,
    Binding,
    Destination,
    DirectExchange,
    ExchangeType,
    FanoutExchange,
    FieldTable,
    HeadersExchange,
    TopicExchange,
    exchange_type,
    register,
)


def test_the_four_amqp_types() -> None:
    assert exchange_type("direct") is DirectExchange
    assert exchange_type("fanout") is FanoutExchange
    assert exchange_type("topic") is TopicExchange
    assert exchange_type("headers") is HeadersExchange
    # plus the plugin-style types (exchanges/delayed.py, dedup.py and
    # superstream.py), registered when the broker imports them
    assert set(EXCHANGE_TYPES) - {
        "x-delayed-message", "x-message-deduplication", "x-super-stream"
    } == {
        "direct", "fanout", "topic", "headers"
    }


@pytest.mark.parametrize("name", ["foo", "", "Direct", "x-no-such-type"])
def test_unknown_type_is_406(name: str) -> None:
    with pytest.raises(PreconditionFailed) as info:
        exchange_type(name)
    assert info.value.reply_code == 406
    assert not info.value.hard
    assert info.value.text == f"unknown exchange type '{name}'"


class _Nowhere(ExchangeType):
    type_name: ClassVar[str] = "x-test-nowhere"

    def route(
        self, routing_key: str, headers: FieldTable | None
    ) -> Iterable[Destination]:
        return []

    def _added(self, binding: Binding) -> None:
        pass

    def _removed(self, binding: Binding) -> None:
        pass


@pytest.fixture
def registered() -> Iterator[type[_Nowhere]]:
    yield register(_Nowhere)
    del EXCHANGE_TYPES[_Nowhere.type_name]


def test_register_adds_a_type(registered: type[_Nowhere]) -> None:
    assert registered is _Nowhere
    assert exchange_type("x-test-nowhere") is _Nowhere
    assert register(_Nowhere) is _Nowhere  # idempotent


def test_register_refuses_to_replace_a_type() -> None:
    class Impostor(_Nowhere):
        type_name: ClassVar[str] = "direct"

    with pytest.raises(ValueError, match="already"):
        register(Impostor)
    assert exchange_type("direct") is DirectExchange


def test_each_type_names_itself() -> None:
    for name, cls in EXCHANGE_TYPES.items():
        assert cls.type_name == name
        assert isinstance(cls(), ExchangeType)
