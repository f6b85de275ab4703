"""A follower serves its AMQP and HTTP clients through the leader: bytes
are relayed both ways, unchanged, to the leader's port.

So a client that lists every node keeps working when one dies: whichever
node it reaches, it talks to the leader. When there is no leader (an
election is running) a new connection is closed at once and the client
retries; a relayed connection ends when either side closes, including
when the leader it was relayed to dies.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import trio

from mqbroker.log import get_logger

log = get_logger("mqbroker.cluster")

CHUNK = 65536
CONNECT_TIMEOUT = 5.0

Target = Callable[[], tuple[str, int] | None]


async def serve_proxy(
    listeners: list[trio.SocketListener],
    target: Target,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    await trio.serve_listeners(
        partial(_relay, target), listeners, task_status=task_status
    )


async def _relay(target: Target, client: trio.SocketStream) -> None:
    address = target()
    async with client:
        if address is None:
            return
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                upstream = await trio.open_tcp_stream(*address)
        except (OSError, trio.TooSlowError):
            return
        async with upstream, trio.open_nursery() as nursery:
            nursery.start_soon(_pump, client, upstream, nursery.cancel_scope)
            nursery.start_soon(_pump, upstream, client, nursery.cancel_scope)


async def _pump(
    source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope
) -> None:
    try:
        while data := await source.receive_some(CHUNK):
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    scope.cancel()
