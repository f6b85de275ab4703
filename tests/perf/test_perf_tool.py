"""mqbroker-perf: functional runs (no timing assertions: benchmarks report,
tests do not judge speed) and the hand-made frames against pamqp."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pamqp import body as pbody
from pamqp import commands
from pamqp import frame as pframe
from pamqp import header as pheader

from mqbroker.perf import frames as F
from mqbroker.perf.stats import Histogram, account

FIELDS = (
    "sent_rate", "received_rate", "confirmed_rate",
    "latency_p50_ms", "latency_p95_ms", "latency_p99_ms",
    "confirm_latency_p50_ms", "confirm_latency_p95_ms",
    "confirm_latency_p99_ms", "broker_rss_max_mb", "broker_cpu_us_per_msg",
    "lost", "duplicated", "sent", "received", "confirmed", "errors",
)


def run_perf(*args: str, timeout: float = 120) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "mqbroker.perf.cli", "--json", *args],
        capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"no JSON line; stdout={proc.stdout!r} " \
                  f"stderr={proc.stderr[-3000:]!r}"
    return json.loads(lines[-1])


# --- functional runs against an in-process broker -------------------------


@pytest.mark.timeout(180)
def test_confirms_and_manual_acks_account_for_every_message(broker):
    result = run_perf("--url", broker.url, "--time", "2", "--producers", "1",
                      "--consumers", "1", "--confirm", "50",
                      "--prefetch", "50", "--size", "64")
    for key in FIELDS:
        assert key in result, key
    assert result["errors"] == []
    assert result["sent"] > 0
    assert result["lost"] == 0
    assert result["duplicated"] == 0
    assert result["received_total"] == result["sent"]
    assert result["confirmed"] > 0
    assert result["confirm_latency_p50_ms"] is not None
    assert result["latency_p50_ms"] is not None


@pytest.mark.timeout(180)
def test_fanout_autoack_two_producers(broker):
    result = run_perf("--url", broker.url, "--time", "2", "--producers", "2",
                      "--consumers", "2", "--fanout-queues", "3",
                      "--autoack", "--rate", "2000")
    assert result["errors"] == []
    assert result["lost"] == 0
    assert result["duplicated"] == 0
    # every message reaches each of the 3 queues
    assert result["received_total"] == 3 * result["sent"]


@pytest.mark.timeout(180)
def test_topic_and_backlog(broker):
    result = run_perf("--url", broker.url, "--exchange-type", "topic",
                      "--topic-bindings", "10", "--queues", "2",
                      "--consumers", "1", "--backlog", "2000",
                      "--prefetch", "20", "--multi-ack-every", "5")
    assert result["errors"] == []
    assert result["backlog"] == 2000
    assert result["received_total"] == 2000
    assert result["lost"] == 0 and result["duplicated"] == 0
    for key in ("fill_rate", "drain_rate", "broker_rss_growth_mb"):
        assert key in result


@pytest.mark.timeout(120)
def test_null_sink_runs():
    result = run_perf("--null-sink", "--time", "1", "--consumers", "0",
                      "--confirm", "10")
    assert result["errors"] == []
    assert result["sent"] > 0 and result["confirmed"] > 0


# --- frames byte-for-byte against pamqp ------------------------------------


@pytest.mark.parametrize("exchange,key", [("", "q"), ("perf.direct", "perf-q-000"),
                                          ("x" * 127, "k" * 255)])
@pytest.mark.parametrize("persistent", [False, True])
@pytest.mark.parametrize("size,frame_max", [(16, 131072), (1024, 4096),
                                            (70000, 131072), (9000, 4096)])
def test_publish_frames_match_pamqp(exchange, key, persistent, size,
                                    frame_max):
    body = bytes(range(256)) * (size // 256) + bytes(size % 256)
    ours, body_off = F.message_frames(3, exchange, key, size,
                                      persistent=persistent,
                                      frame_max=frame_max, body=body)
    props = commands.Basic.Properties(delivery_mode=2) if persistent \
        else commands.Basic.Properties()
    chunk = frame_max - 8
    theirs = (
        pframe.marshal(commands.Basic.Publish(exchange=exchange,
                                              routing_key=key), 3)
        + pframe.marshal(pheader.ContentHeader(0, len(body), props), 3)
        + b"".join(pframe.marshal(pbody.ContentBody(body[i:i + chunk]), 3)
                   for i in range(0, len(body), chunk)))
    assert ours == theirs
    assert ours[body_off:body_off + 16] == body[:16]


def test_publish_batch_stamps_and_decodes_with_pamqp():
    batch = F.PublishBatch(1, "perf.topic", ["perf.t000.x", "perf.t001.x"],
                           32, 5, producer_id=7)
    data = bytes(batch.fill(3, 41, 123456789))
    pos = 0
    seen = []
    while pos < len(data):
        consumed, ch, value = pframe.unmarshal(data[pos:])
        pos += consumed
        assert ch == 1
        if isinstance(value, commands.Basic.Publish):
            seen.append(value.routing_key)
        elif isinstance(value, pbody.ContentBody):
            ident, ts = F.BODY_STAMP.unpack_from(value.value)
            assert ident >> F.PRODUCER_SHIFT == 7
            assert ts == 123456789
            seen.append(ident & F.SEQ_MASK)
    assert seen == ["perf.t000.x", 41, "perf.t001.x", 42, "perf.t000.x", 43]


@pytest.mark.parametrize("tag,multiple", [(1, False), (2**63 - 1, True),
                                          (123456, True)])
def test_ack_frame_matches_pamqp(tag, multiple):
    assert F.ack_frame(5, tag, multiple) == pframe.marshal(
        commands.Basic.Ack(delivery_tag=tag, multiple=multiple), 5)


@pytest.mark.parametrize("redelivered", [False, True])
def test_deliver_frames_match_pamqp(redelivered):
    ours = F.deliver_method(2, "perf-c0-q1", 99, "ex", "rk", redelivered)
    assert ours == pframe.marshal(commands.Basic.Deliver(
        consumer_tag="perf-c0-q1", delivery_tag=99, redelivered=redelivered,
        exchange="ex", routing_key="rk"), 2)
    batch = F.DeliverBatch(2, "ctag", 20, 4)
    data = bytes(batch.fill(2, 10, 5, 77))
    consumed, _ch, first = pframe.unmarshal(data)
    assert isinstance(first, commands.Basic.Deliver)
    assert first.delivery_tag == 10 and first.consumer_tag == "ctag"
    second = data[batch.message_len:]
    consumed, _ch, value = pframe.unmarshal(second)
    assert value.delivery_tag == 11


def test_size_below_stamp_is_refused():
    with pytest.raises(ValueError):
        F.PublishBatch(1, "", ["q"], 8, 1)


# --- accounting ------------------------------------------------------------


def _map(seqs, n):
    b = bytearray(n)
    for s in seqs:
        b[s] = 1
    return bytes(b)


def test_account_direct_fanout_and_duplicates():
    # direct: producer 0 sent 10, split over two queues, seq 9 missing
    maps = {(0, 0): [_map(range(5), 16)], (1, 0): [_map(range(5, 9), 16)]}
    assert account({0: 10}, maps, 2, fanout=False) == (1, 0, 0)
    # the same seq in both queues is a duplicate
    maps = {(0, 0): [_map(range(10), 16)], (1, 0): [_map([3], 16)]}
    assert account({0: 10}, maps, 2, fanout=False) == (0, 1, 0)
    # fanout: each queue needs all ten; two consumers share queue 1
    maps = {(0, 0): [_map(range(10), 16)],
            (1, 0): [_map(range(6), 16), _map(range(5, 10), 16)]}
    assert account({0: 10}, maps, 2, fanout=True) == (0, 1, 0)
    maps = {(0, 0): [_map(range(10), 16)], (1, 0): [_map(range(11), 16)]}
    assert account({0: 10}, maps, 2, fanout=True) == (0, 0, 1)


def test_histogram_percentiles():
    h = Histogram()
    for us in range(1, 101):
        h.add(us)
    h.add(50_000)
    assert h.percentile(50) == pytest.approx(0.051)
    assert h.max_ms() == pytest.approx(50.0, rel=0.01)
    merged = Histogram.from_state(h.to_state())
    assert merged.total() == 101
