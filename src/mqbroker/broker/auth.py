"""Users and SASL: who may connect.

Strategy: passwords are stored as salted PBKDF2-SHA256 hashes, never in
clear; SASL responses are parsed here (PLAIN and AMQPLAIN) and every
failure raises the same connection-level 403 with no detail for the peer
(the detail goes to the log through the exception's ``reason``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass, field

from pamqp import decode

from mqbroker import errors

_ITERATIONS = 10_000


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, _ITERATIONS)
    return f"pbkdf2-sha256${_ITERATIONS}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, iterations, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "pbkdf2-sha256":
        return False
    candidate = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), bytes.fromhex(salt), int(iterations)
    )
    return hmac.compare_digest(candidate.hex(), digest)


class LoginRefused(errors.AuthFailure):
    def __init__(self, mechanism: str, reason: str) -> None:
        super().__init__(
            f"Login was refused using authentication mechanism {mechanism}. "
            "For details see the broker logfile."
        )
        self.reason = reason


@dataclass
class User:
    name: str
    password_hash: str
    tags: list[str] = field(default_factory=list)


class UserStore:
    def __init__(self) -> None:
        self.users: dict[str, User] = {}
        # A successful check is remembered (by a digest of the password),
        # so a reconnect storm does not pay PBKDF2 for every connection.
        self._verified: dict[str, bytes] = {}

    def add(self, name: str, password: str, tags: list[str] | None = None) -> User:
        user = User(name, hash_password(password), list(tags or []))
        self.users[name] = user
        self._verified.pop(name, None)
        return user

    def put(self, user: User) -> None:
        """Add or replace a user whose password is already hashed."""
        self.users[user.name] = user
        self._verified.pop(user.name, None)

    def remove(self, name: str) -> User | None:
        self._verified.pop(name, None)
        return self.users.pop(name, None)

    def check(self, name: str, password: str) -> bool:
        user = self.users.get(name)
        if user is None or not password:
            # RabbitMQ refuses blank passwords whatever is stored.
            return False
        quick = hashlib.sha256(password.encode() + user.password_hash.encode()).digest()
        cached = self._verified.get(name)
        if cached is not None:
            return hmac.compare_digest(cached, quick)
        if verify_password(password, user.password_hash):
            self._verified[name] = quick
            return True
        return False

    def authenticate(self, mechanism: str, response: bytes) -> str:
        if mechanism == "PLAIN":
            name, password = _parse_plain(response)
        elif mechanism == "AMQPLAIN":
            name, password = _parse_amqplain(response)
        else:
            raise LoginRefused(mechanism, f"unsupported mechanism {mechanism!r}")
        if not self.check(name, password):
            raise LoginRefused(mechanism, f"invalid credentials for user {name!r}")
        return name


def _parse_plain(response: bytes) -> tuple[str, str]:
    parts = response.split(b"\x00")
    if len(parts) != 3:
        raise LoginRefused("PLAIN", "malformed PLAIN response")
    authzid, authcid, password = parts
    if authzid and authzid != authcid:
        raise LoginRefused("PLAIN", "authzid differs from authcid")
    try:
        return authcid.decode("utf-8"), password.decode("utf-8")
    except UnicodeDecodeError:
        raise LoginRefused("PLAIN", "credentials are not UTF-8") from None


def _parse_amqplain(response: bytes) -> tuple[str, str]:
    try:
        _, table = decode.field_table(struct.pack(">I", len(response)) + response)
    except (ValueError, struct.error, KeyError, TypeError):
        raise LoginRefused("AMQPLAIN", "malformed AMQPLAIN table") from None
    name, password = table.get("LOGIN"), table.get("PASSWORD")
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    if isinstance(password, bytes):
        password = password.decode("utf-8", "replace")
    if not isinstance(name, str) or not isinstance(password, str):
        raise LoginRefused("AMQPLAIN", "LOGIN/PASSWORD missing")
    return name, password
