"""TLS for the ``amqps`` listener: the server context and the peer identity.

Strategy: the listener wraps each accepted TCP stream in ``trio.SSLStream``;
the connection task runs the handshake itself (bounded by
``tls_handshake_timeout_s``) before it speaks AMQP, so it knows before
``connection.start`` whether a verified client certificate is present and
can offer SASL EXTERNAL (as RabbitMQ's rabbitmq_auth_mechanism_ssl does
only on TLS connections with a peer certificate).

Verification follows RabbitMQ's ``ssl_options``: ``verify_peer`` asks for a
client certificate and rejects one that does not chain to ``tls_cafile``;
``fail_if_no_peer_cert`` also rejects clients that send none.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

import trio

from mqbroker.config import Config


def tls_enabled(config: Config) -> bool:
    return config.tls_certfile is not None and config.tls_keyfile is not None


def make_server_context(config: Config) -> ssl.SSLContext:
    assert config.tls_certfile is not None and config.tls_keyfile is not None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(config.tls_certfile), str(config.tls_keyfile))
    if config.tls_verify_peer or config.tls_fail_if_no_peer_cert:
        if config.tls_cafile is None:
            raise ValueError("tls_verify_peer needs tls_cafile (the client CA)")
        ctx.load_verify_locations(cafile=str(config.tls_cafile))
        ctx.verify_mode = (
            ssl.CERT_REQUIRED if config.tls_fail_if_no_peer_cert else ssl.CERT_OPTIONAL
        )
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def socket_of(stream: trio.abc.Stream) -> socket.socket | None:
    """The OS socket under a (possibly TLS-wrapped) trio stream."""
    while True:
        if isinstance(stream, trio.SocketStream):
            return stream.socket  # type: ignore[return-value]
        inner = getattr(stream, "transport_stream", None)
        if inner is None:
            return None
        stream = inner


def peer_common_name(cert: dict[str, Any] | None) -> str | None:
    """The subject CN of a verified peer certificate (``getpeercert()``)."""
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


async def handshake(stream: trio.SSLStream[Any], timeout_s: float) -> str | None:
    """Run the TLS handshake; the verified client certificate's CN or None.

    Raises ``trio.TooSlowError`` on timeout and ``trio.BrokenResourceError``
    when the handshake fails (bad certificate, not TLS, peer gone)."""
    with trio.fail_after(timeout_s):
        await stream.do_handshake()
    # getpeercert() returns the certificate only when it was verified
    # (verify_mode != CERT_NONE); an empty dict otherwise.
    return peer_common_name(stream.getpeercert())
