"""What operators see of streams and consumer groups (HTTP, ctl, metrics).

Strategy: one place reads the stream queue type and the group registry
into plain rows, so the API, ``mqbrokerctl streams``/``groups``, the
dashboard and ``/metrics`` agree; resetting a group's offset goes through
here too (refused while the group has a live member).
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

from mqbroker import errors
from mqbroker.exchanges.superstream import SuperStreamExchange
from mqbroker.streams import arguments as sargs
from mqbroker.streams.queue import StreamQueue

if TYPE_CHECKING:
    from mqbroker.broker.broker import Broker
    from mqbroker.broker.vhost import VHost


def _super_of(vhost: VHost) -> dict[str, str]:
    """partition stream name -> its super stream."""
    out = {}
    for exchange in vhost.exchanges.values():
        if isinstance(exchange.impl, SuperStreamExchange):
            for binding in exchange.impl.bindings():
                out[binding.destination.name] = exchange.name
    return out


def stream_rows(broker: Broker, vhost_name: str | None = None) -> list[dict[str, Any]]:
    rows = []
    for vhost in broker.vhosts.values():
        if vhost_name is not None and vhost.name != vhost_name:
            continue
        supers = _super_of(vhost)
        for queue in vhost.queues.values():
            if not isinstance(queue, StreamQueue):
                continue
            stats = queue.log.stats()
            r = queue.retention
            rows.append({
                "vhost": vhost.name,
                "name": queue.name,
                "super_stream": supers.get(queue.name),
                "first_offset": stats.first_offset,
                "last_offset": stats.last_offset,
                "messages": stats.messages,
                "bytes": stats.bytes,
                "segments": stats.segments,
                "consumers": len(queue.consumers),
                "retention": {
                    "max_bytes": r.max_bytes,
                    "max_age_seconds": r.max_age_ms // 1000 if r.max_age_ms else None,
                    "segment_bytes": r.segment_bytes,
                },
            })
    return rows


def group_rows(broker: Broker, vhost_name: str | None = None) -> list[dict[str, Any]]:
    registry = broker.stream_groups
    rows = []
    for record in registry.records():
        vhost = broker.vhosts.get(str(record.get("vhost")))
        if vhost is None or (vhost_name is not None and vhost.name != vhost_name):
            continue
        stream = vhost.queues.get(str(record.get("stream")))
        if not isinstance(stream, StreamQueue):
            continue
        committed = int(record["offset"])
        nxt = stream.log.committed_next
        owner = registry.owner_of(vhost.name, str(record["group"]), stream.name)
        rows.append({
            "vhost": vhost.name,
            "group": record["group"],
            "stream": stream.name,
            "committed_offset": committed,
            "last_offset": nxt - 1,
            "lag": max(0, nxt - max(committed, stream.log.first_offset)),
            "owner": getattr(owner, "tag", None),
        })
    return sorted(rows, key=lambda r: (r["vhost"], r["group"], r["stream"]))


def reset_group(broker: Broker, vhost: VHost, group: str, stream: str, to: Any) -> int:
    """Set a group's committed offset on a stream. ``to``: "first",
    "last" (skip everything so far), an offset, {"timestamp": seconds} or
    an interval back from now ("1h")."""
    queue = vhost.queues.get(stream)
    if not isinstance(queue, StreamQueue):
        raise errors.NotFound(f"no stream '{stream}' in vhost '{vhost.name}'")
    if isinstance(to, dict) and isinstance(to.get("timestamp"), int | float):
        to = as_timestamp(int(to["timestamp"]))
    elif isinstance(to, str) and to.lstrip("-").isdigit():
        to = int(to)
    if to == "last":
        offset = queue.log.committed_next
    else:
        offset = queue.start_offset(sargs.start_spec(to, broker.wall_ms()))
    try:
        broker.stream_groups.reset(vhost.name, group, stream, offset)
    except ValueError as exc:
        raise errors.PreconditionFailed(str(exc)) from None
    broker.request_commit()
    return offset


def as_timestamp(seconds: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
