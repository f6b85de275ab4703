"""A least-recently-used cache of message bodies, bounded in bytes.

Strategy: bodies read back from LMDB (after a restart, or once paged out)
are often read again soon: a fanout message is delivered from every queue
holding it, a rejected one is redelivered. Keeping the last few tens of MiB
saves a read txn and a decode each time. The bound is in bytes, not
entries, because bodies range from bytes to hundreds of MiB; a single
message larger than the whole budget is simply not cached.

Loop thread only; no locking.
"""

from __future__ import annotations

from collections import OrderedDict

from .store import StoredMessage

# Object headers, the dict slot and the four fields' own headers.
_OVERHEAD = 200


def message_size(message: StoredMessage) -> int:
    return (
        len(message.body) + len(message.properties) + len(message.exchange)
        + len(message.routing_key) + _OVERHEAD
    )


class BodyCache:
    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._bytes = 0
        self._items: OrderedDict[int, StoredMessage] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get(self, msg_id: int) -> StoredMessage | None:
        message = self._items.get(msg_id)
        if message is not None:
            self._items.move_to_end(msg_id)
        return message

    def put(self, msg_id: int, message: StoredMessage) -> None:
        size = message_size(message)
        if size > self._max_bytes:
            return
        self.discard(msg_id)
        self._items[msg_id] = message
        self._bytes += size
        while self._bytes > self._max_bytes:
            _, old = self._items.popitem(last=False)
            self._bytes -= message_size(old)

    def discard(self, msg_id: int) -> None:
        old = self._items.pop(msg_id, None)
        if old is not None:
            self._bytes -= message_size(old)
