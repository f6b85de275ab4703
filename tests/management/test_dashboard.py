"""The dashboard in headless Chromium (Debian's ``chromium``, driven by
Playwright): it loads, lists the queues with DLQs flagged, shows rates that
move while a publisher runs, peeks at a DLQ and moves it back.

Set ``MQBROKER_UPDATE_SCREENSHOT=1`` to refresh ``docs/dashboard.png``.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

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


def test_dashboard(mgmt: Mgmt, tmp_path: Path) -> None:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Python package 'playwright' missing (pip install -e '.[dev]')"
    )
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
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.set_default_timeout(15_000)
                page.goto(mgmt.base_url + "/?interval=500")
                page.fill("#login-user", "guest")
                page.fill("#login-password", "guest")
                page.click("#login-submit")
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
                browser.close()
    finally:
        stop.set()
        publisher.join(10)
