"""Start the broker: open the store, recover, listen, run until cancelled.

Every serve function takes ``task_status`` and reports the bound ports, so
tests (and the ``mqbroker.testing`` plugin) can bind port 0.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import trio

from mqbroker.broker.broker import Broker
from mqbroker.broker.recovery import recover
from mqbroker.config import Config
from mqbroker.log import get_logger
from mqbroker.persistence import GroupCommitter, Replicator, Store, open_store
from mqbroker.server.alarms import Alarms
from mqbroker.server.connection_task import ConnectionTask
from mqbroker.server.harness import Harness
from mqbroker.server.timers import (
    run_consumer_timeouts,
    run_release_map,
    run_timers,
)
from mqbroker.server.tls import make_server_context, tls_enabled

log = get_logger("mqbroker.server")


class ClusterRole(Protocol):
    """What a cluster's leader adds to an ordinary broker
    (server/cluster_node.py): a replicator for the group committer, made
    once the store is recovered, and the task that feeds the followers."""

    def attach(self, broker: Broker, store: Store) -> Replicator: ...

    async def run(self, *, task_status: trio.TaskStatus[int] = ...) -> None: ...


@dataclass(frozen=True)
class ServerInfo:
    host: str
    port: int
    management_port: int | None
    broker: Broker
    tls_port: int | None = None
    alarms: Alarms | None = None
    harness: Harness | None = None


async def serve(
    config: Config,
    *,
    role: ClusterRole | None = None,
    task_status: trio.TaskStatus[ServerInfo] = trio.TASK_STATUS_IGNORED,
) -> None:
    backend = "memory" if config.data_dir is None or config.storage == "memory" else "lmdb"
    store = open_store(
        config.data_dir,
        backend=backend,
        **(
            {
                "map_size": config.lmdb_map_size_bytes,
                "max_map_size": config.lmdb_max_map_size_bytes,
                "cache_bytes": config.body_cache_bytes,
            }
            if backend == "lmdb"
            else {}
        ),
    )
    committer: GroupCommitter | None = None
    try:
        broker = Broker(config, store)
        started = time.monotonic()
        summary = recover(broker)
        log.info(
            "recovery.done",
            storage=backend,
            data_dir=str(config.data_dir),
            seconds=round(time.monotonic() - started, 3),
            **summary,
        )
        alarms = Alarms(broker)
        harness: Harness | None = None

        def write_failed(exc: Exception) -> None:
            if harness is not None and harness.failing_writes:
                harness.nack_waiting()  # an injected fault: nack, keep serving
            else:
                alarms.store_full(exc)

        committer = GroupCommitter(
            store,
            broker.on_committed,
            write_failed,
            on_recovered=alarms.store_recovered,
            replicator=role.attach(broker, store) if role is not None else None,
        )
        harness = Harness(broker, committer, alarms)
        broker.request_commit = committer.notify
        broker.request_lazy_commit = committer.notify_lazy
        async with trio.open_nursery() as nursery:
            await nursery.start(committer.run)
            if role is not None:
                await nursery.start(role.run)
            await nursery.start(alarms.run)
            await nursery.start(run_timers, broker)
            await nursery.start(run_release_map, broker)
            await nursery.start(run_consumer_timeouts, broker, config.consumer_timeout_ms)
            listeners = await trio.open_tcp_listeners(config.port, host=config.host)
            port = listeners[0].socket.getsockname()[1]

            async def handler(stream: trio.abc.Stream) -> None:
                task = ConnectionTask(broker, stream)
                harness.tasks.add(task)
                try:
                    await task.run()
                finally:
                    harness.tasks.discard(task)

            await nursery.start(partial(trio.serve_listeners, handler, listeners))
            tls_port = None
            if tls_enabled(config):
                context = make_server_context(config)
                tcp = await trio.open_tcp_listeners(config.tls_port, host=config.host)
                tls_port = tcp[0].socket.getsockname()[1]
                amqps = [trio.SSLListener(t, context, https_compatible=False) for t in tcp]
                await nursery.start(partial(trio.serve_listeners, handler, amqps))
            management_port = None
            if config.management_port is not None:
                try:
                    from mqbroker.management import http as management
                except ImportError:  # management not installed/built yet
                    management = None  # type: ignore[assignment]
                if management is not None:
                    management_port = await nursery.start(
                        management.serve_management, broker, config
                    )
            log.info(
                "broker.listening",
                host=config.host,
                port=port,
                tls_port=tls_port,
                management_port=management_port,
            )
            task_status.started(
                ServerInfo(config.host, port, management_port, broker, tls_port, alarms, harness)
            )
            await trio.sleep_forever()
    finally:
        # Every task has stopped (the committer too): write what is left
        # (unless the harness simulates a SIGKILL: then nothing more is).
        if harness is not None and harness.crashed:
            pass
        elif committer is not None:
            committer.write_remaining()
        else:
            batch = store.take_batch()
            if batch is not None:
                store.write_batch(batch)
                store.batch_done(batch)
        store.close()
