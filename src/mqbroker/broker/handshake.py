"""The AMQP handshake's access decisions: who logs in, which vhost opens.

Strategy: ``connection.start-ok`` and ``connection.open`` are the only
places a connection is refused before it can do anything; both read the
users, permissions and limits that ``access.py`` keeps, in RabbitMQ's
order (limits first, then permissions) and with its texts, and log each
refusal once, here, at the edge.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mqbroker import errors
from mqbroker.broker.access import AccessControl, is_loopback
from mqbroker.broker.auth import LoginRefused
from mqbroker.log import get_logger

if TYPE_CHECKING:
    from mqbroker.broker.session import Session
    from mqbroker.broker.vhost import VHost

log = get_logger("mqbroker.access")


def authenticate(access: AccessControl, session: Session, mechanism: str, response: bytes) -> str:
    """connection.start-ok: the user name, or ``LoginRefused`` (403)."""
    try:
        if mechanism == "EXTERNAL":
            name = _external(access, session, response)
        elif mechanism not in session.conn.mechanisms.split():
            raise LoginRefused(mechanism, f"mechanism {mechanism!r} not offered")
        else:
            name = access.users.authenticate(mechanism, response)
        if name in access.loopback_users and not is_loopback(session.peer):
            raise LoginRefused(
                mechanism, f"user '{name}' can only connect via localhost"
            )
    except LoginRefused as exc:
        log.warning(
            "auth.failed", peer=session.peer, mechanism=mechanism, reason=exc.reason
        )
        caps = session.conn.client_properties.get("capabilities")
        if not (isinstance(caps, dict) and caps.get("authentication_failure_close")):
            # RabbitMQ closes the socket without a word for clients
            # that did not ask for the 403 (connection.close skipped).
            session.conn.drop_without_close()
        raise
    return name

def _external(access: AccessControl, session: Session, response: bytes) -> str:
    if "EXTERNAL" not in session.conn.mechanisms.split():
        raise LoginRefused("EXTERNAL", "EXTERNAL not offered on this connection")
    name = session.tls_peer_cn
    if not name:
        raise LoginRefused("EXTERNAL", "no verified client certificate")
    # The SASL response may carry an authorization identity; RabbitMQ
    # ignores it, so do we, but it must not name someone else.
    authzid = response.decode("utf-8", "replace") if response else ""
    if authzid and authzid != name:
        raise LoginRefused(
            "EXTERNAL", f"authzid {authzid!r} differs from certificate CN {name!r}"
        )
    if name not in access.users.users:
        raise LoginRefused("EXTERNAL", f"user '{name}' - invalid credentials")
    return name

def open_vhost(access: AccessControl, session: Session, name: str) -> VHost:
    """connection.open: limits, then access, in RabbitMQ's order."""
    user = session.user
    limit = access.config.connection_max
    if limit is not None and access.tcp_connections > limit:
        raise errors.NotAllowed(
            f"connection refused: node connection limit ({limit}) is reached"
        )
    vhost = access.broker.vhosts.get(name)
    if vhost is None:
        raise errors.NotAllowed(f"vhost {name} not found")
    limit = access.vhost_limit(name, "max-connections")
    if limit is not None:
        count = sum(1 for s in access.broker.sessions if s.vhost is vhost)
        if count >= limit:
            raise errors.NotAllowed(
                f"access to vhost '{name}' refused for user '{user}': "
                f"connection limit ({limit}) is reached"
            )
    limit = access.user_limit(user, "max-connections")
    if limit is not None:
        count = sum(1 for s in access.broker.sessions if s.user == user)
        if count >= limit:
            raise errors.NotAllowed(
                f"connection refused for user '{user}': user connection "
                f"limit ({limit}) is reached"
            )
    if (user, name) not in access.permissions:
        log.warning("access.vhost_refused", peer=session.peer, user=user, vhost=name)
        raise errors.NotAllowed(f"access to vhost '{name}' refused for user '{user}'")
    return vhost
