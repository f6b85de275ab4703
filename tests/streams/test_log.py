"""The stream log on its own: offsets, segments, retention, recovery.

A model-based hypothesis test drives appends, commits, reopenings and reads
against a plain list; the crash cases damage the tail the ways a kill -9 or
a torn write can and check that every synced entry survives and nothing
damaged is ever readable.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mqbroker.streams.log import StreamLog
from mqbroker.streams.segment import HEADER


def commit(log: StreamLog) -> None:
    mark = log.commit_mark()
    log.sync(mark)
    log.committed(mark)


def read_all(log: StreamLog, offset: int = 0) -> list[tuple[int, bytes]]:
    reader = log.reader(offset)
    out = []
    while batch := reader.read(50):
        out += [(e.offset, e.payload) for e in batch]
    reader.close()
    return out


def test_offsets_start_at_zero_and_survive_reopen(tmp_path: Path) -> None:
    log = StreamLog(tmp_path / "s", max_segment_bytes=1000)
    for i in range(100):
        assert log.append(b"%03d" % i, 1000 + i)[0] == i
    assert read_all(log) == []  # nothing readable before the commit
    commit(log)
    assert read_all(log, 42)[0] == (42, b"042")
    assert len(log.segments) > 1
    log.close()
    again = StreamLog(tmp_path / "s", max_segment_bytes=1000)
    assert again.next_offset == 100 and again.committed_next == 100
    assert [o for o, _ in read_all(again)] == list(range(100))
    assert again.append(b"next", 5000)[0] == 100


def test_retention_drops_whole_old_segments_never_the_active(tmp_path: Path) -> None:
    log = StreamLog(tmp_path / "s", max_segment_bytes=500)
    for i in range(200):
        log.append(b"x" * 20, 1000 + i)
    commit(log)
    before = log.stats()
    dropped = log.apply_retention(max_bytes=1000, max_age_ms=None, now_ms=0)
    after = log.stats()
    assert dropped > 0 and after.bytes <= 1000 + 500
    assert after.last_offset == before.last_offset == 199
    assert read_all(log)[0][0] == after.first_offset > 0
    # age: everything is old, but the active segment stays
    log.apply_retention(max_bytes=None, max_age_ms=1, now_ms=10**12)
    assert log.stats().segments == 1 and log.stats().last_offset == 199
    log.close()
    reopened = StreamLog(tmp_path / "s", max_segment_bytes=500)
    assert reopened.first_offset == log.first_offset and reopened.next_offset == 200


def test_reader_moves_on_when_retention_passes_it(tmp_path: Path) -> None:
    log = StreamLog(tmp_path / "s", max_segment_bytes=300)
    for i in range(100):
        log.append(b"y" * 10, i)
    commit(log)
    reader = log.reader(0)
    assert reader.read(1)[0].offset == 0
    log.apply_retention(max_bytes=400, max_age_ms=None, now_ms=0)
    assert reader.read(1)[0].offset == log.first_offset


def test_offset_for_timestamp(tmp_path: Path) -> None:
    log = StreamLog(tmp_path / "s", max_segment_bytes=2000)
    for i in range(300):
        log.append(b"t", 10_000 + i * 10)
    commit(log)
    assert log.offset_for_timestamp(0) == 0
    assert log.offset_for_timestamp(10_000 + 1234) == 124
    assert log.offset_for_timestamp(10**9) == 300


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip"])
def test_torn_tail_is_cut_and_synced_entries_survive(tmp_path: Path, damage: str) -> None:
    log = StreamLog(tmp_path / "s", max_segment_bytes=10**6)
    for i in range(50):
        log.append(b"%02d" % i * 10, i)
    commit(log)
    for i in range(50, 60):  # written, never synced: may be torn
        log.append(b"%02d" % i * 10, i)
    log.close()
    seg = sorted((tmp_path / "s").glob("*.seg"))[-1]
    size = seg.stat().st_size
    entry = HEADER.size + 20
    if damage == "truncate":
        os.truncate(seg, size - entry // 2)
    elif damage == "garbage":
        with open(seg, "ab") as fh:
            fh.write(b"\x00\x00\x00\x09not an entry")
    else:
        with open(seg, "r+b") as fh:
            fh.seek(size - 3)
            fh.write(b"XYZ")
    again = StreamLog(tmp_path / "s", max_segment_bytes=10**6)
    got = read_all(again)
    assert [o for o, _ in got] == list(range(len(got)))
    assert len(got) >= 50
    assert all(p == b"%02d" % o * 10 for o, p in got)
    # and the log goes on from where the good data ends
    assert again.append(b"after", 99)[0] == len(got)


ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.binary(max_size=300)),
        st.tuples(st.just("commit"), st.none()),
        st.tuples(st.just("reopen"), st.none()),
        st.tuples(st.just("read"), st.integers(min_value=-5, max_value=400)),
    ),
    max_size=60,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=ops, segment=st.integers(min_value=64, max_value=2000))
def test_log_matches_a_list(tmp_path_factory: pytest.TempPathFactory, ops: list, segment: int) -> None:
    directory = tmp_path_factory.mktemp("log") / "s"
    log = StreamLog(directory, max_segment_bytes=segment)
    model: list[bytes] = []
    committed = 0
    for op, arg in ops:
        if op == "append":
            assert log.append(arg, 1)[0] == len(model)
            model.append(arg)
        elif op == "commit":
            commit(log)
            committed = len(model)
        elif op == "reopen":
            log.close()
            log = StreamLog(directory, max_segment_bytes=segment)
            # close() wrote the buffer: every entry is back (the file is
            # whole; only a crash can lose unsynced ones)
            committed = len(model)
            assert log.committed_next == committed
        else:
            start = min(max(arg, 0), committed)
            assert read_all(log, arg) == [(i, model[i]) for i in range(start, committed)]
    log.close()
