from mqbroker.exchanges import Destination, FanoutExchange

Q1 = Destination("queue", "q1")
Q2 = Destination("queue", "q2")
X1 = Destination("exchange", "x1")


def test_every_destination_whatever_the_key() -> None:
    ex = FanoutExchange()
    ex.bind(Q1, "a")
    ex.bind(Q2, "")
    ex.bind(X1, "#")
    for key in ("", "a", "zzz", "#"):
        assert set(ex.route(key, None)) == {Q1, Q2, X1}


def test_no_bindings_routes_nowhere() -> None:
    assert list(FanoutExchange().route("k", None)) == []


def test_destination_listed_once_and_kept_until_last_binding() -> None:
    ex = FanoutExchange()
    ex.bind(Q1, "a")
    ex.bind(Q1, "b")
    ex.bind(Q1, "a", {"x": 1})
    assert list(ex.route("k", None)) == [Q1]
    ex.unbind(Q1, "a")
    ex.unbind(Q1, "b")
    assert list(ex.route("k", None)) == [Q1]
    ex.unbind(Q1, "a", {"x": 1})
    assert list(ex.route("k", None)) == []


def test_duplicate_bind_does_not_need_two_unbinds() -> None:
    ex = FanoutExchange()
    ex.bind(Q1, "a")
    assert ex.bind(Q1, "a") is False
    ex.unbind(Q1, "a")
    assert list(ex.route("k", None)) == []


def test_unbind_with_wrong_arguments_keeps_routing() -> None:
    ex = FanoutExchange()
    ex.bind(Q1, "", {"x": 1})
    assert ex.unbind(Q1, "") is False
    assert list(ex.route("", None)) == [Q1]


def test_remove_destination() -> None:
    ex = FanoutExchange()
    ex.bind(Q1, "a")
    ex.bind(Q1, "b")
    ex.bind(Q2, "a")
    assert ex.remove_destination(Q1) == 2
    assert list(ex.route("a", None)) == [Q2]
