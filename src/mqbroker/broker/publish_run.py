"""A run of publishes to one exchange and routing key, through the one
pipeline with the per-run work done once.

Why: a publisher streaming to one destination sends the same basic.publish
method frame again and again; the protocol core hands such a run over as
one ``PublishRun``. Permission, exchange, flags of the exchange and the
route are the same for every message of the run, so they are looked up
once; each message is still offered through ``Publisher.offer_to`` (the
pipeline's step 4), and a message whose properties need the checked path
(headers, expiration, user_id, reply_to) takes ``publish_amqp`` whole.
Confirms of the run's messages that wait for the same commit are one
pending item. Errors end the run: the caller reports them and the
protocol drops the rest of the channel's input, as for single publishes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mqbroker import errors
from mqbroker.broker.direct_reply import PREFIX as REPLY_PREFIX
from mqbroker.broker.publish import _NOWHERE, _SLOW_FLAGS, Publisher
from mqbroker.broker.router import route
from mqbroker.model.message import Message
from mqbroker.protocol.events import ContentReceived, PublishRun
from mqbroker.queues.queue import Queue

if TYPE_CHECKING:
    from mqbroker.broker.channel import Channel
    from mqbroker.broker.session import Session


def publish_run(publisher: Publisher, session: Session, chan: Channel, run: PublishRun) -> bool:
    """Every message of ``run``, in order; True when any wrote durably."""
    if run.immediate:
        raise errors.NotImplemented_("immediate=true").with_method(60, 40)
    broker = publisher.broker
    vhost = session.vh
    name, key = run.exchange, run.routing_key
    try:
        access = broker.access
        access.check(session.user, vhost.name, "write", "exchange", name)
        exchange = vhost.get_exchange(name)
        plain = not (
            exchange.internal
            or exchange.hooks
            or access.topics.active
            or (not name and key.startswith(REPLY_PREFIX))
        )
        queues = route(vhost, exchange, [key], None) if plain else ()
    except errors.AMQPError as exc:
        raise exc.with_method(60, 40) from None
    if not plain:
        wrote = False
        for event in run.events():
            wrote |= publisher.publish_amqp(session, chan, event)
        return wrote
    if len(queues) == 1 and queues[0].takes_runs:
        return _run_into(publisher, session, chan, run, queues[0])
    confirms = chan.confirms
    confirming = confirms.enabled
    offer_to = publisher.offer_to
    epoch = 0
    waiting = 0  # confirms of plain durable publishes, added as one run
    any_durable = False
    for props, body in run.items:
        if len(props) >= 2 and (props[0] << 8 | props[1]) & _SLOW_FLAGS:
            if waiting:
                confirms.add_run(epoch, waiting)
                waiting = 0
            any_durable |= publisher.publish_amqp(
                session, chan,
                ContentReceived(run.channel, name, key, run.mandatory, False, props, body),
            )
            continue
        msg_id = broker.next_msg_id
        broker.next_msg_id = msg_id + 1
        message = Message(msg_id, name, key, props, body)
        try:
            routed, durable, refused, written = (
                offer_to(queues, message, None, session) if queues else _NOWHERE
            )
        except errors.AMQPError as exc:
            if waiting:
                confirms.add_run(epoch, waiting)
            raise exc.with_method(60, 40) from None
        if not routed and run.mandatory:
            session.return_message(chan, name, key, message)
        if not confirming:
            any_durable |= durable
            continue
        if durable and not refused and not written:
            # waits for the commit, cannot be confirmed early: batch it
            current = broker.write_epoch
            if waiting and current != epoch:
                confirms.add_run(epoch, waiting)
                waiting = 0
            epoch = current
            waiting += 1
            any_durable = True
            continue
        if waiting:
            confirms.add_run(epoch, waiting)
            waiting = 0
        any_durable |= durable
        confirms.settle(refused, durable, broker.write_epoch, msg_id, written)
    if waiting:
        confirms.add_run(epoch, waiting)
    if confirming and any_durable:
        broker.request_commit()
    return any_durable


def _run_into(
    publisher: Publisher, session: Session, chan: Channel, run: PublishRun, queue: Queue
) -> bool:
    """The run's route is one queue that takes runs (a stream): its plain
    messages go in with one ``offer_run`` per stretch between the ones
    that need the checked path, and are confirmed as one pending item."""
    broker = publisher.broker
    confirms = chan.confirms
    plain: list[tuple[bytes, bytes]] = []

    def offer_plain() -> None:
        queue.offer_run(run.exchange, run.routing_key, plain, broker.wall_ms())
        broker.request_lazy_commit()
        if confirms.enabled:
            confirms.add_run(broker.write_epoch, len(plain))

    wrote = False
    for props, body in run.items:
        if len(props) >= 2 and (props[0] << 8 | props[1]) & _SLOW_FLAGS:
            if plain:
                offer_plain()
                plain = []
                wrote = True
            wrote |= publisher.publish_amqp(
                session, chan,
                ContentReceived(
                    run.channel, run.exchange, run.routing_key, run.mandatory, False, props, body
                ),
            )
        else:
            plain.append((props, body))
    if plain:
        offer_plain()
        wrote = True
    if wrote and confirms.enabled:
        broker.request_commit()
    return wrote
