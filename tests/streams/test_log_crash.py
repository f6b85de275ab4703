"""Crash safety of the stream log: whatever happens to the unsynced tail
(a cut at any byte, garbage, a flipped byte, a torn sealed segment), every
entry synced before the damage is readable after reopening and nothing
damaged ever is; and a real kill -9 loses no committed offset."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mqbroker.streams.log import StreamLog

HERE = Path(__file__).resolve().parent


def commit(log: StreamLog) -> None:
    mark = log.commit_mark()
    log.sync(mark)
    log.committed(mark)


def read_all(log: StreamLog) -> list[tuple[int, bytes]]:
    reader = log.reader(0)
    out: list[tuple[int, bytes]] = []
    while batch := reader.read(max_entries=100):
        out += [(e.offset, e.payload) for e in batch]
    reader.close()
    return out


def body(i: int) -> bytes:
    return b"%05d" % i * (1 + i % 7)


def check(directory: Path, synced: int, written: int, segment: int) -> None:
    """Reopen: a contiguous prefix of the written entries, at least the
    synced ones, every one intact; appends go on right after it."""
    log = StreamLog(directory, max_segment_bytes=segment)
    got = read_all(log)
    assert [o for o, _ in got] == list(range(len(got)))
    assert synced <= len(got) <= written
    assert all(p == body(o) for o, p in got)
    assert log.next_offset == log.committed_next == len(got)
    assert log.append(b"after", 10**6)[0] == len(got)
    commit(log)
    log.close()
    again = StreamLog(directory, max_segment_bytes=segment)
    assert read_all(again)[-1] == (len(got), b"after")
    again.close()


def write(directory: Path, synced: int, written: int, segment: int) -> None:
    log = StreamLog(directory, max_segment_bytes=segment)
    for i in range(written):
        if i == synced:
            commit(log)
        log.append(body(i), i)
    if synced == written:
        commit(log)
    log.close()  # leaves the unsynced entries in the files, to damage


def unsynced_span(directory: Path, synced: int) -> list[tuple[Path, int]]:
    """(file, position) pairs at or after the first unsynced entry."""
    files = sorted(directory.glob("*.seg"))
    out = []
    for path in files:
        first = int(path.stem)
        size = path.stat().st_size
        start = 0
        if first < synced:  # find where entry ``synced`` starts, if here
            pos, offset = 0, first
            with open(path, "rb") as fh:
                while offset < synced and pos < size:
                    fh.seek(pos)
                    length = int.from_bytes(fh.read(4), "big")
                    pos += 24 + length
                    offset += 1
            start = pos
        out += [(path, p) for p in range(start, size)]
    return out


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    written=st.integers(min_value=1, max_value=60),
    synced_frac=st.floats(min_value=0, max_value=1),
    segment=st.sampled_from([120, 400, 10**6]),
    damage=st.sampled_from(["cut", "flip", "garbage"]),
    where=st.floats(min_value=0, max_value=1, exclude_max=True),
    data=st.binary(min_size=1, max_size=40),
)
def test_damage_after_the_synced_prefix(
    tmp_path_factory: pytest.TempPathFactory, written: int, synced_frac: float,
    segment: int, damage: str, where: float, data: bytes,
) -> None:
    directory = tmp_path_factory.mktemp("crash") / "s"
    synced = int(written * synced_frac)
    write(directory, synced, written, segment)
    span = unsynced_span(directory, synced)
    if span:
        path, pos = span[int(where * len(span))]
        if damage == "cut":
            os.truncate(path, pos)
        elif damage == "flip":
            with open(path, "r+b") as fh:
                fh.seek(pos)
                byte = fh.read(1)
                fh.seek(pos)
                fh.write(bytes([byte[0] ^ (data[0] or 1)]))
        else:
            os.truncate(path, pos)
            with open(path, "ab") as fh:
                fh.write(data)
    check(directory, synced, written, segment)


def test_torn_sealed_segment_drops_what_follows(tmp_path: Path) -> None:
    """Page-cache writeback order is free: a crash can keep a later
    segment's unsynced data and lose an earlier one's tail. The log goes
    on from the torn point, with no gap for readers to get stuck at."""
    directory = tmp_path / "s"
    write(directory, synced=10, written=40, segment=200)
    files = sorted(directory.glob("*.seg"))
    torn = next(f for f in files if int(f.stem) >= 10)
    os.truncate(torn, torn.stat().st_size - 3)
    check(directory, synced=10, written=40, segment=200)
    assert not any(int(f.stem) > int(torn.stem) for f in directory.glob("*.seg"))


def test_a_lost_index_file_is_rebuilt(tmp_path: Path) -> None:
    directory = tmp_path / "s"
    write(directory, synced=300, written=300, segment=3000)
    for idx in directory.glob("*.idx"):
        if int(idx.stem) % 2:
            idx.unlink()
        else:
            idx.write_bytes(os.urandom(100))
    check(directory, synced=300, written=300, segment=3000)


def _kill9_round(tmp_path: Path, run_for: float, segment: int) -> None:
    directory = tmp_path / "s"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(
        [sys.executable, str(HERE / "log_child.py"), str(directory), str(segment)],
        stdout=subprocess.PIPE, env=env,
    )
    assert child.stdout is not None
    committed = 0
    deadline = time.monotonic() + run_for
    while time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line:
            break
        committed = int(line)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    for line in child.stdout.read().split():  # printed before it died
        committed = int(line)
    child.stdout.close()
    assert committed > 0
    log = StreamLog(directory, max_segment_bytes=segment)
    got = read_all(log)
    assert [o for o, _ in got] == list(range(len(got)))
    assert len(got) >= committed
    assert all(p == b"%09d" % o * (1 + o % 13) for o, p in got)
    log.close()


@pytest.mark.crash
def test_kill9_keeps_every_committed_offset(tmp_path: Path) -> None:
    _kill9_round(tmp_path, run_for=1.0, segment=20_000)


@pytest.mark.crash
@pytest.mark.stress
@pytest.mark.parametrize("round_", range(10))
def test_kill9_many_times(tmp_path: Path, round_: int) -> None:
    _kill9_round(tmp_path, run_for=0.5 + round_ * 0.37, segment=5_000 + round_ * 7_000)


def _big_write(directory: Path) -> int:
    """500 synced then 1500 unsynced 1 KiB entries in one segment (many
    index points); returns the position of entry 1200."""
    log = StreamLog(directory, max_segment_bytes=10**8)
    for i in range(2000):
        if i == 500:
            commit(log)
        log.append(b"%05d" % i * 200, i)
    log.close()
    return 1200 * (24 + 1000)


@pytest.mark.parametrize("damage", ["hole", "zero-extended"])
def test_damage_before_a_later_index_point(tmp_path: Path, damage: str) -> None:
    """Writeback out of order: a lost page before index points that are
    still intact (hole), or a file cut short but kept at its size with
    zeros while the index still points into them (zero-extended)."""
    directory = tmp_path / "s"
    pos = _big_write(directory)
    seg = next(directory.glob("*.seg"))
    size = seg.stat().st_size
    if damage == "hole":
        with open(seg, "r+b") as fh:
            fh.seek(pos + 100)
            fh.write(bytes(4096))
    else:
        os.truncate(seg, pos + 100)
        os.truncate(seg, size)
    log = StreamLog(directory, max_segment_bytes=10**8)
    got = read_all(log)
    assert [o for o, _ in got] == list(range(1200))
    assert all(p == b"%05d" % o * 200 for o, p in got)
    assert seg.stat().st_size == pos
    log.close()
