"""Topic exchange: binding keys are word patterns kept in a trie.

Strategy: as RabbitMQ's ``rabbit_db_topic_exchange``, every binding key is
a path of words in a trie whose edges are literal words, ``*`` or ``#``.
``route()`` walks the routing key's words down the trie, following at each
node the literal word, ``*`` (exactly one word) and ``#`` (zero or more
words), so its cost depends on the trie near that key and not on how many
bindings exist. A ``#`` node may also consume a word and stay put, and a
per-call set of visited (node, position) states stops chains such as
``#.#.#`` from exploding; nothing outlives the call, so bind and unbind
never invalidate a cache. Unbind prunes the nodes it leaves empty.

Words follow RabbitMQ's ``split_topic_key``: ``""`` is zero words (``#``
matches it, ``*`` does not), ``a..b`` has an empty middle word, and only a
whole word is a wildcard (``a#`` is literal).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import ClassVar

from .base import Binding, Destination, ExchangeType, FieldTable


def split_words(key: str) -> list[str]:
    """The words of a routing or binding key; the empty key has none."""
    return key.split(".") if key else []


class _Node:
    __slots__ = ("children", "destinations", "is_hash")

    def __init__(self, is_hash: bool) -> None:
        self.children: dict[str, _Node] = {}
        # A count, not a set: bindings differing only in arguments share it.
        self.destinations: Counter[Destination] = Counter()
        # Reached through a "#" edge, so it may swallow more words.
        self.is_hash = is_hash


class TopicExchange(ExchangeType):
    type_name: ClassVar[str] = "topic"

    def __init__(self) -> None:
        super().__init__()
        self._root = _Node(is_hash=False)

    def route(
        self, routing_key: str, headers: FieldTable | None
    ) -> Iterable[Destination]:
        words = split_words(routing_key)
        end = len(words)
        found: set[Destination] = set()
        seen: set[tuple[_Node, int]] = set()
        todo = [(self._root, 0)]
        while todo:
            state = todo.pop()
            if state in seen:
                continue
            seen.add(state)
            node, pos = state
            hash_child = node.children.get("#")
            if hash_child is not None:
                todo.append((hash_child, pos))
            if pos == end:
                found.update(node.destinations)
                continue
            if node.is_hash:
                todo.append((node, pos + 1))
            for edge in (words[pos], "*"):
                child = node.children.get(edge)
                if child is not None:
                    todo.append((child, pos + 1))
        return found

    def node_count(self) -> int:
        """Trie nodes below the root (0 once every binding is gone)."""
        count, todo = 0, [self._root]
        while todo:
            node = todo.pop()
            count += len(node.children)
            todo.extend(node.children.values())
        return count

    def _added(self, binding: Binding) -> None:
        node = self._root
        for word in split_words(binding.routing_key):
            child = node.children.get(word)
            if child is None:
                child = node.children[word] = _Node(is_hash=word == "#")
            node = child
        node.destinations[binding.destination] += 1

    def _removed(self, binding: Binding) -> None:
        words = split_words(binding.routing_key)
        path = [self._root]
        for word in words:
            path.append(path[-1].children[word])
        leaf = path[-1]
        leaf.destinations[binding.destination] -= 1
        if leaf.destinations[binding.destination] <= 0:
            del leaf.destinations[binding.destination]
        for depth in range(len(words), 0, -1):
            node = path[depth]
            if node.children or node.destinations:
                break
            del path[depth - 1].children[words[depth - 1]]
