"""RabbitMQ's own ``rabbitmqadmin`` (Debian package ``rabbitmq-server``)
against mqbroker's management listener: the API is compatible enough that
the tool works unchanged."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from mgmt_support import Mgmt

RABBITMQADMIN = next(
    (
        path
        for path in (shutil.which("rabbitmqadmin"), "/usr/bin/rabbitmqadmin", "/usr/sbin/rabbitmqadmin")
        if path and Path(path).exists()
    ),
    None,
)

pytestmark = pytest.mark.skipif(
    RABBITMQADMIN is None,
    reason="rabbitmqadmin missing: install the Debian package 'rabbitmq-server' (apt-get install rabbitmq-server)",
)


class Admin:
    def __init__(self, m: Mgmt) -> None:
        self.m = m

    def run(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        assert RABBITMQADMIN is not None
        head = Path(RABBITMQADMIN).read_text(errors="replace").splitlines()[0]
        argv = [RABBITMQADMIN] if head.startswith("#!") else ["python3", RABBITMQADMIN]
        proc = subprocess.run(
            [
                *argv,
                "-H", "127.0.0.1",
                "-P", str(self.m.handle.management_port),
                "-u", "guest",
                "-p", "guest",
                *args,
            ],
            capture_output=True,
            check=False,
            text=True,
            timeout=60,
        )
        if ok and proc.returncode != 0:
            raise AssertionError(
                f"rabbitmqadmin {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.run("-f", "raw_json", *args).stdout)


def test_rabbitmqadmin(mgmt: Mgmt, tmp_path: Path) -> None:
    admin = Admin(mgmt)
    admin.run("declare", "queue", "name=tasks", "durable=true")
    admin.run("declare", "queue", "name=quorum.q", "queue_type=quorum")
    admin.run("declare", "exchange", "name=events", "type=topic")
    admin.run("declare", "binding", "source=events", "destination=tasks", "routing_key=task.*")
    queues = {q["name"]: q for q in admin.json("list", "queues")}
    assert set(queues) == {"tasks", "quorum.q"}
    assert queues["quorum.q"]["arguments"] == {"x-queue-type": "quorum"}
    table = admin.run("list", "queues").stdout
    assert "tasks" in table and "messages" in table
    assert any(e["name"] == "events" and e["type"] == "topic" for e in admin.json("list", "exchanges"))
    assert "amq.topic" in admin.run("list", "exchanges").stdout
    bindings = admin.json("list", "bindings")
    assert any(b["source"] == "events" and b["routing_key"] == "task.*" for b in bindings)
    assert "task.*" in admin.run("list", "bindings").stdout

    out = admin.run("publish", "exchange=events", "routing_key=task.one", "payload=hello").stdout
    assert "Message published" in out and "NOT routed" not in out
    admin.run("publish", "routing_key=tasks", "payload=second")  # amq.default
    assert mgmt.queue("tasks")["messages_ready"] == 2

    peeked = admin.json("get", "queue=tasks", "ackmode=ack_requeue_true", "count=2")
    assert [m["payload"] for m in peeked] == ["hello", "second"]
    assert "hello" in admin.run("get", "queue=tasks", "ackmode=ack_requeue_true").stdout
    taken = admin.json("get", "queue=tasks", "ackmode=ack_requeue_false")
    assert taken[0]["payload"] == "hello" and taken[0]["redelivered"] is True
    assert mgmt.queue("tasks")["messages_ready"] == 1
    admin.run("purge", "queue", "name=tasks")
    assert mgmt.queue("tasks")["messages_ready"] == 0

    conn = mgmt.pika()
    try:
        conns = admin.json("list", "connections")
        assert len(conns) == 1 and conns[0]["user"] == "guest"
        assert "guest" in admin.run("list", "connections").stdout
        admin.run("list", "channels")
    finally:
        conn.close()

    assert admin.json("show", "overview")[0]["rabbitmq_version"]
    assert [v["name"] for v in admin.json("list", "vhosts")] == ["/"]
    assert any(u["name"] == "guest" for u in admin.json("list", "users"))
    admin.run("list", "nodes")

    defs = tmp_path / "defs.json"
    admin.run("export", str(defs))
    assert any(q["name"] == "tasks" for q in json.loads(defs.read_text())["queues"])

    key = next(b["properties_key"] for b in bindings if b["source"] == "events")
    assert key == "task.%2A"  # as RabbitMQ encodes it
    admin.run("delete", "binding", "source=events", "destination_type=queue", "destination=tasks", f"properties_key={key}")
    assert not any(b["source"] == "events" for b in admin.json("list", "bindings"))
    admin.run("delete", "queue", "name=tasks")
    admin.run("delete", "queue", "name=quorum.q")
    admin.run("delete", "exchange", "name=events")
    assert admin.json("list", "queues") == []
    admin.run("import", str(defs))
    assert mgmt.queue("tasks")["durable"] is True
    missing = admin.run("get", "queue=nope", ok=False)
    assert missing.returncode != 0 and "Not found" in (missing.stdout + missing.stderr)
