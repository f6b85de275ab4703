"""The broker: vhosts, users, sessions, and the publish and dispatch loops.

Strategy: all broker state is touched from one thread (the trio loop), so
nothing here locks. Work is batched per loop pass: a publish only marks its
queues dirty, and ``run_dispatch()`` (called by the server after it handled
a read) delivers from each dirty queue once and then wakes the writers of
the sessions that got output. Store writes accumulate into the current
write epoch; ``on_committed()`` releases the confirms that waited for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pamqp import commands

from mqbroker import errors
from mqbroker.config import Config
from mqbroker.core.auth import UserStore
from mqbroker.core.direct_reply import PREFIX as REPLY_PREFIX
from mqbroker.core.direct_reply import PSEUDO_QUEUE, DirectReply
from mqbroker.core.message import Message
from mqbroker.core.router import route, sender_keys
from mqbroker.core.vhost import VHost
from mqbroker.persistence.store import Store
from mqbroker.protocol import codec
from mqbroker.protocol.events import ContentReceived
from mqbroker.queues.queue import Queue, QueueEntry

if TYPE_CHECKING:
    from mqbroker.core.channel import Channel
    from mqbroker.core.session import Session

_FLAG_HEADERS = 0x2000
_FLAG_USER_ID = 0x0010
_FLAG_REPLY_TO = 0x0200


class Broker:
    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        self.users = UserStore()
        self.users.add(config.default_user, config.default_password, ["administrator"])
        self.vhosts: dict[str, VHost] = {}
        self.add_vhost(config.default_vhost)
        self.sessions: set[Session] = set()
        self.direct_reply = DirectReply()
        self.dirty: dict[Queue, None] = {}
        self.to_flush: set[Session] = set()
        self.confirm_waiters: set[Channel] = set()
        # Everything up to ``committed_epoch`` is durable; writes made now
        # belong to ``write_epoch`` (the store's current batch).
        self.committed_epoch = 0
        self.request_commit: Callable[[], None] = lambda: None
        self.next_msg_id = store.max_msg_id() + 1
        self.started_at = time.time()

    def add_vhost(self, name: str) -> VHost:
        vhost = self.vhosts.get(name)
        if vhost is None:
            vhost = VHost(name, self.store)
            vhost.on_queue_deleted = self._queue_deleted
            self.vhosts[name] = vhost
        return vhost

    # ----------------------------------------------------------- sessions

    def session_opened(self, session: Session) -> None:
        self.sessions.add(session)

    def session_closed(self, session: Session) -> None:
        self.sessions.discard(session)
        self.to_flush.discard(session)
        for vhost in self.vhosts.values():
            for queue in [q for q in vhost.queues.values() if q.exclusive_owner is session]:
                vhost.remove_queue(queue)
        self.run_dispatch()

    def _queue_deleted(self, queue: Queue) -> None:
        self.dirty.pop(queue, None)
        for consumer in list(queue.consumers):
            session = consumer.channel.session
            consumer.channel.consumers.pop(consumer.tag, None)
            if session.cancel_notify and not consumer.channel.closed:
                session.conn.send_method(
                    consumer.channel.id,
                    commands.Basic.Cancel(consumer_tag=consumer.tag, nowait=True),
                )
                session.output_ready()
        queue.consumers.clear()

    # ----------------------------------------------------------- dispatch

    def mark_dirty(self, queue: Queue) -> None:
        self.dirty[queue] = None

    def run_dispatch(self) -> None:
        while self.dirty:
            dirty, self.dirty = self.dirty, {}
            for queue in dirty:
                if not queue.deleted:
                    queue.dispatch()
        if self.to_flush:
            sessions, self.to_flush = self.to_flush, set()
            for session in sessions:
                session.wake()

    def writable_again(self, session: Session) -> None:
        """A session's socket drained: its consumers may take more."""
        for chan in session.channels.values():
            for consumer in chan.consumers.values():
                self.dirty[consumer.queue] = None
        self.run_dispatch()

    def take_for_get(self, queue: Queue) -> QueueEntry | None:
        return queue.take()

    # ------------------------------------------------------------ publish

    def publish_event(self, session: Session, chan: Channel, event: ContentReceived) -> bool:
        """Route one publish; True when it wrote to the durable store."""
        method = event.method
        if method.immediate:
            raise errors.NotImplemented_("immediate=true")
        vhost = session.vh
        try:
            exchange = vhost.get_exchange(method.exchange)
            if exchange.internal:
                raise errors.AccessRefused(
                    f"cannot publish to internal exchange '{exchange.name}' in "
                    f"vhost '{vhost.name}'"
                )
            raw = event.properties
            flags = (raw[0] << 8 | raw[1]) if len(raw) >= 2 else 0
            message = Message(
                self.next_msg_id, method.exchange, method.routing_key, raw, event.body
            )
            self.next_msg_id += 1
            headers = None
            keys = [method.routing_key]
            if flags & (_FLAG_USER_ID | _FLAG_REPLY_TO) or flags & 1:
                props = message.props
                user_id = props.user_id
                if user_id and user_id != session.user:
                    raise errors.PreconditionFailed(
                        f"user_id property set to '{user_id}' but authenticated "
                        f"user was '{session.user}'"
                    )
                if props.reply_to == PSEUDO_QUEUE:
                    props.reply_to = self.direct_reply.reply_address(chan)
                    message = message.with_properties(props)
            if not method.exchange and method.routing_key.startswith(REPLY_PREFIX):
                return self._direct_reply(session, chan, method, message)
            if flags & _FLAG_HEADERS:
                headers = message.headers
                if headers:
                    cc = sender_keys(headers, "CC")
                    bcc = sender_keys(headers, "BCC")
                    keys += cc + bcc
                    if "BCC" in headers:
                        props = message.props
                        stripped = dict(headers)
                        del stripped["BCC"]
                        props.headers = stripped
                        message = message.with_properties(props)
            queues = route(vhost, exchange, keys, headers)
        except errors.AMQPError as exc:
            raise exc.with_method(60, 40)
        durable = False
        if not queues:
            if method.mandatory:
                self._return(session, chan, method, message)
        else:
            for queue in queues:
                durable |= queue.enqueue(message)
                self.dirty[queue] = None
        if durable:
            self.request_commit()
        if chan.confirm:
            chan.add_confirm(self.write_epoch if durable else 0)
        return durable

    def _direct_reply(
        self, session: Session, chan: Channel, method: Any, message: Message
    ) -> bool:
        target = self.direct_reply.target(method.routing_key)
        if target is not None and not target[0].closed:
            target[0].deliver_direct(target[1], message)
        elif method.mandatory:
            self._return(session, chan, method, message)
        if chan.confirm:
            chan.add_confirm(0)
        return False

    def _return(self, session: Session, chan: Channel, method: Any, message: Message) -> None:
        out = session.conn.out
        out += codec.return_method(
            chan.id, 312, "NO_ROUTE", method.exchange, method.routing_key
        )
        for frame in codec.content_frames(
            chan.id, message.properties_raw, message.body, session.conn.frame_max
        ):
            out += frame
        session.output_ready()

    # ------------------------------------------------------ dead letters

    def dead_letter(self, queue: Queue, entry: QueueEntry, reason: str) -> None:
        """Dead-lettering hook (x-dead-letter-exchange): see queues/."""

    # ----------------------------------------------------------- commits

    @property
    def write_epoch(self) -> int:
        return self.store.current_epoch

    def on_committed(self, epoch: int) -> None:
        if epoch <= self.committed_epoch:
            return
        self.committed_epoch = epoch
        for chan in list(self.confirm_waiters):
            if chan.flush_confirms(epoch):
                self.confirm_waiters.discard(chan)
        self.run_dispatch()

    def server_properties(self) -> dict[str, Any]:
        return {
            "product": self.config.product,
            "version": self.config.product_version,
            "platform": "Python (mqbroker)",
            "mqbroker_version": __import__("mqbroker").__version__,
            "copyright": "mqbroker contributors",
            "information": "mqbroker: an AMQP 0-9-1 broker in Python",
            "cluster_name": "mqbroker",
        }
