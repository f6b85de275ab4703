import pytest

from mqbroker.exchanges import Destination, TopicExchange
from mqbroker.exchanges.topic import split_words

Q1 = Destination("queue", "q1")
Q2 = Destination("queue", "q2")


def matches(binding_key: str, routing_key: str) -> bool:
    ex = TopicExchange()
    ex.bind(Q1, binding_key)
    return set(ex.route(routing_key, None)) == {Q1}


@pytest.mark.parametrize(
    ("key", "words"),
    [
        ("", []),
        ("a", ["a"]),
        ("a.b", ["a", "b"]),
        ("a..b", ["a", "", "b"]),
        (".", ["", ""]),
        ("a.", ["a", ""]),
        (".a", ["", "a"]),
    ],
)
def test_split_words(key: str, words: list[str]) -> None:
    assert split_words(key) == words


@pytest.mark.parametrize(
    ("binding", "routing", "expected"),
    [
        # literal words
        ("a.b", "a.b", True),
        ("a.b", "a.b.c", False),
        ("a.b", "a", False),
        ("a.b", "b.a", False),
        # the empty routing key has zero words
        ("", "", True),
        ("", "a", False),
        ("*", "", False),
        ("#", "", True),
        ("#.#", "", True),
        ("*.#", "", False),
        ("a", "", False),
        # "*" is exactly one word, which may be empty
        ("*", "a", True),
        ("*", "a.b", False),
        ("*", ".", False),
        ("*.*", ".", True),
        ("a.*.b", "a..b", True),
        ("a.*.b", "a.b", False),
        ("a.*.b", "a.x.y.b", False),
        ("a..b", "a..b", True),
        ("a..b", "a.x.b", False),
        ("*.a", ".a", True),
        ("a.*", "a.", True),
        ("a.*", "a", False),
        # "#" is zero or more words
        ("#", "a", True),
        ("#", "a.b.c", True),
        ("#", "..", True),
        ("a.#", "a", True),
        ("a.#", "a.b.c", True),
        ("a.#", "b.a", False),
        ("#.a", "a", True),
        ("#.a", "x.y.a", True),
        ("#.a", "a.x", False),
        ("a.#.b", "a.b", True),
        ("a.#.b", "a.x.y.b", True),
        ("a.#.b", "a.x.y.c", False),
        ("#.b.#", "b", True),
        ("#.b.#", "a.b.c", True),
        ("#.b.#", "a.c", False),
        ("#.*", "", False),
        ("#.*", "a", True),
        ("#.*", "a.b.c", True),
        ("*.#.*", "a", False),
        ("*.#.*", "a.b", True),
        ("#.#.#.#", "a.b.c.d.e", True),
        ("a.#.#.b", "a.b", True),
        # "a#" and "a*" are literal words, not wildcards
        ("a#", "a", False),
        ("a#", "ab", False),
        ("a#", "a#", True),
        ("a*", "ab", False),
        ("a*", "a*", True),
        ("a.b#", "a.b.c", False),
        ("#a", "a", False),
        ("a#", "a#.b", False),
        ("x.a#", "x.a#.b", False),
        ("a#.b", "a#.x.b", False),
        ("a*.b", "a*.x.b", False),
        # a wildcard word in the routing key is only matched literally
        ("a", "#", False),
        ("a", "*", False),
        ("#", "#", True),
        ("*", "*", True),
        ("a.*", "a.#", True),
    ],
)
def test_matching(binding: str, routing: str, expected: bool) -> None:
    assert matches(binding, routing) is expected


def test_destination_reached_twice_is_listed_once() -> None:
    ex = TopicExchange()
    ex.bind(Q1, "a.*")
    ex.bind(Q1, "#")
    ex.bind(Q1, "#.#")
    ex.bind(Q2, "a.b")
    routed = list(ex.route("a.b", None))
    assert sorted(routed, key=str) == sorted([Q1, Q2], key=str)


def test_unbind_prunes_trie_and_keeps_shared_prefixes() -> None:
    ex = TopicExchange()
    ex.bind(Q1, "a.b.c")
    ex.bind(Q2, "a.b")
    assert ex.node_count() == 3
    ex.unbind(Q1, "a.b.c")
    assert ex.node_count() == 2
    assert set(ex.route("a.b", None)) == {Q2}
    assert set(ex.route("a.b.c", None)) == set()
    ex.unbind(Q2, "a.b")
    assert ex.node_count() == 0


def test_unbind_of_inner_node_keeps_deeper_bindings() -> None:
    ex = TopicExchange()
    ex.bind(Q1, "a.#")
    ex.bind(Q2, "a.#.z")
    ex.unbind(Q1, "a.#")
    assert set(ex.route("a.x.z", None)) == {Q2}
    assert set(ex.route("a.x", None)) == set()
    assert ex.node_count() == 3


def test_empty_binding_key_lives_at_root() -> None:
    ex = TopicExchange()
    ex.bind(Q1, "")
    assert ex.node_count() == 0
    assert set(ex.route("", None)) == {Q1}
    ex.unbind(Q1, "")
    assert set(ex.route("", None)) == set()


def test_bindings_differing_in_arguments_are_independent() -> None:
    ex = TopicExchange()
    ex.bind(Q1, "a.*", {"v": 1})
    ex.bind(Q1, "a.*", {"v": 2})
    ex.unbind(Q1, "a.*", {"v": 1})
    assert set(ex.route("a.b", None)) == {Q1}
    ex.unbind(Q1, "a.*", {"v": 2})
    assert set(ex.route("a.b", None)) == set()
    assert ex.node_count() == 0


def test_remove_destination_prunes() -> None:
    ex = TopicExchange()
    ex.bind(Q1, "a.#")
    ex.bind(Q1, "*.b")
    ex.bind(Q2, "a.b")
    assert ex.remove_destination(Q1) == 2
    assert set(ex.route("a.b", None)) == {Q2}
    assert set(ex.route("a.c", None)) == set()
    assert ex.node_count() == 2


@pytest.mark.timeout(10)
def test_many_hashes_against_long_key_stays_fast() -> None:
    ex = TopicExchange()
    ex.bind(Q1, ".".join(["#"] * 30) + ".z")
    words = ["w"] * 200
    assert set(ex.route(".".join(words), None)) == set()
    assert set(ex.route(".".join([*words, "z"]), None)) == {Q1}


class _NoScanDict(dict[str, object]):
    """A trie level that fails the test if route() iterates over it."""

    def _scan(self, *args: object) -> object:
        raise AssertionError("route() scanned a whole trie level")

    __iter__ = keys = values = items = _scan  # type: ignore[assignment]


def test_route_looks_words_up_instead_of_scanning() -> None:
    ex = TopicExchange()
    for i in range(2000):
        ex.bind(Destination("queue", f"q{i}"), f"k{i}.x")
    ex.bind(Q1, "k7.*")
    root = ex._root
    root.children = _NoScanDict(root.children)  # type: ignore[assignment]
    routed = set(ex.route("k7.x", None))
    assert routed == {Destination("queue", "q7"), Q1}
