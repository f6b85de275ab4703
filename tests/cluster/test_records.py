"""Replication records and the ring, without any I/O."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from mqbroker.cluster.records import (
    LogRange,
    Position,
    Record,
    apply_ranges,
    decode,
    encode,
)
from mqbroker.cluster.ring import Ring
from mqbroker.persistence import StoredEntry, StoredMessage, WriteBatch

names = st.text(max_size=12)
messages = st.one_of(st.none(), st.builds(StoredMessage, names, names, st.binary(max_size=20),
                                          st.binary(max_size=50)))
entries = st.one_of(st.none(), st.builds(
    StoredEntry, st.just(0), st.integers(0, 2**40), st.integers(0, 99), st.booleans(),
    st.integers(0, 2**31), st.integers(0, 2**50)))


@given(
    term=st.integers(0, 2**40),
    lsn=st.integers(0, 2**40),
    msgs=st.dictionaries(st.integers(1, 2**50), messages, max_size=5),
    ents=st.dictionaries(st.tuples(names, st.integers(0, 2**40)), entries, max_size=5),
    defs=st.dictionaries(st.tuples(names, names), st.one_of(
        st.none(), st.dictionaries(names, st.integers(-2**63, 2**63 - 1) | names, max_size=3)), max_size=4),
    dropped=st.sets(names, max_size=3),
    ranges=st.lists(st.tuples(names, st.integers(0, 2**40), st.binary(max_size=30)), max_size=3),
    floors=st.lists(st.tuples(names, st.integers(0, 2**60)), max_size=3),
)
def test_a_record_round_trips(term: int, lsn: int, msgs: dict, ents: dict, defs: dict,
                              dropped: set[str], ranges: list, floors: list) -> None:
    batch = WriteBatch(epoch=3, messages=msgs, definitions=defs, dropped_queues=dropped)
    for (queue, seq), entry in ents.items():
        if entry is not None:
            entry.seq = seq
        batch.entries[(queue, seq)] = entry
    record = Record(term, lsn, batch, [LogRange(p, s, s + len(d), d) for p, s, d in ranges],
                    floors)
    back = decode(encode(record))
    assert (back.term, back.lsn) == (term, lsn)
    assert back.batch.messages == msgs
    assert back.batch.entries == batch.entries
    assert back.batch.definitions == defs
    assert back.batch.dropped_queues == dropped
    assert back.ranges == record.ranges
    assert back.floors == floors


def test_the_ring_finds_positions_of_its_own_history_only() -> None:
    ring = Ring(max_bytes=10)
    for lsn in range(1, 6):
        ring.add(Position(2, lsn), b"ab")
    assert ring.after(Position(2, 3)) == [b"ab", b"ab"]
    assert ring.after(Position(2, 5)) == []
    assert ring.after(Position(1, 3)) is None  # the same number, another term: a fork
    ring.add(Position(3, 6), b"abc")  # 13 bytes > 10: the oldest go
    assert ring.after(Position(2, 1)) is None
    assert ring.after(Position(2, 4)) == [b"ab", b"abc"]
    ring.add(Position(3, 9), b"x")  # not the next one (a resync): start over
    assert ring.last == Position(3, 9)
    assert ring.after(Position(3, 6)) is None


def test_apply_ranges_writes_in_place_cuts_the_tail_and_refuses_a_gap(tmp_path: Path) -> None:
    seg = "streams/%2F/s/" + "0".zfill(20) + ".seg"

    def rec(start: int, data: bytes) -> Record:
        return Record(1, 1, WriteBatch(epoch=0), [LogRange(seg, start, start + len(data), data)])

    apply_ranges(tmp_path, rec(0, b"hello"))
    apply_ranges(tmp_path, rec(5, b" world, and more"))
    apply_ranges(tmp_path, rec(5, b" there"))  # the same range again, shorter
    assert (tmp_path / seg).read_bytes() == b"hello there"
    try:
        apply_ranges(tmp_path, rec(100, b"x"))
    except Exception as exc:
        assert "fewer than 100" in str(exc)
    else:
        raise AssertionError("a gap was accepted")
