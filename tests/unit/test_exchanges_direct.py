from mqbroker.exchanges import Destination, DirectExchange

Q1 = Destination("queue", "q1")
Q2 = Destination("queue", "q2")
X1 = Destination("exchange", "x1")


def test_routes_only_exact_key() -> None:
    ex = DirectExchange()
    ex.bind(Q1, "a.b")
    assert set(ex.route("a.b", None)) == {Q1}
    assert set(ex.route("a", None)) == set()
    assert set(ex.route("a.b.c", None)) == set()
    assert set(ex.route("A.B", None)) == set()


def test_empty_key_is_a_key_like_any_other() -> None:
    ex = DirectExchange()
    ex.bind(Q1, "")
    assert set(ex.route("", None)) == {Q1}
    assert set(ex.route("x", None)) == set()


def test_wildcards_are_literal() -> None:
    ex = DirectExchange()
    ex.bind(Q1, "#")
    ex.bind(Q2, "*")
    assert set(ex.route("anything", None)) == set()
    assert set(ex.route("#", None)) == {Q1}


def test_several_destinations_and_exchange_destinations() -> None:
    ex = DirectExchange()
    ex.bind(Q1, "k")
    ex.bind(Q2, "k")
    ex.bind(X1, "k")
    ex.bind(Q2, "other")
    assert sorted(ex.route("k", None), key=str) == sorted(
        [Q1, Q2, X1], key=str
    )


def test_duplicate_bind_is_reported_and_harmless() -> None:
    ex = DirectExchange()
    assert ex.bind(Q1, "k") is True
    assert ex.bind(Q1, "k") is False
    assert len(ex) == 1
    assert ex.unbind(Q1, "k") is True
    assert list(ex.route("k", None)) == []


def test_bindings_differing_in_arguments_are_independent() -> None:
    ex = DirectExchange()
    ex.bind(Q1, "k", {"a": 1})
    ex.bind(Q1, "k", {"a": 2})
    assert list(ex.route("k", None)) == [Q1]
    assert ex.unbind(Q1, "k", {"a": 1})
    assert list(ex.route("k", None)) == [Q1]
    assert ex.unbind(Q1, "k", {"a": 2})
    assert list(ex.route("k", None)) == []


def test_unbind_without_original_arguments_removes_nothing() -> None:
    ex = DirectExchange()
    ex.bind(Q1, "k", {"a": 1})
    assert ex.unbind(Q1, "k") is False
    assert list(ex.route("k", None)) == [Q1]


def test_unbind_unknown_is_false() -> None:
    ex = DirectExchange()
    assert ex.unbind(Q1, "k") is False


def test_remove_destination_drops_all_its_bindings() -> None:
    ex = DirectExchange()
    ex.bind(Q1, "a")
    ex.bind(Q1, "b", {"x": 1})
    ex.bind(Q2, "a")
    assert ex.remove_destination(Q1) == 2
    assert set(ex.route("a", None)) == {Q2}
    assert set(ex.route("b", None)) == set()
    assert {b.destination for b in ex.bindings()} == {Q2}


def test_route_result_is_a_snapshot() -> None:
    ex = DirectExchange()
    ex.bind(Q1, "k")
    ex.bind(Q2, "k")
    routed = ex.route("k", None)
    for dest in routed:
        ex.remove_destination(dest)
    assert list(ex.route("k", None)) == []


def test_headers_are_ignored() -> None:
    ex = DirectExchange()
    ex.bind(Q1, "k")
    assert set(ex.route("k", {"k": "v"})) == {Q1}
