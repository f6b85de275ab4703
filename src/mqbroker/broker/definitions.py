"""Definitions commands: policies, vhosts, users, permissions and topic
permissions.

Strategy: thin commands over the access-control object (``access.py``)
and the policy engine (``policies.py``), which own durability and
enforcement; this module turns their errors into AMQP errors the HTTP API
maps to RabbitMQ's answers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mqbroker import errors
from mqbroker.broker.messages import get_vhost
from mqbroker.broker.topic_access import TopicPermission

if TYPE_CHECKING:
    from mqbroker.broker.broker import Broker
    from mqbroker.broker.session import Session


# without one they are only recorded as "policy" definitions.


def list_policies(broker: Broker, vhost: str | None = None) -> list[dict[str, Any]]:
    return list(broker.policies.list_policies(vhost))


def set_policy(
    broker: Broker,
    vhost: str,
    name: str,
    pattern: str,
    definition: dict[str, Any],
    *,
    priority: int = 0,
    apply_to: str = "all",
) -> None:
    get_vhost(broker, vhost)
    try:
        broker.policies.set_policy(
            vhost, name, pattern, definition, priority=priority, apply_to=apply_to
        )
    except KeyError as exc:
        raise errors.NotFound(str(exc).strip("'\"")) from None
    except ValueError as exc:  # PolicyError
        raise errors.PreconditionFailed(str(exc)) from None
    broker.run_dispatch()


def clear_policy(broker: Broker, vhost: str, name: str) -> bool:
    cleared = bool(broker.policies.clear_policy(vhost, name))
    broker.run_dispatch()
    return cleared


def effective_policy(
    broker: Broker, vhost: str, kind: str, name: str, queue_type: str | None = None
) -> dict[str, Any] | None:
    """The policy record that applies to a queue or exchange ("queue" or
    "exchange"), or None."""
    return broker.policies.effective(vhost, kind, name, queue_type)


# ---------------------------------------------- vhosts, users, permissions


def add_vhost(broker: Broker, name: str) -> bool:
    if not name:
        raise errors.PreconditionFailed("vhost name must not be empty")
    created = name not in broker.vhosts
    if created:
        broker.access.add_vhost(name)
    return created


def delete_vhost(broker: Broker, name: str) -> None:
    get_vhost(broker, name)
    broker.access.delete_vhost(name)
    broker.policies.clear_vhost(name)
    broker.request_commit()
    broker.run_dispatch()


def put_user(
    broker: Broker,
    name: str,
    *,
    password: str | None = None,
    password_hash: str | None = None,
    tags: list[str] | None = None,
) -> bool:
    """Create or update a user; True when it was created."""
    if not name:
        raise errors.PreconditionFailed("user name must not be empty")
    users = broker.users
    access = broker.access
    existing = users.users.get(name)
    tags = list(tags if tags is not None else (existing.tags if existing else []))
    if password is None and password_hash is None and existing is None:
        raise errors.PreconditionFailed("password or password_hash is required")
    if password is not None:
        access.add_user(name, password, tags)
    elif password_hash is not None:
        access.add_user(name, None, tags)
        users.users[name].password_hash = password_hash
        access.set_user_tags(name, tags)  # persists the record, hash too
    else:
        access.set_user_tags(name, tags)
    return existing is None


def delete_user(broker: Broker, name: str) -> bool:
    return bool(broker.access.delete_user(name))


def list_permissions(
    broker: Broker, *, user: str | None = None, vhost: str | None = None
) -> list[dict[str, Any]]:
    return [p.record() for p in broker.access.list_permissions(user=user, vhost=vhost)]


def set_permissions(
    broker: Broker, user: str, vhost: str, configure: str, write: str, read: str
) -> None:
    try:
        broker.access.set_permissions(user, vhost, configure, write, read)
    except (KeyError, ValueError) as exc:
        raise errors.PreconditionFailed(str(exc).strip("'\"")) from None


def clear_permissions(broker: Broker, user: str, vhost: str) -> bool:
    return bool(broker.access.clear_permissions(user, vhost))


def close_session(broker: Broker, session: Session, reason: str) -> None:
    """Close a client connection with 320 CONNECTION_FORCED."""
    session.report(errors.ConnectionForced(reason), 0)
    broker.run_dispatch()


# ---------------------------------------------------- topic permissions


def list_topic_permissions(
    broker: Broker, *, user: str | None = None, vhost: str | None = None
) -> list[dict[str, Any]]:
    return [p.record() for p in broker.access.topics.list(user=user, vhost=vhost)]


def set_topic_permission(
    broker: Broker, user: str, vhost: str, exchange: str, write: str, read: str
) -> None:
    if user not in broker.users.users:
        raise errors.NotFound(f"no user '{user}'")
    get_vhost(broker, vhost)
    try:
        perm = TopicPermission(user, vhost, exchange, write, read)
    except (TypeError, ValueError) as exc:
        raise errors.PreconditionFailed(str(exc)) from None
    broker.access.topics.set(perm)
    broker.request_commit()


def clear_topic_permissions(
    broker: Broker, user: str, vhost: str, exchange: str | None = None
) -> int:
    count = broker.access.topics.clear(user, vhost, exchange)
    broker.request_commit()
    return count
