import datetime
import decimal
from typing import Any

import pytest

from mqbroker.errors import PreconditionFailed
from mqbroker.exchanges import Destination, HeadersExchange

Q1 = Destination("queue", "q1")
Q2 = Destination("queue", "q2")


def matches(binding: dict[str, Any], headers: dict[str, Any] | None) -> bool:
    ex = HeadersExchange()
    ex.bind(Q1, "", binding)
    return set(ex.route("", headers)) == {Q1}


# --- x-match modes -------------------------------------------------------


@pytest.mark.parametrize(
    ("binding", "headers", "expected"),
    [
        ({"x-match": "all", "a": 1, "b": 2}, {"a": 1, "b": 2}, True),
        ({"x-match": "all", "a": 1, "b": 2}, {"a": 1, "b": 2, "c": 3}, True),
        ({"x-match": "all", "a": 1, "b": 2}, {"a": 1}, False),
        ({"x-match": "all", "a": 1, "b": 2}, {"a": 1, "b": 3}, False),
        ({"x-match": "any", "a": 1, "b": 2}, {"a": 1}, True),
        ({"x-match": "any", "a": 1, "b": 2}, {"b": 2, "c": 9}, True),
        ({"x-match": "any", "a": 1, "b": 2}, {"a": 2, "b": 1}, False),
        ({"x-match": "any", "a": 1, "b": 2}, {}, False),
        # x-match defaults to all
        ({"a": 1, "b": 2}, {"a": 1}, False),
        ({"a": 1, "b": 2}, {"a": 1, "b": 2}, True),
        ({}, {}, True),
        ({}, None, True),
        # all with no other keys matches everything; any alone nothing
        ({"x-match": "all"}, {}, True),
        ({"x-match": "all"}, None, True),
        ({"x-match": "all"}, {"k": "v"}, True),
        ({"x-match": "any"}, {"k": "v"}, False),
        ({"x-match": "any"}, {"x-match": "any"}, False),
        ({"x-match": "any"}, None, False),
    ],
)
def test_modes(
    binding: dict[str, Any], headers: dict[str, Any] | None, expected: bool
) -> None:
    assert matches(binding, headers) is expected


def test_x_keys_ignored_by_all_and_any() -> None:
    # any with only x- keys matches nothing, even when they are present.
    assert not matches({"x-match": "any", "x-k": "v"}, {"x-k": "v"})
    # all ignores an x- key the message lacks.
    assert matches({"x-match": "all", "x-k": "v", "a": 1}, {"a": 1})
    assert matches({"x-match": "all", "x-k": "v"}, {})
    # and an x- key the message has with another value.
    assert matches({"x-k": "v", "a": 1}, {"a": 1, "x-k": "other"})


def test_x_keys_used_by_with_x_modes() -> None:
    assert matches({"x-match": "any-with-x", "x-k": "v"}, {"x-k": "v"})
    assert not matches({"x-match": "any-with-x", "x-k": "v"}, {"x-k": "w"})
    assert not matches({"x-match": "any-with-x", "x-k": "v"}, {"k": "v"})
    both = {"x-match": "all-with-x", "x-k": "v", "a": 1}
    assert matches(both, {"x-k": "v", "a": 1})
    assert not matches(both, {"a": 1})
    assert not matches(both, {"x-k": "v"})


def test_x_match_itself_is_never_compared() -> None:
    assert matches({"x-match": "all-with-x"}, {})
    assert matches({"x-match": "all-with-x", "a": 1}, {"a": 1})
    assert not matches({"x-match": "any-with-x"}, {"x-match": "any-with-x"})


def test_no_headers_fails_all_with_keys() -> None:
    assert not matches({"a": 1}, None)
    assert not matches({"x-match": "all", "a": None}, None)
    assert not matches({"x-match": "all-with-x", "x-a": 1}, None)


# --- loose comparison ----------------------------------------------------


@pytest.mark.parametrize(
    ("bound", "sent", "expected"),
    [
        (1, 1.0, True),
        (1.0, 1, True),
        (2**40, 2**40, True),
        (1, 2, False),
        (1, 1.5, False),
        (b"x", "x", True),
        ("x", b"x", True),
        ("x", bytearray(b"x"), True),
        ("é", "é".encode(), True),
        (b"x", "y", False),
        ("1", 1, False),
        (True, 1, False),
        (1, True, False),
        (False, 0, False),
        (0, False, False),
        (True, 1.0, False),
        (True, True, True),
        (False, False, True),
        (True, False, False),
        (decimal.Decimal(1), 1, False),
        (decimal.Decimal("1.5"), decimal.Decimal("1.5"), True),
        # nested tables and arrays, compared after the same normalisation
        ({"n": 1, "s": b"x"}, {"s": "x", "n": 1.0}, True),
        ({"n": True}, {"n": 1}, False),
        ({"n": 1}, {"n": 1, "m": 2}, False),
        ([1, "a", [True]], [1.0, b"a", [True]], True),
        ([1, "a"], ["a", 1], False),
        ([True], [1], False),
        ([1], 1, False),
        ({"a": 1}, [("a", 1)], False),
    ],
)
def test_loose_comparison(bound: Any, sent: Any, expected: bool) -> None:
    assert matches({"k": bound}, {"k": sent}) is expected
    assert matches({"x-match": "any", "k": bound}, {"k": sent}) is expected


def test_timestamp_compares_as_its_seconds() -> None:
    when = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    assert matches({"t": when}, {"t": when})
    assert matches({"t": int(when.timestamp())}, {"t": when})
    assert not matches({"t": when}, {"t": "2024"})


# --- void -----------------------------------------------------------------


def test_void_binding_value_only_needs_the_key() -> None:
    assert matches({"k": None}, {"k": "anything"})
    assert matches({"k": None}, {"k": None})
    assert matches({"k": None}, {"k": False})
    assert not matches({"k": None}, {"other": 1})
    assert matches({"x-match": "any", "k": None, "j": 1}, {"k": 5})


def test_void_message_value_matches_only_void_binding_value() -> None:
    # RabbitMQ (rabbit_exchange_type_headers): only a void *binding* value
    # means "key present"; a void message value is compared like any other.
    assert not matches({"k": 1}, {"k": None})
    assert not matches({"k": "s", "j": 2}, {"k": None, "j": 2})
    assert matches({"k": None}, {"k": None})
    assert not matches({"x-match": "any", "k": 1}, {"k": None})


def test_void_inside_tables_is_plain_equality() -> None:
    assert matches({"k": {"a": None}}, {"k": {"a": None}})
    assert not matches({"k": {"a": None}}, {"k": {"a": 1}})
    assert not matches({"k": [None]}, {"k": [1]})


# --- validation ------------------------------------------------------------


@pytest.mark.parametrize("mode", ["all", "any", "all-with-x", "any-with-x"])
def test_valid_modes(mode: str) -> None:
    ex = HeadersExchange()
    assert ex.bind(Q1, "", {"x-match": mode})


def test_invalid_x_match_value() -> None:
    ex = HeadersExchange()
    with pytest.raises(PreconditionFailed) as info:
        ex.bind(Q1, "", {"x-match": "some"})
    assert info.value.reply_code == 406
    assert info.value.text == (
        'Invalid x-match field value <<"some">>; '
        "expected all, any, all-with-x, or any-with-x"
    )
    assert len(ex) == 0
    assert list(ex.route("", {})) == []


@pytest.mark.parametrize(
    ("mode", "text"),
    [
        (1, "long (value 1)"),
        (b"all", 'binary (value <<"all">>)'),
        (None, "void (value undefined)"),
        (True, "bool (value true)"),
    ],
)
def test_x_match_of_wrong_type(mode: Any, text: str) -> None:
    ex = HeadersExchange()
    with pytest.raises(PreconditionFailed) as info:
        ex.bind(Q1, "", {"x-match": mode})
    assert info.value.text == (
        f"Invalid x-match field type {text}; expected longstr"
    )
    assert len(ex) == 0


def test_x_match_is_case_sensitive() -> None:
    with pytest.raises(PreconditionFailed):
        HeadersExchange().bind(Q1, "", {"x-match": "ALL"})


# --- bindings ----------------------------------------------------------------


def test_routing_key_is_ignored() -> None:
    ex = HeadersExchange()
    ex.bind(Q1, "some-key", {"a": 1})
    assert set(ex.route("other", {"a": 1})) == {Q1}


def test_several_bindings_and_unbind() -> None:
    ex = HeadersExchange()
    ex.bind(Q1, "", {"a": 1})
    ex.bind(Q2, "", {"x-match": "any", "a": 2, "b": 2})
    ex.bind(Q1, "", {"b": 2})
    assert set(ex.route("", {"a": 1, "b": 2})) == {Q1, Q2}
    assert set(ex.route("", {"a": 2})) == {Q2}
    assert set(ex.route("", {"a": 9})) == set()
    # unbinding needs the original arguments
    assert ex.unbind(Q1, "", {"a": 1.5}) is False
    assert ex.unbind(Q1, "", {"a": 1}) is True
    assert set(ex.route("", {"a": 1})) == set()
    assert set(ex.route("", {"b": 2})) == {Q1, Q2}
    assert set(ex.route("", {"a": 2})) == {Q2}  # "a" is still compared
    assert ex.remove_destination(Q1) == 1
    assert set(ex.route("", {"b": 2})) == {Q2}


def test_unbind_matches_arguments_regardless_of_order() -> None:
    ex = HeadersExchange()
    ex.bind(Q1, "", {"x-match": "any", "a": 1, "b": {"c": [1, 2]}})
    assert ex.unbind(Q1, "", {"b": {"c": [1, 2]}, "a": 1, "x-match": "any"})
    assert list(ex.route("", {"a": 1})) == []
