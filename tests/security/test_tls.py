"""The amqps listener and SASL EXTERNAL, with a CA made during the run.

trustme issues a CA, a server certificate for localhost/127.0.0.1 and
client certificates whose subject CN is the user name EXTERNAL logs in as.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path
from typing import Any

import aio_pika
import pika
import pika.credentials
import pika.exceptions
import pytest
import trustme
from pamqp import commands

from support.raw import Closed, RawClient, close_code
from support.waits import wait_until


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    other_ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    server.cert_chain_pems[0].write_to_path(str(d / "server.pem"))
    for pem in server.cert_chain_pems[1:]:
        pem.write_to_path(str(d / "server.pem"), append=True)
    server.private_key_pem.write_to_path(str(d / "server.key"))
    return {
        "dir": d,
        "ca": ca,
        "other_ca": other_ca,
        "alice": ca.issue_cert("alice@example.test", common_name="alice"),
        "mallory": other_ca.issue_cert("mallory@example.test", common_name="alice"),
        "nobody": ca.issue_cert("nobody@example.test", common_name="nobody"),
    }


def tls_config(pki: dict[str, Any], **kw: Any) -> dict[str, Any]:
    d: Path = pki["dir"]
    base = dict(
        tls_port=0,
        tls_certfile=d / "server.pem",
        tls_keyfile=d / "server.key",
        tls_cafile=d / "ca.pem",
        tls_verify_peer=True,
    )
    base.update(kw)
    return base


def client_context(pki: dict[str, Any], cert: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    pki["ca"].configure_trust(ctx)
    if cert is not None:
        pki[cert].configure_cert(ctx)
    return ctx


def tls_params(b: Any, ctx: ssl.SSLContext, credentials: Any) -> pika.ConnectionParameters:
    return pika.ConnectionParameters(
        host="localhost",
        port=b.tls_port,
        ssl_options=pika.SSLOptions(ctx, server_hostname="localhost"),
        credentials=credentials,
        connection_attempts=1,
        socket_timeout=5,
        stack_timeout=10,
    )


@pytest.fixture
def tls_broker(make_broker: Any, pki: dict[str, Any]) -> Any:
    b = make_broker(**tls_config(pki))

    def setup() -> None:
        b.access.add_user("alice", None)  # no password: EXTERNAL only
        b.access.set_permissions("alice", "/")
    b.call(setup)
    return b


def test_plain_login_over_tls(tls_broker: Any, pki: dict[str, Any]) -> None:
    params = tls_params(tls_broker, client_context(pki), pika.PlainCredentials("guest", "guest"))
    with contextlib.closing(pika.BlockingConnection(params)) as conn:
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, b"over tls")
        assert wait_until(lambda: ch.queue_declare(q, passive=True).method.message_count == 1)
        assert ch.basic_get(q, auto_ack=True)[2] == b"over tls"
    assert tls_broker.info.tls_port != tls_broker.port


def test_external_with_client_certificate(tls_broker: Any, pki: dict[str, Any]) -> None:
    with RawClient("127.0.0.1", tls_broker.tls_port,
                   ssl_context=client_context(pki, "alice")) as r:
        r.send(b"AMQP\x00\x00\x09\x01")
        r.start = r.expect(commands.Connection.Start)
        assert r.mechanisms() == ["PLAIN", "AMQPLAIN", "EXTERNAL"]
    params = tls_params(tls_broker, client_context(pki, "alice"),
                        pika.credentials.ExternalCredentials())
    with contextlib.closing(pika.BlockingConnection(params)) as conn:
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, b"hi", pika.BasicProperties(user_id="alice"))
        assert wait_until(lambda: ch.queue_declare(q, passive=True).method.message_count == 1)
        sessions = tls_broker.call(
            lambda: [(s.user, s.tls_peer_cn) for s in tls_broker.broker.sessions]
        )
        assert sessions == [("alice", "alice")]


def test_external_with_aio_pika(tls_broker: Any, pki: dict[str, Any]) -> None:
    async def main() -> bytes:
        conn = await aio_pika.connect(
            host="localhost",
            port=tls_broker.tls_port,
            ssl=True,
            ssl_context=client_context(pki, "alice"),
            login="",
            password="",
            client_properties={},
            # aiormq takes the SASL mechanism from the "auth" URL parameter
            auth="external",
            timeout=10,
        )
        async with conn:
            ch = await conn.channel()
            q = await ch.declare_queue("", exclusive=True)
            await ch.default_exchange.publish(aio_pika.Message(b"aio"), routing_key=q.name)
            msg = await q.get(timeout=5, fail=True)
            assert msg is not None
            await msg.ack()
            return bytes(msg.body)

    assert asyncio.run(main()) == b"aio"


def test_external_not_offered_without_client_cert(tls_broker: Any, pki: dict[str, Any]) -> None:
    with RawClient("127.0.0.1", tls_broker.tls_port, ssl_context=client_context(pki)) as r:
        r.start_ok(mechanism="EXTERNAL", response="")
        assert r.mechanisms() == ["PLAIN", "AMQPLAIN"]
        close = r.read_until_close()
        assert close is not None and close_code(close)[0] == 403
    # pika refuses client-side: the server does not offer EXTERNAL
    params = tls_params(tls_broker, client_context(pki), pika.credentials.ExternalCredentials())
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(params)


def test_external_not_offered_on_plain_tcp(tls_broker: Any) -> None:
    with RawClient("127.0.0.1", tls_broker.port) as r:
        r.start_ok(mechanism="EXTERNAL", response="")
        assert "EXTERNAL" not in r.mechanisms()
        close = r.read_until_close()
        assert close is not None and close_code(close)[0] == 403


def test_external_for_unknown_user_is_403(tls_broker: Any, pki: dict[str, Any]) -> None:
    with RawClient("127.0.0.1", tls_broker.tls_port,
                   ssl_context=client_context(pki, "nobody")) as r:
        r.start_ok(mechanism="EXTERNAL", response="")
        close = r.read_until_close()
        assert close is not None
        assert close_code(close) == (
            403,
            "ACCESS_REFUSED - Login was refused using authentication mechanism "
            "EXTERNAL. For details see the broker logfile.",
        )


def test_external_authzid_must_match_cn(tls_broker: Any, pki: dict[str, Any]) -> None:
    with RawClient("127.0.0.1", tls_broker.tls_port,
                   ssl_context=client_context(pki, "alice")) as r:
        r.start_ok(mechanism="EXTERNAL", response="guest")
        close = r.read_until_close()
        assert close is not None and close_code(close)[0] == 403


def test_certificate_from_another_ca_is_rejected(tls_broker: Any, pki: dict[str, Any]) -> None:
    ctx = client_context(pki, "mallory")
    with pytest.raises((ssl.SSLError, ConnectionResetError, Closed, OSError)):
        with RawClient("127.0.0.1", tls_broker.tls_port, ssl_context=ctx) as r:
            r.send(b"AMQP\x00\x00\x09\x01")
            r.read_frame(timeout=5)
    # the broker is fine
    params = tls_params(tls_broker, client_context(pki), pika.PlainCredentials("guest", "guest"))
    with contextlib.closing(pika.BlockingConnection(params)):
        pass


def test_fail_if_no_peer_cert(make_broker: Any, pki: dict[str, Any]) -> None:
    b = make_broker(**tls_config(pki, tls_fail_if_no_peer_cert=True))
    with pytest.raises((ssl.SSLError, ConnectionResetError, Closed, OSError)):
        with RawClient("127.0.0.1", b.tls_port, ssl_context=client_context(pki)) as r:
            r.send(b"AMQP\x00\x00\x09\x01")
            r.read_frame(timeout=5)
    with RawClient("127.0.0.1", b.tls_port, ssl_context=client_context(pki, "alice")) as r:
        r.send(b"AMQP\x00\x00\x09\x01")
        r.expect(commands.Connection.Start)


def test_no_client_verification_means_no_external(make_broker: Any, pki: dict[str, Any]) -> None:
    b = make_broker(**tls_config(pki, tls_verify_peer=False))
    with RawClient("127.0.0.1", b.tls_port, ssl_context=client_context(pki, "alice")) as r:
        r.send(b"AMQP\x00\x00\x09\x01")
        r.start = r.expect(commands.Connection.Start)
        assert "EXTERNAL" not in r.mechanisms()


def test_plain_tcp_client_on_tls_port_and_slow_handshake(make_broker: Any, pki: dict[str, Any]) -> None:
    b = make_broker(**tls_config(pki, tls_handshake_timeout_s=0.5))
    with RawClient("127.0.0.1", b.tls_port) as r:  # speaks AMQP, not TLS
        r.send(b"AMQP\x00\x00\x09\x01")
        assert r.wait_eof(5)
    with RawClient("127.0.0.1", b.tls_port) as r:  # says nothing at all
        assert r.wait_eof(5)
    assert wait_until(lambda: b.tcp_connections() == 0)
    params = tls_params(b, client_context(pki), pika.PlainCredentials("guest", "guest"))
    with contextlib.closing(pika.BlockingConnection(params)):
        pass


def test_tls_cli_flags() -> None:
    from mqbroker.__main__ import build_parser, config_from_args

    args = build_parser().parse_args([
        "serve", "--tls-port", "5999", "--tls-certfile", "c.pem", "--tls-keyfile", "k.pem",
        "--tls-cafile", "ca.pem", "--tls-verify-peer", "--tls-fail-if-no-peer-cert",
        "--connection-max", "7",
    ])
    config = config_from_args(args)
    assert config.tls_port == 5999
    assert config.tls_certfile == Path("c.pem") and config.tls_keyfile == Path("k.pem")
    assert config.tls_cafile == Path("ca.pem")
    assert config.tls_verify_peer and config.tls_fail_if_no_peer_cert
    assert config.connection_max == 7
    default = config_from_args(build_parser().parse_args(["serve"]))
    assert default.tls_port == 5671 and default.tls_certfile is None
    assert not default.tls_verify_peer


def test_management_api_over_https(make_broker: Any, pki: dict[str, Any]) -> None:
    import httpx

    b = make_broker(**tls_config(pki, tls_verify_peer=False), management_port=0,
                    management_tls=True)
    port = b.info.management_port
    ctx = client_context(pki)
    with httpx.Client(verify=ctx, auth=("guest", "guest"), timeout=10) as http:
        reply = http.get(f"https://localhost:{port}/api/overview")
    assert reply.status_code == 200
    assert reply.json()["management_version"]
    # Plain HTTP on the HTTPS port does not get the API.
    with httpx.Client(auth=("guest", "guest"), timeout=5) as http:
        with pytest.raises(httpx.HTTPError):
            http.get(f"http://127.0.0.1:{port}/api/overview")
