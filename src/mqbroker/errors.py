"""AMQP errors as exception types that carry their reply code.

Strategy: code anywhere in the broker raises the error where the fault shows
up (``raise NotFound(f"no queue '{q}' in vhost '{v}'")``) and exactly one
place, ``to_close_method()``, turns it into ``channel.close`` or
``connection.close``. Whether an error closes the channel or the connection
is a property of its type (soft vs hard in the 0-9-1 spec), as in
``rabbit_binary_generator:map_exception``; a soft error raised on channel 0
is promoted to a connection close (RabbitMQ sends 505/the code itself there).
"""

from __future__ import annotations

from pamqp import commands

# RabbitMQ cuts reply texts to 255 bytes (a shortstr).
_MAX_REPLY_TEXT = 255


class AMQPError(Exception):
    """Base: a reply code, its name, and whether it ends the connection."""

    reply_code: int = 541
    reply_name: str = "INTERNAL_ERROR"
    hard: bool = True

    def __init__(
        self, text: str = "", class_id: int = 0, method_id: int = 0
    ) -> None:
        super().__init__(text)
        self.text = text
        self.class_id = class_id
        self.method_id = method_id
        # The channel the fault happened on, when the raiser knows it
        # better than the caller (the frame parser does).
        self.channel: int | None = None

    def on_channel(self, channel: int) -> AMQPError:
        self.channel = channel
        return self

    def with_method(self, class_id: int, method_id: int) -> AMQPError:
        """Fill in the method that failed, unless the raiser already did."""
        if not self.class_id:
            self.class_id, self.method_id = class_id, method_id
        return self

    @property
    def reply_text(self) -> str:
        text = f"{self.reply_name} - {self.text}" if self.text else self.reply_name
        raw = text.encode("utf-8")
        if len(raw) > _MAX_REPLY_TEXT:
            text = raw[:_MAX_REPLY_TEXT].decode("utf-8", "ignore")
        return text


class ChannelError(AMQPError):
    """Soft error: closes only the channel it happened on."""

    hard = False


class ConnectionError_(AMQPError):
    """Hard error: closes the whole connection."""

    hard = True


class ContentTooLarge(ChannelError):
    reply_code, reply_name = 311, "CONTENT_TOO_LARGE"


class NoRoute(ChannelError):
    reply_code, reply_name = 312, "NO_ROUTE"


class AccessRefused(ChannelError):
    reply_code, reply_name = 403, "ACCESS_REFUSED"


class NotFound(ChannelError):
    reply_code, reply_name = 404, "NOT_FOUND"


class ResourceLocked(ChannelError):
    reply_code, reply_name = 405, "RESOURCE_LOCKED"


class PreconditionFailed(ChannelError):
    reply_code, reply_name = 406, "PRECONDITION_FAILED"


class ConnectionForced(ConnectionError_):
    reply_code, reply_name = 320, "CONNECTION_FORCED"


class AuthFailure(ConnectionError_):
    """Authentication failure: connection-level 403 (not a channel error)."""

    reply_code, reply_name = 403, "ACCESS_REFUSED"


class FrameError(ConnectionError_):
    reply_code, reply_name = 501, "FRAME_ERROR"


class SyntaxError_(ConnectionError_):
    reply_code, reply_name = 502, "SYNTAX_ERROR"


class CommandInvalid(ConnectionError_):
    reply_code, reply_name = 503, "COMMAND_INVALID"


class ChannelErrorHard(ConnectionError_):
    """504 CHANNEL_ERROR: a method on a channel that is not open."""

    reply_code, reply_name = 504, "CHANNEL_ERROR"


class UnexpectedFrame(ConnectionError_):
    reply_code, reply_name = 505, "UNEXPECTED_FRAME"


class ResourceError(ConnectionError_):
    reply_code, reply_name = 506, "RESOURCE_ERROR"


class NotAllowed(ConnectionError_):
    reply_code, reply_name = 530, "NOT_ALLOWED"


class NotImplemented_(ConnectionError_):
    reply_code, reply_name = 540, "NOT_IMPLEMENTED"


class InternalError(ConnectionError_):
    reply_code, reply_name = 541, "INTERNAL_ERROR"


def closes_connection(error: AMQPError, channel_id: int) -> bool:
    return error.hard or channel_id == 0


def to_close_method(
    error: AMQPError, channel_id: int
) -> commands.Channel.Close | commands.Connection.Close:
    """The one converter from an error to the close method that reports it."""
    if closes_connection(error, channel_id):
        return commands.Connection.Close(
            reply_code=error.reply_code,
            reply_text=error.reply_text,
            class_id=error.class_id,
            method_id=error.method_id,
        )
    return commands.Channel.Close(
        reply_code=error.reply_code,
        reply_text=error.reply_text,
        class_id=error.class_id,
        method_id=error.method_id,
    )
