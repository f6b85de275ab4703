"""Named policies: operator-set defaults for queues and exchanges.

Strategy: a policy is (vhost, name, pattern, apply-to, priority,
definition), as in RabbitMQ. Policies live in memory in a ``PolicyStore``
(``broker.policies``) and durably as store definitions of kind
``"policy"`` under ``store_key(vhost, name)`` (the record is the RabbitMQ
management JSON: ``vhost``, ``name``, ``pattern``, ``apply-to``,
``priority``, ``definition``), so they survive restarts. Whenever a policy
is set or cleared every queue and exchange of its vhost is re-evaluated and
the ones whose effective settings changed get them at once
(``Queue.apply_settings``); a new queue or exchange picks its policy when it
is declared (``VHost.policy_for``).

Choosing the policy, as RabbitMQ does:
- ``pattern`` is a regular expression searched (``re.search``) in the
  name: ``^orders\\.`` matches ``orders.eu``, ``.*`` matches everything;
- ``apply-to`` is ``queues``, ``exchanges``, ``all`` (both), or the queue
  type filters ``classic_queues`` / ``quorum_queues`` (``streams`` matches
  nothing: mqbroker has no streams yet);
- the matching policy with the highest ``priority`` wins, alone (policies
  are not merged); between equal priorities RabbitMQ takes whichever comes
  first in its hash-ordered table (unspecified), mqbroker the lowest name
  (byte order), so the choice is at least stable;
- a queue's own ``x-`` arguments win over the policy, except for the
  numeric limits, where the lower value applies (see queues/settings.py).

API for the management layer (HTTP ``/api/policies``) and tests; every
call runs on the broker's loop thread, like the rest of the core::

    policies = broker.policies
    policies.set_policy("/", "ttl", "^orders\\.", {"message-ttl": 60000},
                        priority=1, apply_to="queues")   # -> record dict
    policies.list_policies()            # all vhosts; or list_policies("/")
    policies.get_policy("/", "ttl")     # record dict or None
    policies.clear_policy("/", "ttl")   # True if it existed
    policies.clear_vhost("/")           # a vhost is being deleted
    policies.effective("/", "queue", "orders.eu")  # winning record or None

``set_policy`` raises ``PolicyError`` (a ``ValueError``; the HTTP layer
answers 400 with its message) for a bad pattern, apply-to, priority, an
unknown definition key or a bad value, and ``KeyError`` for an unknown
vhost. Definition keys: message-ttl, expires, max-length,
max-length-bytes, overflow, dead-letter-exchange, dead-letter-routing-key,
dead-letter-strategy, delivery-limit, consumer-timeout,
message-deduplication (queues); alternate-exchange (exchanges); queue-mode,
queue-version, ha-* and federation-* are accepted and ignored, as a single
node has no use for them.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from mqbroker.model.keys import store_key
from mqbroker.queues.settings import QueueSettings
from mqbroker.streams.queue import StreamQueue

if TYPE_CHECKING:
    from mqbroker.broker.broker import Broker
    from mqbroker.exchanges.exchange import Exchange
    from mqbroker.queues.queue import Queue

APPLY_TO = ("queues", "exchanges", "all", "classic_queues", "quorum_queues", "streams")

_NON_NEGATIVE = ("message-ttl", "max-length", "max-length-bytes", "consumer-timeout")
_POSITIVE = ("expires",)
_STRINGS = ("dead-letter-exchange", "dead-letter-routing-key", "alternate-exchange")
_ENUMS = {
    "overflow": ("drop-head", "reject-publish", "reject-publish-dlx"),
    "dead-letter-strategy": ("at-most-once", "at-least-once"),
    "queue-mode": ("default", "lazy"),
}
# Accepted for compatibility with definitions written for a cluster.
_IGNORED_PREFIXES = ("ha-", "federation-", "queue-master-locator", "queue-leader-locator")
_IGNORED = ("queue-version", "max-in-memory-length", "max-in-memory-bytes")


class PolicyError(ValueError):
    """A policy RabbitMQ would refuse (HTTP 400 / rabbitmqctl error)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_definition(definition: Any) -> dict[str, Any]:
    if not isinstance(definition, dict) or not definition:
        raise PolicyError("Validation failed: the definition must be a non-empty object")
    unknown = []
    for key, value in definition.items():
        if key in _NON_NEGATIVE or key in _POSITIVE:
            low = 1 if key in _POSITIVE else 0
            if not _is_int(value) or value < low:
                raise PolicyError(
                    f"Validation failed: {value!r} is not a valid value for "
                    f"{key} (an integer >= {low})"
                )
        elif key == "delivery-limit":
            if not _is_int(value) or value < -1:
                raise PolicyError(
                    f"Validation failed: {value!r} is not a valid value for delivery-limit"
                )
        elif key in _STRINGS:
            if not isinstance(value, str):
                raise PolicyError(f"Validation failed: {value!r} is not a valid value for {key}")
        elif key in _ENUMS:
            if value not in _ENUMS[key]:
                raise PolicyError(f"Validation failed: {value!r} is not a valid value for {key}")
        elif key == "message-deduplication":
            if not isinstance(value, bool):
                raise PolicyError(
                    f"Validation failed: {value!r} is not a valid value for {key}"
                )
        elif key in _IGNORED or key.startswith(_IGNORED_PREFIXES):
            continue
        else:
            unknown.append(key)
    if unknown:
        raise PolicyError(
            f"Validation failed: {', '.join(sorted(unknown))} "
            f"{'is' if len(unknown) == 1 else 'are'} not recognised policy settings"
        )
    return dict(definition)


class Policy:
    __slots__ = ("apply_to", "definition", "name", "pattern", "priority", "regex", "vhost")

    def __init__(
        self,
        vhost: str,
        name: str,
        pattern: str,
        definition: dict[str, Any],
        priority: int,
        apply_to: str,
    ) -> None:
        self.vhost = vhost
        self.name = name
        self.pattern = pattern
        self.regex = re.compile(pattern)
        self.apply_to = apply_to
        self.priority = priority
        self.definition = definition

    def record(self) -> dict[str, Any]:
        return {
            "vhost": self.vhost,
            "name": self.name,
            "pattern": self.pattern,
            "apply-to": self.apply_to,
            "priority": self.priority,
            "definition": dict(self.definition),
        }

    def applies(self, kind: str, name: str, queue_type: str | None = None) -> bool:
        to = self.apply_to
        if kind == "exchange":
            if to not in ("exchanges", "all"):
                return False
        elif (
            to == "exchanges"
            or (to == "streams" and queue_type != "stream")
            or (to == "classic_queues" and queue_type not in (None, "classic"))
            or (to == "quorum_queues" and queue_type != "quorum")
        ):
            return False
        return self.regex.search(name) is not None

    def sort_key(self) -> tuple[int, bytes]:
        return (-self.priority, self.name.encode())


class PolicyStore:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._by_vhost: dict[str, dict[str, Policy]] = {}

    # ------------------------------------------------------------- reading

    def list_policies(self, vhost: str | None = None) -> list[dict[str, Any]]:
        vhosts = [vhost] if vhost is not None else sorted(self._by_vhost)
        out = []
        for name in vhosts:
            for policy in sorted(self._by_vhost.get(name, {}).values(), key=lambda p: p.name):
                out.append(policy.record())
        return out

    def get_policy(self, vhost: str, name: str) -> dict[str, Any] | None:
        policy = self._by_vhost.get(vhost, {}).get(name)
        return policy.record() if policy is not None else None

    def _winner(
        self, vhost: str, kind: str, name: str, queue_type: str | None = None
    ) -> Policy | None:
        policies = self._by_vhost.get(vhost)
        if not policies:
            return None
        best = None
        for policy in policies.values():
            if policy.applies(kind, name, queue_type) and (
                best is None or policy.sort_key() < best.sort_key()
            ):
                best = policy
        return best

    def effective(
        self, vhost: str, kind: str, name: str, queue_type: str | None = None
    ) -> dict[str, Any] | None:
        policy = self._winner(vhost, kind, name, queue_type)
        return policy.record() if policy is not None else None

    def lookup(self, vhost: str, kind: str, name: str) -> tuple[str | None, dict[str, Any]]:
        """``VHost.policy_for``: (policy name, definition) for a new queue
        or exchange (queue-type filters are settled in ``queue_created``)."""
        policy = self._winner(vhost, kind, name)
        if policy is None:
            return None, {}
        return policy.name, policy.definition

    # ------------------------------------------------------------- writing

    def set_policy(
        self,
        vhost: str,
        name: str,
        pattern: str,
        definition: dict[str, Any],
        *,
        priority: int = 0,
        apply_to: str = "all",
    ) -> dict[str, Any]:
        if vhost not in self.broker.vhosts:
            raise KeyError(f"no vhost '{vhost}'")
        if not isinstance(name, str) or not name:
            raise PolicyError("Validation failed: a policy needs a name")
        if apply_to not in APPLY_TO:
            raise PolicyError(
                f"Validation failed: '{apply_to}' is not a valid apply-to value"
            )
        if not _is_int(priority):
            raise PolicyError(f"Validation failed: priority {priority!r} is not an integer")
        if not isinstance(pattern, str):
            raise PolicyError("Validation failed: the pattern must be a string")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise PolicyError(f"Validation failed: bad pattern {pattern!r}: {exc}") from None
        policy = Policy(
            vhost, name, pattern, validate_definition(definition), priority, apply_to
        )
        self._by_vhost.setdefault(vhost, {})[name] = policy
        self.broker.store.put_definition("policy", store_key(vhost, name), policy.record())
        self.broker.request_commit()
        self.reapply(vhost)
        return policy.record()

    def clear_policy(self, vhost: str, name: str) -> bool:
        policies = self._by_vhost.get(vhost, {})
        if name not in policies:
            return False
        del policies[name]
        self.broker.store.delete_definition("policy", store_key(vhost, name))
        self.broker.request_commit()
        self.reapply(vhost)
        return True

    def clear_vhost(self, vhost: str) -> None:
        for name in list(self._by_vhost.get(vhost, {})):
            self.broker.store.delete_definition("policy", store_key(vhost, name))
        self._by_vhost.pop(vhost, None)
        self.broker.request_commit()

    def recover(self) -> int:
        """Start-up: load stored policies (before queues are recovered)."""
        count = 0
        for _, record in self.broker.store.definitions("policy"):
            try:
                policy = Policy(
                    record["vhost"],
                    record["name"],
                    record["pattern"],
                    dict(record["definition"]),
                    int(record.get("priority") or 0),
                    record.get("apply-to") or "all",
                )
            except (KeyError, TypeError, ValueError, re.error):
                continue
            self._by_vhost.setdefault(policy.vhost, {})[policy.name] = policy
            count += 1
        return count

    # ------------------------------------------------------------ applying

    def queue_settings(self, queue: Queue) -> QueueSettings:
        queue_type = _text(queue.arguments.get("x-queue-type")) or "classic"
        policy = self._winner(queue.vhost, "queue", queue.name, queue_type)
        if policy is None:
            return QueueSettings.build(queue.arguments)
        return QueueSettings.build(queue.arguments, policy.name, policy.definition)

    def refresh_queue(self, queue: Queue) -> bool:
        """Give a queue its current effective settings; True if changed."""
        if isinstance(queue, StreamQueue):
            # a stream's retention: max-age, max-length-bytes, segment size
            policy = self._winner(queue.vhost, "queue", queue.name, "stream")
            queue.apply_policy(dict(policy.definition) if policy is not None else {})
        if not self._by_vhost.get(queue.vhost) and queue.settings.policy is None:
            return False
        settings = self.queue_settings(queue)
        if settings == queue.settings:
            return False
        queue.apply_settings(settings)
        broker = self.broker
        broker.schedule(queue)
        broker.mark_dirty(queue)
        return True

    def refresh_exchange(self, exchange: Exchange) -> None:
        policy = None if exchange.builtin and not exchange.name.startswith("amq.") else (
            self._winner(exchange.vhost, "exchange", exchange.name)
        )
        exchange.policy = dict(policy.definition) if policy is not None else None
        vhost = self.broker.vhosts.get(exchange.vhost)
        if vhost is not None:  # the alternate exchange may have changed
            vhost.routes.clear()

    def reapply(self, vhost_name: str) -> None:
        vhost = self.broker.vhosts.get(vhost_name)
        if vhost is None:
            return
        for queue in list(vhost.queues.values()):
            self.refresh_queue(queue)
        for exchange in vhost.exchanges.values():
            if exchange.name:
                self.refresh_exchange(exchange)
        self.broker.run_dispatch()


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)
