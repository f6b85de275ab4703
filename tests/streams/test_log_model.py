"""The stream log against a plain list, with everything that moves the
bounds: appends of any size (empty, bigger than a segment), commits,
explicit rolls, retention by size and age, clean reopenings, reads and
time lookups from random points. Retention may only ever cut a prefix of
whole segments, and never what is not yet synced."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mqbroker.streams.log import StreamLog

ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 700), st.integers(0, 50)),
        st.tuples(st.just("commit"), st.none(), st.none()),
        st.tuples(st.just("roll"), st.none(), st.none()),
        st.tuples(st.just("reopen"), st.none(), st.none()),
        st.tuples(st.just("retain_bytes"), st.integers(0, 3000), st.none()),
        st.tuples(st.just("retain_age"), st.integers(0, 500), st.none()),
        st.tuples(st.just("read"), st.integers(-5, 120), st.integers(1, 9)),
        st.tuples(st.just("time"), st.integers(-10, 2000), st.none()),
    ),
    max_size=80,
)


def payload(offset: int, size: int) -> bytes:
    return (b"%d:" % offset * (size // 2 + 1))[:size]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=ops, segment=st.integers(min_value=50, max_value=1500))
def test_log_matches_the_model(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, Any, Any]], segment: int
) -> None:
    directory = tmp_path_factory.mktemp("model") / "s"
    log = StreamLog(directory, max_segment_bytes=segment)
    bodies: list[bytes] = []
    stamps: list[int] = []
    first = committed = 0
    clock = 0
    for op, a, b in ops:
        if op == "append":
            clock += b
            offset, _ = log.append(payload(len(bodies), a), clock)
            assert offset == len(bodies)
            bodies.append(payload(offset, a))
            stamps.append(clock)
        elif op == "commit":
            mark = log.commit_mark()
            log.sync(mark)
            log.committed(mark)
            committed = len(bodies)
        elif op == "roll":
            log.roll()
        elif op == "reopen":
            log.close()
            log = StreamLog(directory, max_segment_bytes=segment)
            committed = len(bodies)  # closed cleanly: every entry is whole
        elif op in ("retain_bytes", "retain_age"):
            before = [(s.first_offset, s.next_offset) for s in log.segments]
            if op == "retain_bytes":
                log.apply_retention(max_bytes=a, max_age_ms=None, now_ms=clock)
            else:
                log.apply_retention(max_bytes=None, max_age_ms=a, now_ms=clock)
            after = [(s.first_offset, s.next_offset) for s in log.segments]
            assert after == before[len(before) - len(after):]  # a prefix went
            assert len(after) >= 1 and log.next_offset == len(bodies)
            first = log.first_offset
            assert first <= committed
        elif op == "read":
            reader = log.reader(a)
            got: list[tuple[int, int, bytes]] = []
            while batch := reader.read(max_entries=b, max_bytes=b * 100):
                got += [(e.offset, e.timestamp_ms, e.payload) for e in batch]
            reader.close()
            start = min(max(a, first), committed) if a < committed else a
            assert got == [(i, stamps[i], bodies[i]) for i in range(start, committed)]
        else:
            want = next((i for i in range(first, committed) if stamps[i] >= a), committed)
            assert log.offset_for_timestamp(a) == want
        stats = log.stats()
        assert (stats.first_offset, stats.messages) == (first, committed - first)
    log.close()
