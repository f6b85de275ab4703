"""The HTTP API goes through the same command layer and publish pipeline as
AMQP: the same permission checks, and a publish honours expiration,
x-delay and deduplication exactly as ``basic.publish`` does.

Differential: with ``MQBROKER_EXTERNAL_URL`` and
``MQBROKER_EXTERNAL_MANAGEMENT_URL`` (e.g. ``http://127.0.0.1:15672``) the
tests run against RabbitMQ's management API (guest/guest) instead; the
plugin-only cases (delayed, dedup) then skip.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pika
import pytest

from support.waits import wait_for

EXTERNAL_HTTP = os.environ.get("MQBROKER_EXTERNAL_MANAGEMENT_URL")
EXTERNAL_AMQP = os.environ.get("MQBROKER_EXTERNAL_URL")
needs_plugins = pytest.mark.skipif(
    bool(EXTERNAL_AMQP),
    reason="x-delayed-message and x-message-deduplication are plugins RabbitMQ lacks here",
)


class Api:
    def __init__(self, base_url: str, amqp_url: str) -> None:
        self.base_url = base_url
        self.amqp_url = amqp_url
        self.admin = httpx.Client(base_url=base_url, auth=("guest", "guest"), timeout=30)
        self.users: list[str] = []
        self.queues: list[str] = []
        self.exchanges: list[str] = []

    def user(self, configure: str, write: str, read: str) -> httpx.Client:
        name = f"u-{uuid.uuid4().hex[:8]}"
        self.admin.put(f"/api/users/{name}", json={"password": "pw", "tags": "management"})
        self.admin.put(
            f"/api/permissions/%2F/{name}",
            json={"configure": configure, "write": write, "read": read},
        ).raise_for_status()
        self.users.append(name)
        return httpx.Client(base_url=self.base_url, auth=(name, "pw"), timeout=30)

    def name(self, kind: str) -> str:
        name = f"http-cmd-{kind}-{uuid.uuid4().hex[:8]}"
        (self.queues if kind == "q" else self.exchanges).append(name)
        return name

    def get(self, queue: str, count: int = 10) -> list[dict[str, Any]]:
        response = self.admin.post(
            f"/api/queues/%2F/{queue}/get",
            json={"count": count, "ackmode": "ack_requeue_false", "encoding": "auto"},
        )
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    def publish(self, exchange: str, key: str, payload: str, **props: Any) -> httpx.Response:
        return self.admin.post(
            f"/api/exchanges/%2F/{exchange or 'amq.default'}/publish",
            json={
                "routing_key": key,
                "payload": payload,
                "payload_encoding": "string",
                "properties": props,
            },
        )

    def cleanup(self) -> None:
        for name in self.queues:
            self.admin.delete(f"/api/queues/%2F/{name}")
        for name in self.exchanges:
            self.admin.delete(f"/api/exchanges/%2F/{name}")
        for name in self.users:
            self.admin.delete(f"/api/users/{name}")
        self.admin.close()


@pytest.fixture
def api(request: pytest.FixtureRequest) -> Iterator[Api]:
    if EXTERNAL_AMQP:
        if not EXTERNAL_HTTP:
            pytest.skip("set MQBROKER_EXTERNAL_MANAGEMENT_URL to run against the external API")
        found = Api(EXTERNAL_HTTP, EXTERNAL_AMQP)
    else:
        handle = request.getfixturevalue("mqbroker_management")
        found = Api(f"http://127.0.0.1:{handle.management_port}", handle.url)
    yield found
    found.cleanup()


# ------------------------------------------------------------ permissions


def test_user_without_configure_or_write_changes_nothing(api: Api) -> None:
    queue, exchange = api.name("q"), api.name("x")
    api.admin.put(f"/api/queues/%2F/{queue}", json={"durable": True}).raise_for_status()
    api.admin.put(f"/api/exchanges/%2F/{exchange}", json={"type": "direct"}).raise_for_status()
    with api.user("^$", "^$", ".*") as user:
        refused = [
            user.put(f"/api/queues/%2F/{api.name('q')}", json={"durable": True}),
            user.put(f"/api/exchanges/%2F/{api.name('x')}", json={"type": "direct"}),
            user.delete(f"/api/queues/%2F/{queue}"),
            user.delete(f"/api/exchanges/%2F/{exchange}"),
            user.post(f"/api/bindings/%2F/e/{exchange}/q/{queue}", json={"routing_key": "k"}),
        ]
        for response in refused:
            assert response.status_code == 401, response.text
            assert response.json() == {"error": "not_authorised", "reason": "Access refused."}
        published = user.post(
            f"/api/exchanges/%2F/{exchange}/publish",
            json={"routing_key": "k", "payload": "x", "payload_encoding": "string",
                  "properties": {}},
        )
        assert published.status_code == 400
        assert published.json()["reason"].startswith("403 ACCESS_REFUSED - access to exchange")
        # read is granted: get and purge are allowed
        got = user.post(
            f"/api/queues/%2F/{queue}/get",
            json={"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"},
        )
        assert got.status_code == 200 and got.json() == []
        assert user.delete(f"/api/queues/%2F/{queue}/contents").status_code == 204
    # nothing changed
    assert api.admin.get(f"/api/queues/%2F/{queue}").status_code == 200
    assert api.admin.get(f"/api/exchanges/%2F/{exchange}").status_code == 200
    assert api.admin.get(f"/api/exchanges/%2F/{exchange}/bindings/source").json() == []


def test_user_without_read_cannot_get_or_purge(api: Api) -> None:
    queue = api.name("q")
    api.admin.put(f"/api/queues/%2F/{queue}", json={"durable": True}).raise_for_status()
    api.publish("", queue, "kept").raise_for_status()
    with api.user(".*", ".*", "^$") as user:
        got = user.post(
            f"/api/queues/%2F/{queue}/get",
            json={"count": 1, "ackmode": "ack_requeue_false", "encoding": "auto"},
        )
        assert got.status_code == 401
        assert got.json()["reason"].startswith(
            f"ACCESS_REFUSED - access to queue '{queue}' in vhost '/' refused"
        )
        assert user.delete(f"/api/queues/%2F/{queue}/contents").status_code == 401
    assert [m["payload"] for m in api.get(queue)] == ["kept"]


def test_user_with_permissions_can(api: Api) -> None:
    queue, exchange = api.name("q"), api.name("x")
    with api.user(".*", ".*", ".*") as user:
        assert user.put(f"/api/queues/%2F/{queue}", json={"durable": True}).status_code == 201
        assert user.put(f"/api/exchanges/%2F/{exchange}", json={"type": "direct"}).status_code == 201
        bound = user.post(f"/api/bindings/%2F/e/{exchange}/q/{queue}", json={"routing_key": "k"})
        assert bound.status_code == 201
        published = user.post(
            f"/api/exchanges/%2F/{exchange}/publish",
            json={"routing_key": "k", "payload": "hi", "payload_encoding": "string",
                  "properties": {}},
        )
        assert published.json() == {"routed": True}
        assert [m["payload"] for m in api.get(queue)] == ["hi"]
        assert user.delete(f"/api/exchanges/%2F/{exchange}").status_code == 204
        assert user.delete(f"/api/queues/%2F/{queue}").status_code == 204


# ---------------------------------------------------------------- publish


def test_http_publish_honours_expiration(api: Api) -> None:
    queue = api.name("q")
    api.admin.put(f"/api/queues/%2F/{queue}", json={"durable": True}).raise_for_status()
    assert api.publish("", queue, "short", expiration="100").json() == {"routed": True}
    assert api.publish("", queue, "long").json() == {"routed": True}
    time.sleep(0.3)
    assert [m["payload"] for m in api.get(queue)] == ["long"]


def test_http_publish_bad_expiration_is_refused_as_amqp(api: Api) -> None:
    queue = api.name("q")
    api.admin.put(f"/api/queues/%2F/{queue}", json={"durable": True}).raise_for_status()
    response = api.publish("", queue, "x", expiration="abc")
    assert response.status_code == 400
    assert response.json()["reason"] == (
        "406 PRECONDITION_FAILED - invalid expiration 'abc': no_integer"
    )


def test_http_mandatory_result_matches_amqp(api: Api) -> None:
    exchange = api.name("x")
    api.admin.put(f"/api/exchanges/%2F/{exchange}", json={"type": "direct"}).raise_for_status()
    assert api.publish(exchange, "nowhere", "x").json() == {"routed": False}
    conn = pika.BlockingConnection(pika.URLParameters(api.amqp_url))
    try:
        ch = conn.channel()
        returned: list[bytes] = []
        ch.add_on_return_callback(lambda *a: returned.append(a[3]))
        ch.basic_publish(exchange, "nowhere", b"x", mandatory=True)
        conn.process_data_events(time_limit=0.5)
        assert returned == [b"x"]
    finally:
        conn.close()


@needs_plugins
def test_http_publish_to_delayed_exchange_is_delayed(api: Api) -> None:
    queue, exchange = api.name("q"), api.name("x")
    api.admin.put(
        f"/api/exchanges/%2F/{exchange}",
        json={"type": "x-delayed-message", "arguments": {"x-delayed-type": "direct"}},
    ).raise_for_status()
    api.admin.put(f"/api/queues/%2F/{queue}", json={}).raise_for_status()
    api.admin.post(f"/api/bindings/%2F/e/{exchange}/q/{queue}", json={"routing_key": "k"})
    assert api.publish(exchange, "k", "later", headers={"x-delay": 400}).json() == {
        "routed": True
    }
    assert api.get(queue) == []  # held, not delivered at once
    found: list[dict[str, Any]] = []
    wait_for(
        lambda: bool(found.extend(api.get(queue)) or found),
        interval=0.05,
        what="the delayed message",
    )
    assert found[0]["payload"] == "later"
    assert found[0]["properties"]["headers"]["x-delay"] == -400


@needs_plugins
def test_http_publish_is_deduplicated(api: Api) -> None:
    queue, exchange = api.name("q"), api.name("x")
    api.admin.put(
        f"/api/exchanges/%2F/{exchange}",
        json={"type": "x-message-deduplication", "arguments": {"x-cache-size": 10}},
    ).raise_for_status()
    api.admin.put(f"/api/queues/%2F/{queue}", json={}).raise_for_status()
    api.admin.post(f"/api/bindings/%2F/e/{exchange}/q/{queue}", json={})
    assert api.publish(exchange, "", "one", message_id="m1").json() == {"routed": True}
    assert api.publish(exchange, "", "two", message_id="m1").json() == {"routed": False}
    # the same key over AMQP is a duplicate too: one cache for both paths
    conn = pika.BlockingConnection(pika.URLParameters(api.amqp_url))
    try:
        conn.channel().basic_publish(
            exchange, "", b"three", pika.BasicProperties(message_id="m1")
        )
    finally:
        conn.close()
    assert [m["payload"] for m in api.get(queue)] == ["one"]


# ------------------------------------------------------ topic permissions


def _refused(fn: Callable[[], Any]) -> str:
    try:
        fn()
    except pika.exceptions.ChannelClosedByBroker as exc:
        return f"{exc.reply_code} {exc.reply_text}"
    return "not refused"


def test_topic_permissions_limit_routing_and_binding_keys(api: Api) -> None:
    with api.user(".*", ".*", ".*") as _:
        user = api.users[-1]
    exchange = api.name("x")
    api.admin.put(f"/api/exchanges/%2F/{exchange}", json={"type": "topic"}).raise_for_status()
    url = f"/api/topic-permissions/%2F/{user}"
    assert api.admin.get(url).status_code == 404
    missing = api.admin.put(url, json={"exchange": exchange, "write": "^a"})
    assert missing.status_code == 400
    assert missing.json()["reason"] == "[{key_missing,read}]"
    created = api.admin.put(
        url, json={"exchange": exchange, "write": "^a\\.", "read": "^{username}\\."}
    )
    assert created.status_code in (201, 204)
    rows = api.admin.get(url).json()
    assert rows == [
        {"user": user, "vhost": "/", "exchange": exchange, "write": "^a\\.",
         "read": "^{username}\\."}
    ]
    assert api.admin.get(f"/api/users/{user}/topic-permissions").json() == rows
    amqp = api.amqp_url.replace("guest:guest", f"{user}:pw")
    conn = pika.BlockingConnection(pika.URLParameters(amqp))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish(exchange, "a.ok", b"x")  # allowed
        assert _refused(lambda: ch.basic_publish(exchange, "b.no", b"x")) == (
            f"403 ACCESS_REFUSED - access to topic 'b.no' in exchange '{exchange}' "
            f"in vhost '/' refused for user '{user}'"
        )
        ch = conn.channel()
        queue = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(queue, exchange, f"{user}.events")  # {username} expanded
        assert _refused(lambda: ch.queue_bind(queue, exchange, "other.events")).startswith(
            "403 ACCESS_REFUSED - access to topic 'other.events'"
        )
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish("amq.direct", "b.no", b"x")  # only topic exchanges
    finally:
        conn.close()
    assert api.admin.delete(url).status_code == 204
    assert api.admin.get(url).status_code == 404
    assert api.admin.delete(url).status_code == 404
