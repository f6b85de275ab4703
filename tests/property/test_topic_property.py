"""The topic trie against a naive recursive matcher, under random churn."""

from hypothesis import given, settings
from hypothesis import strategies as st

from mqbroker.exchanges import Destination, TopicExchange

WORDS = ["", "*", "#", "a", "b", "a#", "ab"]
QUEUES = [Destination("queue", f"q{i}") for i in range(4)]

binding_keys = st.lists(st.sampled_from(WORDS), max_size=5).map(".".join)
routing_keys = st.lists(
    st.sampled_from(["", "a", "b", "c", "a#", "#", "*"]), max_size=6
).map(".".join)


def naive_words(key: str) -> list[str]:
    return [] if key == "" else key.split(".")


def naive_match(pattern: list[str], words: list[str]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        if naive_match(rest, words):
            return True
        return bool(words) and naive_match(pattern, words[1:])
    if not words:
        return False
    return head in ("*", words[0]) and naive_match(rest, words[1:])


def expected(
    bindings: set[tuple[Destination, str, int]], routing_key: str
) -> set[Destination]:
    words = naive_words(routing_key)
    return {
        dest
        for dest, key, _ in bindings
        if naive_match(naive_words(key), words)
    }


Step = tuple[bool, Destination, str, int]


@st.composite
def steps(draw: st.DrawFn) -> list[Step]:
    """Bind (True) or unbind (False) steps over a small pool of keys.

    Drawing keys from a pool makes repeats, and so unbinds that hit and
    bindings sharing trie paths, common. The int stands for the binding's
    arguments: the same destination and key may be bound twice as
    distinct bindings.
    """
    pool = draw(st.lists(binding_keys, min_size=1, max_size=4))
    step = st.tuples(
        st.booleans(),
        st.sampled_from(QUEUES[:2]),
        st.sampled_from(pool),
        st.integers(0, 1),
    )
    return draw(st.lists(step, max_size=30))


@settings(max_examples=300)
@given(ops=steps(), probes=st.lists(routing_keys, min_size=1, max_size=8))
def test_trie_agrees_with_naive_matcher(
    ops: list[Step], probes: list[str]
) -> None:
    ex = TopicExchange()
    model: set[tuple[Destination, str, int]] = set()
    for bind, dest, key, arg in ops:
        args = {"n": arg} if arg else None
        if bind:
            assert ex.bind(dest, key, args) == ((dest, key, arg) not in model)
            model.add((dest, key, arg))
        else:
            assert ex.unbind(dest, key, args) == ((dest, key, arg) in model)
            model.discard((dest, key, arg))
        for probe in probes:
            assert set(ex.route(probe, None)) == expected(model, probe), probe
    # Every bound key is also tried as a routing key.
    for _, key, _ in model:
        assert set(ex.route(key, None)) == expected(model, key)


@given(
    keys=st.lists(binding_keys, min_size=1, max_size=10),
    probes=st.lists(routing_keys, min_size=1, max_size=8),
)
def test_bind_then_unbind_leaves_nothing(
    keys: list[str], probes: list[str]
) -> None:
    ex = TopicExchange()
    for i, key in enumerate(keys):
        ex.bind(QUEUES[i % len(QUEUES)], key)
    for i, key in enumerate(keys):
        ex.unbind(QUEUES[i % len(QUEUES)], key)
    assert len(ex) == 0
    assert ex.node_count() == 0
    for probe in [*probes, *keys]:
        assert list(ex.route(probe, None)) == []


@given(keys=st.lists(binding_keys, min_size=1, max_size=10))
def test_remove_destination_is_unbinding_each(keys: list[str]) -> None:
    ex = TopicExchange()
    for i, key in enumerate(keys):
        ex.bind(QUEUES[i % 2], key)
    ex.remove_destination(QUEUES[0])
    model = {(QUEUES[1], k, 0) for i, k in enumerate(keys) if i % 2 == 1}
    for key in keys:
        assert set(ex.route(key, None)) == expected(model, key)
