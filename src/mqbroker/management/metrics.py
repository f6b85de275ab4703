"""``/metrics``: Prometheus text exposition of the broker's state.

Strategy: a custom prometheus-client collector reads the broker when the
page is scraped (on the loop thread, like every management request), so
there is nothing to keep in sync. Names follow RabbitMQ's Prometheus plugin
(``rabbitmq_queue_messages_ready{vhost,queue}``...) so existing dashboards
and alerts work; what RabbitMQ has no name for is ``mqbroker_*``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)

from mqbroker import __version__
from mqbroker.broker import explain, streams_view

if TYPE_CHECKING:
    from mqbroker.management.views import Stats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class BrokerCollector:
    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        stats = self.stats
        broker = stats.broker
        from mqbroker.management.views import NODE

        identity = GaugeMetricFamily(
            "rabbitmq_identity_info",
            "RabbitMQ node & cluster identity info",
            labels=["rabbitmq_node", "rabbitmq_cluster"],
        )
        identity.add_metric([NODE, "mqbroker"], 1)
        yield identity
        build = GaugeMetricFamily(
            "rabbitmq_build_info",
            "RabbitMQ & Erlang/OTP version info",
            labels=["rabbitmq_version", "product_version", "prometheus_client_version"],
        )
        build.add_metric([broker.config.product_version, __version__, "python"], 1)
        yield build

        sessions = list(broker.sessions)
        channels = sum(len(s.channels) for s in sessions)
        queues = [(v.name, q) for v in broker.vhosts.values() for q in v.queues.values()]
        consumers = sum(q.consumer_count for _, q in queues)
        for name, doc, value in (
            ("rabbitmq_connections", "Connections currently open", len(sessions)),
            ("rabbitmq_channels", "Channels currently open", channels),
            ("rabbitmq_consumers", "Consumers currently connected", consumers),
            ("rabbitmq_queues", "Queues available", len(queues)),
            (
                "rabbitmq_global_consumers",
                "Current number of consumers",
                consumers,
            ),
        ):
            gauge = GaugeMetricFamily(name, doc)
            gauge.add_metric([], value)
            yield gauge
        for name, doc, value in (
            (
                "rabbitmq_global_messages_received",
                "Total number of messages received from publishers",
                stats.published_total(),
            ),
            (
                "rabbitmq_global_messages_delivered",
                "Total number of messages delivered to consumers (incl. get)",
                stats.totals[0],
            ),
            (
                "rabbitmq_global_messages_acknowledged",
                "Total number of messages acknowledged by consumers",
                stats.totals[1],
            ),
        ):
            counter = CounterMetricFamily(name, doc)
            counter.add_metric([], value)
            yield counter

        labels = ["vhost", "queue"]
        ready = GaugeMetricFamily(
            "rabbitmq_queue_messages_ready", "Messages ready to be delivered to consumers", labels=labels
        )
        unacked = GaugeMetricFamily(
            "rabbitmq_queue_messages_unacked",
            "Messages delivered to consumers but not yet acknowledged",
            labels=labels,
        )
        total = GaugeMetricFamily(
            "rabbitmq_queue_messages", "Sum of ready and unacknowledged messages", labels=labels
        )
        ready_bytes = GaugeMetricFamily(
            "rabbitmq_queue_messages_ready_bytes",
            "Size in bytes of ready messages",
            labels=labels,
        )
        queue_consumers = GaugeMetricFamily(
            "rabbitmq_queue_consumers", "Consumers on a queue", labels=labels
        )
        published = CounterMetricFamily(
            "rabbitmq_queue_messages_published",
            "Total number of messages published to queues",
            labels=labels,
        )
        delivered = CounterMetricFamily(
            "mqbroker_queue_messages_delivered",
            "Total number of messages delivered from a queue (incl. get)",
            labels=labels,
        )
        acked = CounterMetricFamily(
            "mqbroker_queue_messages_acked",
            "Total number of messages settled (acked) from a queue",
            labels=labels,
        )
        age = GaugeMetricFamily(
            "mqbroker_queue_oldest_ready_age_seconds",
            "Time the head (oldest) ready message has spent in the queue: "
            "the consumer-lag signal",
            labels=labels,
        )
        dlq = GaugeMetricFamily(
            "mqbroker_queue_is_dead_letter_queue",
            "1 when the queue is a dead-letter target (or named like one)",
            labels=labels,
        )
        targets = {
            v.name: explain.dead_letter_targets(v) for v in broker.vhosts.values()
        }
        for vhost, queue in queues:
            values = [vhost, queue.name]
            ready.add_metric(values, queue.message_count)
            unacked.add_metric(values, queue.unacked)
            total.add_metric(values, queue.message_count + queue.unacked)
            ready_bytes.add_metric(values, queue.ready_bytes)
            queue_consumers.add_metric(values, queue.consumer_count)
            published.add_metric(values, queue.published)
            delivered.add_metric(values, queue.delivered)
            acked.add_metric(values, queue.acked)
            age.add_metric(values, stats.oldest_age(vhost, queue))
            is_dlq = queue.name in targets[vhost] or explain.looks_like_dlq(queue.name)
            dlq.add_metric(values, 1 if is_dlq else 0)
        yield from (ready, unacked, total, ready_bytes, queue_consumers, published)
        yield from (delivered, acked, age, dlq)
        lag = GaugeMetricFamily(
            "mqbroker_stream_group_lag",
            "Messages of a stream partition a consumer group has not committed yet",
            labels=["vhost", "group", "stream"],
        )
        for row in streams_view.group_rows(stats.broker):
            lag.add_metric([row["vhost"], str(row["group"]), row["stream"]], row["lag"])
        yield lag
        yield from _cluster(stats.broker.cluster_status)

        import psutil  # type: ignore[import-untyped]

        try:
            proc = psutil.Process()
            rss, fd_count = proc.memory_info().rss, proc.num_fds()
        except (psutil.Error, OSError):  # pragma: no cover
            return
        memory = GaugeMetricFamily(
            "rabbitmq_process_resident_memory_bytes", "Memory used in bytes"
        )
        memory.add_metric([], rss)
        yield memory
        fds = GaugeMetricFamily("rabbitmq_process_open_fds", "Open file descriptors")
        fds.add_metric([], fd_count)
        yield fds


def _cluster(status: Callable[[], dict[str, Any]] | None) -> Iterator[Metric]:
    """Replication lag and in-sync state per node (a cluster's leader)."""
    if status is None:
        return
    lag = GaugeMetricFamily(
        "mqbroker_cluster_replication_lag_bytes",
        "Bytes the leader sent a follower that it has not acknowledged yet",
        labels=["node"],
    )
    in_sync = GaugeMetricFamily(
        "mqbroker_cluster_in_sync", "1 when the node is in the in-sync set", labels=["node"]
    )
    for node in status()["nodes"]:
        if node["lag_bytes"] is not None:
            lag.add_metric([node["name"]], node["lag_bytes"])
        in_sync.add_metric([node["name"]], 1 if node["in_sync"] else 0)
    yield lag
    yield in_sync


def render(stats: Stats) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BrokerCollector(stats))
    return generate_latest(registry)
