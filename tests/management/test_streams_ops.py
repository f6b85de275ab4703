"""Operating streams and consumer groups: the HTTP API, ``mqbrokerctl
streams`` / ``groups`` / ``groups reset`` and the lag metric."""

from __future__ import annotations

import time

import httpx
from mgmt_support import Ctl, Mgmt, channel


def test_streams_groups_reset_and_lag(ctl: Ctl, mgmt: Mgmt) -> None:
    with channel(mgmt) as ch:
        ch.exchange_declare("trades", "x-super-stream", durable=True,
                            arguments={"x-partitions": 2, "x-max-age": "7D"})
        ch.confirm_delivery()
        for i in range(40):
            ch.basic_publish("trades", f"sym{i % 5}", b"%d" % i)
    rows = {r["name"]: r for r in ctl.json("streams")}
    assert set(rows) == {"trades-0", "trades-1"}
    assert sum(r["messages"] for r in rows.values()) == 40
    assert rows["trades-0"]["super_stream"] == "trades"
    assert rows["trades-0"]["retention"]["max_age_seconds"] == 7 * 86400
    # a group reads 10 of one partition's messages, then leaves
    with channel(mgmt) as ch:
        ch.basic_qos(prefetch_count=1)
        got: list[bytes] = []

        def on(c, m, p, b):  # type: ignore[no-untyped-def]
            if len(got) < 10:
                got.append(b)
                c.basic_ack(m.delivery_tag)

        ch.basic_consume("trades-0", on, arguments={"x-stream-group": "risk", "x-stream-offset": "first"})
        deadline = time.monotonic() + 5
        while len(got) < 10 and time.monotonic() < deadline:
            ch.connection.process_data_events(time_limit=0.05)
        groups = ctl.json("groups")
        assert [(g["group"], g["stream"], g["owner"] is not None) for g in groups] == [
            ("risk", "trades-0", True)
        ]
        # resetting while a member is live is refused
        assert ctl.run("groups", "reset", "risk", "trades-0", "--to", "first", ok=False).returncode != 0
    time.sleep(0.2)
    (row,) = ctl.json("groups")
    assert row["committed_offset"] in (9, 10) and row["owner"] is None
    assert row["lag"] == rows["trades-0"]["messages"] - row["committed_offset"]
    metrics = httpx.get(mgmt.base_url + "/metrics").text
    assert 'mqbroker_stream_group_lag{group="risk",stream="trades-0",vhost="/"}' in metrics
    assert ctl.json("groups", "reset", "risk", "trades-0", "--to", "first")["committed_offset"] == 0
    assert ctl.json("groups")[0]["lag"] == rows["trades-0"]["messages"]
    table = ctl.run("groups", fmt="table").stdout
    assert "risk" in table and "trades-0" in table


def test_group_reset_needs_an_administrator(mgmt: Mgmt) -> None:
    mgmt.http.put("/api/users/ops", json={"password": "pw", "tags": "management"})
    mgmt.http.put("/api/permissions/%2F/ops", json={"configure": ".*", "write": ".*", "read": ".*"})
    with channel(mgmt) as ch:
        ch.queue_declare("ledger", durable=True, arguments={"x-queue-type": "stream"})
    r = httpx.post(mgmt.base_url + "/api/stream-groups/%2F/g/reset", auth=("ops", "pw"),
                   json={"stream": "ledger", "to": "first"})
    assert r.status_code == 401
    ok = mgmt.http.post("/api/stream-groups/%2F/g/reset", json={"stream": "ledger", "to": "first"})
    assert ok.status_code == 200
