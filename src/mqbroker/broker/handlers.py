"""AMQP method handlers: one small function per method.

Strategy: a handler translates one method into a command of the command
layer (``commands.py``: permissions, limits and validation live there, so
the HTTP API gets the same answers) or into channel state (qos, acks,
confirms, tx), and sends the ``-ok`` reply. It raises ``AMQPError`` for any
refusal; ``Session.handle`` adds the method's class/method ids and turns
it into a close, in one place.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pamqp import commands

from mqbroker import errors
from mqbroker.broker import commands as cmd
from mqbroker.broker.channel import Channel, Consumer
from mqbroker.broker.direct_reply import PSEUDO_QUEUE
from mqbroker.exchanges.base import Destination
from mqbroker.streams.arguments import start_spec
from mqbroker.streams.queue import StreamQueue

if TYPE_CHECKING:
    from mqbroker.broker.session import Session

Handler = Callable[["Session", Channel, Any], None]
HANDLERS: dict[type, Handler] = {}


def handles(method_type: type) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        HANDLERS[method_type] = fn
        return fn

    return register


def _ctag() -> str:
    return "amq.ctag-" + base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")


# ---------------------------------------------------------------- channel


@handles(commands.Channel.Flow)
def _flow(s: Session, chan: Channel, m: commands.Channel.Flow) -> None:
    if not m.active:
        raise errors.NotImplemented_("active=false")
    s.reply(chan, commands.Channel.FlowOk(active=True))


@handles(commands.Channel.FlowOk)
def _flow_ok(s: Session, chan: Channel, m: commands.Channel.FlowOk) -> None:
    pass


# --------------------------------------------------------------- exchange


@handles(commands.Exchange.Declare)
def _exchange_declare(s: Session, chan: Channel, m: commands.Exchange.Declare) -> None:
    cmd.declare_exchange(
        s.broker,
        s.caller,
        m.exchange,
        m.exchange_type,
        passive=m.passive,
        durable=m.durable,
        auto_delete=m.auto_delete,
        internal=m.internal,
        arguments=m.arguments,
    )
    if not m.nowait:
        s.reply(chan, commands.Exchange.DeclareOk())


@handles(commands.Exchange.Delete)
def _exchange_delete(s: Session, chan: Channel, m: commands.Exchange.Delete) -> None:
    cmd.delete_exchange(s.broker, s.caller, m.exchange, if_unused=m.if_unused)
    if not m.nowait:
        s.reply(chan, commands.Exchange.DeleteOk())


@handles(commands.Exchange.Bind)
def _exchange_bind(s: Session, chan: Channel, m: commands.Exchange.Bind) -> None:
    cmd.bind(
        s.broker, s.caller, m.source, Destination("exchange", m.destination),
        m.routing_key, m.arguments,
    )
    if not m.nowait:
        s.reply(chan, commands.Exchange.BindOk())


@handles(commands.Exchange.Unbind)
def _exchange_unbind(s: Session, chan: Channel, m: commands.Exchange.Unbind) -> None:
    cmd.unbind(
        s.broker, s.caller, m.source, Destination("exchange", m.destination),
        m.routing_key, m.arguments,
    )
    if not m.nowait:
        s.reply(chan, commands.Exchange.UnbindOk())


# ------------------------------------------------------------------ queue


@handles(commands.Queue.Declare)
def _queue_declare(s: Session, chan: Channel, m: commands.Queue.Declare) -> None:
    if m.queue == PSEUDO_QUEUE:
        s.conn.send_queue_declare_ok(chan.id, PSEUDO_QUEUE, 0, 0)
        return
    queue = cmd.declare_queue(
        s.broker,
        s.caller,
        m.queue,
        passive=m.passive,
        durable=m.durable,
        exclusive=m.exclusive,
        auto_delete=m.auto_delete,
        arguments=m.arguments,
    )
    chan.last_queue = queue.name
    if not m.nowait:
        s.conn.send_queue_declare_ok(
            chan.id, queue.name, queue.message_count, queue.consumer_count
        )


@handles(commands.Queue.Bind)
def _queue_bind(s: Session, chan: Channel, m: commands.Queue.Bind) -> None:
    name = s.queue_name(chan, m.queue)
    cmd.bind(s.broker, s.caller, m.exchange, Destination("queue", name), m.routing_key, m.arguments)
    if not m.nowait:
        s.reply(chan, commands.Queue.BindOk())


@handles(commands.Queue.Unbind)
def _queue_unbind(s: Session, chan: Channel, m: commands.Queue.Unbind) -> None:
    name = s.queue_name(chan, m.queue)
    cmd.unbind(
        s.broker, s.caller, m.exchange, Destination("queue", name), m.routing_key, m.arguments
    )
    s.reply(chan, commands.Queue.UnbindOk())


@handles(commands.Queue.Purge)
def _queue_purge(s: Session, chan: Channel, m: commands.Queue.Purge) -> None:
    count = cmd.purge_queue(s.broker, s.caller, s.queue_name(chan, m.queue))
    if not m.nowait:
        s.reply(chan, commands.Queue.PurgeOk(message_count=count))


@handles(commands.Queue.Delete)
def _queue_delete(s: Session, chan: Channel, m: commands.Queue.Delete) -> None:
    count = cmd.delete_queue(
        s.broker, s.caller, s.queue_name(chan, m.queue),
        if_unused=m.if_unused, if_empty=m.if_empty,
    )
    if not m.nowait:
        s.reply(chan, commands.Queue.DeleteOk(message_count=count))


# ------------------------------------------------------------------ basic


@handles(commands.Basic.Qos)
def _qos(s: Session, chan: Channel, m: commands.Basic.Qos) -> None:
    if m.prefetch_size:
        raise errors.NotImplemented_(f"prefetch_size!=0 ({m.prefetch_size})")
    if m.global_:
        chan.global_prefetch = m.prefetch_count
    else:
        chan.consumer_prefetch = m.prefetch_count
    for consumer in chan.consumers.values():
        s.broker.mark_dirty(consumer.queue)
    s.reply(chan, commands.Basic.QosOk())


@handles(commands.Basic.Consume)
def _consume(s: Session, chan: Channel, m: commands.Basic.Consume) -> None:
    tag = m.consumer_tag or _ctag()
    if tag in chan.consumers or tag == chan.reply_tag:
        raise errors.NotAllowed(f"attempt to reuse consumer tag '{tag}'")
    if m.queue == PSEUDO_QUEUE:
        s.broker.direct_reply.consume(chan, tag, m.no_ack)
        if not m.nowait:
            s.reply(chan, commands.Basic.ConsumeOk(consumer_tag=tag))
        return
    arguments = dict(m.arguments or {})
    if "x-stream-group" in arguments:
        _consume_group(s, chan, m, tag, arguments)
        return
    queue = cmd.readable_queue(s.broker, s.caller, s.queue_name(chan, m.queue))
    queue.check_consumer(no_ack=m.no_ack, prefetch=chan.consumer_prefetch)
    if queue.consumers and (m.exclusive or any(c.exclusive for c in queue.consumers)):
        raise errors.AccessRefused(
            f"queue '{queue.name}' in vhost '{queue.vhost}' in exclusive use"
        )
    consumer = Consumer(
        chan,
        tag,
        queue,
        no_ack=m.no_ack,
        exclusive=m.exclusive,
        prefetch=chan.consumer_prefetch,
        arguments=dict(m.arguments or {}),
    )
    chan.consumers[tag] = consumer
    queue.add_consumer(consumer)
    queue.last_used_ms = s.broker.wall_ms()
    if not m.nowait:
        s.reply(chan, commands.Basic.ConsumeOk(consumer_tag=tag))
    s.broker.mark_dirty(queue)


def _consume_group(
    s: Session, chan: Channel, m: commands.Basic.Consume, tag: str, arguments: dict[str, Any]
) -> None:
    """A consumer-group member: on a stream, or on a super stream by its
    exchange name (every partition); streams/groups.py splits them."""
    group = arguments["x-stream-group"]
    if isinstance(group, bytes):
        group = group.decode("utf-8", "replace")
    if not isinstance(group, str) or not group:
        raise errors.PreconditionFailed("invalid arg 'x-stream-group': a non-empty string")
    vhost = s.broker.vhosts[s.caller.vhost]
    partitions = cmd.partitions_of(vhost, m.queue)
    super_stream: str | None = m.queue if partitions else None
    if not partitions:
        queue = cmd.readable_queue(s.broker, s.caller, s.queue_name(chan, m.queue))
        if not isinstance(queue, StreamQueue):
            raise errors.PreconditionFailed(
                f"x-stream-group needs a stream or a super stream, not queue '{queue.name}'"
            )
        partitions = [queue]
    for stream in partitions:
        cmd.readable_queue(s.broker, s.caller, stream.name)
        stream.check_consumer(no_ack=m.no_ack, prefetch=chan.consumer_prefetch)
    spec = start_spec(arguments.get("x-stream-offset"), s.broker.wall_ms())
    consumer = Consumer(
        chan, tag, partitions[0], no_ack=False, exclusive=False,
        prefetch=chan.consumer_prefetch, arguments=arguments,
    )
    chan.consumers[tag] = consumer
    s.broker.stream_groups.join(consumer, vhost.name, group, partitions, spec, super_stream)
    if not m.nowait:
        s.reply(chan, commands.Basic.ConsumeOk(consumer_tag=tag))
    for stream in partitions:
        s.broker.mark_dirty(stream)


@handles(commands.Basic.Cancel)
def _cancel(s: Session, chan: Channel, m: commands.Basic.Cancel) -> None:
    consumer = chan.consumers.get(m.consumer_tag or "")
    if consumer is not None:
        s.remove_consumer(consumer)
    elif m.consumer_tag == chan.reply_tag:
        s.broker.direct_reply.cancel(chan)
    if not m.nowait:
        s.reply(chan, commands.Basic.CancelOk(consumer_tag=m.consumer_tag))


@handles(commands.Basic.Get)
def _get(s: Session, chan: Channel, m: commands.Basic.Get) -> None:
    queue = cmd.readable_queue(s.broker, s.caller, s.queue_name(chan, m.queue))
    entry = s.broker.take_for_get(queue)
    if entry is None:
        s.reply(chan, commands.Basic.GetEmpty())
        return
    chan.send_get_ok(queue, entry, m.no_ack)


def _settle(s: Session, chan: Channel, kind: str, tag: int, multiple: bool, requeue: bool) -> None:
    if chan.tx:
        chan.tx_acks.append((kind, tag, multiple, requeue))
        return
    if kind == "ack":
        chan.ack(tag, multiple)
    else:
        chan.reject(tag, multiple, requeue)


@handles(commands.Basic.Ack)
def _ack(s: Session, chan: Channel, m: commands.Basic.Ack) -> None:
    _settle(s, chan, "ack", m.delivery_tag, m.multiple, False)


@handles(commands.Basic.Nack)
def _nack(s: Session, chan: Channel, m: commands.Basic.Nack) -> None:
    _settle(s, chan, "nack", m.delivery_tag, m.multiple, m.requeue)


@handles(commands.Basic.Reject)
def _reject(s: Session, chan: Channel, m: commands.Basic.Reject) -> None:
    _settle(s, chan, "nack", m.delivery_tag or 0, False, m.requeue)


@handles(commands.Basic.Recover)
def _recover(s: Session, chan: Channel, m: commands.Basic.Recover) -> None:
    if not m.requeue:
        raise errors.NotImplemented_("requeue=false")
    chan.recover()
    s.reply(chan, commands.Basic.RecoverOk())


@handles(commands.Basic.RecoverAsync)
def _recover_async(s: Session, chan: Channel, m: commands.Basic.RecoverAsync) -> None:
    if not m.requeue:
        raise errors.NotImplemented_("requeue=false")
    chan.recover()


# ------------------------------------------------------- confirm and tx


@handles(commands.Confirm.Select)
def _confirm_select(s: Session, chan: Channel, m: commands.Confirm.Select) -> None:
    if chan.tx:
        raise errors.PreconditionFailed("cannot switch from tx to confirm mode")
    chan.confirms.enabled = True
    if not m.nowait:
        s.reply(chan, commands.Confirm.SelectOk())


@handles(commands.Tx.Select)
def _tx_select(s: Session, chan: Channel, m: commands.Tx.Select) -> None:
    if chan.confirms.enabled:
        raise errors.PreconditionFailed("cannot switch from confirm to tx mode")
    chan.tx = True
    s.reply(chan, commands.Tx.SelectOk())


@handles(commands.Tx.Commit)
def _tx_commit(s: Session, chan: Channel, m: commands.Tx.Commit) -> None:
    if not chan.tx:
        raise errors.PreconditionFailed("channel is not transactional")
    publishes, chan.tx_publishes = chan.tx_publishes, []
    acks, chan.tx_acks = chan.tx_acks, []
    durable = False
    for event in publishes:
        durable |= s.broker.publish_event(s, chan, event)
    for kind, tag, multiple, requeue in acks:
        if kind == "ack":
            durable |= chan.ack(tag, multiple)
        else:
            durable |= chan.reject(tag, multiple, requeue)
    epoch = s.broker.write_epoch if durable and s.broker.store.durable else 0
    chan.confirms.wait_tx(epoch)
    if epoch > s.broker.committed_epoch:
        s.broker.request_commit()


@handles(commands.Tx.Rollback)
def _tx_rollback(s: Session, chan: Channel, m: commands.Tx.Rollback) -> None:
    if not chan.tx:
        raise errors.PreconditionFailed("channel is not transactional")
    chan.tx_publishes.clear()
    chan.tx_acks.clear()
    s.reply(chan, commands.Tx.RollbackOk())
