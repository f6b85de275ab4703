"""A published message, shared by every queue it was routed to.

Strategy: the body and the raw content-header properties are kept exactly
as the publisher sent them and re-sent unchanged, so the common path never
re-encodes properties. They are decoded lazily, once, for the few things the
broker must read (delivery mode, expiration, headers, priority).
"""

from __future__ import annotations

import re
from typing import Any

from pamqp import commands

from mqbroker.protocol import codec

# delivery_mode lives in the 4th property slot (flag bit 12); reading it
# with a full decode on every publish is what the lazy path avoids.
_FLAG_CONTENT_TYPE = 0x8000
_FLAG_CONTENT_ENCODING = 0x4000
_FLAG_HEADERS = 0x2000
_FLAG_DELIVERY_MODE = 0x1000
_FLAG_PRIORITY = 0x0800
_FLAG_EXPIRATION = 0x0100


class Message:
    __slots__ = (
        "msg_id",
        "exchange",
        "routing_key",
        "properties_raw",
        "body",
        "_props",
        "persistent",
    )

    def __init__(
        self,
        msg_id: int,
        exchange: str,
        routing_key: str,
        properties_raw: bytes,
        body: bytes,
        props: commands.Basic.Properties | None = None,
    ) -> None:
        self.msg_id = msg_id
        self.exchange = exchange
        self.routing_key = routing_key
        self.properties_raw = properties_raw
        self.body = body
        self._props = props
        self.persistent = self._delivery_mode() == 2

    def _delivery_mode(self) -> int | None:
        raw = self.properties_raw
        if len(raw) < 2:
            return None
        flags = (raw[0] << 8) | raw[1]
        if not flags & _FLAG_DELIVERY_MODE:
            return None
        if flags & (_FLAG_CONTENT_TYPE | _FLAG_CONTENT_ENCODING | _FLAG_HEADERS) or flags & 1:
            mode = self.props.delivery_mode
            return int(mode) if mode is not None else None
        # Only flag words' first bit after headers: delivery mode is next.
        return raw[2] if len(raw) > 2 else None

    @property
    def props(self) -> commands.Basic.Properties:
        if self._props is None:
            self._props = codec.decode_properties(self.properties_raw)
        return self._props

    @property
    def priority(self) -> int:
        raw = self.properties_raw
        if len(raw) < 2 or not (raw[0] << 8 | raw[1]) & _FLAG_PRIORITY:
            return 0
        value = self.props.priority
        return int(value) if value else 0

    def expiration_ms(self) -> int | None:
        """The per-message TTL; raises ValueError for a malformed one."""
        raw = self.properties_raw
        if len(raw) < 2 or not (raw[0] << 8 | raw[1]) & _FLAG_EXPIRATION:
            return None
        value = self.props.expiration
        if value is None:
            return None
        text = value.decode() if isinstance(value, bytes) else str(value)
        if text.isdigit():
            return int(text)
        # RabbitMQ's texts (Erlang string:to_integer/1 and its checks).
        match = re.match(r"[+-]?\d+", text)
        if match is None:
            reason = "no_integer"
        elif match.end() < len(text):
            reason = f'{{leftover_string,"{text[match.end():]}"}}'
        else:
            reason = f"{{value_negative,{int(text)}}}"
        raise ValueError(f"invalid expiration '{text}': {reason}")

    @property
    def headers(self) -> dict[str, Any] | None:
        headers = self.props.headers
        return headers if isinstance(headers, dict) else None

    @property
    def size(self) -> int:
        return len(self.body)

    def with_properties(
        self,
        props: commands.Basic.Properties,
        *,
        msg_id: int | None = None,
        exchange: str | None = None,
        routing_key: str | None = None,
    ) -> Message:
        """A copy with changed properties (BCC stripped, x-death added)."""
        return Message(
            self.msg_id if msg_id is None else msg_id,
            self.exchange if exchange is None else exchange,
            self.routing_key if routing_key is None else routing_key,
            codec.encode_properties(props),
            self.body,
            props,
        )
