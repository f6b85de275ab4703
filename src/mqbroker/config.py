"""Broker configuration: one frozen dataclass, loaded from TOML, overridden
by command-line flags.

Every limit carries its unit in its name and the reason for its default in a
comment, so an operator reading this file knows what a number buys.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
# RabbitMQ refuses a max_message_size above 512 MiB; so do we.
MAX_MESSAGE_SIZE_LIMIT = 512 * MiB


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 5672
    # None means "in memory only": nothing survives a restart.
    data_dir: Path | None = Path("data")
    storage: str = "lmdb"  # "lmdb" | "memory"
    log_level: str = "info"
    log_format: str = "console"  # "console" | "json"

    # --- negotiated limits (RabbitMQ defaults, so clients tune the same) ---
    # channel_max 2047: RabbitMQ's default; pika/aio-pika accept it.
    channel_max: int = 2047
    # frame_max 128 KiB: RabbitMQ's default; large enough that a 1 KB message
    # is one body frame, small enough that one frame never stalls others long.
    frame_max: int = 131072
    # 60 s: RabbitMQ's default; a silent peer is dropped after two intervals.
    heartbeat_s: int = 60
    # 128 MiB: RabbitMQ 3.x's max_message_size default (4.0 lowered it to
    # 16 MiB; set it here to follow); bigger is 406 on the publish.
    max_message_size: int = 128 * MiB
    # RabbitMQ's default delivery acknowledgement timeout: 30 minutes.
    consumer_timeout_ms: int | None = 1_800_000
    # A client that connects but never finishes the handshake is dropped.
    handshake_timeout_s: float = 10.0

    # --- output buffering (backpressure) ---
    # Deliveries to a connection stop while more than this many bytes are
    # waiting for its socket, and the connection's reads pause too; this is
    # what keeps a slow consumer from growing the broker's memory.
    output_high_water_bytes: int = 1 * MiB
    output_low_water_bytes: int = 256 * KiB

    # --- storage ---
    lmdb_map_size_bytes: int = 256 * MiB
    lmdb_max_map_size_bytes: int = 64 * GiB
    body_cache_bytes: int = 64 * MiB

    # --- identity ---
    default_user: str = "guest"
    default_password: str = "guest"
    default_vhost: str = "/"
    # kombu/Celery read "product" to choose basic.qos semantics: they treat a
    # server as RabbitMQ (per-consumer qos, global=True per channel) only when
    # it says "RabbitMQ" with version >= 3.3. We implement RabbitMQ's
    # semantics, so we say so, and name ourselves in "platform"/"mqbroker".
    product: str = "RabbitMQ"
    product_version: str = "3.13.7"

    management_port: int | None = None

    # --- access control (broker/access.py) ---
    # Users that may log in only from a loopback address (RabbitMQ's
    # loopback_users): the well-known guest/guest must not open a broker to
    # the network by accident.
    loopback_users: tuple[str, ...] = ("guest",)

    # --- connection and resource limits (None = unlimited, as RabbitMQ) ---
    # Node-wide cap on client connections, checked at connection.open like
    # RabbitMQ's connection_max: 530 "connection refused: node connection
    # limit (N) is reached".
    connection_max: int | None = None
    # Defaults for every vhost/user; per-vhost and per-user limits set
    # through broker/access.py override them.
    vhost_max_connections: int | None = None
    vhost_max_queues: int | None = None
    user_max_connections: int | None = None

    # --- TLS (amqps) listener: started when cert and key are both set ---
    tls_port: int = 5671
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None
    # CA bundle used to verify client certificates.
    tls_cafile: Path | None = None
    # verify_peer: ask for a client certificate and verify it when sent;
    # fail_if_no_peer_cert: also refuse clients that send none (mTLS).
    tls_verify_peer: bool = False
    tls_fail_if_no_peer_cert: bool = False
    # RabbitMQ's ssl_handshake_timeout (5 s).
    tls_handshake_timeout_s: float = 5.0
    # Serve the management API over HTTPS with the same certificate/key.
    management_tls: bool = False

    # --- resource alarms (server/alarms.py) ---
    # Publishing connections are blocked (connection.blocked) while the
    # broker's RSS is above this many bytes; None turns the check off.
    vm_memory_high_watermark_bytes: int | None = None
    # ... or while the data dir's file system has less free space than
    # this (RabbitMQ's default disk_free_limit is 50 MB).
    disk_free_limit_bytes: int | None = 50 * 1000 * 1000
    alarm_check_interval_s: float = 1.0

    # Clustering (docs/clustering.md): off unless etcd endpoints are set.
    node_name: str | None = None
    cluster_etcd: tuple[str, ...] = ()
    cluster_port: int = 25672  # replication (leader <- followers)
    cluster_size: int = 3  # confirms need a majority of this many nodes
    cluster_secret: str = "mqbroker"  # followers present it to the leader
    cluster_prefix: str = "mqbroker/"  # etcd key prefix (one per cluster)
    cluster_lease_ttl_s: int = 5
    cluster_ack_timeout_s: float = 3.0
    # the address other nodes reach this one at (default: --host, or the
    # host name when listening on every interface)
    cluster_advertise_host: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def with_overrides(self, **values: Any) -> Config:
        known = {f.name for f in fields(self)}
        clean = {k: v for k, v in values.items() if v is not None and k in known}
        if "data_dir" in clean and clean["data_dir"] is not None:
            clean["data_dir"] = Path(clean["data_dir"])
        for key in ("tls_certfile", "tls_keyfile", "tls_cafile"):
            if isinstance(clean.get(key), str):
                clean[key] = Path(clean[key])
        size = clean.get("max_message_size")
        if size is not None and not 1 <= int(size) <= MAX_MESSAGE_SIZE_LIMIT:
            raise ValueError(f"max_message_size must be between 1 and {MAX_MESSAGE_SIZE_LIMIT}")
        if isinstance(clean.get("cluster_etcd"), (list, str)):
            raw = clean["cluster_etcd"]
            items = raw.split(",") if isinstance(raw, str) else raw
            clean["cluster_etcd"] = tuple(i.strip() for i in items if i.strip())
        if isinstance(clean.get("loopback_users"), list):
            clean["loopback_users"] = tuple(clean["loopback_users"])
        return replace(self, **clean)

    @classmethod
    def from_toml(cls, path: Path) -> Config:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
        flat: dict[str, Any] = {}
        for key, value in raw.items():
            if isinstance(value, dict):
                for sub, subvalue in value.items():
                    flat[sub.replace("-", "_")] = subvalue
            else:
                flat[key.replace("-", "_")] = value
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(flat) - known)
        if unknown:
            raise ValueError(f"unknown configuration keys: {', '.join(unknown)}")
        return cls().with_overrides(**flat)
