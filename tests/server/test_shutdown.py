"""Stopping the broker tells open connections why (320, as RabbitMQ)."""

from __future__ import annotations

from pathlib import Path

import pika
import pytest

from mqbroker.config import Config
from mqbroker.server.embedded import EmbeddedBroker

pytestmark = pytest.mark.timeout(60)


def test_shutdown_closes_connections_with_320(tmp_path: Path) -> None:
    embedded = EmbeddedBroker(
        Config(host="127.0.0.1", port=0, data_dir=tmp_path / "data")
    ).start()
    conn = pika.BlockingConnection(
        pika.ConnectionParameters("127.0.0.1", embedded.port)
    )
    conn.channel()
    embedded.stop()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
        conn.process_data_events(time_limit=5)
        conn.channel()
    assert info.value.reply_code == 320
    assert "CONNECTION_FORCED - broker forced connection closure" in (
        info.value.reply_text
    )
