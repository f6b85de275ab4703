"""The one publish pipeline: every message enters queues here.

Strategy: AMQP ``basic.publish``, the HTTP API's publish, dead-lettering,
a delayed exchange's release and the management move/replay all put
messages into queues through this class, so each step is written once:

1. ``admit``: resolve the exchange (404), check write permission (403),
   refuse internal exchanges (403), build the ``Message`` and validate its
   properties (``user_id``, ``expiration``: 406), apply CC/BCC;
2. the exchange's publish hooks (``Exchange.hooks``: the delayed exchange
   holds, deduplication drops), which know nothing of the broker but the
   ``PublishPort`` this class implements;
3. ``route`` through the exchange graph (``router.py``);
4. ``offer`` to each queue with the message's TTL, marking it dirty for
   the dispatch pass and noting what went to the durable store;
5. ask the group committer for a commit (urgent when somebody waits for
   the confirm, lazy otherwise).

Confirms are the caller's last step (``confirms.py`` for a channel, the
commit epoch for the HTTP API), because only the caller knows who waits.
The AMQP entry point ``publish_amqp`` keeps the hot path's shortcuts: the
property flags are read from the raw header without decoding it, and the
slow checks run only when a flag says they could apply.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mqbroker import errors
from mqbroker.broker.direct_reply import PREFIX as REPLY_PREFIX
from mqbroker.broker.direct_reply import PSEUDO_QUEUE
from mqbroker.broker.router import route
from mqbroker.broker.topic_access import TOPIC
from mqbroker.exchanges.base import TimerTarget, Verdict
from mqbroker.exchanges.exchange import Exchange
from mqbroker.model.headers import sender_keys
from mqbroker.model.message import Message
from mqbroker.persistence.store import Store
from mqbroker.protocol import codec
from mqbroker.protocol.events import ContentReceived
from mqbroker.queues.deadletter import (
    dead_letter_keys,
    dead_letter_properties,
    is_cycle,
)
from mqbroker.queues.queue import Queue

if TYPE_CHECKING:
    from mqbroker.broker.broker import Broker
    from mqbroker.broker.channel import Channel
    from mqbroker.broker.session import Session
    from mqbroker.broker.vhost import VHost

_FLAG_HEADERS = 0x2000
_FLAG_USER_ID = 0x0010
_FLAG_REPLY_TO = 0x0200
_FLAG_EXPIRATION = 0x0100
_NOWHERE = (False, False, False, 0)
# property flags that make a publish take the checked path (1: more flags)
_SLOW_FLAGS = _FLAG_HEADERS | _FLAG_USER_ID | _FLAG_REPLY_TO | _FLAG_EXPIRATION | 1

# Publisher flow control (RabbitMQ's credit flow, simplified): a connection
# that publishes into a queue whose consumers are falling behind stops being
# read while that queue holds more than FLOW_HIGH_READY ready messages, and
# resumes below FLOW_LOW_READY. Queues without consumers (backlogs) never
# throttle: they page to disk instead.
FLOW_HIGH_READY = 4000
FLOW_LOW_READY = 1000


@dataclass(slots=True)
class Outcome:
    """What happened to one published message."""

    routed: bool = False  # reached at least one queue (or was held)
    queues: tuple[str, ...] = ()  # names of the queues that took it
    durable: bool = False  # wrote to the durable store
    refused: bool = False  # a queue refused it (reject-publish): nack
    written: int = 0  # persisted queue entries (early confirms count them)
    epoch: int = 0  # durable once the committed epoch reaches this


@dataclass(slots=True)
class Admitted:
    exchange: Exchange
    message: Message
    keys: list[str]
    headers: dict[str, Any] | None
    ttl: int | None


class Publisher:
    """The pipeline, and the ``PublishPort`` the exchange hooks see."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    # ---------------------------------------------------- PublishPort

    @property
    def store(self) -> Store:
        return self.broker.store

    def now_ms(self) -> int:
        return self.broker.wall_ms()

    def new_msg_id(self) -> int:
        broker = self.broker
        msg_id = broker.next_msg_id
        broker.next_msg_id = msg_id + 1
        return msg_id

    def schedule(self, target: TimerTarget) -> None:
        self.broker.schedule(target)

    def request_commit(self) -> None:
        self.broker.request_commit()

    def exchange_alive(self, exchange: Exchange) -> bool:
        vhost = self.broker.vhosts.get(exchange.vhost)
        return vhost is not None and vhost.exchanges.get(exchange.name) is exchange

    def release(self, exchange: Exchange, message: Message, keys: list[str]) -> bool:
        vhost = self.broker.vhosts[exchange.vhost]
        try:
            ttl = message.expiration_ms()
        except ValueError:
            ttl = None
        outcome = self.deliver(
            vhost, Admitted(exchange, message, keys, message.headers, ttl)
        )
        return outcome.durable

    # ---------------------------------------------------------- steps

    def admit(
        self,
        user: str | None,
        vhost: VHost,
        exchange_name: str,
        message: Message,
        flags: int,
        reply_chan: Channel | None,
    ) -> Admitted:
        """Step 1. ``user`` None: the broker itself (no permission check)."""
        if user is not None:
            self.broker.access.check(user, vhost.name, "write", "exchange", exchange_name)
        exchange = vhost.get_exchange(exchange_name)
        if exchange.internal:
            raise errors.AccessRefused(
                f"cannot publish to internal exchange '{exchange.name}' in "
                f"vhost '{vhost.name}'"
            )
        topics = self.broker.access.topics
        if topics.active and user is not None and exchange.type_name == TOPIC:
            topics.check(user, vhost.name, exchange.name, "write", message.routing_key)
        headers = None
        keys = [message.routing_key]
        if flags & (_FLAG_USER_ID | _FLAG_REPLY_TO) or flags & 1:
            props = message.props
            user_id = props.user_id
            if user_id and user is not None and user_id != user:
                raise errors.PreconditionFailed(
                    f"user_id property set to '{user_id}' but authenticated "
                    f"user was '{user}'"
                )
            if props.reply_to == PSEUDO_QUEUE:
                if reply_chan is None:
                    raise errors.PreconditionFailed("fast reply consumer does not exist")
                props.reply_to = self.broker.direct_reply.reply_address(reply_chan)
                message = message.with_properties(props)
        ttl = None
        if flags & _FLAG_EXPIRATION or flags & 1:
            try:
                ttl = message.expiration_ms()
            except ValueError as exc:
                raise errors.PreconditionFailed(str(exc)) from None
        if flags & _FLAG_HEADERS:
            headers = message.headers
            if headers:
                keys += sender_keys(headers, "CC") + sender_keys(headers, "BCC")
                if "BCC" in headers:
                    props = message.props
                    stripped = dict(headers)
                    del stripped["BCC"]
                    props.headers = stripped
                    message = message.with_properties(props)
        return Admitted(exchange, message, keys, headers, ttl)

    def deliver(
        self,
        vhost: VHost,
        admitted: Admitted,
        session: Session | None = None,
    ) -> Outcome:
        """Steps 2-5 for an admitted message."""
        exchange = admitted.exchange
        message = admitted.message
        for hook in exchange.hooks:
            verdict = hook(self, exchange, message, admitted.keys, admitted.headers)
            if verdict is Verdict.ROUTE:
                continue
            if verdict is Verdict.DROP:
                return Outcome()
            durable = verdict is Verdict.HELD_DURABLE
            if durable:
                self.broker.request_commit()
            return Outcome(
                routed=True,
                durable=durable,
                epoch=self.broker.write_epoch if durable else 0,
            )
        queues = route(vhost, exchange, admitted.keys, admitted.headers)
        return self.offer(queues, message, admitted.ttl, session)

    def offer(
        self,
        queues: Sequence[Queue],
        message: Message,
        ttl: int | None,
        session: Session | None = None,
    ) -> Outcome:
        """Step 4: enqueue on every queue, then step 5 (lazy commit)."""
        if not queues:
            return Outcome()
        taken: list[str] = []
        routed, durable, refused, written = self.offer_to(queues, message, ttl, session, taken)
        epoch = self.broker.write_epoch if durable and self.broker.store.durable else 0
        return Outcome(routed, tuple(taken), durable, refused, written, epoch)

    def offer_to(
        self,
        queues: Sequence[Queue],
        message: Message,
        ttl: int | None,
        session: Session | None,
        names: list[str] | None = None,
    ) -> tuple[bool, bool, bool, int]:
        """The loop of step 4 -> (routed, durable, refused, persisted
        entries); the names of the queues that took it go to ``names``.
        A queue that refuses the message (reject-publish overflow) still
        counts as a route, as in RabbitMQ: the publisher gets a nack, not
        a basic.return."""
        broker = self.broker
        dirty = broker.dirty
        now = broker.wall_ms()
        durable = refused = False
        written = 0
        for queue in queues:
            accepted, wrote = queue.offer(message, now, ttl)
            if wrote:
                durable = True
                written += queue.early_confirms
            if accepted:
                if names is not None:
                    names.append(queue.name)
            else:
                refused = True
            if queue.dispatch_on_offer:
                dirty[queue] = None
            if (
                session is not None
                and queue.consumers
                and len(queue.ready) > FLOW_HIGH_READY
            ):
                session.flow.add(queue)
        if durable:
            broker.request_lazy_commit()
        return bool(queues), durable, refused, written

    # ---------------------------------------------------- entry points

    def publish_amqp(self, session: Session, chan: Channel, event: ContentReceived) -> bool:
        """``basic.publish`` (the hot path); True when it wrote durably.

        A plain message (no headers, expiration, user_id, reply_to) to an
        exchange without hooks, internal flag or topic permissions takes the
        same steps with nothing to check: write permission, exchange, route,
        offer; anything else goes through ``admit`` and ``deliver``."""
        if event.immediate:
            raise errors.NotImplemented_("immediate=true")
        vhost = session.vh
        raw = event.properties
        flags = (raw[0] << 8 | raw[1]) if len(raw) >= 2 else 0
        broker = self.broker
        msg_id = broker.next_msg_id
        broker.next_msg_id = msg_id + 1
        name = event.exchange
        key = event.routing_key
        message = Message(msg_id, name, key, raw, event.body)
        try:
            access = broker.access
            access.check(session.user, vhost.name, "write", "exchange", name)
            exchange = vhost.get_exchange(name)
            if (
                flags & _SLOW_FLAGS
                or exchange.internal
                or exchange.hooks
                or access.topics.active
                or (not name and key.startswith(REPLY_PREFIX))
            ):
                return self._publish_checked(session, chan, event, message, flags)
            queues = route(vhost, exchange, [key], None)
            routed, durable, refused, written = (
                self.offer_to(queues, message, None, session) if queues else _NOWHERE
            )
        except errors.AMQPError as exc:
            raise exc.with_method(60, 40)
        if not routed and event.mandatory:
            session.return_message(chan, name, key, message)
        confirms = chan.confirms
        if confirms.enabled:
            if durable:
                broker.request_commit()
            confirms.settle(refused, durable, broker.write_epoch, msg_id, written)
        return durable

    def _publish_checked(
        self, session: Session, chan: Channel, event: ContentReceived, message: Message, flags: int
    ) -> bool:
        """The full admit + hooks path of ``publish_amqp``."""
        vhost = session.vh
        admitted = self.admit(session.user, vhost, event.exchange, message, flags, chan)
        message = admitted.message
        if not event.exchange and event.routing_key.startswith(REPLY_PREFIX):
            if not self.reply(event.routing_key, message) and event.mandatory:
                session.return_message(chan, event.exchange, event.routing_key, message)
            chan.confirms.add(0)
            return False
        outcome = self.deliver(vhost, admitted, session)
        return self._settle_publish(session, chan, event, message, outcome)

    def _settle_publish(
        self, session: Session, chan: Channel, event: ContentReceived, message: Message,
        outcome: Outcome,
    ) -> bool:
        """Mandatory returns and the publisher confirm of one publish."""
        if not outcome.routed and event.mandatory:
            session.return_message(chan, event.exchange, event.routing_key, message)
        confirms = chan.confirms
        if confirms.enabled:
            if outcome.durable:
                self.broker.request_commit()
            if outcome.refused:
                confirms.nack()
            elif outcome.durable and outcome.written:
                confirms.add(self.broker.write_epoch, message.msg_id, outcome.written)
            else:
                confirms.add(outcome.epoch)
        return outcome.durable

    def publish(
        self,
        user: str | None,
        vhost: VHost,
        exchange_name: str,
        routing_key: str,
        properties_raw: bytes,
        body: bytes,
    ) -> Outcome:
        """A publish from the management API (or the broker itself), with
        the same checks, hooks and routing as ``basic.publish``; the caller
        waits for ``Outcome.epoch`` to be committed before answering."""
        flags = (
            (properties_raw[0] << 8 | properties_raw[1]) if len(properties_raw) >= 2 else 0
        )
        message = Message(
            self.new_msg_id(), exchange_name, routing_key, properties_raw, body
        )
        admitted = self.admit(user, vhost, exchange_name, message, flags, None)
        if not exchange_name and routing_key.startswith(REPLY_PREFIX):
            return Outcome(routed=self.reply(routing_key, admitted.message))
        outcome = self.deliver(vhost, admitted)
        if outcome.durable:
            self.broker.request_commit()
        return outcome

    def reply(self, routing_key: str, message: Message) -> bool:
        """A direct reply-to delivery; False when the requester is gone."""
        target = self.broker.direct_reply.target(routing_key)
        if target is None or target[0].closed:
            return False
        target[0].deliver_direct(target[1], message)
        return True

    def dead_letter(self, queue: Queue, message: Message, reason: str) -> bool:
        """Publish a message that left ``queue`` for ``reason`` to the
        queue's dead-letter exchange (dropped if there is none). True when
        every target queue took the copy: at-least-once dead-lettering
        keeps the message in its queue until then."""
        settings = queue.settings
        dlx_name = settings.dead_letter_exchange
        if dlx_name is None:
            return False
        vhost = self.broker.vhosts.get(queue.vhost)
        if vhost is None:
            return False
        dlx = vhost.exchanges.get(dlx_name)
        if dlx is None:
            return False
        override = settings.dead_letter_routing_key
        raw, deaths = dead_letter_properties(
            message, queue.name, reason, datetime.datetime.now(datetime.UTC), override
        )
        keys = dead_letter_keys(message, override)
        copy = Message(self.new_msg_id(), dlx_name, keys[0], raw, message.body)
        targets = route(vhost, dlx, keys, copy.headers)
        if reason != "rejected":
            targets = tuple(t for t in targets if not is_cycle(deaths, t.name))
        outcome = self.offer(targets, copy, None)
        if outcome.durable:
            self.broker.request_commit()
        return outcome.routed and not outcome.refused

    def codec_properties(self, props: Any) -> bytes:
        """Encode management-API properties (one place for the codec)."""
        return codec.encode_properties(props)
