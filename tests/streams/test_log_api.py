"""The stream log's API edges: clamping, stats, rolls, retention by age,
timestamps after a reopen, overlapping commit marks, destroy."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from mqbroker.streams.log import StreamLog


def commit(log: StreamLog) -> None:
    mark = log.commit_mark()
    log.sync(mark)
    log.committed(mark)


def offsets(log: StreamLog, start: int) -> list[int]:
    reader = log.reader(start)
    out: list[int] = []
    while batch := reader.read(max_entries=7):
        out += [e.offset for e in batch]
    reader.close()
    return out


def test_empty_log_starts_at_zero(tmp_path: Path) -> None:
    log = StreamLog(tmp_path / "s")
    stats = log.stats()
    assert (log.first_offset, log.next_offset, log.committed_next) == (0, 0, 0)
    assert stats.last_offset == -1 and stats.messages == 0 and stats.segments == 1
    assert log.reader(0).read() == []
    assert log.offset_for_timestamp(0) == 0


def test_reader_clamps_below_first_and_waits_above_committed(tmp_path: Path) -> None:
    log = StreamLog(tmp_path / "s", max_segment_bytes=200)
    for i in range(40):
        log.append(b"a" * 10, i)
    commit(log)
    log.apply_retention(max_bytes=300, max_age_ms=None, now_ms=0)
    first = log.first_offset
    assert first > 0
    assert offsets(log, -10) == list(range(first, 40))
    ahead = log.reader(45)  # beyond the end: waits, then reads when there
    assert ahead.read() == []
    for i in range(40, 50):
        log.append(b"b", 100 + i)
    assert ahead.read() == []  # appended, not yet committed
    commit(log)
    assert [e.offset for e in ahead.read()] == list(range(45, 50))


def test_read_limits_by_entries_and_bytes(tmp_path: Path) -> None:
    log = StreamLog(tmp_path / "s")
    for i in range(10):
        log.append(b"z" * 100, i)
    commit(log)
    reader = log.reader(0)
    assert len(reader.read(max_entries=3)) == 3
    assert len(reader.read(max_bytes=1)) == 1  # always progresses by one
    assert [e.offset for e in reader.read()] == list(range(4, 10))


def test_roll_hook_and_stats(tmp_path: Path) -> None:
    log = StreamLog(tmp_path / "s")
    assert log.roll() is False  # nothing to seal
    log.append(b"one", 10)
    assert log.roll() is True
    assert log.roll() is False
    offset, rolled = log.append(b"two", 20)
    assert (offset, rolled) == (1, False)
    commit(log)
    stats = log.stats()
    assert stats.segments == 2 and stats.messages == 2
    assert (stats.first_offset, stats.last_offset) == (0, 1)
    assert (stats.first_timestamp_ms, stats.last_timestamp_ms) == (10, 20)
    assert stats.bytes == sum(p.stat().st_size for p in (tmp_path / "s").glob("*.seg"))
    assert offsets(log, 0) == [0, 1]


def test_append_reports_the_roll(tmp_path: Path) -> None:
    log = StreamLog(tmp_path / "s", max_segment_bytes=100)
    rolls = [log.append(b"r" * 40, i)[1] for i in range(6)]  # 64 B each
    assert rolls == [False] + [True] * 5
    big, rolled = log.append(b"x" * 1000, 9)  # bigger than a segment: alone
    assert rolled and log.segments[-1].first_offset == big


def test_retention_by_age_keeps_young_and_active(tmp_path: Path) -> None:
    log = StreamLog(tmp_path / "s", max_segment_bytes=150)
    for i in range(30):
        log.append(b"q" * 20, 1000 * i)
    commit(log)
    segments = log.stats().segments
    assert segments > 3
    # everything older than 10 s at t=30 s: segments ending before 20 s go
    dropped = log.apply_retention(max_bytes=None, max_age_ms=10_000, now_ms=30_000)
    assert 0 < dropped < segments
    assert all(s.last_ts >= 20_000 for s in log.segments[:1])
    assert log.segments[0].first_ts <= 20_000
    # unsynced segments stay, whatever their age
    log.append(b"new" * 100, 40_000)
    log.append(b"newer" * 100, 41_000)
    unsynced = log.segments[-3]  # sealed by the roll, kept until synced again
    assert unsynced.fd is not None
    log.apply_retention(max_bytes=0, max_age_ms=0, now_ms=10**12)
    assert log.segments[0] is unsynced
    commit(log)
    log.apply_retention(max_bytes=0, max_age_ms=0, now_ms=10**12)
    assert log.stats().segments == 1  # the active one is never dropped
    assert log.next_offset == 32


def test_offsets_continue_after_everything_was_retained(tmp_path: Path) -> None:
    log = StreamLog(tmp_path / "s", max_segment_bytes=100)
    for i in range(20):
        log.append(b"w" * 30, i)
    log.roll()
    commit(log)
    log.apply_retention(max_bytes=0, max_age_ms=None, now_ms=0)
    assert log.stats().segments == 1 and log.stats().messages == 0
    log.close()
    again = StreamLog(tmp_path / "s", max_segment_bytes=100)
    assert again.first_offset == again.next_offset == 20
    assert again.append(b"next", 99)[0] == 20


def test_offset_for_timestamp_across_segments_and_reopen(tmp_path: Path) -> None:
    log = StreamLog(tmp_path / "s", max_segment_bytes=5000)
    for i in range(2000):
        log.append(b"p" * 40, 1_000_000 + i * 3)
    commit(log)
    assert log.stats().segments > 10
    for probe in (0, 1_000_000, 1_000_001, 1_003_000, 1_005_998, 1_005_999):
        want = next((i for i in range(2000) if 1_000_000 + i * 3 >= probe), 2000)
        assert log.offset_for_timestamp(probe) == want
    log.close()
    again = StreamLog(tmp_path / "s", max_segment_bytes=5000)
    assert again.offset_for_timestamp(1_003_000) == 1000
    stats = again.stats()
    assert (stats.first_timestamp_ms, stats.last_timestamp_ms) == (1_000_000, 1_005_997)


def test_timestamps_never_go_back(tmp_path: Path) -> None:
    log = StreamLog(tmp_path / "s")
    log.append(b"a", 500)
    log.append(b"b", 100)  # a clock step back: stamped 500
    commit(log)
    assert [e.timestamp_ms for e in log.reader(0).read()] == [500, 500]


def test_overlapping_marks_across_a_roll(tmp_path: Path) -> None:
    """A second mark taken while the first one's sync runs: the sealed
    segment's fd stays open until both are committed."""
    log = StreamLog(tmp_path / "s", max_segment_bytes=100)
    log.append(b"a" * 60, 1)
    first = log.commit_mark()
    log.append(b"b" * 60, 2)  # rolls: the first segment is sealed
    second = log.commit_mark()
    log.sync(first)
    log.committed(first)  # must not close the fd the second sync needs
    worker = threading.Thread(target=log.sync, args=(second,))
    worker.start()
    worker.join()
    log.committed(second)
    assert offsets(log, 0) == [0, 1]
    assert all(s.fd is None for s in log.segments[:-1])  # closed once done


def test_appends_continue_while_a_sync_runs(tmp_path: Path) -> None:
    log = StreamLog(tmp_path / "s", max_segment_bytes=4096)
    errors: list[BaseException] = []
    for _ in range(20):
        mark = log.commit_mark()

        def run(mark=mark) -> None:  # type: ignore[no-untyped-def]
            try:
                log.sync(mark)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        worker = threading.Thread(target=run)
        worker.start()
        for i in range(50):
            log.append(os.urandom(50), i)
        worker.join()
        log.committed(mark)
    commit(log)
    assert not errors
    assert offsets(log, 0) == list(range(1000))


def test_destroy_removes_the_directory(tmp_path: Path) -> None:
    log = StreamLog(tmp_path / "s")
    log.append(b"x", 1)
    mark = log.commit_mark()
    log.destroy()
    log.sync(mark)  # a sync after destroy is harmless
    assert not (tmp_path / "s").exists()


@pytest.mark.stress
def test_replay_of_a_big_log_keeps_memory_flat(tmp_path: Path) -> None:
    """1M entries over many segments: a full replay must not grow the
    process by more than a few MB (readers never load the log)."""
    import psutil  # type: ignore[import-untyped]

    log = StreamLog(tmp_path / "s", max_segment_bytes=8_000_000)
    for i in range(1_000_000):
        log.append(b"%08d" % i * 8, i)
        if i % 100_000 == 99_999:
            commit(log)
    commit(log)
    proc = psutil.Process()
    before = proc.memory_info().rss
    reader = log.reader(0)
    count = peak = 0
    while batch := reader.read(max_entries=500):
        assert batch[0].offset == count
        count += len(batch)
        if count % 100_000 < 500:
            peak = max(peak, proc.memory_info().rss)
    assert count == 1_000_000
    assert peak - before < 20_000_000
