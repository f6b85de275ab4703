"""A small etcd v3 client over its JSON gateway (HTTP/1.1 + JSON), on trio.

Why not a library: the maintained Python clients are gRPC on asyncio, or
`etcd3gw` on blocking `requests`; etcd's gateway is plain HTTP that httpx
(already a dependency, trio-capable) speaks, and the broker needs a handful
of calls: range, put, delete, txn, and leases. Keys and values are base64
in JSON, 64-bit numbers are strings. Every key is under ``prefix``.

Every call has a short timeout and tries the next endpoint on a connection
error; anything else etcd answers that is not a success is an
``EtcdError`` too, so callers handle one exception type.
"""

from __future__ import annotations

import base64
from typing import Any

import httpx

DEFAULT_TIMEOUT = 2.0


class EtcdError(Exception):
    """etcd could not be reached or refused the request."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_end(key: bytes) -> bytes:
    """The smallest key after every key starting with ``key``."""
    end = bytearray(key)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\x00"


class EtcdClient:
    def __init__(self, endpoints: list[str], *, prefix: str = "mqbroker/",
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoint")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.prefix = prefix
        self._current = 0
        self._http = httpx.AsyncClient(timeout=timeout)

    def key(self, name: str) -> bytes:
        return (self.prefix + name).encode()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        last: Exception | None = None
        for attempt in range(len(self.endpoints)):
            endpoint = self.endpoints[(self._current + attempt) % len(self.endpoints)]
            try:
                response = await self._http.post(endpoint + path, json=body)
            except httpx.HTTPError as exc:
                last = exc
                continue
            self._current = (self._current + attempt) % len(self.endpoints)
            try:
                data = response.json()
            except ValueError as exc:
                raise EtcdError(f"{path}: not JSON ({response.status_code})") from exc
            if response.status_code != 200 or "error" in data:
                raise EtcdError(f"{path}: {data.get('error') or data.get('message') or data}")
            if not isinstance(data, dict):
                raise EtcdError(f"{path}: unexpected answer")
            return data
        raise EtcdError(f"no etcd endpoint answered: {last}")

    # ---------------------------------------------------------------- kv

    async def get(self, name: str) -> tuple[bytes, int, int] | None:
        """(value, mod_revision, create_revision) or None."""
        data = await self.call("/v3/kv/range", {"key": _b64(self.key(name))})
        kvs = data.get("kvs") or []
        if not kvs:
            return None
        kv = kvs[0]
        return _unb64(kv.get("value", "")), int(kv["mod_revision"]), int(kv["create_revision"])

    async def get_prefix(self, name: str) -> list[tuple[str, bytes]]:
        """(key without the client's prefix, value) for every key under it."""
        key = self.key(name)
        data = await self.call(
            "/v3/kv/range", {"key": _b64(key), "range_end": _b64(prefix_end(key))}
        )
        start = len(self.prefix)
        return [
            (_unb64(kv["key"]).decode()[start:], _unb64(kv.get("value", "")))
            for kv in data.get("kvs") or []
        ]

    async def put(self, name: str, value: bytes, lease: int = 0) -> None:
        body: dict[str, Any] = {"key": _b64(self.key(name)), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        await self.call("/v3/kv/put", body)

    async def delete(self, name: str) -> None:
        await self.call("/v3/kv/deleterange", {"key": _b64(self.key(name))})

    async def txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]],
                  failure: list[dict[str, Any]] | None = None) -> bool:
        """A transaction in the gateway's JSON form (build the parts with
        the helpers below); True when the comparisons held."""
        data = await self.call(
            "/v3/kv/txn", {"compare": compare, "success": success, "failure": failure or []}
        )
        return bool(data.get("succeeded"))

    def compare_create(self, name: str, revision: int) -> dict[str, Any]:
        """The key was created at ``revision`` (0: it does not exist)."""
        return {"key": _b64(self.key(name)), "target": "CREATE", "result": "EQUAL",
                "create_revision": str(revision)}

    def op_put(self, name: str, value: bytes, lease: int = 0) -> dict[str, Any]:
        put: dict[str, Any] = {"key": _b64(self.key(name)), "value": _b64(value)}
        if lease:
            put["lease"] = str(lease)
        return {"request_put": put}

    def op_delete(self, name: str) -> dict[str, Any]:
        return {"request_delete_range": {"key": _b64(self.key(name))}}

    # ------------------------------------------------------------ leases

    async def lease_grant(self, ttl: int) -> int:
        data = await self.call("/v3/lease/grant", {"TTL": ttl})
        return int(data["ID"])

    async def lease_keepalive(self, lease: int) -> int:
        """The TTL left after renewing; 0 when the lease is gone."""
        data = await self.call("/v3/lease/keepalive", {"ID": str(lease)})
        return int((data.get("result") or {}).get("TTL", 0))

    async def lease_revoke(self, lease: int) -> None:
        await self.call("/v3/lease/revoke", {"ID": str(lease)})
