"""The recent replication records, kept so a follower that was away a
short while catches up from them instead of from a full snapshot.

Bounded by bytes: the oldest records go first. A node keeps its ring when
it changes role, so a follower promoted to leader can still serve the
records of the previous term to the other followers."""

from __future__ import annotations

from collections import deque

from .records import Position

DEFAULT_RING_BYTES = 64 << 20


class Ring:
    def __init__(self, max_bytes: int = DEFAULT_RING_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: deque[tuple[Position, bytes]] = deque()
        self._bytes = 0

    def add(self, position: Position, raw: bytes) -> None:
        if self._items and self._items[-1][0].lsn + 1 != position.lsn:
            self.clear()  # not the next record (a resync): start over
        self._items.append((position, raw))
        self._bytes += len(raw)
        while self._bytes > self.max_bytes and len(self._items) > 1:
            _, old = self._items.popleft()
            self._bytes -= len(old)

    def clear(self) -> None:
        self._items.clear()
        self._bytes = 0

    def after(self, position: Position) -> list[bytes] | None:
        """The records that follow ``position``, or None when ``position``
        is not a record of this history (another term's record under the
        same number, or older than the ring reaches)."""
        items = self._items
        if not items:
            return None
        first = items[0][0].lsn
        index = position.lsn - first
        if index < 0 or index >= len(items) or items[index][0] != position:
            return None
        return [raw for _, raw in list(items)[index + 1:]]

    @property
    def last(self) -> Position | None:
        return self._items[-1][0] if self._items else None
