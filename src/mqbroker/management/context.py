"""The management listener's view of the broker: who is calling
(authentication, RabbitMQ's tag rules), which vhosts, queues and
connections that caller may see, and waiting for a group commit before a
handler answers.

Strategy: one ``Management`` object per listener is handed to every
endpoint; endpoints are plain functions of ``(mgmt, request)``, so they can
live in one module per resource (``management/api/``) with no closures.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import urllib.parse
from typing import Any

import trio
from starlette.requests import Request

from mqbroker.broker import definitions as defs
from mqbroker.broker import explain
from mqbroker.broker.broker import Broker
from mqbroker.config import Config
from mqbroker.log import get_logger
from mqbroker.management import views
from mqbroker.management.web import HTTPError, not_found, vhost_param
from mqbroker.queues.queue import Queue

log = get_logger("mqbroker.management")

SAMPLE_INTERVAL_S = 1.0
DURABLE_WAIT_S = 30.0


def _is_loopback(host: str) -> bool:
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


class Management:
    def __init__(self, broker: Broker, config: Config) -> None:
        self.broker = broker
        self.config = config
        self.stats = views.Stats(broker)
        self.port: int | None = None

    async def sample_forever(self) -> None:
        while True:
            try:
                self.stats.tick()
            except Exception:  # stats must never take the broker down
                log.exception("management.sample_failed")
            await trio.sleep(SAMPLE_INTERVAL_S)

    async def wait_durable(self, epoch: int) -> bool:
        """True once everything up to ``epoch`` is committed."""
        broker = self.broker
        if epoch <= 0 or not broker.store.durable:
            return True
        with trio.move_on_after(DURABLE_WAIT_S):
            while broker.committed_epoch < epoch:
                broker.request_commit()
                await trio.sleep(0.002)
            return True
        return False

    # -------------------------------------------------------- auth

    def authenticate(self, request: Request) -> str:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic" or not token:
            raise HTTPError(401, "not_authorised", "Login failed")
        try:
            name, _, password = (
                base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")
            )
        except (binascii.Error, UnicodeDecodeError):
            raise HTTPError(401, "not_authorised", "Login failed") from None
        users = self.broker.users
        if not users.check(name, password):
            raise HTTPError(401, "not_authorised", "Login failed")
        user = users.users[name]
        if not set(user.tags) & views.MANAGEMENT_TAGS:
            raise HTTPError(401, "not_authorised", "Not management user")
        loopback_only = getattr(self.config, "loopback_users", ())
        client = request.client.host if request.client else ""
        if name in loopback_only and not _is_loopback(client):
            raise HTTPError(401, "not_authorised", f"User '{name}' can only log in via localhost")
        return name

    def authorize(self, request: Request, user: str, need: frozenset[str] | None) -> None:
        """Tags as RabbitMQ uses them: ``administrator`` may do anything;
        ``need`` lists the tags an endpoint requires (None: any management
        tag); an endpoint about one vhost needs a permission there, unless
        the user is an administrator or monitoring."""
        tags = set(self.broker.users.users[user].tags)
        if "administrator" in tags:
            return
        if need is not None and not tags & need:
            # RabbitMQ answers every authorisation failure with 401.
            role = "policymaker" if "policymaker" in need else "administrator"
            raise HTTPError(401, "not_authorised", f"Not {role} user")
        vhost = request.path_params.get("vhost")
        if vhost is None:
            return
        name = urllib.parse.unquote(vhost)
        if request.method in ("GET", "HEAD") and "monitoring" in tags:
            return
        if not defs.list_permissions(self.broker, user=user, vhost=name):
            raise HTTPError(
                401, "not_authorised", "User not authorised to access virtual host"
            )

    # ------------------------------------------------------ helpers

    def vhost(self, name: str) -> Any:
        vhost = self.broker.vhosts.get(name)
        if vhost is None:
            raise not_found(f"no vhost '{name}'")
        return vhost

    def queue(self, vhost: str, name: str) -> Queue:
        queue: Queue | None = self.vhost(vhost).queues.get(name)
        if queue is None:
            raise not_found(f"no queue '{name}' in vhost '{vhost}'")
        return queue

    def session(self, name: str) -> Any:
        for session in self.broker.sessions:
            if views.connection_name(session, self.broker) == name:
                return session
        raise not_found(f"no connection '{name}'")

    def may_use(self, user: str, vhost: str) -> bool:
        tags = set(self.broker.users.users[user].tags)
        if tags & {"administrator", "monitoring"}:
            return True
        return bool(defs.list_permissions(self.broker, user=user, vhost=vhost))

    def vhosts_of(self, request: Request) -> list[Any]:
        if "vhost" in request.path_params:
            return [self.vhost(vhost_param(request))]
        user = request.state.user
        return [v for v in self.broker.vhosts.values() if self.may_use(user, v.name)]

    def queue_rows(self, vhosts: list[Any]) -> list[dict[str, Any]]:
        rows = []
        for vhost in vhosts:
            sources = explain.dead_letter_targets(vhost)
            for queue in vhost.queues.values():
                rows.append(views.queue_json(self.stats, vhost, queue, dl_sources=sources))
        return rows

    def listeners(self) -> list[dict[str, Any]]:
        out = [
            {
                "node": views.NODE,
                "protocol": "amqp",
                "ip_address": self.config.host,
                "port": self.amqp_port(),
            }
        ]
        if self.port is not None:
            out.append(
                {
                    "node": views.NODE,
                    "protocol": "http",
                    "ip_address": self.config.host,
                    "port": self.port,
                }
            )
        return out

    def amqp_port(self) -> int:
        for session in self.broker.sessions:
            local = views.local_addr(session, self.broker)
            return int(local.rpartition(":")[2] or 0)
        return self.config.port

    def visible_sessions(self, request: Request) -> list[Any]:
        """Connections this user may see: all for administrator and
        monitoring, otherwise only the user's own (as in RabbitMQ)."""
        user = request.state.user
        tags = set(self.broker.users.users[user].tags)
        if tags & {"administrator", "monitoring"}:
            return list(self.broker.sessions)
        return [s for s in self.broker.sessions if s.user == user]
