"""Apply one ``WriteBatch`` inside one LMDB write transaction (worker thread).

Strategy: reference counts live in the "refs" sub-db and are changed in
the same transaction as the entries they count, so they can never drift
from the entries, and a restart needs no scan to rebuild them. The worker,
not the loop thread, is their only authority, because only the worker sees
the committed state:

- ``drop_queue`` is a prefix range delete; the loop thread never needs to
  know which messages the queue's committed entries pointed at;
- a stale ``remove_entry`` (a late ack after a purge, a second removal)
  finds no entry and changes no count, so a body still used by another
  queue is never deleted by mistake.

Order inside the transaction: dropped queues, then entries (so an entry
enqueued after a drop in the same batch survives it), then the net count
change per message, then bodies: a body is written only while something
still refers to it (never for a message acked within the same batch) and
deleted with its last reference. Ids are never reused, so a body is
immutable and written with ``overwrite=False``.

Damaged records never stop a write: an unreadable entry is still deleted
(its reference is leaked, not guessed), and an unreadable count is taken
as "still referenced", so damage can leak a body but never lose one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import lmdb

from . import records as rec
from .errors import StoreCorruptionError
from .store import WriteBatch

if TYPE_CHECKING:
    Txn = lmdb.Transaction[bytes]  # begun with buffers=False

HIGH_WATER_KEY = b"max_msg_id"


@dataclass(frozen=True, slots=True)
class Dbs:
    meta: lmdb._Database
    messages: lmdb._Database
    refs: lmdb._Database
    entries: lmdb._Database
    defs: lmdb._Database


def apply_batch(txn: Txn, dbs: Dbs, batch: WriteBatch) -> list[int]:
    """Write ``batch``; return the ids of the bodies deleted."""
    delta: dict[int, int] = {}
    for queue in batch.dropped_queues:
        _drop_queue(txn, dbs, queue, delta)
    _apply_entries(txn, dbs, batch, delta)
    deleted, final = _settle_refs(txn, dbs, delta)
    deleted += _apply_messages(txn, dbs, batch, final)
    _apply_definitions(txn, dbs, batch)
    if batch.messages:
        _raise_high_water(txn, dbs, max(batch.messages))
    return deleted


def _old_msg_id(raw: bytes, key: bytes) -> int | None:
    try:
        return rec.entry_msg_id(raw, key)
    except StoreCorruptionError:
        return None


def _count(delta: dict[int, int], msg_id: int | None, change: int) -> None:
    if msg_id is not None:
        delta[msg_id] = delta.get(msg_id, 0) + change


def _drop_queue(
    txn: Txn, dbs: Dbs, queue: str, delta: dict[int, int]
) -> None:
    prefix = rec.queue_prefix(queue)
    cursor = txn.cursor(db=dbs.entries)
    if not cursor.set_range(prefix):
        return
    while True:
        key = cursor.key()
        if not key.startswith(prefix):
            return
        _count(delta, _old_msg_id(cursor.value(), key), -1)
        if not cursor.delete():
            return


def _apply_entries(
    txn: Txn, dbs: Dbs, batch: WriteBatch,
    delta: dict[int, int],
) -> None:
    for (queue, seq), entry in batch.entries.items():
        key = rec.entry_key(queue, seq)
        if entry is None:
            old = txn.pop(key, db=dbs.entries)
            if old is not None:
                _count(delta, _old_msg_id(old, key), -1)
            continue
        old = txn.replace(key, rec.pack_entry(entry), db=dbs.entries)
        if old is None:
            if not _has_body(txn, dbs, batch, entry.msg_id):
                # An update of an entry already gone, naming a message
                # already deleted: do not create an entry pointing nowhere.
                txn.delete(key, db=dbs.entries)
                continue
            _count(delta, entry.msg_id, +1)
        else:
            old_id = _old_msg_id(old, key)
            if old_id != entry.msg_id:
                _count(delta, old_id, -1)
                _count(delta, entry.msg_id, +1)


def _has_body(
    txn: Txn, dbs: Dbs, batch: WriteBatch, msg_id: int
) -> bool:
    if batch.messages.get(msg_id) is not None:
        return True
    return txn.get(rec.id_key(msg_id), db=dbs.refs) is not None


def _settle_refs(
    txn: Txn, dbs: Dbs, delta: dict[int, int]
) -> tuple[list[int], dict[int, int]]:
    deleted: list[int] = []
    final: dict[int, int] = {}
    for msg_id, change in delta.items():
        key = rec.id_key(msg_id)
        raw = txn.get(key, db=dbs.refs)
        try:
            current = rec.unpack_count(raw, key) if raw is not None else 0
        except StoreCorruptionError:
            current = max(1, 1 - change)  # keep the body: leak, never lose
        count = final[msg_id] = current + change
        if change == 0:
            continue
        if count > 0:
            txn.put(key, rec.pack_count(count), db=dbs.refs)
        else:
            if raw is not None:
                txn.delete(key, db=dbs.refs)
            if txn.delete(key, db=dbs.messages):
                deleted.append(msg_id)
    return deleted, final


def _apply_messages(
    txn: Txn, dbs: Dbs, batch: WriteBatch,
    final: dict[int, int],
) -> list[int]:
    deleted: list[int] = []
    for msg_id, message in batch.messages.items():
        key = rec.id_key(msg_id)
        if message is None:  # explicit delete (not emitted by LmdbStore)
            txn.delete(key, db=dbs.refs)
            if txn.delete(key, db=dbs.messages):
                deleted.append(msg_id)
            continue
        count = final.get(msg_id)
        if count is None:
            count = 1 if txn.get(key, db=dbs.refs) is not None else 0
        if count > 0:
            txn.put(key, rec.pack_message(message), overwrite=False,
                    db=dbs.messages)
    return deleted


def _apply_definitions(
    txn: Txn, dbs: Dbs, batch: WriteBatch
) -> None:
    for (kind, name), record in batch.definitions.items():
        key = rec.def_key(kind, name)
        if record is None:
            txn.delete(key, db=dbs.defs)
        else:
            txn.put(key, rec.pack_definition(name, record), db=dbs.defs)


def read_high_water(txn: Txn, dbs: Dbs) -> int:
    """The highest id ever written. The meta record outlives the deletion
    of that message's body; the last message key covers a damaged record."""
    best = _stored_high_water(txn, dbs)
    cursor = txn.cursor(db=dbs.messages)
    if cursor.last():
        best = max(best, rec.id_from_key(cursor.key()))
    return best


def _stored_high_water(txn: Txn, dbs: Dbs) -> int:
    raw = txn.get(HIGH_WATER_KEY, db=dbs.meta)
    if raw is None:
        return 0
    try:
        value = rec.unpack(raw, "meta", HIGH_WATER_KEY)
    except StoreCorruptionError:
        return 0
    return value if isinstance(value, int) else 0


def _raise_high_water(txn: Txn, dbs: Dbs, msg_id: int) -> None:
    if msg_id > _stored_high_water(txn, dbs):
        txn.put(HIGH_WATER_KEY, rec.pack(msg_id), db=dbs.meta)
