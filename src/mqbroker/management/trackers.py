"""Rates and ages for the management API and metrics.

Strategy: nothing on the hot path counts time: queues keep cumulative
counters and sequence numbers, and these trackers sample them every few
seconds (``Management.sample_forever``) to derive per-second rates and the
age of a queue's head.
"""

from __future__ import annotations

import bisect
import datetime as _dt
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from mqbroker.broker.messages import head, message_of
from mqbroker.queues.queue import Queue

if TYPE_CHECKING:
    from mqbroker.broker.broker import Broker
    from mqbroker.broker.session import Session


class RateTracker:
    """Counters sampled over time -> per-second rates and a short history.

    ``sample(now, counters)`` records cumulative counters per key; a rate is
    the increase over the last ``window_s`` seconds. Keys that disappear
    (a deleted queue) are forgotten.
    """

    def __init__(
        self, window_s: float = 5.0, history_s: float = 600.0, *, signed: bool = False
    ) -> None:
        self.window_s = window_s
        self.history_s = history_s
        # Depths (messages, ready, unacked) may fall: their rate is signed.
        self.signed = signed
        self.samples: dict[Any, deque[tuple[float, tuple[int, ...]]]] = {}

    def sample(self, now: float, counters: dict[Any, tuple[int, ...]]) -> None:
        for key in [k for k in self.samples if k not in counters]:
            del self.samples[key]
        keep = max(self.window_s, 1.0) * 2 + 1
        for key, values in counters.items():
            series = self.samples.get(key)
            if series is None:
                series = self.samples[key] = deque()
            series.append((now, values))
            while len(series) > 2 and now - series[1][0] >= keep:
                series.popleft()

    def rates(self, key: Any) -> tuple[float, ...] | None:
        series = self.samples.get(key)
        if not series or len(series) < 2:
            return None
        now, latest = series[-1]
        base_t, base = series[0]
        for t, values in series:
            if now - t <= self.window_s:
                break
            base_t, base = t, values
        dt = now - base_t
        if dt <= 0:
            return None
        if self.signed:
            return tuple((a - b) / dt for a, b in zip(latest, base))
        return tuple(max(0.0, (a - b) / dt) for a, b in zip(latest, base))


class AgeTracker:
    """When was the message with a given seq enqueued? (No per-message
    timestamp is kept: ``Queue.next_seq`` is sampled with the time, and an
    entry with seq s was enqueued before the first sample whose next_seq
    exceeds s, so its age is at least ``now`` minus that sample's time.)

    Samples are kept only while they can still matter, and thinned (older
    ones at lower resolution) if a queue holds very old messages while new
    ones keep coming."""

    MAX_SAMPLES = 2048

    def __init__(self) -> None:
        self.samples: dict[Any, deque[tuple[int, float]]] = {}

    def sample(self, now: float, queues: Iterable[tuple[Any, Queue]]) -> None:
        seen = set()
        for key, queue in queues:
            seen.add(key)
            series = self.samples.get(key)
            if series is None:
                series = self.samples[key] = deque()
            if not series or series[-1][0] != queue.next_seq:
                series.append((queue.next_seq, now))
            first = head(queue)
            head_seq = first.seq if first is not None else queue.next_seq
            while len(series) > 1 and series[1][0] <= head_seq:
                series.popleft()
            if len(series) > self.MAX_SAMPLES:
                items = list(series)
                half = len(items) // 2
                thinned = items[:half:2] + items[half:]
                self.samples[key] = deque(thinned)
        for key in [k for k in self.samples if k not in seen]:
            del self.samples[key]

    def enqueued_before(self, key: Any, seq: int) -> float | None:
        series = self.samples.get(key)
        if not series:
            return None
        index = bisect.bisect_right(series, seq, key=lambda s: s[0])
        if index >= len(series):
            return None  # enqueued after the last sample
        return series[index][1]

    def oldest_ready_age(self, key: Any, queue: Queue, now: float) -> float:
        first = head(queue)
        if first is None:
            return 0.0
        when = self.enqueued_before(key, first.seq)
        return max(0.0, now - when) if when is not None else 0.0


def queue_counters(queue: Queue) -> tuple[int, int, int]:
    return (queue.published, queue.delivered, queue.acked)


def head_timestamp(queue: Queue) -> int | None:
    """The ``timestamp`` property of the head message (RabbitMQ's
    ``head_message_timestamp``), in seconds."""
    first = head(queue)
    if first is None:
        return None
    props = message_of(queue, first).props
    stamp = props.timestamp
    if isinstance(stamp, _dt.datetime):
        return int(stamp.replace(tzinfo=stamp.tzinfo or _dt.UTC).timestamp())
    if isinstance(stamp, int):
        return stamp
    return None


def sessions_sorted(broker: Broker, key: Callable[[Session], Any]) -> list[Session]:
    return sorted(broker.sessions, key=key)
