"""Direct reply-to (``amq.rabbitmq.reply-to``): RPC replies without a queue.

Strategy, as RabbitMQ: a channel consumes (no-ack) from the pseudo-queue
``amq.rabbitmq.reply-to``; when that channel publishes with
``reply_to=amq.rabbitmq.reply-to`` the broker rewrites the property to
``amq.rabbitmq.reply-to.<token>``, and a publish to the default exchange
with that routing key is delivered straight to the consumer. Nothing is
queued or stored: if the requester is gone, the reply is unroutable.
"""

from __future__ import annotations

import base64
import os
from typing import TYPE_CHECKING

from mqbroker import errors

if TYPE_CHECKING:
    from mqbroker.broker.channel import Channel

PSEUDO_QUEUE = "amq.rabbitmq.reply-to"
PREFIX = PSEUDO_QUEUE + "."


class DirectReply:
    def __init__(self) -> None:
        self._by_token: dict[str, tuple[Channel, str]] = {}

    def consume(self, chan: Channel, tag: str, no_ack: bool) -> None:
        if not no_ack:
            raise errors.PreconditionFailed("reply consumer cannot acknowledge")
        if chan.reply_token is not None:
            raise errors.PreconditionFailed("reply consumer already set")
        token = base64.urlsafe_b64encode(os.urandom(18)).decode()
        chan.reply_token = token
        chan.reply_tag = tag
        self._by_token[token] = (chan, tag)

    def cancel(self, chan: Channel) -> None:
        if chan.reply_token is not None:
            self._by_token.pop(chan.reply_token, None)
            chan.reply_token = None
            chan.reply_tag = None

    def reply_address(self, chan: Channel) -> str:
        if chan.reply_token is None:
            raise errors.PreconditionFailed("fast reply consumer does not exist")
        return PREFIX + chan.reply_token

    def target(self, routing_key: str) -> tuple[Channel, str] | None:
        return self._by_token.get(routing_key[len(PREFIX):])
