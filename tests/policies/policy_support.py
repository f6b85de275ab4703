"""Helpers for the queue-policy suite (plain functions, no fixtures).

Every test talks to a real broker through the ``broker`` fixture: mqbroker
in-process, or RabbitMQ when ``MQBROKER_EXTERNAL_URL`` is set, so the same
scenario can be run against both (differential tests). Names are unique
(``unique``) and everything durable is registered for clean-up.

``RawGet`` is a tiny socket client that fetches one message with
``basic.get`` and returns the content header *bytes*, so a test can compare
field-table type tags (``l`` vs ``b``, ``T``, ``A``...) exactly as the broker
wrote them; pika and aio-pika decode tables and lose the tags.
"""

from __future__ import annotations

import contextlib
import struct
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from pamqp import commands

from support.names import unique_name
from support.raw import RawClient
from support.waits import WAIT


@dataclass
class PolicyBroker:
    host: str
    port: int
    vhost: str = "/"
    user: str = "guest"
    password: str = "guest"
    data_dir: Path | None = None
    embedded: Any = None
    config: Any = None

    @property
    def url(self) -> str:
        return (
            f"amqp://{self.user}:{self.password}@{self.host}:{self.port}/"
            f"{urllib.parse.quote(self.vhost, safe='')}"
        )

    @property
    def external(self) -> bool:
        return self.embedded is None

    @property
    def core(self) -> Any:
        """The in-process ``Broker`` (read it only through ``call``)."""
        assert self.embedded is not None, "in-process broker only"
        return self.embedded.info.broker

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` on the broker's trio thread."""
        assert self.embedded is not None, "in-process broker only"

        def run() -> Any:
            return fn(*args, **kwargs)

        return trio.from_thread.run_sync(run, trio_token=self.embedded._token)

EXTERNAL_SKIP = "needs mqbroker's internals (not run against an external broker)"


def unique(prefix: str = "q") -> str:
    return unique_name(prefix, suite="ptest")


def start_embedded(data_dir: Path, **overrides: Any) -> PolicyBroker:
    from mqbroker.config import Config
    from mqbroker.server.embedded import EmbeddedBroker

    config = Config(host="127.0.0.1", port=0, data_dir=data_dir, **overrides)
    running = EmbeddedBroker(config).start()
    return PolicyBroker(
        host="127.0.0.1", port=running.port, data_dir=data_dir, embedded=running,
        config=config,
    )


def text(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode()
    return value


# ------------------------------------------------------------ typed tables


def parse_table(raw: bytes, offset: int = 0) -> tuple[list[tuple[str, str, Any]], int]:
    """A field table -> ([(key, tag, value)], next offset), tags kept.

    Nested tables are lists of triples, arrays lists of (tag, value)."""
    (size,) = struct.unpack_from(">I", raw, offset)
    offset += 4
    end = offset + size
    items = []
    while offset < end:
        klen = raw[offset]
        key = raw[offset + 1 : offset + 1 + klen].decode()
        offset += 1 + klen
        tag, value, offset = _value(raw, offset)
        items.append((key, tag, value))
    return items, end


def _array(raw: bytes, offset: int) -> tuple[list[tuple[str, Any]], int]:
    (size,) = struct.unpack_from(">I", raw, offset)
    offset += 4
    end = offset + size
    items = []
    while offset < end:
        tag, value, offset = _value(raw, offset)
        items.append((tag, value))
    return items, end


_FIXED = {
    "t": (">B", 1), "b": (">b", 1), "B": (">B", 1), "s": (">h", 2),
    "u": (">H", 2), "I": (">i", 4), "i": (">I", 4), "l": (">q", 8),
    "f": (">f", 4), "d": (">d", 8), "T": (">Q", 8),
}


def _value(raw: bytes, offset: int) -> tuple[str, Any, int]:
    tag = chr(raw[offset])
    offset += 1
    if tag in _FIXED:
        fmt, size = _FIXED[tag]
        (value,) = struct.unpack_from(fmt, raw, offset)
        return tag, value, offset + size
    if tag in "Sx":
        (size,) = struct.unpack_from(">I", raw, offset)
        data = raw[offset + 4 : offset + 4 + size]
        return tag, data.decode() if tag == "S" else data, offset + 4 + size
    if tag == "F":
        value, offset = parse_table(raw, offset)
        return tag, value, offset
    if tag == "A":
        value, offset = _array(raw, offset)
        return tag, value, offset
    if tag == "D":
        scale, unscaled = struct.unpack_from(">Bi", raw, offset)
        return tag, (scale, unscaled), offset + 5
    if tag == "V":
        return tag, None, offset
    raise ValueError(f"unknown field tag {tag!r}")


_SHORTSTR_PROPS = {0x8000, 0x4000, 0x0400, 0x0200, 0x0100, 0x0080, 0x0020, 0x0010, 0x0008, 0x0004}


def typed_headers(raw_props: bytes) -> list[tuple[str, str, Any]]:
    """Raw content-header properties -> the headers table with its tags."""
    (flags,) = struct.unpack_from(">H", raw_props, 0)
    offset = 2
    for bit in (0x8000, 0x4000):
        if flags & bit:
            offset += 1 + raw_props[offset]
    if not flags & 0x2000:
        return []
    items, _ = parse_table(raw_props, offset)
    return items


def has_expiration(raw_props: bytes) -> bool:
    (flags,) = struct.unpack_from(">H", raw_props, 0)
    return bool(flags & 0x0100)


class RawGet(RawClient):
    """The shared raw client, opened on channel 1, with ``basic.get`` that
    returns the raw properties (to check field-table types)."""

    def __init__(self, broker: Any, timeout: float = WAIT) -> None:
        super().__init__(broker.host, broker.port, timeout, user=broker.user,
                         password=broker.password, vhost=broker.vhost)
        self.broker = broker
        self.handshake()
        self.open_channel(1)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.send_method(
                commands.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0)
            )
        super().close()

    def get(self, queue: str) -> tuple[Any, bytes, bytes] | None:
        """basic.get(no_ack) -> (get-ok, raw properties, body) or None."""
        self.send_method(commands.Basic.Get(queue=queue, no_ack=True), 1)
        _, method = self.read_frame()
        if isinstance(method, commands.Basic.GetEmpty):
            return None
        assert isinstance(method, commands.Basic.GetOk), method
        ftype, _, payload = self.read_raw_frame()
        assert ftype == 2
        (body_size,) = struct.unpack_from(">Q", payload, 4)
        raw_props = payload[12:]
        body = b""
        while len(body) < body_size:
            ftype, _, chunk = self.read_raw_frame()
            assert ftype == 3
            body += chunk
        return method, raw_props, body

    def get_wait(self, queue: str, timeout: float = WAIT) -> tuple[Any, bytes, bytes]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.get(queue)
            if got is not None:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"no message in {queue} within {timeout} s")
            time.sleep(0.02)


def death_shape(
    headers: list[tuple[str, str, Any]], names: dict[str, str] | None = None
) -> dict[str, Any]:
    """The broker-independent shape of dead-letter headers: each header's
    position, tag and value, and the x-death entries with their keys in
    order, tags and values; ``time`` values are dropped and the unique
    queue names of a run are mapped to stable labels through ``names``.
    ``x-last-death-*`` (RabbitMQ 3.13+) are left out, so the shape can be
    compared with RabbitMQ 3.10."""
    labels = names or {}

    def norm(tag: str, value: Any) -> Any:
        if tag == "S":
            return labels.get(value, value)
        if tag == "A":
            return [(t, norm(t, v)) for t, v in value]
        if tag == "F":
            return [(k, t, None if k == "time" else norm(t, v)) for k, t, v in value]
        return value

    kept = [(k, t, v) for k, t, v in headers if not k.startswith("x-last-death-")]
    deaths = next((v for k, t, v in kept if k == "x-death"), [])
    return {
        "headers": [(k, t, norm(t, v)) for k, t, v in kept if k != "x-death"],
        "order": [k for k, _, _ in kept],
        "x-death": [(t, norm(t, v)) for t, v in deaths],
    }


def headers_dict(headers: list[tuple[str, str, Any]]) -> dict[str, tuple[str, Any]]:
    return {k: (t, v) for k, t, v in headers}
