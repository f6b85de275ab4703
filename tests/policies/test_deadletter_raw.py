"""Property tests for the raw header editing behind dead-lettering and
``x-delivery-count`` (queues/deadletter.py): whatever properties a client
sent, the edited properties decode to the same values with only the
intended headers changed, and the ``expiration`` property removed when
dead-lettering."""

from __future__ import annotations

import datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands

from mqbroker.model.headers import edit_headers, with_header
from mqbroker.model.message import Message
from mqbroker.protocol import codec
from mqbroker.protocol.table import Typed
from mqbroker.queues.deadletter import dead_letter_properties, is_cycle


def _fits(s: str) -> bool:
    return len(s.encode("utf-8")) <= 255


shortstrs = st.text(max_size=40).filter(_fits)
keys = st.text(max_size=12).filter(_fits)
scalars = st.text(max_size=20) | st.integers(-(2**63), 2**63 - 1) | st.booleans()
values = st.recursive(
    scalars,
    lambda inner: st.dictionaries(keys, inner, max_size=3) | st.lists(inner, max_size=3),
    max_leaves=8,
)
headers = st.dictionaries(keys, values, max_size=5)


def _opt(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


properties = st.builds(
    commands.Basic.Properties,
    content_type=_opt(shortstrs),
    content_encoding=_opt(shortstrs),
    headers=_opt(headers),
    delivery_mode=_opt(st.sampled_from([1, 2])),
    priority=_opt(st.integers(0, 255)),
    correlation_id=_opt(shortstrs),
    reply_to=_opt(shortstrs),
    expiration=_opt(st.integers(0, 10**9).map(str)),
    message_id=_opt(shortstrs),
    timestamp=_opt(
        st.integers(0, 4102444800).map(
            lambda s: datetime.datetime.fromtimestamp(s, tz=datetime.UTC)
        )
    ),
    message_type=_opt(shortstrs),
    user_id=_opt(shortstrs),
    app_id=_opt(shortstrs),
)

FIELDS = [n for n in commands.Basic.Properties.__slots__ if n not in ("headers", "cluster_id")]


def _same_except(a: Any, b: Any, *skip: str) -> None:
    for name in FIELDS:
        if name not in skip:
            assert getattr(a, name) == getattr(b, name), name


@settings(max_examples=300, deadline=None)
@given(props=properties)
def test_identity_edit_keeps_every_property(props: commands.Basic.Properties) -> None:
    raw = props.marshal()
    before = codec.decode_properties(raw)
    after = codec.decode_properties(edit_headers(raw, lambda items: items))
    _same_except(before, after)
    assert (after.headers or {}) == (before.headers or {})


@settings(max_examples=300, deadline=None)
@given(props=properties, count=st.integers(0, 100))
def test_with_header_sets_one_header(props: commands.Basic.Properties, count: int) -> None:
    message = Message(1, "ex", "rk", props.marshal(), b"body")
    before = message.props
    out = with_header(message, "x-delivery-count", Typed("l", count))
    after = codec.decode_properties(out.properties_raw)
    _same_except(before, after)
    expected = dict(before.headers or {})
    expected["x-delivery-count"] = count
    assert after.headers == expected
    assert list(after.headers) == sorted(after.headers, key=lambda k: k.encode())
    assert out.body == b"body" and out.msg_id == 1


@settings(max_examples=300, deadline=None)
@given(
    props=properties,
    reason=st.sampled_from(["rejected", "expired", "maxlen", "delivery_limit"]),
    override=st.none() | shortstrs,
    times=st.integers(1, 3),
)
def test_dead_letter_properties(
    props: commands.Basic.Properties, reason: str, override: str | None, times: int
) -> None:
    if props.headers:
        props.headers.pop("x-death", None)
        props.headers.pop("CC", None)
    message = Message(1, "ex", "rk", props.marshal(), b"body")
    original = message.props
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    history: list[Any] = []
    for _ in range(times):
        raw, history = dead_letter_properties(message, "q", reason, now, override)
        message = Message(2, "", "rk", raw, b"body")
    after = message.props
    _same_except(original, after, "expiration")
    assert after.expiration is None
    h = after.headers
    for key, value in (original.headers or {}).items():
        if key not in ("x-delivery-count",) and not key.startswith(("x-first-death", "x-last-death")):
            assert h[key] == value, key
    (death,) = h["x-death"]
    assert death["queue"] == "q" and death["reason"] == reason
    assert death["count"] == times
    if original.expiration is not None:
        assert death["original-expiration"] == original.expiration
    else:
        assert "original-expiration" not in death
    assert h["x-first-death-reason"] == reason
    assert h["x-last-death-queue"] == "q"
    assert history == [("q", reason)]
    assert is_cycle(history, "q") is (reason != "rejected")


def test_multi_word_property_flags_are_rewritten() -> None:
    """A client may (in theory) send a continuation flag word."""
    props = commands.Basic.Properties(headers={"a": 1}, message_id="m")
    raw = props.marshal()
    flags = int.from_bytes(raw[:2], "big") | 1
    raw = flags.to_bytes(2, "big") + b"\x00\x00" + raw[2:]
    message = Message(1, "ex", "rk", raw, b"")
    out = with_header(message, "x-delivery-count", Typed("l", 1))
    decoded = codec.decode_properties(out.properties_raw)
    assert decoded.headers == {"a": 1, "x-delivery-count": 1}
    assert decoded.message_id == "m"
