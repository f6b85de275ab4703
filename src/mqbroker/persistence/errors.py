"""Exceptions raised by the storage layer.

Strategy: each failure the broker must *react* to differently gets its own
type, so callers catch exactly what they can handle:

- ``StoreFormatError``: refuse to start (wrong or foreign data dir);
- ``StoreFullError``: raise the disk alarm and retry later (nothing lost);
- ``StoreCorruptionError``: quarantine one queue or message, keep running
  (LMDB has no page checksums, so every record carries a CRC32).
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every storage error."""


class StoreFormatError(StoreError):
    """The data dir holds another store format (or is not a store at all)."""


class StoreFullError(StoreError):
    """The map reached its maximum size (or the disk is full).

    The write was rolled back as a whole; the batch may be retried once
    space has been freed.
    """


class StoreCorruptionError(StoreError):
    """A record failed its CRC32 or could not be decoded."""

    def __init__(self, what: str, key: bytes) -> None:
        super().__init__(f"corrupt {what} record at key {key!r}")
        self.what = what
        self.key = key
