"""The dashboard in headless Chromium (Debian's ``chromium``, driven by
Playwright): it loads, lists the queues with DLQs flagged, shows rates that
move while a publisher runs, peeks at a DLQ and moves it back; its Streams
tab shows streams, super streams with their partitions and consumer groups
with the API's numbers, and hostile names only as text.

Set ``MQBROKER_UPDATE_SCREENSHOT=1`` to refresh ``docs/dashboard.png``.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from mgmt_support import Mgmt, channel, death_headers

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOCS = Path(__file__).resolve().parents[2] / "docs"

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason="headless browser missing: install the Debian package 'chromium' (apt-get install chromium)",
)


@pytest.fixture
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Python package 'playwright' missing (pip install -e '.[dev]')"
    )
    with sync_api.sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


def _open(browser: Any, mgmt: Mgmt, hash: str = "") -> Any:
    """A logged-in dashboard page polling every 500 ms."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(15_000)
    page.goto(mgmt.base_url + "/?interval=500" + hash)
    page.fill("#login-user", "guest")
    page.fill("#login-password", "guest")
    page.click("#login-submit")
    return page


def _publisher(m: Mgmt, stop: threading.Event) -> None:
    conn = m.pika()
    try:
        ch = conn.channel()
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            for _ in range(5):
                ch.basic_publish("", "orders", b'{"order": 1}')
            for _ in range(3):  # a slow consumer: deliver and ack rates too
                method, _props, _body = ch.basic_get("orders")
                if method is not None:
                    ch.basic_ack(method.delivery_tag)
            conn.process_data_events(time_limit=0.05)
    finally:
        conn.close()


def test_dashboard(mgmt: Mgmt, browser: Any, tmp_path: Path) -> None:
    http = mgmt.http
    http.put("/api/queues/%2F/dlq", json={"durable": True})
    http.put("/api/queues/%2F/work", json={"durable": True})
    http.put("/api/queues/%2F/orders", json={"durable": True})
    http.put(
        "/api/queues/%2F/jobs",
        json={"durable": True, "arguments": {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dlq"}},
    )
    with channel(mgmt) as ch:
        for i in range(30):
            ch.basic_publish(
                "", "dlq", f"failed-{i}".encode(),
                pika.BasicProperties(delivery_mode=2, message_id=str(i), headers=death_headers("work")),
            )
        ch.queue_declare("dlq", passive=True, durable=True)
    stop = threading.Event()
    publisher = threading.Thread(target=_publisher, args=(mgmt, stop), daemon=True)
    publisher.start()
    try:
        page = _open(browser, mgmt)
        # lists the queues, DLQs flagged
        page.wait_for_selector('#queues-table tr[data-queue="orders"]')
        names = page.eval_on_selector_all(
            "#queues-table tbody tr", "rows => rows.map(r => r.dataset.queue)"
        )
        assert set(names) == {"dlq", "work", "orders", "jobs"}
        assert page.locator('tr[data-queue="dlq"] .badge').inner_text() == "DLQ"
        assert page.locator('tr[data-queue="work"] .badge').count() == 0
        # rates move while the publisher runs
        page.wait_for_function(
            "Number(document.getElementById('rate-publish').textContent) > 0"
        )
        page.wait_for_function(
            """() => {
                const row = document.querySelector('tr[data-queue="orders"]');
                return row && Number(row.cells[5].textContent) > 0;
            }"""
        )
        first = float(page.inner_text("#rate-publish"))
        assert first > 0
        # sortable: by name, ascending
        page.click('#queues-table th[data-key="name"]')
        ordered = page.eval_on_selector_all(
            "#queues-table tbody tr", "rows => rows.map(r => r.dataset.queue)"
        )
        assert ordered == sorted(ordered)
        time.sleep(1.5)  # a few chart points
        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        if os.environ.get("MQBROKER_UPDATE_SCREENSHOT"):
            shutil.copy(shot, DOCS / "dashboard.png")
        # per-queue page: peek shows x-death, move empties the DLQ
        page.click('#queues-table tr[data-queue="dlq"]')
        page.wait_for_selector("#queue-view:not(.hidden)")
        page.click("#peek-button")
        page.wait_for_selector('#peek-table tr[data-seq]')
        assert "rejected in 'work'" in page.inner_text("#peek-table")
        assert mgmt.queue("dlq")["messages_ready"] == 30
        page.select_option("#move-destination", "origin")
        page.fill("#move-count", "30")
        page.click("#move-button")
        page.wait_for_function(
            "document.getElementById('move-result').textContent.startsWith('moved 30')"
        )
        assert mgmt.queue("dlq")["messages_ready"] == 0
        assert mgmt.queue("work")["messages_ready"] == 30
    finally:
        stop.set()
        publisher.join(10)


def _size(n: int) -> str:
    """The dashboard's byte sizes (streams.js ``size``)."""
    value, unit = float(n), 0
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    while value >= 1024 and unit < len(units) - 1:
        value /= 1024
        unit += 1
    return f"{n} B" if unit == 0 else f"{value:.1f} {units[unit]}"


def _cells(page: Any, selector: str) -> list[str]:
    return page.eval_on_selector(selector, "row => [...row.cells].map(c => c.textContent)")  # type: ignore[no-any-return]


def _join_group(ch: Any, stream: str, group: str, want: int) -> tuple[str, list[Any]]:
    """Consume ``stream`` in ``group`` until ``want`` deliveries arrived
    (none acked yet): the consumer tag and the deliveries."""
    got: list[Any] = []
    ch.basic_qos(prefetch_count=10)
    tag = ch.basic_consume(
        stream, lambda c, m, p, b: got.append(m),
        arguments={"x-stream-group": group, "x-stream-offset": "first"},
    )
    deadline = time.monotonic() + 10
    while len(got) < want and time.monotonic() < deadline:
        ch.connection.process_data_events(time_limit=0.05)
    assert len(got) == want
    return tag, got


def _group(mgmt: Mgmt, group: str, stream: str) -> dict[str, Any]:
    rows = mgmt.http.get("/api/stream-groups").json()
    (row,) = [r for r in rows if r["group"] == group and r["stream"] == stream]
    return row  # type: ignore[no-any-return]


def test_dashboard_streams_and_groups(mgmt: Mgmt, browser: Any) -> None:
    with channel(mgmt) as ch:
        ch.queue_declare("events", durable=True, arguments={"x-queue-type": "stream", "x-max-age": "7D"})
        ch.exchange_declare("trades", "x-super-stream", durable=True, arguments={"x-partitions": 2})
        ch.confirm_delivery()
        for i in range(5):
            ch.basic_publish("", "events", b"event-%d" % i)
        for i in range(12):
            ch.basic_publish("trades", f"sym{i % 4}", b"%d" % i)
    conn = mgmt.pika()  # a live group member: the owner column
    try:
        ch = conn.channel()
        tag, deliveries = _join_group(ch, "events", "billing", 5)
        for method in deliveries[:3]:
            ch.basic_ack(method.delivery_tag)
        conn.process_data_events(time_limit=0.1)
        mgmt.wait_for(lambda: _group(mgmt, "billing", "events")["committed_offset"] == 3, what="commit 3")
        assert _group(mgmt, "billing", "events") == {
            "vhost": "/", "group": "billing", "stream": "events",
            "committed_offset": 3, "last_offset": 4, "lag": 2, "owner": tag,
        }
        api = {r["name"]: r for r in mgmt.http.get("/api/streams").json()}
        assert api["trades-0"]["messages"] + api["trades-1"]["messages"] == 12

        page = _open(browser, mgmt)
        page.wait_for_selector('#queues-table tr[data-queue="events"]')
        page.click('nav.tabs a[data-page="streams"]')
        page.wait_for_selector('#streams-table tr[data-stream="events"]')
        assert page.locator("#overview-view").is_hidden()
        # the super stream's summary row, then its partitions, then plain streams
        order = page.eval_on_selector_all(
            "#streams-table tbody tr", "rows => rows.map(r => r.dataset.stream || 'super:' + r.dataset.super)"
        )
        assert order == ["super:trades", "trades-0", "trades-1", "events"]
        events = api["events"]
        assert _cells(page, '#streams-table tr[data-stream="events"]') == [
            "events", "/", "0", "4", "5", _size(events["bytes"]), "1", "1", "max-age 7d",
        ]
        assert page.get_attribute('#streams-table tr[data-stream="events"] td:nth-child(6)', "title") == (
            f"{events['bytes']:,} bytes"
        )
        head = _cells(page, '#streams-table tr[data-super="trades"]:not([data-stream])')
        assert head[0] == "tradessuper stream · 2 partitions"
        assert head[4] == "12" and head[6] == "2" and head[8] == "unlimited"
        for name in ("trades-0", "trades-1"):
            p = api[name]
            cells = _cells(page, f'#streams-table tr[data-stream="{name}"]')
            assert cells[:5] == [name, "/", "0", str(p["last_offset"]), str(p["messages"])]
            assert cells[5:8] == [_size(p["bytes"]), "1", "0"]
        # the group: a summary row and one row per partition read
        assert _cells(page, '#groups-table tr.group-head[data-group="billing"]') == [
            "billing", "/", "events · 1 partition", "", "", "2", "1 live member",
        ]
        row = '#groups-table tr.partition[data-group="billing"][data-stream="events"]'
        assert _cells(page, row) == ["", "", "events", "3", "4", "2", tag]
        # the next polls follow the group: acked up, then the member gone
        for method in deliveries[3:]:
            ch.basic_ack(method.delivery_tag)
        conn.process_data_events(time_limit=0.1)
        page.wait_for_function(
            f"""() => {{ const r = document.querySelector('{row}');
                      return r && r.cells[3].textContent === '5' && r.cells[5].textContent === '0'; }}"""
        )
    finally:
        conn.close()
    page.wait_for_function(f"document.querySelector('{row}').cells[6].textContent === '-'")
    assert _cells(page, '#groups-table tr.group-head[data-group="billing"]')[6] == "no live member"
    # the filter narrows both tables
    page.fill("#stream-filter", "trad")
    assert page.eval_on_selector_all(
        "#streams-table tbody tr", "rows => rows.map(r => r.dataset.stream || 'super')"
    ) == ["super", "trades-0", "trades-1"]
    assert page.locator("#groups-table tbody tr").count() == 0
    assert page.inner_text("#stream-count") == "2 of 3 streams"


def test_dashboard_streams_hostile_names(mgmt: Mgmt, browser: Any) -> None:
    stream = '<img src=x onerror="window.__xss=1">'
    group = '<b id="xss-group">g</b>'
    superstream = "<svg onload=window.__xss=2>"
    with channel(mgmt) as ch:
        ch.queue_declare(stream, durable=True, arguments={"x-queue-type": "stream"})
        ch.exchange_declare(superstream, "x-super-stream", durable=True, arguments={"x-partitions": 1})
        ch.confirm_delivery()
        ch.basic_publish("", stream, b"x")
        _tag, deliveries = _join_group(ch, stream, group, 1)
        ch.basic_ack(deliveries[0].delivery_tag)
        ch.connection.process_data_events(time_limit=0.1)
        mgmt.wait_for(lambda: _group(mgmt, group, stream)["committed_offset"] == 1, what="commit 1")
    page = _open(browser, mgmt, "#streams")
    page.wait_for_selector("#groups-table tr.partition")
    assert page.get_attribute("#streams-table tbody tr:last-child", "data-stream") == stream
    assert _cells(page, "#streams-table tbody tr:last-child")[0] == stream
    assert _cells(page, "#streams-table tbody tr:first-child")[0].startswith(superstream)
    assert _cells(page, "#streams-table tbody tr:nth-child(2)")[0] == superstream + "-0"
    assert _cells(page, "#groups-table tr.group-head")[0] == group
    assert _cells(page, "#groups-table tr.partition")[2] == stream
    assert page.locator("main img, main svg, #xss-group").count() == 0
    assert page.evaluate("window.__xss") is None
