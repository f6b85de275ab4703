"""The one command layer: topology and queue commands for every front end.

Strategy: an AMQP method handler (``session.py``), an HTTP API handler
(``management/``) and therefore ``mqbrokerctl`` (a client of that API) all
change the broker through these functions, so each command applies the
same checks in the same order, wherever it came from:

1. permissions (``access.py``: configure / write / read on the resource,
   as RabbitMQ checks them for the AMQP method of the same name);
2. vhost limits (max-queues) and argument validation (``vhost.py``,
   ``queues/arguments.py``), which raise the AMQP 403/404/405/406;
3. the change itself. Its store writes join the current write batch; the
   front end decides how soon to commit (AMQP: with the loop pass, as
   RabbitMQ answers declare-ok; HTTP: at once, see ``management/``).

A ``Caller`` says who asks: the user (None for the broker itself, which is
never refused), the vhost, and the owner used for exclusive queues (the
AMQP session; None over HTTP, which can never own an exclusive queue).
Errors are raised as ``AMQPError``: the AMQP session turns them into
closes, the HTTP API into RabbitMQ's HTTP answers (``management/``).
Publishing is the publish pipeline's (``publish.py``); this layer only
wraps it for callers outside a channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mqbroker import errors
from mqbroker.broker.topic_access import TOPIC
from mqbroker.exchanges.base import Destination
from mqbroker.exchanges.exchange import Exchange
from mqbroker.exchanges.superstream import (
    PARTITION_ARGUMENTS,
    SuperStreamExchange,
    partition_count,
)
from mqbroker.queues.queue import Queue
from mqbroker.streams.queue import StreamQueue

if TYPE_CHECKING:
    from mqbroker.broker.broker import Broker
    from mqbroker.broker.vhost import VHost


@dataclass(frozen=True, slots=True)
class Caller:
    user: str | None  # None: the broker itself
    vhost: str
    owner: object | None = None  # the session, for exclusive queues

    @staticmethod
    def internal(vhost: str) -> Caller:
        return Caller(None, vhost)


def _vhost(broker: Broker, caller: Caller) -> VHost:
    vhost = broker.vhosts.get(caller.vhost)
    if vhost is None:
        raise errors.NotFound(f"no vhost '{caller.vhost}'")
    return vhost


def _check(broker: Broker, caller: Caller, perm: str, kind: str, name: str) -> None:
    if caller.user is not None:
        broker.access.check(caller.user, caller.vhost, perm, kind, name)


def _check_topic(
    broker: Broker, caller: Caller, vhost: VHost, source: str, binding_key: str
) -> None:
    """Binding to a topic exchange: the read topic permission (RabbitMQ)."""
    topics = broker.access.topics
    if not topics.active or caller.user is None:
        return
    exchange = vhost.exchanges.get(source)
    if exchange is not None and exchange.type_name == TOPIC:
        topics.check(caller.user, vhost.name, source, "read", binding_key)


# ------------------------------------------------------------ exchanges


def declare_exchange(
    broker: Broker,
    caller: Caller,
    name: str,
    type_name: str,
    *,
    passive: bool = False,
    durable: bool = False,
    auto_delete: bool = False,
    internal: bool = False,
    arguments: dict[str, Any] | None = None,
) -> Exchange:
    vhost = _vhost(broker, caller)
    if not passive and caller.user is not None:
        broker.access.check_exchange_declare(caller.user, vhost.name, name, arguments)
    existed = name in vhost.exchanges
    if type_name == SuperStreamExchange.type_name and not passive and not existed:
        if not durable:
            raise errors.PreconditionFailed("a super stream is durable: declare it with durable=true")
        partition_count(dict(arguments or {}))
    exchange = vhost.declare_exchange(
        name,
        type_name,
        passive=passive,
        durable=durable,
        auto_delete=auto_delete,
        internal=internal,
        arguments=arguments,
    )
    if isinstance(exchange.impl, SuperStreamExchange) and not existed:
        _create_partitions(broker, caller, exchange.name, exchange.impl.partitions, arguments or {})
    return exchange


def _create_partitions(
    broker: Broker, caller: Caller, name: str, count: int, arguments: dict[str, Any]
) -> None:
    """RabbitMQ's super stream topology: streams NAME-0..NAME-(N-1), bound
    with keys "0".."N-1" and x-stream-partition-order, declared through
    this very layer (so the caller needs configure on them too)."""
    retention = {k: arguments[k] for k in PARTITION_ARGUMENTS if k in arguments}
    for index in range(count):
        stream = f"{name}-{index}"
        declare_queue(
            broker, caller, stream, durable=True,
            arguments={"x-queue-type": "stream", **retention},
        )
        bind(
            broker, caller, name, Destination("queue", stream), str(index),
            {"x-stream-partition-order": index},
        )


def partitions_of(vhost: VHost, name: str) -> list[StreamQueue]:
    """A super stream's partition streams, in partition order."""
    exchange = vhost.exchanges.get(name)
    if exchange is None or not isinstance(exchange.impl, SuperStreamExchange):
        return []
    found: list[tuple[int, StreamQueue]] = []
    for binding in exchange.impl.bindings():
        queue = vhost.queues.get(binding.destination.name)
        order = binding.args_dict().get("x-stream-partition-order")
        if isinstance(queue, StreamQueue) and isinstance(order, int):
            found.append((order, queue))
    return [queue for _, queue in sorted(found, key=lambda item: item[0])]


def delete_exchange(
    broker: Broker, caller: Caller, name: str, *, if_unused: bool = False
) -> None:
    vhost = _vhost(broker, caller)
    _check(broker, caller, "configure", "exchange", name)
    partitions = partitions_of(vhost, name)
    vhost.delete_exchange(name, if_unused=if_unused)
    # Deleting a super stream deletes its partitions (RabbitMQ's
    # ``delete_super_stream``).
    for stream in partitions:
        delete_queue(broker, caller, stream.name)


def bind(
    broker: Broker,
    caller: Caller,
    source: str,
    dest: Destination,
    routing_key: str,
    arguments: dict[str, Any] | None,
) -> None:
    """queue.bind / exchange.bind: write on the destination, read on the
    source (RabbitMQ's rule)."""
    vhost = _vhost(broker, caller)
    _check(broker, caller, "write", dest.kind, dest.name)
    _check(broker, caller, "read", "exchange", source)
    _check_topic(broker, caller, vhost, source, routing_key)
    if dest.kind == "exchange":
        vhost.get_exchange(dest.name)
    vhost.bind(source, dest, routing_key, arguments, owner=caller.owner)


def unbind(
    broker: Broker,
    caller: Caller,
    source: str,
    dest: Destination,
    routing_key: str,
    arguments: dict[str, Any] | None,
) -> None:
    vhost = _vhost(broker, caller)
    _check(broker, caller, "write", dest.kind, dest.name)
    _check(broker, caller, "read", "exchange", source)
    vhost.unbind(source, dest, routing_key, arguments, owner=caller.owner)


# --------------------------------------------------------------- queues


def declare_queue(
    broker: Broker,
    caller: Caller,
    name: str,
    *,
    passive: bool = False,
    durable: bool = False,
    exclusive: bool = False,
    auto_delete: bool = False,
    arguments: dict[str, Any] | None = None,
) -> Queue:
    """queue.declare: the vhost's queue limit and configure permission
    (plus read on the queue and write on its dead-letter exchange); a
    server-named queue is checked under the name it got."""
    vhost = _vhost(broker, caller)
    access = broker.access
    if not passive:
        if caller.user is None:
            access.check_queue_limit(vhost, name)
        else:
            access.check_queue_declare(caller.user, vhost, name, arguments)
    queue = vhost.declare_queue(
        name,
        owner=caller.owner,
        passive=passive,
        durable=durable,
        exclusive=exclusive,
        auto_delete=auto_delete,
        arguments=arguments,
    )
    if not name and not passive and caller.user is not None:
        access.check_server_named_queue(caller.user, vhost, queue, arguments)
    return queue


def delete_queue(
    broker: Broker,
    caller: Caller,
    name: str,
    *,
    if_unused: bool = False,
    if_empty: bool = False,
) -> int:
    """queue.delete: configure on the queue; the messages it held."""
    vhost = _vhost(broker, caller)
    _check(broker, caller, "configure", "queue", name)
    return vhost.delete_queue(
        name, owner=caller.owner, if_unused=if_unused, if_empty=if_empty
    )


def purge_queue(broker: Broker, caller: Caller, name: str) -> int:
    """queue.purge: read on the queue; the count purged."""
    return readable_queue(broker, caller, name).purge()


def readable_queue(broker: Broker, caller: Caller, name: str) -> Queue:
    """A queue the caller may read (consume, get, purge, move from)."""
    vhost = _vhost(broker, caller)
    _check(broker, caller, "read", "queue", name)
    return vhost.get_queue(name, owner=caller.owner)


def check_write(broker: Broker, caller: Caller, kind: str, name: str) -> None:
    """Write permission on a resource (publish, move into it)."""
    _check(broker, caller, "write", kind, name)
