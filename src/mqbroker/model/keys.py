"""Store keys: how queue-like things are named in the store.

Strategy: one function builds the key of every queue-like holder of
messages (queues, a delayed exchange's held messages), so the broker's
recovery and the holders agree on it without importing each other.
"""

from __future__ import annotations


def store_key(vhost: str, name: str) -> str:
    """Unambiguous for any vhost and queue name (both may contain '/')."""
    return f"{len(vhost)}:{vhost}:{name}"


def name_of_key(key: str) -> str | None:
    """The queue name inside ``store_key(vhost, name)``; None if malformed."""
    length, _, rest = key.partition(":")
    if not length.isdigit():
        return None
    return rest[int(length) + 1 :]
