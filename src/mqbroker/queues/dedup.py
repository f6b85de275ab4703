"""Queue-level deduplication (``x-message-deduplication`` on a queue).

Strategy: the queue indexes the dedup keys of the messages it holds, ready
or unacked, and releases a key when its message leaves for good; see
``model/dedup.py`` for the semantics shared with the exchange-level guard.
"""

from __future__ import annotations

from collections.abc import Hashable

from mqbroker.model.dedup import dedup_key
from mqbroker.model.message import Message


class QueueDedup:
    """Keys of the messages a queue holds (ready or unacked)."""

    __slots__ = ("_by_key", "_by_msg", "duplicates")

    def __init__(self) -> None:
        self._by_key: dict[Hashable, int] = {}
        self._by_msg: dict[int, Hashable] = {}
        self.duplicates = 0

    def __len__(self) -> int:
        return len(self._by_key)

    def is_duplicate(self, message: Message) -> tuple[bool, Hashable | None]:
        key = dedup_key(message)
        if key is None:
            return False, None
        if key in self._by_key:
            self.duplicates += 1
            return True, key
        return False, key

    def add(self, key: Hashable | None, msg_id: int) -> None:
        if key is None:
            return
        self._by_key[key] = msg_id
        self._by_msg[msg_id] = key

    def release(self, msg_id: int) -> None:
        key = self._by_msg.pop(msg_id, None)
        if key is not None and self._by_key.get(key) == msg_id:
            del self._by_key[key]

    def clear(self) -> None:
        self._by_key.clear()
        self._by_msg.clear()

