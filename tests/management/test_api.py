"""The HTTP management API, through httpx, against a real in-process broker
that pika publishes to and consumes from."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pika
from mgmt_support import Mgmt, channel, death_headers, q


def publish(m: Mgmt, queue: str, bodies: list[str], **props: Any) -> None:
    with channel(m) as ch:
        ch.confirm_delivery()
        for body in bodies:
            ch.basic_publish(
                "", queue, body.encode(), pika.BasicProperties(delivery_mode=2, **props)
            )


# ------------------------------------------------------------ basics


def test_auth_required_and_errors_are_json(mgmt: Mgmt) -> None:
    anon = httpx.get(mgmt.base_url + "/api/overview")
    assert anon.status_code == 401
    assert anon.json()["error"] == "not_authorised"
    assert "Basic" in anon.headers["www-authenticate"]
    bad = httpx.get(mgmt.base_url + "/api/overview", auth=("guest", "nope"))
    assert bad.status_code == 401
    missing = mgmt.http.get("/api/queues/%2F/nope")
    assert missing.status_code == 404
    assert set(missing.json()) == {"error", "reason"}
    unknown = mgmt.http.get("/api/no-such-endpoint")
    assert unknown.status_code == 404 and "error" in unknown.json()
    badjson = mgmt.http.put("/api/queues/%2F/x", content=b"{nope")
    assert badjson.status_code == 400 and badjson.json()["error"] == "bad_request"


def test_overview_and_vhosts(mgmt: Mgmt) -> None:
    data = mgmt.http.get("/api/overview").json()
    for key in ("rabbitmq_version", "management_version", "message_stats", "queue_totals", "object_totals", "listeners"):
        assert key in data
    assert data["object_totals"]["exchanges"] >= 6
    assert any(x["protocol"] == "amqp" for x in data["listeners"])
    vhosts = mgmt.http.get("/api/vhosts").json()
    assert [v["name"] for v in vhosts] == ["/"]
    assert mgmt.http.put("/api/vhosts/staging").status_code == 201
    assert mgmt.http.put("/api/vhosts/staging").status_code == 204
    assert mgmt.http.get("/api/vhosts/staging").json()["name"] == "staging"
    assert mgmt.http.delete("/api/vhosts/staging").status_code == 204
    assert mgmt.http.get("/api/vhosts/staging").status_code == 404


def test_queue_lifecycle_and_fields(mgmt: Mgmt) -> None:
    r = mgmt.http.put(
        "/api/queues/%2F/orders",
        json={"durable": True, "arguments": {"x-max-length": 100}},
    )
    assert r.status_code == 201
    assert mgmt.http.put("/api/queues/%2F/orders", json={"durable": True, "arguments": {"x-max-length": 100}}).status_code == 204
    clash = mgmt.http.put("/api/queues/%2F/orders", json={"durable": False})
    assert clash.status_code == 400 and "inequivalent" in clash.json()["reason"]
    publish(mgmt, "orders", ["a", "b", "c"])
    queue = mgmt.queue("orders")
    for key in (
        "messages", "messages_ready", "messages_unacknowledged", "consumers",
        "message_stats", "arguments", "policy", "state", "durable", "vhost",
    ):
        assert key in queue
    assert queue["messages_ready"] == 3 and queue["messages"] == 3
    assert queue["arguments"] == {"x-max-length": 100}
    assert queue["state"] == "running"
    assert queue["message_stats"]["publish"] == 3
    listed = mgmt.http.get("/api/queues").json()
    assert [x["name"] for x in listed] == ["orders"]
    assert mgmt.http.get("/api/queues/%2F").json()[0]["name"] == "orders"
    paged = mgmt.http.get("/api/queues?page=1&page_size=10").json()
    assert paged["total_count"] == 1 and paged["items"][0]["name"] == "orders"
    cols = mgmt.http.get("/api/queues?columns=name,messages").json()
    assert cols == [{"name": "orders", "messages": 3}]
    assert mgmt.http.delete("/api/queues/%2F/orders/contents").status_code == 204
    assert mgmt.queue("orders")["messages_ready"] == 0
    assert mgmt.http.delete("/api/queues/%2F/orders").status_code == 204
    assert mgmt.http.get("/api/queues/%2F/orders").status_code == 404


def test_get_ackmodes(mgmt: Mgmt) -> None:
    mgmt.http.put("/api/queues/%2F/g", json={"durable": True})
    publish(mgmt, "g", ["one", "two", "three"], headers={"k": "v"})
    got = mgmt.http.post(
        "/api/queues/%2F/g/get",
        json={"count": 2, "ackmode": "ack_requeue_true", "encoding": "auto", "truncate": 2},
    ).json()
    assert [m["payload"] for m in got] == ["on", "tw"]
    assert got[0]["payload_bytes"] == 3 and got[0]["redelivered"] is False
    assert got[0]["message_count"] == 2
    assert got[0]["properties"]["headers"] == {"k": "v"}
    assert got[0]["properties"]["delivery_mode"] == 2
    # requeued in place, now redelivered
    again = mgmt.http.post("/api/queues/%2F/g/get", json={"count": 5, "ackmode": "reject_requeue_true", "encoding": "base64"}).json()
    assert [m["payload_encoding"] for m in again] == ["base64"] * 3
    assert [m["redelivered"] for m in again] == [True, True, False]
    taken = mgmt.http.post("/api/queues/%2F/g/get", json={"count": 1, "ackmode": "ack_requeue_false"}).json()
    assert taken[0]["payload"] == "one"
    assert mgmt.queue("g")["messages_ready"] == 2
    bad = mgmt.http.post("/api/queues/%2F/g/get", json={"ackmode": "maybe"})
    assert bad.status_code == 400


def test_publish_and_exchanges(mgmt: Mgmt) -> None:
    assert mgmt.http.put("/api/exchanges/%2F/events", json={"type": "topic", "durable": True}).status_code == 201
    mgmt.http.put("/api/queues/%2F/audit", json={"durable": True})
    r = mgmt.http.post("/api/bindings/%2F/e/events/q/audit", json={"routing_key": "order.*", "arguments": {}})
    assert r.status_code == 201 and r.headers["location"]
    routed = mgmt.http.post(
        "/api/exchanges/%2F/events/publish",
        json={"routing_key": "order.created", "payload": "hello", "payload_encoding": "string", "properties": {"delivery_mode": 2, "headers": {"n": 1}}},
    ).json()
    assert routed == {"routed": True}
    lost = mgmt.http.post(
        "/api/exchanges/%2F/events/publish",
        json={"routing_key": "user.created", "payload": "aGk=", "payload_encoding": "base64", "properties": {}},
    ).json()
    assert lost == {"routed": False}
    default = mgmt.http.post(
        "/api/exchanges/%2F/amq.default/publish",
        json={"routing_key": "audit", "payload": "direct", "properties": {}},
    ).json()
    assert default["routed"]
    with channel(mgmt) as ch:
        first = ch.basic_get("audit", auto_ack=True)
        assert first[2] == b"hello" and first[0].routing_key == "order.created"
        assert first[1].headers == {"n": 1}
        assert ch.basic_get("audit", auto_ack=True)[2] == b"direct"
    ex = mgmt.http.get("/api/exchanges/%2F/events").json()
    assert ex["type"] == "topic" and ex["durable"] is True
    names = {e["name"] for e in mgmt.http.get("/api/exchanges").json()}
    assert {"", "amq.direct", "amq.topic", "events"} <= names
    assert mgmt.http.get("/api/exchanges/%2F/events/bindings/source").json()[0]["destination"] == "audit"
    # RabbitMQ answers a refused command with 401 not_authorised
    assert mgmt.http.delete("/api/exchanges/%2F/amq.direct").status_code == 401
    assert mgmt.http.delete("/api/exchanges/%2F/events").status_code == 204
    assert mgmt.http.get("/api/exchanges/%2F/events").status_code == 404


def test_bindings(mgmt: Mgmt) -> None:
    mgmt.http.put("/api/exchanges/%2F/x", json={"type": "direct"})
    mgmt.http.put("/api/queues/%2F/b", json={})
    mgmt.http.post("/api/bindings/%2F/e/x/q/b", json={"routing_key": "k 1"})
    mgmt.http.post("/api/bindings/%2F/e/x/q/b", json={"routing_key": "", "arguments": {"a": 1}})
    rows = mgmt.http.get("/api/bindings/%2F/e/x/q/b").json()
    assert {r["routing_key"] for r in rows} == {"k 1", ""}
    everything = mgmt.http.get("/api/bindings").json()
    assert any(r["source"] == "" and r["destination"] == "b" for r in everything)
    assert any(r["source"] == "x" for r in mgmt.http.get("/api/queues/%2F/b/bindings").json())
    for row in rows:
        key = q(row["properties_key"])
        assert mgmt.http.get(f"/api/bindings/%2F/e/x/q/b/{key}").status_code == 200
        assert mgmt.http.delete(f"/api/bindings/%2F/e/x/q/b/{key}").status_code == 204
    assert mgmt.http.get("/api/bindings/%2F/e/x/q/b").json() == []
    assert mgmt.http.post("/api/bindings/%2F/e/x/q/nope", json={}).status_code == 404


def test_connections_channels_consumers(mgmt: Mgmt) -> None:
    mgmt.http.put("/api/queues/%2F/c", json={})
    params = pika.URLParameters(mgmt.amqp_url)
    params.client_properties = {"connection_name": "worker-1"}
    conn = pika.BlockingConnection(params)
    try:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=7)
        ch.basic_consume("c", lambda *a: None, consumer_tag="ctag-1")
        conns = mgmt.http.get("/api/connections").json()
        assert len(conns) == 1
        info = conns[0]
        assert info["user"] == "guest" and info["vhost"] == "/"
        assert info["user_provided_name"] == "worker-1"
        assert info["channels"] == 1 and info["protocol"] == "AMQP 0-9-1"
        one = mgmt.http.get(f"/api/connections/{q(info['name'])}").json()
        assert one["name"] == info["name"]
        chans = mgmt.http.get("/api/channels").json()
        assert chans[0]["prefetch_count"] == 7 and chans[0]["consumer_count"] == 1
        assert mgmt.http.get(f"/api/connections/{q(info['name'])}/channels").json()[0]["number"] == 1
        cons = mgmt.http.get("/api/consumers").json()
        assert cons[0]["consumer_tag"] == "ctag-1" and cons[0]["queue"]["name"] == "c"
        assert mgmt.http.get("/api/consumers/%2F").json()[0]["consumer_tag"] == "ctag-1"
        assert mgmt.queue("c")["consumers"] == 1
        assert mgmt.http.delete(f"/api/connections/{q(info['name'])}").status_code == 204
        deadline = time.monotonic() + 5
        closed = False
        while time.monotonic() < deadline and not closed:
            try:
                conn.process_data_events(time_limit=0.1)
            except pika.exceptions.ConnectionClosedByBroker as exc:
                assert exc.reply_code == 320
                closed = True
        assert closed
        mgmt.wait_for(lambda: mgmt.http.get("/api/connections").json() == [], 5, "connection gone")
    finally:
        if conn.is_open:
            conn.close()


def test_users_permissions(mgmt: Mgmt) -> None:
    assert mgmt.http.put("/api/users/ops", json={"password": "s3cret", "tags": "management"}).status_code == 201
    user = mgmt.http.get("/api/users/ops").json()
    assert user["tags"] == ["management"]
    assert "s3cret" not in str(user)
    mgmt.http.put("/api/permissions/%2F/ops", json={"configure": ".*", "write": ".*", "read": ".*"})
    perms = mgmt.http.get("/api/permissions").json()
    assert any(p["user"] == "ops" and p["vhost"] == "/" for p in perms)
    assert mgmt.http.get("/api/permissions/%2F/ops").json()["read"] == ".*"
    # the new user can log in to the API
    assert httpx.get(mgmt.base_url + "/api/whoami", auth=("ops", "s3cret")).json()["name"] == "ops"
    assert mgmt.http.put("/api/users/plain", json={"password": "x1", "tags": ""}).status_code == 201
    assert httpx.get(mgmt.base_url + "/api/overview", auth=("plain", "x1")).status_code == 401
    assert mgmt.http.delete("/api/users/ops").status_code == 204
    assert mgmt.http.get("/api/users/ops").status_code == 404


def test_policies(mgmt: Mgmt) -> None:
    body = {"pattern": "^dlq", "definition": {"max-length": 1000}, "apply-to": "queues", "priority": 1}
    assert mgmt.http.put("/api/policies/%2F/cap", json=body).status_code == 201
    assert mgmt.http.get("/api/policies/%2F/cap").json()["definition"] == {"max-length": 1000}
    assert [p["name"] for p in mgmt.http.get("/api/policies").json()] == ["cap"]
    mgmt.http.put("/api/queues/%2F/dlq.orders", json={})
    assert mgmt.queue("dlq.orders")["policy"] == "cap"
    assert mgmt.http.delete("/api/policies/%2F/cap").status_code == 204
    assert mgmt.http.get("/api/policies").json() == []
    assert mgmt.http.put("/api/policies/%2F/bad", json={"pattern": "x"}).status_code == 400


def test_definitions_roundtrip(mgmt: Mgmt) -> None:
    mgmt.http.put("/api/exchanges/%2F/dx", json={"type": "fanout", "durable": True})
    mgmt.http.put("/api/queues/%2F/dq", json={"durable": True, "arguments": {"x-message-ttl": 5000}})
    mgmt.http.post("/api/bindings/%2F/e/dx/q/dq", json={"routing_key": "r"})
    exported = mgmt.http.get("/api/definitions").json()
    assert {q_["name"] for q_ in exported["queues"]} == {"dq"}
    assert {e["name"] for e in exported["exchanges"]} == {"dx"}
    assert exported["bindings"][0]["routing_key"] == "r"
    assert exported["users"] and exported["vhosts"]
    mgmt.http.delete("/api/queues/%2F/dq")
    mgmt.http.delete("/api/exchanges/%2F/dx")
    exported["queues"].append({"name": "extra", "vhost": "/", "durable": True, "auto_delete": False, "arguments": {}})
    assert mgmt.http.post("/api/definitions", json=exported).status_code == 204
    assert mgmt.queue("dq")["arguments"] == {"x-message-ttl": 5000}
    assert mgmt.queue("extra")["durable"] is True
    assert mgmt.http.get("/api/bindings/%2F/e/dx/q/dq").json()[0]["routing_key"] == "r"
    vhost_only = mgmt.http.get("/api/definitions/%2F").json()
    assert "users" not in vhost_only and len(vhost_only["queues"]) == 2


def test_health_and_aliveness(mgmt: Mgmt) -> None:
    assert mgmt.http.get("/api/health/checks/alarms").json() == {"status": "ok"}
    assert mgmt.http.get("/api/aliveness-test/%2F").json() == {"status": "ok"}
    assert mgmt.http.get("/api/aliveness-test/nope").status_code == 404
    assert mgmt.http.get("/api/nodes").json()[0]["running"] is True


# ------------------------------------------------ beyond RabbitMQ


def test_browse_unacked_stream_deliveries_by_offset(mgmt: Mgmt) -> None:
    """A stream hands a consumer blocks of records tracked as one delivery
    per block; browsing still shows each unacked message at its offset."""
    with channel(mgmt) as ch:
        ch.queue_declare("brs", durable=True, arguments={"x-queue-type": "stream"})
        ch.confirm_delivery()
        for i in range(6):
            ch.basic_publish("", "brs", f"s{i}".encode())
        ch.basic_qos(prefetch_count=4)
        got: list[int] = []
        ch.basic_consume(
            "brs", lambda c, m, p, b: got.append(m.delivery_tag),
            arguments={"x-stream-offset": 1},
        )
        deadline = time.monotonic() + 10
        while len(got) < 4 and time.monotonic() < deadline:
            ch.connection.process_data_events(time_limit=0.1)
        assert got == [1, 2, 3, 4]
        unacked = mgmt.http.get("/api/queues/%2F/brs/messages?state=unacked").json()["items"]
        assert [(i["seq"], i["payload"]) for i in unacked] == [
            (1, "s1"), (2, "s2"), (3, "s3"), (4, "s4"),
        ]
        ch.basic_ack(2, multiple=True)
        unacked = mgmt.http.get("/api/queues/%2F/brs/messages?state=unacked").json()["items"]
        assert [i["payload"] for i in unacked[:2]] == ["s3", "s4"]


def test_browse_is_non_destructive_with_cursor(mgmt: Mgmt) -> None:
    mgmt.http.put("/api/queues/%2F/br", json={"durable": True})
    publish(mgmt, "br", [f"m{i}" for i in range(5)])
    with channel(mgmt) as ch:
        method, _, body = ch.basic_get("br", auto_ack=False)
        assert body == b"m0"
        page = mgmt.http.get("/api/queues/%2F/br/messages?limit=2").json()
        assert [i["payload"] for i in page["items"]] == ["m1", "m2"]
        assert page["next"] == page["items"][-1]["seq"]
        rest = mgmt.http.get(f"/api/queues/%2F/br/messages?limit=10&after={page['next']}").json()
        assert [i["payload"] for i in rest["items"]] == ["m3", "m4"] and rest["next"] is None
        unacked = mgmt.http.get("/api/queues/%2F/br/messages?state=unacked").json()["items"]
        assert [i["payload"] for i in unacked] == ["m0"]
        every = mgmt.http.get("/api/queues/%2F/br/messages?state=all").json()["items"]
        assert [i["payload"] for i in every] == ["m0", "m1", "m2", "m3", "m4"]
        assert every[0]["state"] == "unacked"
        ch.basic_nack(method.delivery_tag, requeue=True)
        # order and flags exactly as a consumer sees them
        seen = []
        for _ in range(5):
            m, _, b = ch.basic_get("br", auto_ack=True)
            seen.append((b.decode(), m.redelivered))
        assert seen == [("m0", True), ("m1", False), ("m2", False), ("m3", False), ("m4", False)]


def _dead_letters(m: Mgmt, n: int, queue: str = "work", reason: str = "rejected", routing_key: str = "work", exchange: str = "") -> None:
    with channel(m) as ch:
        ch.confirm_delivery()
        for i in range(n):
            ch.basic_publish(
                "",
                "dlq",
                f"{queue}-{i}".encode(),
                pika.BasicProperties(
                    delivery_mode=2,
                    message_id=f"{queue}-{i}",
                    headers={**death_headers(queue, reason, exchange, routing_key), "tenant": "t1" if i % 2 == 0 else "t2"},
                ),
            )


def test_move_to_origin_with_filters_and_dry_run(mgmt: Mgmt) -> None:
    for name in ("dlq", "work", "other"):
        mgmt.http.put(f"/api/queues/%2F/{name}", json={"durable": True})
    _dead_letters(mgmt, 6, "work")
    _dead_letters(mgmt, 2, "other", reason="expired", routing_key="other")
    peek = mgmt.http.get("/api/queues/%2F/dlq/messages?limit=1").json()["items"][0]
    assert peek["x_death"][0]["reason"] == "rejected"
    assert peek["x_death"][0]["queue"] == "work"
    assert peek["x_death"][0]["routing-keys"] == ["work"]
    assert peek["x_death"][0]["count"] == 1 and peek["x_death"][0]["time"] > 0
    dry = mgmt.http.post(
        "/api/queues/%2F/dlq/move",
        json={"count": 100, "destination": {"type": "origin"}, "dry_run": True},
    ).json()
    assert dry["moved"] == 8 and dry["plan"][0]["queues"] == ["work"]
    assert mgmt.queue("dlq")["messages_ready"] == 8
    only = mgmt.http.post(
        "/api/queues/%2F/dlq/move",
        json={"count": 100, "destination": {"type": "origin"}, "filter": {"reason": "expired"}},
    ).json()
    assert only["moved"] == 2 and only["skipped"] == 6 and only["durable"] is True
    assert mgmt.queue("other")["messages_ready"] == 2
    tenant = mgmt.http.post(
        "/api/queues/%2F/dlq/move",
        json={"count": 100, "destination": {"type": "queue", "queue": "work"}, "filter": {"headers": {"tenant": "t1"}}},
    ).json()
    assert tenant["moved"] == 3
    rest = mgmt.http.post(
        "/api/queues/%2F/dlq/move", json={"count": 100, "destination": {"type": "origin"}}
    ).json()
    assert rest["moved"] == 3 and rest["remaining"] == 0
    got = mgmt.http.post("/api/queues/%2F/work/get", json={"count": 10, "ackmode": "ack_requeue_false"}).json()
    assert sorted(g["properties"]["message_id"] for g in got) == [f"work-{i}" for i in range(6)]
    assert all(g["properties"]["headers"]["x-replayed-count"] == 1 for g in got)
    assert all("x-death" in g["properties"]["headers"] for g in got)
    bad = mgmt.http.post("/api/queues/%2F/dlq/move", json={"destination": {"type": "queue", "queue": "nope"}})
    assert bad.status_code == 404


def test_replay_to_first_death_exchange(mgmt: Mgmt) -> None:
    mgmt.http.put("/api/exchanges/%2F/orders", json={"type": "topic"})
    for name in ("dlq", "orders.eu", "orders.us"):
        mgmt.http.put(f"/api/queues/%2F/{name}", json={"durable": True})
    mgmt.http.post("/api/bindings/%2F/e/orders/q/orders.eu", json={"routing_key": "order.eu.*"})
    mgmt.http.post("/api/bindings/%2F/e/orders/q/orders.us", json={"routing_key": "order.us.*"})
    with channel(mgmt) as ch:
        for key in ("order.eu.new", "order.us.new", "order.eu.paid", "order.xx.new"):
            ch.basic_publish(
                "", "dlq", key.encode(),
                pika.BasicProperties(delivery_mode=2, headers=death_headers("orders.q", "delivery_limit", "orders", key)),
            )
    result = mgmt.http.post("/api/queues/%2F/dlq/replay", json={"count": 10}).json()
    assert result["moved"] == 3 and result["unroutable"] == 1
    assert mgmt.queue("orders.eu")["messages_ready"] == 2
    assert mgmt.queue("orders.us")["messages_ready"] == 1
    left = mgmt.http.get("/api/queues/%2F/dlq/messages").json()["items"]
    assert [i["payload"] for i in left] == ["order.xx.new"]


def test_real_dead_letters_replay(mgmt: Mgmt) -> None:
    """Messages dead-lettered by the broker itself (reject without requeue)."""
    mgmt.http.put("/api/queues/%2F/dlq", json={"durable": True})
    mgmt.http.put(
        "/api/queues/%2F/work",
        json={"durable": True, "arguments": {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dlq"}},
    )
    publish(mgmt, "work", ["a", "b"])
    mgmt.http.post("/api/queues/%2F/work/get", json={"count": 2, "ackmode": "reject_requeue_false"})
    mgmt.wait_ready("dlq", 2)
    item = mgmt.http.get("/api/queues/%2F/dlq/messages").json()["items"][0]
    assert item["x_death"][0]["queue"] == "work" and item["x_death"][0]["reason"] == "rejected"
    moved = mgmt.http.post("/api/queues/%2F/dlq/move", json={"count": 10, "destination": {"type": "origin"}}).json()
    assert moved["moved"] == 2
    assert mgmt.queue("work")["messages_ready"] == 2 and mgmt.queue("dlq")["messages_ready"] == 0


def test_route_explain(mgmt: Mgmt) -> None:
    http = mgmt.http
    http.put("/api/exchanges/%2F/main", json={"type": "topic", "arguments": {"alternate-exchange": "ae"}})
    http.put("/api/exchanges/%2F/ae", json={"type": "fanout"})
    http.put("/api/exchanges/%2F/hdr", json={"type": "headers"})
    for name in ("eu", "all", "lost", "vip"):
        http.put(f"/api/queues/%2F/{name}", json={})
    http.post("/api/bindings/%2F/e/main/q/eu", json={"routing_key": "order.eu.#"})
    http.post("/api/bindings/%2F/e/main/q/all", json={"routing_key": "order.#"})
    http.post("/api/bindings/%2F/e/main/e/hdr", json={"routing_key": "order.#"})
    http.post("/api/bindings/%2F/e/hdr/q/vip", json={"arguments": {"x-match": "all", "tier": "gold"}})
    http.post("/api/bindings/%2F/e/ae/q/lost", json={})
    hit = http.post("/api/exchanges/%2F/main/route", json={"routing_key": "order.eu.new", "headers": {"tier": "gold"}}).json()
    assert hit["routed"] is True
    assert [q_["name"] for q_ in hit["queues"]] == ["all", "eu", "vip"]
    vip = next(q_ for q_ in hit["queues"] if q_["name"] == "vip")
    assert [h["exchange"] for h in vip["via"]] == ["main", "hdr"]
    eu = next(q_ for q_ in hit["queues"] if q_["name"] == "eu")
    assert eu["via"][0]["binding_key"] == "order.eu.#"
    miss = http.post("/api/exchanges/%2F/main/route", json={"routing_key": "user.new"}).json()
    assert [q_["name"] for q_ in miss["queues"]] == ["lost"]
    assert miss["exchanges"][0]["alternate_exchange"] == "ae"
    cc = http.post("/api/exchanges/%2F/amq.default/route", json={"routing_key": "eu", "headers": {"CC": ["all"]}}).json()
    assert [q_["name"] for q_ in cc["queues"]] == ["all", "eu"]
    nowhere = http.post("/api/exchanges/%2F/amq.default/route", json={"routing_key": "zzz"}).json()
    assert nowhere["routed"] is False and nowhere["notes"]


def test_rates_age_and_metrics(mgmt: Mgmt) -> None:
    mgmt.http.put("/api/queues/%2F/lag", json={"durable": True})
    publish(mgmt, "lag", ["old"])
    deadline = time.monotonic() + 3.5
    with channel(mgmt) as ch:
        while time.monotonic() < deadline:
            ch.basic_publish("", "lag", b"x")
            time.sleep(0.02)
    queue = mgmt.queue("lag")
    assert queue["message_stats"]["publish_details"]["rate"] > 1
    # The queue grows: its depth rates are positive (RabbitMQ's
    # messages_details / messages_ready_details), unacked stays flat.
    assert queue["messages_details"]["rate"] > 1
    assert queue["messages_ready_details"]["rate"] > 1
    assert queue["messages_unacknowledged_details"]["rate"] == 0
    assert queue["oldest_ready_age_seconds"] >= 1.5
    overview = mgmt.http.get("/api/overview").json()
    assert overview["message_stats"]["publish_details"]["rate"] > 1
    history = mgmt.http.get("/api/mqbroker/history").json()
    assert any(h["publish"] > 0 for h in history)
    text = httpx.get(mgmt.base_url + "/metrics").text
    for name in (
        "rabbitmq_queue_messages_ready{",
        "rabbitmq_queue_messages_unacked{",
        "rabbitmq_queue_messages{",
        "rabbitmq_queue_consumers{",
        "rabbitmq_connections ",
        "rabbitmq_channels ",
        "rabbitmq_queues ",
        "rabbitmq_global_messages_received_total ",
        "mqbroker_queue_oldest_ready_age_seconds{",
    ):
        assert name in text, name
    line = next(ln for ln in text.splitlines() if ln.startswith("rabbitmq_queue_messages_ready{"))
    assert 'queue="lag"' in line and 'vhost="/"' in line and float(line.split()[-1]) > 50


def test_dlq_flags(mgmt: Mgmt) -> None:
    mgmt.http.put("/api/exchanges/%2F/dlx", json={"type": "fanout"})
    mgmt.http.put("/api/queues/%2F/graveyard", json={})
    mgmt.http.post("/api/bindings/%2F/e/dlx/q/graveyard", json={})
    mgmt.http.put("/api/queues/%2F/jobs", json={"arguments": {"x-dead-letter-exchange": "dlx"}})
    mgmt.http.put("/api/queues/%2F/orders.dead", json={})
    flags = {r["name"]: r["is_dead_letter_queue"] for r in mgmt.http.get("/api/queues").json()}
    assert flags == {"graveyard": True, "jobs": False, "orders.dead": True}
    assert mgmt.queue("graveyard")["dead_letter_sources"] == ["jobs"]


def test_authorization_by_tags_and_permissions(mgmt: Mgmt) -> None:
    http = mgmt.http
    http.put("/api/queues/%2F/secret", json={})
    http.put("/api/users/mgr", json={"password": "pw", "tags": "management"})
    http.put("/api/users/mon", json={"password": "pw", "tags": "monitoring"})
    mgr = httpx.Client(base_url=mgmt.base_url, auth=("mgr", "pw"))
    mon = httpx.Client(base_url=mgmt.base_url, auth=("mon", "pw"))
    with mgr, mon:
        # RabbitMQ answers every authorisation failure with 401
        assert mgr.put("/api/users/evil", json={"password": "x", "tags": "administrator"}).status_code == 401
        assert mgr.get("/api/definitions").status_code == 401
        assert mon.get("/api/queues").json()[0]["name"] == "secret"
        # with access control, new users have no permissions until granted
        if http.get("/api/permissions/%2F/mgr").status_code == 404:
            assert mon.put("/api/queues/%2F/made-by-mon", json={}).status_code == 401
            assert mgr.get("/api/queues/%2F/secret").status_code == 401
            assert mgr.get("/api/queues").json() == []
            http.put("/api/permissions/%2F/mgr", json={"configure": ".*", "write": ".*", "read": ".*"})
        assert mgr.get("/api/queues/%2F/secret").json()["name"] == "secret"
        assert [q["name"] for q in mgr.get("/api/queues").json()] == ["secret"]
        assert mgr.put("/api/queues/%2F/made-by-mgr", json={}).status_code == 201


def test_dashboard_and_its_scripts_are_served(mgmt: Mgmt) -> None:
    page = httpx.get(mgmt.base_url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="static/streams.js">' in page.text
    script = httpx.get(mgmt.base_url + "/static/streams.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert "function renderStreams" in script.text
    # only the page's own scripts: nothing else under static/, no path walks
    for path in ("/static/index.html", "/static/nope.js", "/static/..%2Fhttp.py", "/static/%2E%2E%2Fweb.py"):
        assert httpx.get(mgmt.base_url + path).status_code == 404, path
