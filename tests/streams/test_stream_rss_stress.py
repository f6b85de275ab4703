"""A 10-million-message stream written and replayed with the broker's RSS
flat (issue 13's bound): ``make stress`` only (about 6 minutes here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

MESSAGES = int(os.environ.get("MQBROKER_STREAM_STRESS_MESSAGES", "10000000"))


@pytest.mark.stress
@pytest.mark.timeout(3600)
def test_ten_million_message_stream_keeps_rss_flat(mqbroker_process: Any) -> None:
    broker = mqbroker_process()
    out = subprocess.run(
        [sys.executable, "-m", "mqbroker.perf.cli", "--url", broker.url,
         "--size", "64", "--backlog", str(MESSAGES), "--prefetch", "2000",
         "--multi-ack-every", "200", "--stream-offset", "first",
         "--broker-pid", str(broker.pid), "--drain-timeout", "1200", "--json"],
        capture_output=True, text=True, timeout=3600, check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["lost"] == 0 and not result["errors"]
    assert result["received"] >= MESSAGES
    # the log lives in files: memory does not grow with the stream
    assert result["broker_rss_growth_mb"] < 100, result
