"""The ready list of a queue: FIFO by seq, or one FIFO per priority.

Strategy: a requeued entry keeps its seq and goes back to its place, which
is nearly always the head, so the common cases (append, pop head, put back
at head) are O(1) on a deque and only an out-of-order requeue pays for a
bisect. A priority queue is one such FIFO per level, served highest first.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mqbroker.queues.entry import QueueEntry


def _seq(entry: QueueEntry) -> int:
    return entry.seq


class Fifo:
    __slots__ = ("_q",)

    def __init__(self) -> None:
        self._q: deque[QueueEntry] = deque()

    def __len__(self) -> int:
        return len(self._q)

    def __bool__(self) -> bool:
        return bool(self._q)

    def __iter__(self) -> Iterator[QueueEntry]:
        return iter(self._q)

    def __getitem__(self, index: int) -> QueueEntry:
        return self._q[index]

    def append(self, entry: QueueEntry) -> None:
        self._q.append(entry)

    def appendleft(self, entry: QueueEntry) -> None:
        self._q.appendleft(entry)

    def rotate(self, n: int) -> None:
        self._q.rotate(n)

    def peek(self) -> QueueEntry:
        return self._q[0]

    def popleft(self) -> QueueEntry:
        return self._q.popleft()

    def put_back(self, entry: QueueEntry) -> None:
        q = self._q
        if not q or entry.seq < q[0].seq:
            q.appendleft(entry)
        elif entry.seq > q[-1].seq:
            q.append(entry)
        else:
            q.insert(bisect.bisect(q, entry.seq, key=_seq), entry)

    def clear(self) -> None:
        self._q.clear()


class PriorityReady:
    __slots__ = ("_levels", "_count")

    def __init__(self, max_priority: int) -> None:
        self._levels = [Fifo() for _ in range(max_priority + 1)]
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def __iter__(self) -> Iterator[QueueEntry]:
        for level in reversed(self._levels):
            yield from level

    def __getitem__(self, index: int) -> QueueEntry:
        if index == 0:
            return self.peek()
        if index < 0:
            index += self._count
        for position, entry in enumerate(self):
            if position == index:
                return entry
        raise IndexError(index)

    def _level(self, entry: QueueEntry) -> Fifo:
        return self._levels[min(entry.priority, len(self._levels) - 1)]

    def append(self, entry: QueueEntry) -> None:
        self._level(entry).append(entry)
        self._count += 1

    def _top(self) -> Fifo:
        for level in reversed(self._levels):
            if level:
                return level
        raise IndexError("peek from an empty queue")

    def peek(self) -> QueueEntry:
        return self._top().peek()

    def popleft(self) -> QueueEntry:
        entry = self._top().popleft()
        self._count -= 1
        return entry

    def put_back(self, entry: QueueEntry) -> None:
        self._level(entry).put_back(entry)
        self._count += 1

    def clear(self) -> None:
        for level in self._levels:
            level.clear()
        self._count = 0


Ready = Fifo | PriorityReady
