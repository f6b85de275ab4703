"""``mqbrokerctl`` as a subprocess, for every command, against a real broker
(in-process; the CLI talks HTTP to its management listener)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pika
from mgmt_support import Ctl, Mgmt, channel, death_headers


def test_objects_lifecycle(ctl: Ctl, mgmt: Mgmt) -> None:
    ctl.run("declare", "exchange", "jobs", "--type", "topic")
    ctl.run("declare", "queue", "jobs.eu", "--arg", "x-max-length=50")
    ctl.run("declare", "binding", "jobs", "jobs.eu", "-k", "eu.#")
    queues = ctl.json("list", "queues")
    assert [q["name"] for q in queues] == ["jobs.eu"]
    assert queues[0]["arguments"] == {"x-max-length": 50}
    assert any(e["name"] == "jobs" and e["type"] == "topic" for e in ctl.json("list", "exchanges"))
    assert any(b["source"] == "jobs" and b["routing_key"] == "eu.#" for b in ctl.json("list", "bindings"))
    assert ctl.json("publish", "jobs", "eu.paid", "hello", "-H", "n=1") == {"routed": True}
    assert ctl.run("publish", "jobs", "us.paid", "nowhere", ok=False).returncode == 2
    assert ctl.run("publish", "", "jobs.eu", input="from stdin").returncode == 0
    got = ctl.json("get", "jobs.eu", "--count", "5", "--ackmode", "ack_requeue_true")
    assert [g["payload"] for g in got] == ["hello", "from stdin"]
    assert got[0]["properties"]["headers"] == {"n": 1}
    explained = ctl.json("route", "jobs", "eu.new")
    assert [q["name"] for q in explained["queues"]] == ["jobs.eu"]
    table = ctl.run("route", "jobs", "eu.new", fmt="table").stdout
    assert "jobs.eu" in table and "eu.#" in table
    assert ctl.json("purge", "jobs.eu")["messages"] == 2
    assert mgmt.queue("jobs.eu")["messages_ready"] == 0
    ctl.run("delete", "binding", "jobs", "jobs.eu", "-k", "eu.#")
    assert not any(b["source"] == "jobs" for b in ctl.json("list", "bindings"))
    ctl.run("delete", "queue", "jobs.eu")
    ctl.run("delete", "exchange", "jobs")
    assert ctl.json("list", "queues") == []
    assert ctl.run("delete", "queue", "jobs.eu", ok=False).returncode == 1


def test_tables_for_people(ctl: Ctl, mgmt: Mgmt) -> None:
    ctl.run("declare", "queue", "orders.dlq")
    text = ctl.run("list", "queues", fmt="table").stdout
    assert "orders.dlq" in text and "DLQ" in text and "oldest ready" in text
    assert "publish/s" in ctl.run("overview", fmt="table").stdout
    assert "amq.topic" in ctl.run("list", "exchanges", fmt="table").stdout
    assert ctl.json("overview")["object_totals"]["queues"] == 1


def test_connections_channels_consumers(ctl: Ctl, mgmt: Mgmt) -> None:
    ctl.run("declare", "queue", "c")
    conn = mgmt.pika()
    try:
        ch = conn.channel()
        ch.basic_consume("c", lambda *a: None, consumer_tag="worker")
        conns = ctl.json("list", "connections")
        assert len(conns) == 1
        assert ctl.json("list", "channels")[0]["consumer_count"] == 1
        assert ctl.json("list", "consumers")[0]["consumer_tag"] == "worker"
        ctl.run("close-connection", conns[0]["name"])
        deadline = time.monotonic() + 5
        while conn.is_open and time.monotonic() < deadline:
            try:
                conn.process_data_events(time_limit=0.1)
            except pika.exceptions.ConnectionClosedByBroker:
                break
        assert not conn.is_open
    finally:
        if conn.is_open:
            conn.close()


def test_definitions_policies_users_vhosts(ctl: Ctl, mgmt: Mgmt, tmp_path: Path) -> None:
    ctl.run("declare", "queue", "keep")
    path = tmp_path / "defs.json"
    ctl.run("definitions", "export", str(path))
    data = json.loads(path.read_text())
    assert [q["name"] for q in data["queues"]] == ["keep"]
    ctl.run("delete", "queue", "keep")
    ctl.run("definitions", "import", str(path))
    assert mgmt.queue("keep")["durable"] is True

    ctl.run("policies", "set", "ttl", "^keep$", '{"message-ttl": 60000}', "--apply-to", "queues")
    assert [p["name"] for p in ctl.json("policies", "list")] == ["ttl"]
    assert mgmt.queue("keep")["policy"] == "ttl"
    ctl.run("policies", "clear", "ttl")
    assert ctl.json("policies", "list") == []

    ctl.run("vhosts", "add", "staging")
    assert {v["name"] for v in ctl.json("vhosts", "list")} == {"/", "staging"}
    ctl.run("users", "add", "ops", "pw", "--tags", "management")
    assert any(u["name"] == "ops" for u in ctl.json("users", "list"))
    ctl.run("-V", "staging", "permissions", "set", "ops", "--read", "^ops")
    perms = ctl.json("permissions", "list")
    assert any(p["user"] == "ops" and p["vhost"] == "staging" for p in perms)
    assert any(p["user"] == "ops" for p in ctl.json("list", "permissions"))
    ctl.run("-V", "staging", "permissions", "clear", "ops")
    ctl.run("users", "delete", "ops")
    ctl.run("vhosts", "delete", "staging")
    assert [v["name"] for v in ctl.json("list", "vhosts")] == ["/"]
    assert "ops" not in {u["name"] for u in ctl.json("list", "users")}


def test_health(ctl: Ctl) -> None:
    data = ctl.json("health")
    assert data["alarms"]["status"] == "ok" and data["aliveness"]["status"] == "ok"


def test_bad_credentials_and_unreachable(ctl: Ctl, mgmt: Mgmt) -> None:
    proc = ctl.run("-p", "wrong", "list", "queues", ok=False)
    assert proc.returncode == 1 and "401" in proc.stderr
    proc = ctl.run("--url", "http://127.0.0.1:9", "list", "queues", ok=False)
    assert proc.returncode == 1 and "cannot reach" in proc.stderr


def _fill_dlq(m: Mgmt, n: int, *, origin: str = "work") -> None:
    headers = death_headers(origin, "rejected", "", origin)
    with channel(m) as ch:
        for i in range(n):
            ch.basic_publish(
                "", "dlq", str(i).encode(),
                pika.BasicProperties(delivery_mode=2, message_id=str(i), headers=headers),
            )
        # a synchronous round trip: every publish before it was handled
        ch.queue_declare("dlq", passive=True)


def test_peek_move_replay_commands(ctl: Ctl, mgmt: Mgmt) -> None:
    for name in ("dlq", "work", "elsewhere"):
        ctl.run("declare", "queue", name)
    _fill_dlq(mgmt, 5)
    peek = ctl.json("peek", "dlq", "--count", "2")
    assert [i["payload"] for i in peek["items"]] == ["0", "1"]
    assert peek["items"][0]["x_death"][0]["queue"] == "work"
    table = ctl.run("peek", "dlq", fmt="table").stdout
    assert "rejected in 'work'" in table
    assert mgmt.queue("dlq")["messages_ready"] == 5  # peek consumed nothing
    usage = ctl.run("move", "dlq", "--to-origin", ok=False)
    assert usage.returncode == 2 and "--count N or --all" in usage.stderr
    dry = ctl.json("move", "dlq", "--to-origin", "--all", "--dry-run")
    assert dry["would_move"] == 5 and dry["plan"][0]["queues"] == ["work"]
    one = ctl.json("move", "dlq", "--to-queue", "elsewhere", "--count", "1")
    assert one["moved"] == 1
    two = ctl.json("move", "dlq", "--to-exchange", "", "-k", "elsewhere", "--count", "2", "--batch", "1")
    assert two["moved"] == 2
    rest = ctl.json("replay", "dlq", "--all", "--rate", "1000")
    assert rest["moved"] == 2
    assert mgmt.queue("elsewhere")["messages_ready"] == 3
    assert mgmt.queue("work")["messages_ready"] == 2
    assert mgmt.queue("dlq")["messages_ready"] == 0


def test_move_10000_interrupted_then_resumed(ctl: Ctl, mgmt: Mgmt) -> None:
    """SIGINT halfway through a move of 10,000 dead letters, then the same
    command again: every message ends up in exactly one place."""
    total = 10_000
    ctl.run("declare", "queue", "dlq")
    ctl.run("declare", "queue", "work")
    _fill_dlq(mgmt, total)
    mgmt.wait_ready("dlq", total, timeout=30)
    proc = ctl.popen("move", "dlq", "--to-origin", "--all", "--batch", "100", "--rate", "1000")
    try:
        mgmt.wait_for(
            lambda: mgmt.queue("dlq")["messages_ready"] <= total // 2,
            timeout=30,
            what="half of the DLQ to move",
        )
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    summary = json.loads(stdout)
    assert summary["interrupted"] is True
    left = mgmt.queue("dlq")["messages_ready"]
    moved = mgmt.queue("work")["messages_ready"]
    assert 0 < left < total and left + moved == total
    assert summary["moved"] <= moved  # the in-flight batch may have landed too
    second = ctl.json("move", "dlq", "--to-origin", "--all", "--batch", "1000")
    assert second["moved"] == left and second["interrupted"] is False
    assert mgmt.queue("dlq")["messages_ready"] == 0
    assert mgmt.queue("work")["messages_ready"] == total
    seen: list[str] = []
    after = 0
    while True:
        page = mgmt.http.get(
            f"/api/queues/%2F/work/messages?limit=1000&after={after}&truncate=0"
        ).json()
        seen += [i["properties"]["message_id"] for i in page["items"]]
        if page["next"] is None:
            break
        after = page["next"]
    assert len(seen) == total
    assert set(seen) == {str(i) for i in range(total)}


def test_amqp_mode_peek_and_move(ctl: Ctl, mgmt: Mgmt) -> None:
    """--amqp: the same peek and move over plain AMQP (confirm, then ack)."""
    for name in ("dlq", "work"):
        ctl.run("declare", "queue", name)
    _fill_dlq(mgmt, 20)
    with channel(mgmt) as ch:
        ch.basic_publish(
            "", "dlq", b"other",
            pika.BasicProperties(delivery_mode=2, message_id="x", headers=death_headers("gone", "expired", "", "gone")),
        )
    amqp = ("--amqp", mgmt.amqp_url)
    peek = ctl.json(*amqp, "peek", "dlq", "--count", "3")
    assert [i["payload"] for i in peek["items"]] == ["0", "1", "2"]
    assert peek["items"][0]["x_death"][0]["queue"] == "work"
    assert peek["messages_ready"] == 21
    dry = ctl.json(*amqp, "move", "dlq", "--to-origin", "--all", "--dry-run")
    assert dry["would_move"] == 20 and dry["left_in_place_unroutable"] == 1
    assert mgmt.queue("dlq")["messages_ready"] == 21
    moved = ctl.json(*amqp, "move", "dlq", "--to-origin", "--count", "15", "--batch", "4", "--reason", "rejected")
    assert moved["moved"] == 15 and moved["via"] == "amqp"
    rest = ctl.json(*amqp, "move", "dlq", "--to-origin", "--all")
    assert rest["moved"] == 5 and rest["left_in_place_unroutable"] == 1
    assert mgmt.queue("work")["messages_ready"] == 20
    left = mgmt.http.get("/api/queues/%2F/dlq/messages").json()["items"]
    assert [i["payload"] for i in left] == ["other"]
    got = mgmt.http.post("/api/queues/%2F/work/get", json={"count": 20, "ackmode": "ack_requeue_false"}).json()
    assert sorted(int(g["payload"]) for g in got) == list(range(20))
    assert all(g["properties"]["headers"]["x-replayed-count"] == 1 for g in got)
