"""One message's place in one queue: the unit every queue type hands out.

It lives apart from ``Queue`` because consumers, ready-sets, stream
queues and the broker's delivery bookkeeping all hold entries without
needing the classic queue's logic.
"""

from __future__ import annotations

from mqbroker.model.message import Message


class QueueEntry:
    """One message's place in one queue.

    ``message`` is None while the body is paged out: persisted entries far
    from the head keep only their ids in RAM and are read back from the
    store when they are delivered, which bounds memory for a backlog larger
    than RAM. ``expires_at`` is wall-clock ms (0: never), so it survives a
    restart.
    """

    __slots__ = (
        "seq",
        "msg_id",
        "size",
        "message",
        "delivery_count",
        "redelivered",
        "persisted",
        "expires_at",
        "priority",
    )

    def __init__(
        self,
        seq: int,
        msg_id: int,
        size: int,
        message: Message | None,
        delivery_count: int = 0,
        redelivered: bool = False,
        persisted: bool = False,
        expires_at: int = 0,
        priority: int = 0,
    ) -> None:
        self.seq = seq
        self.msg_id = msg_id
        self.size = size
        self.message = message
        self.delivery_count = delivery_count
        self.redelivered = redelivered
        self.persisted = persisted
        self.expires_at = expires_at
        self.priority = priority
