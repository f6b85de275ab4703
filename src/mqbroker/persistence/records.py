"""Key layout and record encoding of the LMDB store (format version 1).

Strategy: keys are built so that LMDB's byte-wise key order *is* the order
the broker needs, and values are msgpack with a CRC32 in front.

- message key: ``msg_id`` as 8 bytes big-endian. Big-endian integers sort
  numerically, so ``cursor.last()`` finds the highest id.
- entry key: ``queue (utf-8) + b"\\x00" + seq (8 bytes big-endian)``. A
  queue's entries form one contiguous range in seq order, read with a
  ``set_range(prefix)`` scan; the NUL terminator (AMQP names may hold any
  UTF-8 but NUL) stops queue ``"a"`` from sharing a range with ``"ab"``.
- definition key: ``kind + b"\\x00" + key``; keys longer than LMDB's 511
  byte limit (a binding joins several 255-byte names) are replaced by
  ``b"\\xff" + sha256(key)``. 0xFF never occurs in UTF-8, so hashed and
  plain keys cannot collide, and the value keeps the real key.
- value: ``crc32(payload) (4 bytes big-endian) + payload``. LMDB has no page
  checksums (reliability.md, B5.3), so a flipped byte must be detected here
  and reported as ``StoreCorruptionError`` instead of being misread.
"""

from __future__ import annotations

import hashlib
import zlib
from typing import Any

import msgpack  # type: ignore[import-untyped]

from .errors import StoreCorruptionError
from .store import StoredEntry, StoredMessage

FORMAT_VERSION = 1
MAX_KEY_BYTES = 511  # LMDB's compiled-in default (mdb_env_get_maxkeysize)
MAX_NAME_BYTES = 255  # AMQP shortstr

_SEP = b"\x00"
_HASHED = b"\xff"


# --- keys -------------------------------------------------------------
def id_key(msg_id: int) -> bytes:
    return msg_id.to_bytes(8, "big")


def id_from_key(key: bytes) -> int:
    return int.from_bytes(key, "big")


_PREFIXES: dict[str, bytes] = {}


def queue_prefix(queue: str) -> bytes:
    """Encoded and checked once per queue name (every entry key needs it);
    the cache starts over at 4,096 names."""
    prefix = _PREFIXES.get(queue)
    if prefix is not None:
        return prefix
    raw = queue.encode()
    if _SEP in raw or len(raw) > MAX_NAME_BYTES:
        raise ValueError(f"invalid queue name for the store: {queue!r}")
    if len(_PREFIXES) >= 4096:
        _PREFIXES.clear()
    prefix = _PREFIXES[queue] = raw + _SEP
    return prefix


def entry_key(queue: str, seq: int) -> bytes:
    return queue_prefix(queue) + seq.to_bytes(8, "big")


def split_entry_key(key: bytes) -> tuple[str, int]:
    return key[:-9].decode(), int.from_bytes(key[-8:], "big")


def def_prefix(kind: str) -> bytes:
    raw = kind.encode()
    if _SEP in raw or not raw:
        raise ValueError(f"invalid definition kind: {kind!r}")
    return raw + _SEP


def def_key(kind: str, key: str) -> bytes:
    full = def_prefix(kind) + key.encode()
    if len(full) <= MAX_KEY_BYTES:
        return full
    return def_prefix(kind) + _HASHED + hashlib.sha256(key.encode()).digest()


# --- values -----------------------------------------------------------
# msgpack.packb builds a Packer per call; one reused Packer is cheaper.
# Packer.pack runs entirely under the GIL, so sharing it between the loop
# thread and the committer's worker thread is safe.
_PACKER = msgpack.Packer(use_bin_type=True)


def pack(obj: Any) -> bytes:
    payload: bytes = _PACKER.pack(obj)
    return zlib.crc32(payload).to_bytes(4, "big") + payload


def unpack(raw: bytes, what: str, key: bytes) -> Any:
    payload = raw[4:]
    if len(raw) < 5 or zlib.crc32(payload) != int.from_bytes(raw[:4], "big"):
        raise StoreCorruptionError(what, key)
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:  # CRC matched, yet undecodable: a bug
        raise StoreCorruptionError(what, key) from exc


def pack_message(message: StoredMessage) -> bytes:
    return pack(
        [message.exchange, message.routing_key, message.properties,
         message.body]
    )


def unpack_message(raw: bytes, key: bytes) -> StoredMessage:
    fields = unpack(raw, "message", key)
    try:
        exchange, routing_key, properties, body = fields
        return StoredMessage(exchange, routing_key, properties, body)
    except (TypeError, ValueError) as exc:
        raise StoreCorruptionError("message", key) from exc


def pack_entry(entry: StoredEntry) -> bytes:
    return pack(
        [
            entry.msg_id,
            entry.delivery_count,
            entry.redelivered,
            entry.size,
            entry.expires_at,
        ]
    )


def entry_msg_id(raw: bytes, key: bytes) -> int:
    """Only the message id of a stored entry (what a delete needs to
    settle the body's reference count), without building the entry."""
    fields = unpack(raw, "entry", key)
    msg_id = fields[0] if isinstance(fields, list) and fields else None
    if not isinstance(msg_id, int):
        raise StoreCorruptionError("entry", key)
    return msg_id


def unpack_entry(raw: bytes, key: bytes) -> StoredEntry:
    fields = unpack(raw, "entry", key)
    try:
        # Records written before size/expiry were stored have 3 or 4
        # fields; the missing ones default to 0.
        msg_id, delivery_count, redelivered, size, expires_at = (
            list(fields) + [0, 0]
        )[:5]
        return StoredEntry(
            int.from_bytes(key[-8:], "big"), msg_id, delivery_count,
            bool(redelivered), size, expires_at,
        )
    except (TypeError, ValueError) as exc:
        raise StoreCorruptionError("entry", key) from exc


def pack_definition(key: str, record: dict[str, Any]) -> bytes:
    return pack([key, record])


def unpack_definition(raw: bytes, key: bytes) -> tuple[str, dict[str, Any]]:
    fields = unpack(raw, "definition", key)
    try:
        name, record = fields
        if not isinstance(name, str) or not isinstance(record, dict):
            raise TypeError
        return name, record
    except (TypeError, ValueError) as exc:
        raise StoreCorruptionError("definition", key) from exc


def pack_count(count: int) -> bytes:
    return pack(count)


def unpack_count(raw: bytes, key: bytes) -> int:
    count = unpack(raw, "refcount", key)
    if not isinstance(count, int):
        raise StoreCorruptionError("refcount", key)
    return count


def copy_entry(entry: StoredEntry) -> StoredEntry:
    """A private copy, so a caller mutating its object later cannot change
    a batch that a worker thread may be encoding."""
    return StoredEntry(
        entry.seq, entry.msg_id, entry.delivery_count, entry.redelivered,
        entry.size, entry.expires_at,
    )
