"""What a connection sends: message-carrying frames into one output buffer.

Why apart from ``connection.py``: the state machine decides what is
allowed; this half only encodes. Output accumulates in ``out`` (a
bytearray appended in place); large bodies are queued as they are, never
copied, and the writer takes everything as a list of buffers.
"""

from __future__ import annotations

from collections.abc import Sequence

from mqbroker.protocol import batch, codec


class Output:
    """The output buffer of a ``ServerConnection`` (its base class)."""

    frame_max: int

    def __init__(self) -> None:
        self.out = bytearray()
        # Output before ``out``: sealed buffers and large bodies, queued
        # as they are so a 64 KB body is never copied (``add_body``).
        self._queued: list[bytes | bytearray] = []
        self._queued_bytes = 0

    def send_return(
        self,
        channel: int,
        reply_code: int,
        reply_text: str,
        exchange: str,
        routing_key: str,
        properties: bytes,
        body: bytes,
    ) -> None:
        """basic.return + the message's content."""
        self.out += codec.return_method(channel, reply_code, reply_text, exchange, routing_key)
        codec.write_content(self.out, channel, properties, body, self.frame_max)

    def send_get_ok(
        self,
        channel: int,
        delivery_tag: int,
        redelivered: bool,
        exchange: str,
        routing_key: str,
        message_count: int,
        properties: bytes,
        body: bytes,
    ) -> None:
        """basic.get-ok + the message's content."""
        self.out += codec.get_ok_method(
            channel, delivery_tag, redelivered, exchange, routing_key, message_count
        )
        codec.write_content(self.out, channel, properties, body, self.frame_max)

    def send_queue_declare_ok(
        self, channel: int, queue: str, message_count: int, consumer_count: int
    ) -> None:
        """queue.declare-ok, hand-packed: any queue name RabbitMQ accepts
        (pamqp's own constructor validates names more strictly)."""
        self.out += codec.queue_declare_ok(channel, queue, message_count, consumer_count)

    def send_heartbeat(self) -> None:
        self.out += codec.HEARTBEAT_FRAME

    def send_delivery(
        self,
        channel: int,
        prefix: bytes,
        delivery_tag: int,
        redelivered: bool,
        suffix: bytes,
        properties: bytes,
        body: bytes,
    ) -> None:
        """basic.deliver + content (see ``codec.write_delivery``); a body of
        ``codec.LARGE_BODY`` or more is queued as it is, not copied."""
        if codec.write_delivery(
            self.out, channel, prefix, delivery_tag, redelivered, suffix,
            properties, body, self.frame_max,
            body_separately=len(body) >= codec.LARGE_BODY,
        ):
            self.add_body(body)
            self.out += codec.FRAME_END_BYTE

    def send_deliveries(
        self, channel: int, prefix: bytes, first_tag: int, records: Sequence[batch.Record]
    ) -> None:
        """One basic.deliver + content per record, tags from ``first_tag``
        on (``batch.write_deliveries``; what it cannot inline goes through
        ``send_delivery``)."""
        i, end = 0, len(records)
        while i < end:
            i = batch.write_deliveries(
                self.out, channel, prefix, first_tag + i, records, i, self.frame_max
            )
            if i < end:
                _offset, suffix, props, body = records[i]
                self.send_delivery(
                    channel, prefix, first_tag + i, False, suffix, bytes(props), bytes(body)
                )
                i += 1

    def add_body(self, body: bytes) -> None:
        """Queue a large body after what ``out`` holds, without copying
        it; later output goes to a fresh ``out``."""
        if self.out:
            self._queued.append(self.out)
            self._queued_bytes += len(self.out)
            self.out = bytearray()
        self._queued.append(body)
        self._queued_bytes += len(body)

    @property
    def output_size(self) -> int:
        """Bytes queued for the peer and not yet taken by the writer."""
        return self._queued_bytes + len(self.out)

    def data_to_send(self) -> bytes:
        """Everything queued for the peer, as bytes (a copy)."""
        data = b"".join([*self._queued, self.out])
        self._queued = []
        self._queued_bytes = 0
        self.out = bytearray()
        return data

    def take_output(self) -> list[bytes | bytearray]:
        """Everything queued for the peer as a list of buffers, without a
        copy: the writer sends them (one ``sendmsg``) while new output
        accumulates in a fresh buffer."""
        chunks = self._queued
        if self.out:
            chunks.append(self.out)
        self._queued = []
        self._queued_bytes = 0
        self.out = bytearray()
        return chunks
