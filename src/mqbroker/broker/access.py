"""Who may do what: vhosts, users, permissions and connection limits.

Strategy: one ``AccessControl`` object per broker (``broker.access``) owns
the registry of users, vhosts and permissions, writes every change through
the store (``user``, ``vhost`` and ``permission`` definitions) and answers
the questions the protocol asks at three points:

- ``connection.start-ok``: ``authenticate()`` (PLAIN, AMQPLAIN, EXTERNAL
  with a verified TLS client certificate, ``loopback_users``);
- ``connection.open``: ``open_vhost()`` (node/vhost/user connection limits,
  then vhost access, in RabbitMQ's order, all 530 NOT_ALLOWED);
- every resource operation: ``check()`` (403 ACCESS_REFUSED on the channel).

Permission semantics are RabbitMQ's internal backend
(``rabbit_auth_backend_internal:check_resource_access``): three regular
expressions per (user, vhost); a resource is allowed when the expression
*matches anywhere* in its name (Erlang ``re:run`` without anchors, i.e.
Python ``re.search``), so ``"^foo"`` allows ``foo-1`` and ``"foo"`` also
allows ``a-foo``; anchor with ``^...$`` to match whole names. The empty
string means ``"^$"`` (nothing, since no resource has an empty name: the
default exchange is checked as ``amq.default``). A user may open a vhost
when it holds any permission entry there, even one of three empty strings.

``check()`` is on the publish path, so it is cheap: one dict look-up when
the user's three expressions are all ``.*``; otherwise compiled
expressions and a bounded per-entry cache of names already decided.
Changes apply at once to open connections (RabbitMQ may cache per channel).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mqbroker import errors
from mqbroker.broker.auth import User, hash_password
from mqbroker.broker.topic_access import TopicPermissions
from mqbroker.log import get_logger

if TYPE_CHECKING:
    from mqbroker.broker.broker import Broker
    from mqbroker.broker.vhost import VHost

log = get_logger("mqbroker.access")

PERMS = ("configure", "write", "read")
# Expressions that match every name: the common "full access" grant takes
# the fast path without running a regex.
_MATCH_ALL = frozenset({".*", "^.*", ".*$", "^.*$", ".+", "^.+", "^.+$"})
_CACHE_MAX = 4096


def resource_name(kind: str, name: str) -> str:
    """The name permissions are checked against (RabbitMQ maps the
    default exchange's empty name to ``amq.default``)."""
    if kind == "exchange" and name == "":
        return "amq.default"
    return name


def is_loopback(peer: str) -> bool:
    """``peer`` is ``host:port`` as the connection task formats it."""
    host = peer.rsplit(":", 1)[0].strip("[]")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


@dataclass
class Permission:
    user: str
    vhost: str
    configure: str = ".*"
    write: str = ".*"
    read: str = ".*"
    full: bool = field(init=False, default=False)
    _compiled: dict[str, re.Pattern[str] | None] = field(
        init=False, default_factory=dict, repr=False
    )
    _cache: dict[tuple[str, str], bool] = field(
        init=False, default_factory=dict, repr=False
    )

    def __post_init__(self) -> None:
        for perm in PERMS:
            pattern = getattr(self, perm)
            if not isinstance(pattern, str):
                raise TypeError(f"{perm} permission must be a string")
            if pattern in _MATCH_ALL:
                self._compiled[perm] = None  # None: matches everything
                continue
            try:
                self._compiled[perm] = re.compile(pattern or "^$")
            except re.error as exc:
                raise ValueError(
                    f"invalid {perm} regular expression {pattern!r}: {exc}"
                ) from None
        self.full = all(v is None for v in self._compiled.values())

    def allows(self, perm: str, name: str) -> bool:
        pattern = self._compiled[perm]
        if pattern is None:
            return True
        key = (perm, name)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        result = pattern.search(name) is not None
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[key] = result
        return result

    def record(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "vhost": self.vhost,
            "configure": self.configure,
            "write": self.write,
            "read": self.read,
        }


def _text_arg(arguments: Any, key: str) -> str | None:
    if not isinstance(arguments, dict):
        return None
    value = arguments.get(key)
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def _permission_key(user: str, vhost: str) -> str:
    return json.dumps([vhost, user], ensure_ascii=False)


def _limit(value: Any) -> int | None:
    """RabbitMQ spells "no limit" as a negative number; so do we."""
    if value is None:
        return None
    value = int(value)
    return None if value < 0 else value


class AccessControl:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.config = broker.config
        self.users = broker.users
        self.permissions: dict[tuple[str, str], Permission] = {}
        # routing-key restrictions per topic exchange (topic_access.py)
        self.topics = TopicPermissions(broker.store)
        self.vhost_limits: dict[str, dict[str, int]] = {}
        self.user_limits: dict[str, dict[str, int]] = {}
        self.loopback_users = frozenset(self.config.loopback_users)
        # Live client sockets (any state), kept by the connection task:
        # what connection_max counts, as RabbitMQ counts ranch connections.
        self.tcp_connections = 0
        default_user = self.config.default_user
        for vhost in self.broker.vhosts:
            self.permissions[(default_user, vhost)] = Permission(default_user, vhost)

    # ------------------------------------------------------- durability

    def recover(self) -> dict[str, int]:
        """Load users, vhosts and permissions; on first boot (no user in
        the store) write the defaults instead, as RabbitMQ seeds its
        default user and vhost only once."""
        store = self.broker.store
        users = list(store.definitions("user"))
        if not users:
            for vhost in list(self.broker.vhosts.values()):
                self._persist_vhost(vhost.name)
            for user in self.users.users.values():
                self._persist_user(user)
            for perm in self.permissions.values():
                self._persist_permission(perm)
            return {"users": len(self.users.users), "vhosts": len(self.broker.vhosts)}
        self.users.users.clear()
        self.permissions.clear()
        self.topics.recover()
        for _, record in users:
            self.users.put(
                User(
                    record["name"],
                    record.get("password_hash") or "",
                    list(record.get("tags") or []),
                )
            )
            limits = record.get("limits") or {}
            if limits:
                self.user_limits[record["name"]] = dict(limits)
        stored_vhosts = {}
        for _, record in store.definitions("vhost"):
            stored_vhosts[record["name"]] = record
        for name in [n for n in self.broker.vhosts if n not in stored_vhosts]:
            vhost = self.broker.vhosts[name]
            if not vhost.queues and all(e.builtin for e in vhost.exchanges.values()):
                del self.broker.vhosts[name]  # deleted by an operator earlier
        for name, record in stored_vhosts.items():
            self.broker.add_vhost(name)
            limits = record.get("limits") or {}
            if limits:
                self.vhost_limits[name] = dict(limits)
        for _, record in store.definitions("permission"):
            try:
                perm = Permission(
                    record["user"],
                    record["vhost"],
                    record.get("configure", ""),
                    record.get("write", ""),
                    record.get("read", ""),
                )
            except ValueError:
                log.error("access.bad_permission_record", record=record)
                continue
            self.permissions[(perm.user, perm.vhost)] = perm
        return {"users": len(self.users.users), "vhosts": len(stored_vhosts)}

    def _persist_user(self, user: User) -> None:
        record: dict[str, Any] = {
            "name": user.name,
            "password_hash": user.password_hash,
            "tags": list(user.tags),
        }
        limits = self.user_limits.get(user.name)
        if limits:
            record["limits"] = dict(limits)
        self.broker.store.put_definition("user", user.name, record)

    def _persist_vhost(self, name: str) -> None:
        record: dict[str, Any] = {"name": name}
        limits = self.vhost_limits.get(name)
        if limits:
            record["limits"] = dict(limits)
        self.broker.store.put_definition("vhost", name, record)

    def _persist_permission(self, perm: Permission) -> None:
        self.broker.store.put_definition(
            "permission", _permission_key(perm.user, perm.vhost), perm.record()
        )

    def _changed(self) -> None:
        self.broker.request_commit()

    # ----------------------------------------------------------- vhosts

    def add_vhost(
        self,
        name: str,
        *,
        max_connections: int | None = None,
        max_queues: int | None = None,
    ) -> VHost:
        if not name:
            raise ValueError("vhost name must not be empty")
        vhost = self.broker.add_vhost(name)
        limits = self.vhost_limits.setdefault(name, {})
        if max_connections is not None:
            limits["max-connections"] = max_connections
        if max_queues is not None:
            limits["max-queues"] = max_queues
        if not limits:
            del self.vhost_limits[name]
        self._persist_vhost(name)
        self._changed()
        log.info("vhost.added", vhost=name)
        return vhost

    def set_vhost_limits(
        self,
        name: str,
        *,
        max_connections: int | None = None,
        max_queues: int | None = None,
    ) -> None:
        """Replace the vhost's limits (None or negative: no limit)."""
        if name not in self.broker.vhosts:
            raise KeyError(f"no vhost '{name}'")
        limits = {}
        if _limit(max_connections) is not None:
            limits["max-connections"] = int(max_connections)  # type: ignore[arg-type]
        if _limit(max_queues) is not None:
            limits["max-queues"] = int(max_queues)  # type: ignore[arg-type]
        if limits:
            self.vhost_limits[name] = limits
        else:
            self.vhost_limits.pop(name, None)
        self._persist_vhost(name)
        self._changed()

    def delete_vhost(self, name: str) -> bool:
        """Close the vhost's connections (320), then drop everything in it."""
        vhost = self.broker.vhosts.get(name)
        if vhost is None:
            return False
        self.close_connections(
            lambda s: s.vhost is vhost, f"vhost '{name}' is deleted"
        )
        for queue in list(vhost.queues.values()):
            vhost.remove_queue(queue)
        for exchange in [e for e in vhost.exchanges.values() if not e.builtin]:
            vhost.delete_exchange(exchange.name)
        for key, record in list(self.broker.store.definitions("policy")):
            if record.get("vhost") == name:
                self.broker.store.delete_definition("policy", key)
        del self.broker.vhosts[name]
        self.vhost_limits.pop(name, None)
        self.topics.forget(vhost=name)
        for perm_key in [k for k in self.permissions if k[1] == name]:
            perm = self.permissions.pop(perm_key)
            self.broker.store.delete_definition(
                "permission", _permission_key(perm.user, perm.vhost)
            )
        self.broker.store.delete_definition("vhost", name)
        self._changed()
        self.broker.run_dispatch()
        log.info("vhost.deleted", vhost=name)
        return True

    def close_connections(self, predicate: Any, reason: str) -> int:
        """connection.close 320 CONNECTION_FORCED on matching sessions."""
        count = 0
        for session in list(self.broker.sessions):
            if session.closed or not predicate(session):
                continue
            error = errors.ConnectionForced(reason)
            session.close_reason = error.reply_text
            session.conn.close_connection(error)
            session.output_ready()
            session.resume_reading()  # a blocked reader must see close-ok
            count += 1
        if count:
            self.broker.run_dispatch()
        return count

    # ------------------------------------------------------------ users

    def add_user(
        self,
        name: str,
        password: str | None,
        tags: Iterable[str] = (),
    ) -> User:
        """Create or replace a user. ``password=None``: no password login
        (the user can still authenticate with EXTERNAL)."""
        if not name:
            raise ValueError("user name must not be empty")
        user = User(name, hash_password(password) if password else "", list(tags))
        self.users.put(user)
        self._persist_user(user)
        self._changed()
        log.info("user.added", user=name, tags=list(tags))
        return user

    def change_password(self, name: str, password: str | None) -> None:
        user = self._user(name)
        user.password_hash = hash_password(password) if password else ""
        self.users.put(user)
        self._persist_user(user)
        self._changed()
        log.info("user.password_changed", user=name)

    def set_user_tags(self, name: str, tags: Iterable[str]) -> None:
        user = self._user(name)
        user.tags = list(tags)
        self._persist_user(user)
        self._changed()

    def set_user_limits(self, name: str, *, max_connections: int | None = None) -> None:
        user = self._user(name)
        if _limit(max_connections) is None:
            self.user_limits.pop(name, None)
        else:
            self.user_limits[name] = {"max-connections": int(max_connections)}  # type: ignore[arg-type]
        self._persist_user(user)
        self._changed()

    def delete_user(self, name: str) -> bool:
        """Remove the user, its permissions, and close its connections
        (RabbitMQ does the same on delete_user)."""
        if self.users.remove(name) is None:
            return False
        self.user_limits.pop(name, None)
        self.topics.forget(user=name)
        for key in [k for k in self.permissions if k[0] == name]:
            del self.permissions[key]
            self.broker.store.delete_definition("permission", _permission_key(*key))
        self.broker.store.delete_definition("user", name)
        self.close_connections(lambda s: s.user == name, f"user '{name}' was deleted")
        self._changed()
        log.info("user.deleted", user=name)
        return True

    def user_tags(self, name: str) -> list[str]:
        user = self.users.users.get(name)
        return list(user.tags) if user is not None else []

    def has_tag(self, name: str, *tags: str) -> bool:
        """For the management API: does the user carry any of ``tags``?"""
        return bool(set(self.user_tags(name)) & set(tags))

    def _user(self, name: str) -> User:
        user = self.users.users.get(name)
        if user is None:
            raise KeyError(f"no user '{name}'")
        return user

    # ------------------------------------------------------ permissions

    def set_permissions(
        self,
        user: str,
        vhost: str,
        configure: str = ".*",
        write: str = ".*",
        read: str = ".*",
    ) -> Permission:
        self._user(user)
        if vhost not in self.broker.vhosts:
            raise KeyError(f"no vhost '{vhost}'")
        perm = Permission(user, vhost, configure, write, read)  # validates
        self.permissions[(user, vhost)] = perm
        self._persist_permission(perm)
        self._changed()
        log.info(
            "permissions.set",
            user=user,
            vhost=vhost,
            configure=configure,
            write=write,
            read=read,
        )
        return perm

    def clear_permissions(self, user: str, vhost: str) -> bool:
        if self.permissions.pop((user, vhost), None) is None:
            return False
        self.broker.store.delete_definition("permission", _permission_key(user, vhost))
        self._changed()
        return True

    def list_permissions(
        self, *, user: str | None = None, vhost: str | None = None
    ) -> Iterator[Permission]:
        for (u, v), perm in self.permissions.items():
            if (user is None or u == user) and (vhost is None or v == vhost):
                yield perm

    def check(
        self, user: str | None, vhost: str, perm: str, kind: str, name: str
    ) -> None:
        """Raise 403 unless ``user`` holds ``perm`` on the resource."""
        entry = self.permissions.get((user, vhost))  # type: ignore[arg-type]
        if entry is not None and entry.full:
            return
        checked = resource_name(kind, name)
        if entry is not None and entry.allows(perm, checked):
            return
        log.warning(
            "access.refused",
            user=user,
            vhost=vhost,
            permission=perm,
            kind=kind,
            name=checked,
        )
        raise errors.AccessRefused(
            f"access to {kind} '{checked}' in vhost '{vhost}' refused for "
            f"user '{user}'"
        )

    def check_exchange_declare(
        self, user: str | None, vhost: str, name: str, arguments: Any
    ) -> None:
        """exchange.declare (not passive): configure on the exchange; with
        an alternate exchange also write on it and read on this one."""
        self.check(user, vhost, "configure", "exchange", name)
        alternate = _text_arg(arguments, "alternate-exchange")
        if alternate is not None:
            self.check(user, vhost, "write", "exchange", alternate)
            self.check(user, vhost, "read", "exchange", name)

    def check_queue_declare(
        self, user: str | None, vhost: VHost, name: str, arguments: Any
    ) -> None:
        """queue.declare (not passive), before the queue exists: the vhost's
        queue limit, configure on the queue, and with a dead-letter exchange
        read on the queue and write on the DLX. A server-named queue
        (``name == ""``) is checked once named: ``check_server_named_queue``."""
        self.check_queue_limit(vhost, name)
        if name:
            self._check_queue_permissions(user, vhost.name, name, arguments)

    def check_server_named_queue(
        self, user: str | None, vhost: VHost, queue: Any, arguments: Any
    ) -> None:
        """RabbitMQ checks a server-named queue under the name it got
        (``amq.gen-...``): refused, the queue is removed again at once."""
        try:
            self._check_queue_permissions(user, vhost.name, queue.name, arguments)
        except errors.AccessRefused:
            vhost.remove_queue(queue)
            raise

    def _check_queue_permissions(
        self, user: str | None, vhost: str, name: str, arguments: Any
    ) -> None:
        self.check(user, vhost, "configure", "queue", name)
        dlx = _text_arg(arguments, "x-dead-letter-exchange")
        if dlx is not None:
            self.check(user, vhost, "read", "queue", name)
            self.check(user, vhost, "write", "exchange", dlx)

    # ---------------------------------------------------------- limits

    def vhost_limit(self, vhost: str, key: str) -> int | None:
        limits = self.vhost_limits.get(vhost)
        if limits is not None and key in limits:
            return _limit(limits[key])
        default = (
            self.config.vhost_max_connections
            if key == "max-connections"
            else self.config.vhost_max_queues
        )
        return _limit(default)

    def user_limit(self, user: str | None, key: str) -> int | None:
        limits = self.user_limits.get(user or "")
        if limits is not None and key in limits:
            return _limit(limits[key])
        return _limit(self.config.user_max_connections)

    def check_queue_limit(self, vhost: VHost, name: str) -> None:
        """Before a new queue is declared: 406 at the vhost's max-queues."""
        limit = self.vhost_limit(vhost.name, "max-queues")
        if limit is None or name in vhost.queues:
            return
        if len(vhost.queues) >= limit:
            raise errors.PreconditionFailed(
                f"cannot declare queue '{name}': queue limit in vhost "
                f"'{vhost.name}' ({limit}) is reached"
            )
