"""``LogReader.read_block`` against ``LogReader.read``: the same entries
in the same order, whatever the block sizes, entry sizes, segment
boundaries and commit point; and ``write_deliveries`` against
``write_delivery``: the same bytes."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mqbroker.protocol import batch, codec
from mqbroker.streams.log import StreamLog


def commit(log: StreamLog) -> None:
    mark = log.commit_mark()
    log.sync(mark)
    log.committed(mark)


def blocks(log: StreamLog, offset: int, per_block: int, max_bytes: int) -> list[tuple[int, bytes]]:
    reader = log.reader(offset)
    out: list[tuple[int, bytes]] = []
    while True:
        data, spans = reader.read_block(per_block, max_bytes)
        if not spans:
            break
        assert len(spans) <= per_block
        out += [(o, data[s : s + n]) for o, s, n in spans]
    reader.close()
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(st.integers(0, 3000), min_size=0, max_size=60),
    uncommitted=st.integers(0, 5),
    start=st.integers(0, 70),
    per_block=st.integers(1, 40),
    max_bytes=st.sampled_from([64, 1000, 8192, 1 << 20]),
    segment=st.sampled_from([300, 4000, 1 << 20]),
)
def test_read_block_matches_read(
    tmp_path_factory: object, sizes: list[int], uncommitted: int, start: int,
    per_block: int, max_bytes: int, segment: int,
) -> None:
    path = tmp_path_factory.mktemp("rb")  # type: ignore[attr-defined]
    log = StreamLog(Path(path) / "s", max_segment_bytes=segment)
    for i, size in enumerate(sizes):
        log.append(bytes([i % 251]) * size, 1000 + i)
    commit(log)
    for i in range(uncommitted):  # written, not yet readable
        log.append(b"u" * 10, 5000 + i)
    log.commit_mark()
    expected = [(i, bytes([i % 251]) * n) for i, n in enumerate(sizes)][start:]
    assert blocks(log, start, per_block, max_bytes) == expected
    log.close()


def test_read_block_follows_commits(tmp_path: Path) -> None:
    log = StreamLog(tmp_path / "s", max_segment_bytes=1000)
    reader = log.reader(0)
    assert reader.read_block(10) == (b"", [])
    for i in range(30):
        log.append(b"%02d" % i, i)
    assert reader.read_block(10)[1] == []  # appended, not committed
    commit(log)
    seen = []
    while spans := reader.read_block(7)[1]:
        seen += [o for o, _s, _n in spans]
    assert seen == list(range(30))
    log.append(b"30", 30)
    commit(log)
    data, spans = reader.read_block(7)
    assert [(o, data[s : s + n]) for o, s, n in spans] == [(30, b"30")]
    reader.close()
    log.close()


@given(
    bodies=st.lists(st.binary(min_size=0, max_size=40_000), min_size=1, max_size=8),
    props=st.binary(min_size=2, max_size=30),
    first_tag=st.integers(1, 2**40),
    frame_max=st.sampled_from([4096, 131072]),
)
def test_send_deliveries_is_byte_for_byte_write_delivery(
    bodies: list[bytes], props: bytes, first_tag: int, frame_max: int
) -> None:
    prefix = codec.deliver_prefix("ctag")
    suffix = codec.route_suffix("ex", "rk")
    expected = bytearray()
    for i, body in enumerate(bodies):
        codec.write_delivery(expected, 5, prefix, first_tag + i, False, suffix, props, body, frame_max)
    records = [(i, suffix, props, body) for i, body in enumerate(bodies)]
    got = bytearray()
    i = 0
    while i < len(records):
        i = batch.write_deliveries(got, 5, prefix, first_tag + i, records, i, frame_max)
        if i < len(records):
            codec.write_delivery(got, 5, prefix, first_tag + i, False, suffix, props, records[i][3], frame_max)
            i += 1
    assert bytes(got) == bytes(expected)
