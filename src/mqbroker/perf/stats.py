"""Latency histograms and the lost/duplicate accounting."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

LINEAR_US = 4096  # 1 us buckets below 4.096 ms


class Histogram:
    """Latencies in microseconds: exact 1 us buckets below 4.096 ms (where
    the hot loop adds with one list index), then ~1 % buckets."""

    __slots__ = ("coarse", "count", "linear")

    def __init__(self) -> None:
        self.linear = [0] * LINEAR_US
        self.coarse: dict[int, int] = {}
        self.count = 0

    def add_coarse(self, us: int, weight: int = 1) -> None:
        """The slow path for ``us >= LINEAR_US`` (or any, with a weight)."""
        if us < LINEAR_US:
            self.linear[max(us, 0)] += weight
            return
        shift = max(us.bit_length() - 7, 0)
        key = (us >> shift) << shift  # lower bound of the bucket
        self.coarse[key] = self.coarse.get(key, 0) + weight

    def add(self, us: int, weight: int = 1) -> None:
        self.add_coarse(us, weight)
        self.count += weight

    def merge(self, other: Histogram) -> None:
        lin = self.linear
        for i, v in enumerate(other.linear):
            if v:
                lin[i] += v
        for k, v in other.coarse.items():
            self.coarse[k] = self.coarse.get(k, 0) + v
        self.count = self.total()

    def total(self) -> int:
        return sum(self.linear) + sum(self.coarse.values())

    def to_state(self) -> tuple[dict[int, int], dict[int, int]]:
        return ({i: v for i, v in enumerate(self.linear) if v},
                dict(self.coarse))

    @classmethod
    def from_state(cls, state: tuple[Mapping[int, int], Mapping[int, int]]
                   ) -> Histogram:
        h = cls()
        for i, v in state[0].items():
            h.linear[int(i)] = v
        h.coarse = {int(k): v for k, v in state[1].items()}
        h.count = h.total()
        return h

    def _items(self) -> Iterable[tuple[int, int]]:
        for i, v in enumerate(self.linear):
            if v:
                yield i, v
        for k in sorted(self.coarse):
            yield k, self.coarse[k]

    def percentile(self, p: float) -> float | None:
        """The ``p``-th percentile in milliseconds (None when empty)."""
        total = self.total()
        if not total:
            return None
        rank = max(1, int(round(total * p / 100.0 + 0.4999)))
        rank = min(rank, total)
        seen = 0
        for us, v in self._items():
            seen += v
            if seen >= rank:
                return us / 1000.0
        return None

    def max_ms(self) -> float | None:
        last = None
        for us, _v in self._items():
            last = us
        return None if last is None else last / 1000.0


def summarize(hist: Histogram, prefix: str) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for p in (50, 95, 99):
        v = hist.percentile(p)
        out[f"{prefix}_p{p}_ms"] = None if v is None else round(v, 3)
    mx = hist.max_ms()
    out[f"{prefix}_max_ms"] = None if mx is None else round(mx, 3)
    return out


def popcount_bytes(b: bytes) -> int:
    """Number of non-zero bytes in a 0/1 byte map."""
    return len(b) - b.count(0)


def to_int(b: bytes) -> int:
    return int.from_bytes(b, "little")


def account(
    sent: Mapping[int, int],
    maps: Mapping[tuple[int, int], list[bytes]],
    queues: int,
    fanout: bool,
) -> tuple[int, int, int]:
    """``(lost, duplicated, unexpected)`` from the per-(queue, producer) 0/1
    byte maps that each consumer sent (one list entry per consumer);
    ``sent[producer]`` messages were published by each producer.

    Fanout: every queue must hold every message once.  Otherwise every
    message goes to exactly one queue.  Duplicates within one consumer are
    counted by the consumer itself; this counts the ones across consumers
    of a queue and (not fanout) across queues.  ``unexpected``: sequence
    numbers at or past what the producer says it sent.
    """
    lost = dup = unexpected = 0
    for pid, n_sent in sent.items():
        per_queue: list[int] = []
        for q in range(queues):
            parts = maps.get((q, pid), [])
            union = 0
            total_bits = 0
            for b in parts:
                v = to_int(b)
                total_bits += popcount_bytes(b)
                union |= v
            ub = union.bit_count()
            dup += total_bits - ub
            per_queue.append(union)
        if fanout:
            for u in per_queue:
                ok, extra = _split(u, n_sent)
                lost += n_sent - ok
                unexpected += extra
        else:
            union = 0
            total = 0
            for u in per_queue:
                total += u.bit_count()
                union |= u
            dup += total - union.bit_count()
            ok, extra = _split(union, n_sent)
            lost += n_sent - ok
            unexpected += extra
    return lost, dup, unexpected


def _split(bits: int, n_sent: int) -> tuple[int, int]:
    """(set bytes below n_sent, set bytes at or above it) of a 0/1 byte map
    packed little-endian into an int: byte i is bits 8i..8i+7."""
    low_mask = (1 << (8 * n_sent)) - 1
    low = bits & low_mask
    return low.bit_count(), (bits >> (8 * n_sent)).bit_count()
