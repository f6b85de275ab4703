"""amqp-tools (rabbitmq-c's command-line clients) against the broker.

Differential: with ``MQBROKER_EXTERNAL_URL`` the same commands run against
RabbitMQ, and every expectation here (outputs, exit codes, error texts)
was checked against RabbitMQ 3.10.8 that way. Not covered: ``amqp-consume
--exchange`` without ``--queue`` (declare a server-named queue and bind
it), which crashes the tool itself (segfault in amqp-tools 0.11.0 from
Debian) against both brokers alike.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from typing import Any

import pika
import pytest

pytestmark = pytest.mark.skipif(
    shutil.which("amqp-publish") is None,
    reason="amqp-tools is not installed (apt-get install amqp-tools; .ci/run does)",
)


def _run(tool: str, url: str, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([tool, "-u", url, *args], input=stdin, capture_output=True, timeout=30)


@pytest.fixture
def url(broker: Any) -> str:
    return str(broker.url)


def test_declare_publish_get_delete(url: str, uniq: Callable[[str], str]) -> None:
    q = uniq("tools")
    declared = _run("amqp-declare-queue", url, "-q", q, "-d")
    assert declared.returncode == 0 and declared.stdout.decode().strip() == q
    published = _run("amqp-publish", url, "-r", q, "-b", "hello", "-C", "text/plain",
                     "-E", "utf-8", "-H", "team: ops", "-p", "-t", "replies")
    assert published.returncode == 0, published.stderr
    conn = pika.BlockingConnection(pika.URLParameters(url))
    method, props, body = conn.channel().basic_get(q, auto_ack=False)
    assert body == b"hello"
    assert (props.content_type, props.content_encoding, props.delivery_mode,
            props.reply_to, props.headers) == ("text/plain", "utf-8", 2, "replies",
                                               {"team": "ops"})
    conn.close()  # not acked: back in the queue for amqp-get
    got = _run("amqp-get", url, "-q", q)
    assert (got.returncode, got.stdout) == (0, b"hello")
    empty = _run("amqp-get", url, "-q", q)
    assert empty.returncode == 2  # the tool's "queue empty"
    deleted = _run("amqp-delete-queue", url, "-q", q)
    assert (deleted.returncode, deleted.stdout.strip()) == (0, b"0")


def test_line_buffered_publish_and_consume_with_a_command(url: str, uniq: Callable[[str], str]) -> None:
    q = uniq("tools")
    assert _run("amqp-declare-queue", url, "-q", q).returncode == 0
    assert _run("amqp-publish", url, "-r", q, "-l", stdin=b"one\ntwo\nthree\n").returncode == 0
    consumed = _run("amqp-consume", url, "-q", q, "-c", "3", "-p", "1", "--",
                    "sh", "-c", "cat; echo")
    assert consumed.returncode == 0, consumed.stderr
    assert consumed.stdout.split() == [b"one", b"two", b"three"]
    deleted = _run("amqp-delete-queue", url, "-q", q)
    assert deleted.stdout.strip() == b"0"  # consume acked every message


def test_errors_and_exit_codes(url: str, uniq: Callable[[str], str]) -> None:
    missing = _run("amqp-get", url, "-q", uniq("missing"))
    assert missing.returncode == 1
    assert b"server channel error 404, message: NOT_FOUND - no queue" in missing.stderr
    no_exchange = _run("amqp-publish", url, "-e", uniq("nox"), "-r", "k", "-b", "z")
    assert no_exchange.returncode == 1
    assert b"404, message: NOT_FOUND - no exchange" in no_exchange.stderr
    q = uniq("tools")
    assert _run("amqp-declare-queue", url, "-q", q, "-d").returncode == 0
    again = _run("amqp-declare-queue", url, "-q", q)  # not durable this time
    assert again.returncode == 1
    assert (b"406, message: PRECONDITION_FAILED - inequivalent arg 'durable' for queue '"
            + q.encode() + b"' in vhost '/': received 'false' but current is 'true'"
            ) in again.stderr
    assert _run("amqp-delete-queue", url, "-q", q).returncode == 0
    bad_login = url.replace("guest:guest@", "guest:wrong@", 1)
    refused = _run("amqp-declare-queue", bad_login, "-q", q)
    assert refused.returncode == 1
    assert (b"server connection error 403, message: ACCESS_REFUSED - Login was refused "
            b"using authentication mechanism PLAIN") in refused.stderr
