"""JSON shapes of the management API, with RabbitMQ's field names.

Strategy: one function per object kind turns broker state into the dict
RabbitMQ's management plugin would return for it (the subset tools read),
plus a few ``mqbroker``-specific fields (oldest ready age, DLQ flags).
Everything here reads state and is called on the loop thread.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import math
import time
import urllib.parse
from collections import deque
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from pamqp import commands

from mqbroker import __version__
from mqbroker.broker import definitions as defs
from mqbroker.broker import explain
from mqbroker.broker.vhost import VHost
from mqbroker.exchanges.base import Binding
from mqbroker.exchanges.exchange import Exchange
from mqbroker.management import trackers
from mqbroker.model import deaths as dl
from mqbroker.model.message import Message
from mqbroker.queues.queue import Queue

if TYPE_CHECKING:
    from mqbroker.broker.broker import Broker
    from mqbroker.broker.channel import Channel, Consumer
    from mqbroker.broker.session import Session

NODE = "mqbroker@localhost"
MANAGEMENT_TAGS = {"administrator", "management", "monitoring", "policymaker"}

# pamqp attribute -> RabbitMQ JSON name
PROPERTY_FIELDS = (
    ("content_type", "content_type"),
    ("content_encoding", "content_encoding"),
    ("headers", "headers"),
    ("delivery_mode", "delivery_mode"),
    ("priority", "priority"),
    ("correlation_id", "correlation_id"),
    ("reply_to", "reply_to"),
    ("expiration", "expiration"),
    ("message_id", "message_id"),
    ("timestamp", "timestamp"),
    ("message_type", "type"),
    ("user_id", "user_id"),
    ("app_id", "app_id"),
    ("cluster_id", "cluster_id"),
)


def jsonable(value: Any) -> Any:
    """AMQP field values -> JSON values (bytes as text, times as seconds)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, _dt.datetime):
        return int(value.replace(tzinfo=value.tzinfo or _dt.UTC).timestamp())
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def properties_json(props: commands.Basic.Properties) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attr, name in PROPERTY_FIELDS:
        value = getattr(props, attr, None)
        if value is None or value == "" and attr == "cluster_id":
            continue
        out[name] = jsonable(value)
    return out


def properties_from_json(data: dict[str, Any] | None) -> commands.Basic.Properties:
    """RabbitMQ's ``properties`` object of a publish request -> pamqp."""
    data = dict(data or {})
    kwargs: dict[str, Any] = {}
    for attr, name in PROPERTY_FIELDS:
        if name not in data or data[name] is None:
            continue
        value = data[name]
        if attr in ("delivery_mode", "priority"):
            value = int(value)
        elif attr == "timestamp":
            value = _dt.datetime.fromtimestamp(int(value), tz=_dt.UTC)
        elif attr == "headers":
            if not isinstance(value, dict):
                raise ValueError("properties.headers must be an object")
        else:
            value = str(value)
        kwargs[attr] = value
    return commands.Basic.Properties(**kwargs)


def payload_json(body: bytes, encoding: str, truncate: int | None) -> dict[str, Any]:
    size = len(body)
    if truncate is not None and truncate >= 0:
        body = body[:truncate]
    if encoding == "auto":
        try:
            return {
                "payload": body.decode("utf-8"),
                "payload_bytes": size,
                "payload_encoding": "string",
            }
        except UnicodeDecodeError:
            pass
    return {
        "payload": base64.b64encode(body).decode("ascii"),
        "payload_bytes": size,
        "payload_encoding": "base64",
    }


def message_json(
    message: Message,
    *,
    encoding: str = "auto",
    truncate: int | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "exchange": message.exchange,
        "routing_key": message.routing_key,
        "properties": properties_json(message.props),
    }
    out.update(payload_json(message.body, encoding, truncate))
    deaths = dl.x_death(message)
    if deaths:
        out["x_death"] = deaths
    return out


def _rate(value: float) -> dict[str, float]:
    return {"rate": round(value, 2)}


# -------------------------------------------------------------- the state


class Stats:
    """Rates, history and first-seen times, sampled on the loop."""

    HISTORY_S = 600

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.queue_rates = trackers.RateTracker(window_s=5.0)  # (vhost, name) keys
        self.depth_rates = trackers.RateTracker(window_s=5.0, signed=True)
        self.global_rates = trackers.RateTracker(window_s=5.0)
        self.ages = trackers.AgeTracker()
        self.history: deque[dict[str, Any]] = deque(maxlen=self.HISTORY_S)
        self.first_msg_id = broker.next_msg_id
        self.totals = [0, 0]  # deliver_get, ack since start (incl. deleted queues)
        self._last: dict[Any, tuple[int, ...]] = {}
        # first time each connection was seen (pruned as they close)
        self.connected_at: dict[Session, float] = {}
        self.last_tick = 0.0

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        broker = self.broker
        counters: dict[Any, tuple[int, ...]] = {}
        pairs = []
        ready = unacked = 0
        for vhost in broker.vhosts.values():
            for queue in vhost.queues.values():
                key = (vhost.name, queue.name)
                counters[key] = trackers.queue_counters(queue)
                pairs.append((key, queue))
                ready += queue.message_count
                unacked += queue.unacked
        for key, values in counters.items():
            before = self._last.get(key, (0, 0, 0))
            self.totals[0] += max(0, values[1] - before[1])
            self.totals[1] += max(0, values[2] - before[2])
        self._last = counters
        self.queue_rates.sample(now, counters)
        self.depth_rates.sample(
            now,
            {
                key: (q.message_count + q.unacked, q.message_count, q.unacked)
                for key, q in pairs
            },
        )
        self.global_rates.sample(
            now, {"all": (self.published_total(), self.totals[0], self.totals[1])}
        )
        self.ages.sample(now, pairs)
        sessions = broker.sessions
        for session in [s for s in self.connected_at if s not in sessions]:
            del self.connected_at[session]
        for session in sessions:
            if session not in self.connected_at:
                self.connected_at[session] = time.time()
        rates = self.global_rates.rates("all") or (0.0, 0.0, 0.0)
        self.history.append(
            {
                "t": round(time.time(), 3),
                "publish": round(rates[0], 2),
                "deliver_get": round(rates[1], 2),
                "ack": round(rates[2], 2),
                "messages_ready": ready,
                "messages_unacknowledged": unacked,
            }
        )
        self.last_tick = now

    def published_total(self) -> int:
        return max(0, self.broker.next_msg_id - self.first_msg_id)

    def queue_rates_of(self, vhost: str, name: str) -> tuple[float, float, float]:
        rates = self.queue_rates.rates((vhost, name))
        return rates if rates is not None else (0.0, 0.0, 0.0)  # type: ignore[return-value]

    def depth_rates_of(self, vhost: str, name: str) -> tuple[float, float, float]:
        """Change per second of (messages, ready, unacknowledged)."""
        rates = self.depth_rates.rates((vhost, name))
        return rates if rates is not None else (0.0, 0.0, 0.0)  # type: ignore[return-value]

    def oldest_age(self, vhost: str, queue: Queue) -> float:
        return self.ages.oldest_ready_age((vhost, queue.name), queue, time.monotonic())


# -------------------------------------------------------------- objects


def queue_json(
    stats: Stats,
    vhost: VHost,
    queue: Queue,
    *,
    dl_sources: dict[str, list[str]],
) -> dict[str, Any]:
    ready = queue.message_count
    unacked = queue.unacked
    publish, deliver, ack = stats.queue_rates_of(vhost.name, queue.name)
    depth, depth_ready, depth_unacked = stats.depth_rates_of(vhost.name, queue.name)
    exclusive_tag = next((c.tag for c in queue.consumers if c.exclusive), None)
    queue_type = dl.text(queue.arguments.get("x-queue-type") or "classic")
    policy = defs.effective_policy(stats.broker, vhost.name, "queue", queue.name, queue_type)
    sources = dl_sources.get(queue.name, [])
    return {
        "name": queue.name,
        "vhost": vhost.name,
        "durable": queue.durable,
        "auto_delete": queue.auto_delete,
        "exclusive": queue.exclusive_owner is not None,
        "arguments": jsonable(queue.arguments),
        "node": NODE,
        "state": "running",
        "type": queue_type,
        "policy": policy["name"] if policy else None,
        "operator_policy": None,
        "effective_policy_definition": jsonable(policy["definition"]) if policy else {},
        "messages": ready + unacked,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
        "messages_details": _rate(depth),
        "messages_ready_details": _rate(depth_ready),
        "messages_unacknowledged_details": _rate(depth_unacked),
        "message_bytes": queue.ready_bytes,
        # at-least-once dead letters waiting for a target (RabbitMQ's name)
        "messages_dlx": len(queue.dlx_pending),
        "message_bytes_ready": queue.ready_bytes,
        "consumers": queue.consumer_count,
        "exclusive_consumer_tag": exclusive_tag,
        "consumer_utilisation": None,
        "head_message_timestamp": trackers.head_timestamp(queue),
        "message_stats": {
            "publish": queue.published,
            "publish_details": _rate(publish),
            "deliver_get": queue.delivered,
            "deliver_get_details": _rate(deliver),
            "deliver": queue.delivered,
            "deliver_details": _rate(deliver),
            "ack": queue.acked,
            "ack_details": _rate(ack),
        },
        # mqbroker extensions
        "oldest_ready_age_seconds": round(stats.oldest_age(vhost.name, queue), 3),
        "dead_letter_sources": sources,
        "is_dead_letter_queue": bool(sources) or explain.looks_like_dlq(queue.name),
    }


def exchange_json(broker: Broker, exchange: Exchange) -> dict[str, Any]:
    policy = defs.effective_policy(broker, exchange.vhost, "exchange", exchange.name)
    return {
        "name": exchange.name,
        "vhost": exchange.vhost,
        "type": exchange.type_name,
        "durable": exchange.durable,
        "auto_delete": exchange.auto_delete,
        "internal": exchange.internal,
        "arguments": jsonable(exchange.arguments),
        "user_who_performed_action": "",
        "policy": policy["name"] if policy else None,
    }


def properties_key(routing_key: str, arguments: dict[str, Any]) -> str:
    """RabbitMQ's binding id: the routing key quoted as RabbitMQ quotes it
    (quote_plus, "~" escaped), "~" when empty, plus "~" and a digest of the
    arguments when there are any."""
    key = urllib.parse.quote_plus(routing_key, safe="").replace("~", "%7E")
    if not arguments:
        return key or "~"
    digest = hashlib.sha256(
        json.dumps(jsonable(arguments), sort_keys=True).encode()
    ).digest()
    return f"{key}~{base64.urlsafe_b64encode(digest[:9]).decode()}"


def binding_json(vhost: str, source: str, binding: Binding) -> dict[str, Any]:
    args = binding.args_dict()
    return {
        "source": source,
        "vhost": vhost,
        "destination": binding.destination.name,
        "destination_type": binding.destination.kind,
        "routing_key": binding.routing_key,
        "arguments": jsonable(args),
        "properties_key": properties_key(binding.routing_key, args),
    }


def _split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    try:
        return host, int(port)
    except ValueError:
        return addr, 0


def local_addr(session: Session, broker: Broker) -> str:
    """The broker side of a connection ("host:port")."""
    task = getattr(session.wake, "__self__", None)
    stream = getattr(task, "stream", None)
    try:
        host, port = stream.socket.getsockname()[:2]  # type: ignore[union-attr]
    except (AttributeError, OSError, TypeError, ValueError):
        return f"{broker.config.host}:{broker.config.port}"
    return f"{host}:{port}"


def connection_name(session: Session, broker: Broker) -> str:
    return f"{session.peer} -> {local_addr(session, broker)}"


def connection_json(stats: Stats, session: Session) -> dict[str, Any]:
    broker = stats.broker
    conn = session.conn
    peer_host, peer_port = _split_addr(session.peer)
    host, port = _split_addr(local_addr(session, broker))
    client = jsonable(conn.client_properties or {})
    connected = stats.connected_at.get(session)
    if connected is None:
        connected = time.time()
        if session in stats.broker.sessions:
            stats.connected_at[session] = connected
    out = {
        "name": connection_name(session, broker),
        "node": NODE,
        "type": "network",
        "state": "blocked" if session.blocked else "running",
        "vhost": session.vhost.name if session.vhost else None,
        "user": session.user,
        "user_who_performed_action": session.user,
        "protocol": "AMQP 0-9-1",
        "auth_mechanism": "PLAIN",
        "ssl": False,
        "peer_host": peer_host,
        "peer_port": peer_port,
        "host": host,
        "port": port,
        "channels": len(session.channels),
        "channel_max": getattr(conn, "channel_max", None),
        "frame_max": getattr(conn, "frame_max", None),
        "timeout": getattr(conn, "heartbeat", None),
        "client_properties": client,
        "connected_at": int(connected * 1000),
        "send_pend": conn.output_size,
    }
    if isinstance(client, dict) and client.get("connection_name"):
        out["user_provided_name"] = client["connection_name"]
    return out


def channel_name(session: Session, chan: Channel, broker: Broker) -> str:
    return f"{connection_name(session, broker)} ({chan.id})"


def channel_json(broker: Broker, session: Session, chan: Channel) -> dict[str, Any]:
    peer_host, peer_port = _split_addr(session.peer)
    return {
        "name": channel_name(session, chan, broker),
        "number": chan.id,
        "node": NODE,
        "vhost": session.vhost.name if session.vhost else None,
        "user": session.user,
        "state": "running" if chan.active else "flow",
        "connection_details": {
            "name": connection_name(session, broker),
            "peer_host": peer_host,
            "peer_port": peer_port,
        },
        "consumer_count": len(chan.consumers),
        "messages_unacknowledged": len(chan.unacked),
        "messages_unconfirmed": chan.confirms.unconfirmed,
        "messages_uncommitted": len(chan.tx_publishes),
        "acks_uncommitted": len(chan.tx_acks),
        "prefetch_count": chan.consumer_prefetch,
        "global_prefetch_count": chan.global_prefetch,
        "confirm": chan.confirms.enabled,
        "transactional": chan.tx,
    }


def consumer_json(broker: Broker, session: Session, consumer: Consumer) -> dict[str, Any]:
    chan = consumer.channel
    peer_host, peer_port = _split_addr(session.peer)
    return {
        "consumer_tag": consumer.tag,
        "queue": {"name": consumer.queue.name, "vhost": consumer.queue.vhost},
        "channel_details": {
            "name": channel_name(session, chan, broker),
            "number": chan.id,
            "connection_name": connection_name(session, broker),
            "peer_host": peer_host,
            "peer_port": peer_port,
            "user": session.user,
            "node": NODE,
        },
        "ack_required": not consumer.no_ack,
        "exclusive": consumer.exclusive,
        "prefetch_count": consumer.prefetch,
        "arguments": jsonable(consumer.arguments),
        "active": True,
        "activity_status": "up",
        "messages_unacknowledged": consumer.unacked,
    }


def user_json(user: Any) -> dict[str, Any]:
    return {
        "name": user.name,
        "password_hash": user.password_hash,
        "hashing_algorithm": "mqbroker_pbkdf2_sha256",
        "tags": list(user.tags),
        "limits": {},
    }


def overview_json(stats: Stats, listeners: list[dict[str, Any]]) -> dict[str, Any]:
    broker = stats.broker
    publish, deliver, ack = stats.global_rates.rates("all") or (0.0, 0.0, 0.0)
    ready = unacked = queues = exchanges = consumers = 0
    for vhost in broker.vhosts.values():
        exchanges += len(vhost.exchanges)
        for queue in vhost.queues.values():
            queues += 1
            ready += queue.message_count
            unacked += queue.unacked
            consumers += queue.consumer_count
    channels = sum(len(s.channels) for s in broker.sessions)
    config = broker.config
    return {
        "management_version": __version__,
        "rates_mode": "basic",
        "product_name": "mqbroker",
        "product_version": __version__,
        "rabbitmq_version": config.product_version,
        "erlang_version": "n/a (Python)",
        "cluster_name": "mqbroker",
        "node": NODE,
        "uptime_s": round(time.time() - broker.started_at, 1),
        "message_stats": {
            "publish": stats.published_total(),
            "publish_details": _rate(publish),
            "deliver_get": stats.totals[0],
            "deliver_get_details": _rate(deliver),
            "deliver": stats.totals[0],
            "deliver_details": _rate(deliver),
            "ack": stats.totals[1],
            "ack_details": _rate(ack),
        },
        "queue_totals": {
            "messages": ready + unacked,
            "messages_details": _rate(0.0),
            "messages_ready": ready,
            "messages_ready_details": _rate(0.0),
            "messages_unacknowledged": unacked,
            "messages_unacknowledged_details": _rate(0.0),
        },
        "object_totals": {
            "connections": len(broker.sessions),
            "channels": channels,
            "consumers": consumers,
            "exchanges": exchanges,
            "queues": queues,
        },
        "listeners": listeners,
        "contexts": [],
        "statistics_db_event_queue": 0,
    }


# ------------------------------------------------------------ definitions


def export_definitions(broker: Broker, vhost_name: str | None = None) -> dict[str, Any]:
    vhosts = [
        v for v in broker.vhosts.values() if vhost_name is None or v.name == vhost_name
    ]
    queues, exchanges, bindings = [], [], []
    for vhost in vhosts:
        for queue in vhost.queues.values():
            if queue.exclusive_owner is not None:
                continue
            queues.append(
                {
                    "name": queue.name,
                    "vhost": vhost.name,
                    "durable": queue.durable,
                    "auto_delete": queue.auto_delete,
                    "arguments": jsonable(queue.arguments),
                }
            )
        for exchange in vhost.exchanges.values():
            if exchange.builtin:
                continue
            exchanges.append(
                {
                    "name": exchange.name,
                    "vhost": vhost.name,
                    "type": exchange.type_name,
                    "durable": exchange.durable,
                    "auto_delete": exchange.auto_delete,
                    "internal": exchange.internal,
                    "arguments": jsonable(exchange.arguments),
                }
            )
        for source, binding in vhost.bindings():
            if not source:
                continue
            dest = binding.destination
            if dest.kind == "queue":
                target = vhost.queues.get(dest.name)
                if target is None or target.exclusive_owner is not None:
                    continue
            bindings.append(
                {
                    "source": source,
                    "vhost": vhost.name,
                    "destination": dest.name,
                    "destination_type": dest.kind,
                    "routing_key": binding.routing_key,
                    "arguments": jsonable(binding.args_dict()),
                }
            )
    policies = defs.list_policies(broker, vhost_name)
    out: dict[str, Any] = {
        "rabbit_version": broker.config.product_version,
        "rabbitmq_version": broker.config.product_version,
        "product_name": "mqbroker",
        "product_version": __version__,
    }
    if vhost_name is None:
        out["users"] = [user_json(u) for u in broker.users.users.values()]
        out["vhosts"] = [{"name": v.name} for v in vhosts]
        out["permissions"] = defs.list_permissions(broker)
        out["topic_permissions"] = defs.list_topic_permissions(broker)
        out["parameters"] = []
        out["global_parameters"] = []
    out["policies"] = [jsonable(p) for p in policies]
    out["queues"] = queues
    out["exchanges"] = exchanges
    out["bindings"] = bindings
    return out
