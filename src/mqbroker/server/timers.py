"""The broker's clock-driven work: message TTL, idle queues (x-expires) and
the consumer acknowledgement timeout.

Strategy: the core only answers "when is the next deadline" and "it is now
later"; this task sleeps until the earliest deadline (or until the core says
an earlier one appeared) and calls back in. One task for the whole broker,
not one timer per message.
"""

from __future__ import annotations

import math

import trio

from mqbroker.broker.broker import Broker

# How often unacked deliveries are checked against the consumer timeout;
# RabbitMQ checks on a similar coarse tick (the timeout is in minutes).
CONSUMER_TIMEOUT_TICK_S = 1.0


async def run_timers(
    broker: Broker, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    wakeup = trio.Event()

    def changed() -> None:
        wakeup.set()

    broker.timer_changed = changed
    task_status.started()
    while True:
        deadline = broker.next_deadline()
        delay = math.inf if deadline is None else max(0.0, (deadline - broker.wall_ms()) / 1000)
        with trio.move_on_after(delay):
            await wakeup.wait()
        wakeup = trio.Event()
        broker.on_timer()


async def run_consumer_timeouts(
    broker: Broker,
    timeout_ms: int | None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    task_status.started()
    while True:
        await trio.sleep(CONSUMER_TIMEOUT_TICK_S)
        broker.check_consumer_timeouts(timeout_ms)


# How often LMDB's mapped pages are handed back (see persistence/resident.py).
RELEASE_MAP_EVERY_S = 2.0


async def run_release_map(
    broker: Broker, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    release = getattr(broker.store, "release_resident", None)
    task_status.started()
    if release is None:
        return
    while True:
        await trio.sleep(RELEASE_MAP_EVERY_S)
        release()
