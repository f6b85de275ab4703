"""A virtual host: its exchanges, queues and bindings, and the rules for
declaring, deleting and binding them.

Strategy: every rule RabbitMQ enforces on topology lives here and raises a
typed error (404/403/405/406) at the point of the fault; the session only
translates methods into these calls. Durable definitions are written through
the store as they change, so a restart rebuilds exactly the durable part.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from mqbroker import errors
from mqbroker.exchanges.base import Destination, freeze_table
from mqbroker.exchanges.exchange import Exchange
from mqbroker.exchanges.registry import exchange_type
from mqbroker.model.keys import store_key
from mqbroker.persistence.store import Store
from mqbroker.queues.arguments import check_queue_arguments, check_server_named
from mqbroker.queues.queue import Queue
from mqbroker.queues.settings import QueueSettings
from mqbroker.streams.arguments import check_declare as check_stream_arguments
from mqbroker.streams.queue import StreamQueue

BUILTIN_EXCHANGES = (
    ("", "direct"),
    ("amq.direct", "direct"),
    ("amq.fanout", "fanout"),
    ("amq.topic", "topic"),
    ("amq.headers", "headers"),
    ("amq.match", "headers"),
)

# Arguments RabbitMQ compares on redeclare; others (x-foo) may differ.
QUEUE_EQUIVALENCE_ARGS = (
    "x-message-ttl",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-overflow",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-priority",
    "x-queue-type",
    "x-single-active-consumer",
    "x-delivery-limit",
    "x-dead-letter-strategy",
)
EXCHANGE_EQUIVALENCE_ARGS = ("alternate-exchange",)


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _norm(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return value


def _typed(arguments: dict[str, Any]) -> dict[str, Any]:
    """No ``x-queue-type`` means classic: redeclaring with it is equivalent."""
    if _norm(arguments.get("x-queue-type")) == "classic":
        return {k: v for k, v in arguments.items() if k != "x-queue-type"}
    return arguments


def server_queue_name() -> str:
    token = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
    return f"amq.gen-{token}"


def binding_key(vhost: str, source: str, dest: Destination, key: str, args: dict[str, Any]) -> str:
    return json.dumps(
        [vhost, source, dest.kind, dest.name, key, list(freeze_table(args))],
        default=_fmt,
        ensure_ascii=False,
    )


class VHost:
    def __init__(self, name: str, store: Store, stream_root: Path | None = None) -> None:
        self.name = name
        self.store = store
        self.stream_root = stream_root or Path(tempfile.gettempdir()) / "mqbroker-streams"
        self.exchanges: dict[str, Exchange] = {}
        self.queues: dict[str, Queue] = {}
        # (exchange, routing key) -> queues, filled by broker/router.py and
        # dropped whenever exchanges, queues, bindings or policies change.
        self.routes: dict[tuple[str, str], tuple[Queue, ...]] = {}
        # Called with a queue after it is deleted (consumers cancelled by
        # the broker, which knows the sessions).
        self.on_queue_deleted: Callable[[Queue], None] = lambda q: None
        self.on_queue_created: Callable[[Queue], None] = lambda q: None
        self.now_ms: Callable[[], int] = lambda: 0
        # name -> (policy name, definition) chosen for queues; set by the
        # policy store (broker/policies.py) when policies exist.
        self.policy_for: Callable[[str, str], tuple[str | None, dict[str, Any]]] = (
            lambda kind, name: (None, {})
        )
        for name_, type_name in BUILTIN_EXCHANGES:
            self.exchanges[name_] = Exchange(
                self.name,
                name_,
                type_name,
                exchange_type(type_name)(),
                durable=True,
                builtin=True,
            )

    # ------------------------------------------------------- exchanges

    def get_exchange(self, name: str) -> Exchange:
        exchange = self.exchanges.get(name)
        if exchange is None:
            raise errors.NotFound(f"no exchange '{name}' in vhost '{self.name}'")
        return exchange

    def declare_exchange(
        self,
        name: str,
        type_name: str,
        *,
        passive: bool = False,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: dict[str, Any] | None = None,
        persist: bool = True,
    ) -> Exchange:
        arguments = dict(arguments or {})
        if name == "":
            raise errors.AccessRefused("operation not permitted on the default exchange")
        if passive:
            return self.get_exchange(name)
        if name.startswith("amq."):
            existing = self.exchanges.get(name)
            if existing is None or not existing.builtin:
                raise errors.AccessRefused(
                    f"exchange name '{name}' contains reserved prefix 'amq.*'"
                )
        existing = self.exchanges.get(name)
        if existing is not None:
            self._check_exchange_equivalent(
                existing, type_name, durable, auto_delete, internal, arguments
            )
            return existing
        impl_cls = exchange_type(type_name)
        # Types configured by arguments (x-delayed-message) validate them.
        make = getattr(impl_cls, "from_arguments", None)
        exchange = Exchange(
            self.name,
            name,
            type_name,
            make(arguments) if make is not None else impl_cls(),
            durable=durable,
            auto_delete=auto_delete,
            internal=internal,
            arguments=arguments,
        )
        exchange.policy = self.policy_for("exchange", name)[1] or None
        self.exchanges[name] = exchange
        self.routes.clear()
        if durable and persist:
            self.store.put_definition(
                "exchange", store_key(self.name, name), exchange.record()
            )
        return exchange

    def _check_exchange_equivalent(
        self,
        existing: Exchange,
        type_name: str,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: dict[str, Any],
    ) -> None:
        where = f"for exchange '{existing.name}' in vhost '{self.name}'"
        if existing.type_name != type_name:
            raise errors.PreconditionFailed(
                f"inequivalent arg 'type' {where}: received '{type_name}' but "
                f"current is '{existing.type_name}'"
            )
        for field, got, have in (
            ("durable", durable, existing.durable),
            ("auto_delete", auto_delete, existing.auto_delete),
            ("internal", internal, existing.internal),
        ):
            if got != have:
                raise errors.PreconditionFailed(
                    f"inequivalent arg '{field}' {where}: received "
                    f"'{_fmt(got)}' but current is '{_fmt(have)}'"
                )
        self._check_args(EXCHANGE_EQUIVALENCE_ARGS, existing.arguments, arguments, where)

    @staticmethod
    def _check_args(
        names: tuple[str, ...], have: dict[str, Any], got: dict[str, Any], where: str
    ) -> None:
        for arg in names:
            a, b = _norm(got.get(arg)), _norm(have.get(arg))
            if a != b or (isinstance(a, bool) != isinstance(b, bool)):
                received = "none" if a is None else f"the value '{_fmt(a)}'"
                current = "none" if b is None else f"the value '{_fmt(b)}'"
                raise errors.PreconditionFailed(
                    f"inequivalent arg '{arg}' {where}: received {received} "
                    f"but current is {current}"
                )

    def delete_exchange(self, name: str, *, if_unused: bool = False) -> None:
        exchange = self.exchanges.get(name)
        if exchange is None:
            return
        if exchange.builtin:
            raise errors.AccessRefused(
                "operation not permitted on the default exchange"
                if name == ""
                else f"exchange '{name}' in vhost '{self.name}' is a "
                "built-in exchange and cannot be deleted"
            )
        if if_unused and (len(exchange.impl) or self._is_e2e_destination(name)):
            raise errors.PreconditionFailed(
                f"exchange '{name}' in vhost '{self.name}' in use"
            )
        self._remove_exchange(exchange)

    def _is_e2e_destination(self, name: str) -> bool:
        dest = Destination("exchange", name)
        return any(ex.impl.bindings_to(dest) for ex in self.exchanges.values())

    def _remove_exchange(self, exchange: Exchange) -> None:
        del self.exchanges[exchange.name]
        self.routes.clear()
        exchange.impl.on_delete()  # x-delayed-message: held messages go
        for binding in list(exchange.impl.bindings()):
            self._forget_binding(exchange.name, binding.destination, binding.routing_key, binding.args_dict())
        dest = Destination("exchange", exchange.name)
        for other in list(self.exchanges.values()):
            for binding in other.impl.bindings_to(dest):
                other.impl.unbind(dest, binding.routing_key, binding.args_dict())
                self._forget_binding(other.name, dest, binding.routing_key, binding.args_dict())
        if exchange.durable:
            self.store.delete_definition("exchange", store_key(self.name, exchange.name))

    # ----------------------------------------------------------- queues

    def _locked(self, name: str) -> errors.ResourceLocked:
        return errors.ResourceLocked(
            f"cannot obtain exclusive access to locked queue '{name}' in "
            f"vhost '{self.name}'. It could be originally declared on "
            "another connection or the exclusive property value does not "
            "match that of the original declaration."
        )

    def get_queue(self, name: str, owner: object | None = None) -> Queue:
        queue = self.queues.get(name)
        if queue is None:
            raise errors.NotFound(f"no queue '{name}' in vhost '{self.name}'")
        if owner is not None and queue.exclusive_owner not in (None, owner):
            raise self._locked(name)
        return queue

    def declare_queue(
        self,
        name: str,
        *,
        owner: object,
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
        persist: bool = True,
    ) -> Queue:
        arguments = dict(arguments or {})
        if passive:
            found = self.get_queue(name, owner)
            found.last_used_ms = self.now_ms()  # x-expires: a declare is a use
            return found
        if not name:
            check_server_named(arguments)
            name = server_queue_name()
        elif name.startswith("amq."):
            raise errors.AccessRefused(
                f"queue name '{name}' contains reserved prefix 'amq.*'"
            )
        if exclusive:
            # RabbitMQ: an exclusive queue dies with its connection, so it is
            # never durable, whatever the declare said.
            durable = False
        existing = self.queues.get(name)
        if existing is not None:
            self.get_queue(name, owner)  # 405 if someone else's exclusive
            existing.last_used_ms = self.now_ms()
            if exclusive != (existing.exclusive_owner is not None):
                raise self._locked(name)
            where = f"for queue '{name}' in vhost '{self.name}'"
            for field, got, have in (
                ("durable", durable, existing.durable),
                ("auto_delete", auto_delete, existing.auto_delete),
            ):
                if got != have:
                    raise errors.PreconditionFailed(
                        f"inequivalent arg '{field}' {where}: received "
                        f"'{_fmt(got)}' but current is '{_fmt(have)}'"
                    )
            self._check_args(
                QUEUE_EQUIVALENCE_ARGS, _typed(existing.arguments), _typed(arguments), where
            )
            return existing
        policy, definition = self.policy_for("queue", name)
        if _norm(arguments.get("x-queue-type")) == "stream":
            check_stream_arguments(
                arguments, name=name, vhost=self.name,
                durable=durable, exclusive=exclusive, auto_delete=auto_delete,
            )
            stream = StreamQueue(
                self.name, name, arguments=arguments, store=self.store,
                directory=self.stream_dir(name), policy=definition, now_ms=self.now_ms(),
            )
            stream.now_ms = self.now_ms
            return self._created(stream, persist)
        check_queue_arguments(
            arguments, durable=durable, exclusive=exclusive, auto_delete=auto_delete,
            name=name, vhost=self.name,
        )
        queue = Queue(
            self.name,
            name,
            durable=durable,
            exclusive_owner=owner if exclusive else None,
            auto_delete=auto_delete,
            arguments=arguments,
            store=self.store,
            settings=QueueSettings.build(arguments, policy, definition),
            now_ms=self.now_ms(),
        )
        return self._created(queue, persist)

    def _created(self, queue: Queue, persist: bool) -> Queue:
        name = queue.name
        self.queues[name] = queue
        self.routes.clear()
        self.on_queue_created(queue)
        if queue.durable and queue.exclusive_owner is None and persist:
            self.store.put_definition("queue", queue.key, self.queue_record(queue))
        self.exchanges[""].impl.bind(Destination("queue", name), name)
        return queue

    def stream_dir(self, name: str) -> Path:
        """Where a stream's segments live: one folder per vhost and name."""
        return self.stream_root / quote(self.name, safe="") / quote(name, safe="")

    @staticmethod
    def queue_record(queue: Queue) -> dict[str, Any]:
        return {
            "vhost": queue.vhost,
            "name": queue.name,
            "durable": queue.durable,
            "auto_delete": queue.auto_delete,
            "arguments": queue.arguments,
        }

    def delete_queue(
        self,
        name: str,
        *,
        owner: object | None,
        if_unused: bool = False,
        if_empty: bool = False,
    ) -> int:
        queue = self.queues.get(name)
        if queue is None:
            return 0
        self.get_queue(name, owner)
        if if_unused and queue.consumers:
            raise errors.PreconditionFailed(
                f"queue '{name}' in vhost '{self.name}' in use"
            )
        if if_empty and queue.ready:
            raise errors.PreconditionFailed(
                f"queue '{name}' in vhost '{self.name}' not empty"
            )
        return self.remove_queue(queue)

    def remove_queue(self, queue: Queue) -> int:
        if self.queues.get(queue.name) is not queue:
            return 0
        count = queue.message_count
        del self.queues[queue.name]
        self.routes.clear()
        dest = Destination("queue", queue.name)
        for exchange in list(self.exchanges.values()):
            for binding in exchange.impl.bindings_to(dest):
                exchange.impl.unbind(dest, binding.routing_key, binding.args_dict())
                if exchange.name:
                    self._forget_binding(exchange.name, dest, binding.routing_key, binding.args_dict())
                self._maybe_auto_delete(exchange)
        queue.drop_all()
        if queue.durable and queue.exclusive_owner is None:
            self.store.delete_definition("queue", queue.key)
        self.on_queue_deleted(queue)
        return count

    # --------------------------------------------------------- bindings

    def bind(
        self,
        source: str,
        dest: Destination,
        routing_key: str,
        arguments: dict[str, Any] | None,
        *,
        owner: object | None = None,
        persist: bool = True,
    ) -> None:
        arguments = dict(arguments or {})
        if dest.kind == "queue":
            queue = self.get_queue(dest.name, owner)
            dest_durable = queue.durable and queue.exclusive_owner is None
        else:
            dest_durable = self.get_exchange(dest.name).durable
        exchange = self.get_exchange(source)
        if source == "":
            raise errors.AccessRefused(
                "operation not permitted on the default exchange"
            )
        added = exchange.impl.bind(dest, routing_key, arguments)
        self.routes.clear()
        if added and persist and exchange.durable and dest_durable:
            self.store.put_definition(
                "binding",
                binding_key(self.name, source, dest, routing_key, arguments),
                {
                    "vhost": self.name,
                    "source": source,
                    "destination_type": dest.kind,
                    "destination": dest.name,
                    "routing_key": routing_key,
                    "arguments": arguments,
                },
            )

    def unbind(
        self,
        source: str,
        dest: Destination,
        routing_key: str,
        arguments: dict[str, Any] | None,
        *,
        owner: object | None = None,
    ) -> None:
        arguments = dict(arguments or {})
        if dest.kind == "queue":
            if dest.name not in self.queues:
                return
            self.get_queue(dest.name, owner)
        if source == "":
            raise errors.AccessRefused(
                "operation not permitted on the default exchange"
            )
        exchange = self.exchanges.get(source)
        if exchange is None:
            return
        if exchange.impl.unbind(dest, routing_key, arguments):
            self.routes.clear()
            self._forget_binding(source, dest, routing_key, arguments)
            self._maybe_auto_delete(exchange)

    def _forget_binding(
        self, source: str, dest: Destination, routing_key: str, arguments: dict[str, Any]
    ) -> None:
        self.store.delete_definition(
            "binding", binding_key(self.name, source, dest, routing_key, arguments)
        )

    def _maybe_auto_delete(self, exchange: Exchange) -> None:
        if exchange.auto_delete and not len(exchange.impl) and exchange.name in self.exchanges:
            self._remove_exchange(exchange)

    def bindings(self) -> Iterator[tuple[str, Any]]:
        for exchange in self.exchanges.values():
            for binding in exchange.impl.bindings():
                yield exchange.name, binding
