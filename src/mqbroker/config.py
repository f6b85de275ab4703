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
    # 16 MiB: RabbitMQ 4's max_message_size default; bigger is 406.
    max_message_size: int = 16 * MiB
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

    extra: dict[str, Any] = field(default_factory=dict)

    def with_overrides(self, **values: Any) -> Config:
        known = {f.name for f in fields(self)}
        clean = {k: v for k, v in values.items() if v is not None and k in known}
        if "data_dir" in clean and clean["data_dir"] is not None:
            clean["data_dir"] = Path(clean["data_dir"])
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
