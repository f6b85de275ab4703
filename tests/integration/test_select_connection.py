"""Flows driven by pika's asynchronous SelectConnection (ioloop + callbacks).

Each flow is a small state machine; an ``ioloop.call_later`` watchdog stops
the loop if the broker never answers, and the test then fails with the
state it got stuck in.
"""

from __future__ import annotations

from typing import Any

import pika
import pika.exceptions
import pytest

from support.blocking import pika_params

pytestmark = pytest.mark.timeout(30)

WATCHDOG = 15.0


class Flow:
    """Base: connection lifecycle, watchdog, and step log."""

    def __init__(self, broker: Any) -> None:
        self.steps: list[str] = []
        self.error: BaseException | str | None = None
        self.timed_out = False
        self.closed_reason: BaseException | None = None
        self.connection = pika.SelectConnection(
            pika_params(broker),
            on_open_callback=self._on_open,
            on_open_error_callback=self._on_open_error,
            on_close_callback=self._on_closed,
        )

    def run(self) -> None:
        self.connection.ioloop.call_later(WATCHDOG, self._watchdog)
        self.connection.ioloop.start()

    def _watchdog(self) -> None:
        self.timed_out = True
        self.connection.ioloop.stop()

    def fail(self, why: Any) -> None:
        if self.error is None:
            self.error = why
        if self.connection.is_open:
            self.connection.close()
        else:
            self.connection.ioloop.stop()

    def _on_open_error(self, conn: Any, err: BaseException) -> None:
        self.error = err
        self.connection.ioloop.stop()

    def _on_closed(self, conn: Any, reason: BaseException) -> None:
        self.steps.append("connection closed")
        self.closed_reason = reason
        self.connection.ioloop.stop()

    def _on_open(self, conn: Any) -> None:
        self.steps.append("connection open")
        conn.channel(on_open_callback=self.on_channel_open)

    def on_channel_open(
        self, ch: Any
    ) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def check(self) -> None:
        assert not self.timed_out, (
            f"watchdog fired; steps so far: {self.steps}"
        )
        assert self.error is None, self.error
        # A clean close by us: pika reports ConnectionClosedByClient(200, 'Normal shutdown').
        assert isinstance(
            self.closed_reason, pika.exceptions.ConnectionClosedByClient
        ), self.closed_reason
        assert self.closed_reason.reply_code == 200


class PublishConsumeAckFlow(Flow):
    """confirm.select -> declare -> consume -> publish N -> ack each ->
    all confirmed and acked -> cancel -> close channel -> close connection."""

    def __init__(self, broker: Any, count: int) -> None:
        self.count = count
        self.confirmed: set[int] = set()
        self.nacked: list[int] = []
        self.received: list[bytes] = []
        self.redelivered: list[bool] = []
        self.next_seq = 0
        self.ch: Any = None
        self.queue = ""
        self.consumer_tag = ""
        super().__init__(broker)

    def on_channel_open(self, ch: Any) -> None:
        self.steps.append("channel open")
        self.ch = ch
        ch.add_on_close_callback(self.on_channel_closed)
        ch.confirm_delivery(
            ack_nack_callback=self.on_confirm, callback=self.on_confirm_ok
        )

    def on_channel_closed(self, ch: Any, reason: BaseException) -> None:
        if not isinstance(reason, pika.exceptions.ChannelClosedByClient):
            self.steps.append(f"channel closed: {reason!r}")
            self.fail(reason)
            return
        self.steps.append("channel closed by client")
        self.connection.close()

    def on_confirm_ok(self, frame: Any) -> None:
        self.steps.append("confirm-select ok")
        self.ch.queue_declare("", exclusive=True, callback=self.on_declared)

    def on_declared(self, frame: Any) -> None:
        self.queue = frame.method.queue
        self.steps.append("queue declared")
        self.ch.basic_qos(prefetch_count=5, callback=self.on_qos)

    def on_qos(self, frame: Any) -> None:
        self.consumer_tag = self.ch.basic_consume(
            self.queue, self.on_message, callback=self.on_consume_ok
        )

    def on_consume_ok(self, frame: Any) -> None:
        self.steps.append("consuming")
        for i in range(self.count):
            self.next_seq += 1
            self.ch.basic_publish(
                "",
                self.queue,
                f"msg-{i}".encode(),
                pika.BasicProperties(message_id=str(i)),
                mandatory=True,
            )

    def on_confirm(self, frame: Any) -> None:
        method = frame.method
        tags = (
            [
                t
                for t in range(1, method.delivery_tag + 1)
                if t not in self.confirmed
            ]
            if method.multiple
            else [method.delivery_tag]
        )
        if isinstance(method, pika.spec.Basic.Nack):
            self.nacked.extend(tags)
        self.confirmed.update(tags)
        self.maybe_done()

    def on_message(
        self, ch: Any, method: Any, props: Any, body: bytes
    ) -> None:
        self.received.append(body)
        self.redelivered.append(method.redelivered)
        ch.basic_ack(method.delivery_tag)
        self.maybe_done()

    def maybe_done(self) -> None:
        if (
            len(self.confirmed) == self.count
            and len(self.received) == self.count
        ):
            self.steps.append("all confirmed and acked")
            self.ch.basic_cancel(self.consumer_tag, callback=self.on_cancel_ok)

    def on_cancel_ok(self, frame: Any) -> None:
        self.steps.append("cancelled")
        # Nothing left behind: every message was acked.
        self.ch.queue_declare(
            self.queue, passive=True, callback=self.on_final_count
        )

    def on_final_count(self, frame: Any) -> None:
        if frame.method.message_count != 0 or frame.method.consumer_count != 0:
            self.fail(f"leftovers: {frame.method}")
            return
        self.ch.close()


def test_select_connection_publish_consume_ack_with_confirms(broker):
    flow = PublishConsumeAckFlow(broker, count=50)
    flow.run()
    flow.check()
    assert flow.confirmed == set(range(1, 51))
    assert flow.nacked == []
    assert flow.received == [f"msg-{i}".encode() for i in range(50)]
    assert not any(flow.redelivered)
    assert flow.steps[-2:] == [
        "channel closed by client",
        "connection closed",
    ]


class ChannelErrorRecoveryFlow(Flow):
    """A soft error (publish to a missing exchange) closes only the channel;
    the flow notices via the channel's close callback, opens a new channel
    on the same connection, gets a mandatory message returned, then
    requeues a message with nack and sees it redelivered."""

    def __init__(self, broker: Any, missing_exchange: str) -> None:
        self.missing_exchange = missing_exchange
        self.channel_close_reason: BaseException | None = None
        self.returned: list[tuple[int, str]] = []
        self.deliveries: list[tuple[bytes, bool]] = []
        self.ch2: Any = None
        self.queue = ""
        super().__init__(broker)

    def on_channel_open(self, ch: Any) -> None:
        self.steps.append("channel 1 open")
        ch.add_on_close_callback(self.on_first_channel_closed)
        ch.basic_publish(self.missing_exchange, "k", b"doomed")

    def on_first_channel_closed(self, ch: Any, reason: BaseException) -> None:
        self.steps.append("channel 1 closed")
        self.channel_close_reason = reason
        if not self.connection.is_open:
            self.fail("connection closed by a channel error")
            return
        self.connection.channel(on_open_callback=self.on_second_channel_open)

    def on_second_channel_open(self, ch: Any) -> None:
        self.steps.append("channel 2 open")
        self.ch2 = ch
        ch.add_on_return_callback(self.on_return)
        ch.queue_declare("", exclusive=True, callback=self.on_declared)

    def on_return(self, ch: Any, method: Any, props: Any, body: bytes) -> None:
        self.returned.append((method.reply_code, method.reply_text))
        self.steps.append("returned")
        ch.basic_publish("", self.queue, b"requeue-me")

    def on_declared(self, frame: Any) -> None:
        self.queue = frame.method.queue
        self.ch2.basic_consume(self.queue, self.on_message)
        self.ch2.basic_publish(
            "amq.direct", "unroutable." + self.queue, b"bounce", mandatory=True
        )

    def on_message(
        self, ch: Any, method: Any, props: Any, body: bytes
    ) -> None:
        self.deliveries.append((body, method.redelivered))
        if not method.redelivered:
            ch.basic_nack(method.delivery_tag, requeue=True)
        else:
            ch.basic_ack(method.delivery_tag)
            self.steps.append("redelivered and acked")
            self.connection.close()


def test_select_connection_channel_error_then_new_channel(broker, uniq):
    missing = uniq("missing-ex")
    flow = ChannelErrorRecoveryFlow(broker, missing)
    flow.run()
    flow.check()
    reason = flow.channel_close_reason
    assert isinstance(reason, pika.exceptions.ChannelClosedByBroker), reason
    assert reason.reply_code == 404
    assert reason.reply_text.startswith(
        f"NOT_FOUND - no exchange '{missing}' in vhost"
    )
    assert flow.returned == [(312, "NO_ROUTE")]
    assert flow.deliveries == [(b"requeue-me", False), (b"requeue-me", True)]


def test_select_connection_open_error_for_missing_vhost(broker, uniq):
    """on_open_error_callback fires (no hang) when the vhost does not exist."""
    errors: list[BaseException] = []
    conn = pika.SelectConnection(
        pika_params(broker, virtual_host=uniq("no-vhost")),
        on_open_callback=lambda c: c.close(),
        on_open_error_callback=lambda c, e: (
            errors.append(e),
            c.ioloop.stop(),
        ),
        on_close_callback=lambda c, r: c.ioloop.stop(),
    )
    fired: list[bool] = []
    conn.ioloop.call_later(
        WATCHDOG, lambda: (fired.append(True), conn.ioloop.stop())
    )
    conn.ioloop.start()
    assert not fired, "watchdog fired"
    assert len(errors) == 1
    assert "530" in str(errors[0]) and "NOT_ALLOWED" in str(errors[0])
