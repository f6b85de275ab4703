"""Users, vhosts and permissions with real clients (pika, raw frames).

Every refusal is checked for its exact reply code and text (RabbitMQ's
wording), and every test also checks that another tenant's connection is
unaffected.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions
import psutil
import pytest
from pamqp import commands

from mqbroker.broker.access import Permission, is_loopback, resource_name
from support.raw import RawClient, close_code
from support.waits import wait_until

# ------------------------------------------------------------ helpers


def add_user(b: Any, name: str, password: str | None = "pw", vhost: str | None = "/",
             perms: tuple[str, str, str] | None = (".*", ".*", ".*"),
             tags: tuple[str, ...] = ()) -> None:
    def go() -> None:
        b.access.add_user(name, password, tags)
        if vhost is not None and perms is not None:
            b.access.set_permissions(name, vhost, *perms)
    b.call(go)


def roundtrip(conn: pika.BlockingConnection, queue: str | None = None) -> None:
    """Declare, publish, get: the connection fully works."""
    ch = conn.channel()
    q = queue or ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"ping")
    for _ in range(100):
        method, _, body = ch.basic_get(q, auto_ack=True)
        if method is not None:
            assert body == b"ping"
            ch.close()
            return
        conn.process_data_events(0.02)
    raise AssertionError("round trip failed")


def refused(fn: Callable[[], Any]) -> tuple[int, str]:
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        fn()
    return info.value.reply_code, info.value.reply_text


# ------------------------------------------------------------ unit level


def test_resource_name_maps_default_exchange() -> None:
    assert resource_name("exchange", "") == "amq.default"
    assert resource_name("queue", "") == ""
    assert resource_name("exchange", "x") == "x"


def test_regex_semantics_are_unanchored_search() -> None:
    # rabbit_auth_backend_internal: re:run(Name, Regex) with no anchors.
    p = Permission("u", "/", configure="foo", write="^foo$", read="")
    assert p.allows("configure", "foo")
    assert p.allows("configure", "a-foo-b")  # matches anywhere
    assert not p.allows("configure", "bar")
    assert p.allows("write", "foo") and not p.allows("write", "foo2")
    assert not p.allows("read", "anything")  # "" is "^$"
    assert not Permission("u", "/", "^$", "^$", "^$").full
    assert Permission("u", "/").full
    with pytest.raises(ValueError):
        Permission("u", "/", configure="(")


@pytest.mark.parametrize(
    "peer,expected",
    [
        ("127.0.0.1:5555", True),
        ("127.8.9.1:1", True),
        ("::1:40000", True),
        ("::ffff:127.0.0.1:40000", True),
        ("192.0.2.2:5555", False),
        ("10.0.0.1:1", False),
        ("unknown", False),
    ],
)
def test_is_loopback(peer: str, expected: bool) -> None:
    assert is_loopback(peer) is expected


# ------------------------------------------------------------ vhost access


def test_default_guest_has_full_access(sec_broker: Any) -> None:
    with contextlib.closing(sec_broker.connect()) as conn:
        roundtrip(conn)


def test_vhost_without_permission_is_530(sec_broker: Any) -> None:
    add_user(sec_broker, "alice", vhost=None)
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as info:
        sec_broker.connect(user="alice", password="pw")
    assert "(530)" in str(info.value)
    assert "NOT_ALLOWED - access to vhost '/' refused for user 'alice'" in str(info.value)
    # raw: the exact close
    with RawClient(sec_broker.host, sec_broker.port) as r:
        r.start_ok("alice", "pw")
        tune = r.expect(commands.Connection.Tune)
        r.send_method(commands.Connection.TuneOk(channel_max=tune.channel_max,
                                                 frame_max=tune.frame_max, heartbeat=0))
        r.send_method(commands.Connection.Open(virtual_host="/"))
        close = r.read_until_close()
        assert close is not None
        assert close_code(close) == (
            530, "NOT_ALLOWED - access to vhost '/' refused for user 'alice'"
        )
        assert r.wait_eof()
    with contextlib.closing(sec_broker.connect()) as conn:
        roundtrip(conn)


def test_empty_permissions_still_open_the_vhost(sec_broker: Any) -> None:
    """RabbitMQ: vhost access = any permission entry, even all-empty."""
    add_user(sec_broker, "nobody", perms=("", "", ""))
    with contextlib.closing(sec_broker.connect(user="nobody", password="pw")) as conn:
        ch = conn.channel()
        code, text = refused(lambda: ch.queue_declare("nobody.q"))
        assert code == 403
        assert text == "ACCESS_REFUSED - access to queue 'nobody.q' in vhost '/' refused for user 'nobody'"


def test_vhosts_isolate_tenants(sec_broker: Any) -> None:
    def setup() -> None:
        a = sec_broker.access
        a.add_vhost("tenant-a")
        a.add_vhost("tenant-b")
        a.add_user("ua", "pa")
        a.add_user("ub", "pb")
        a.set_permissions("ua", "tenant-a")
        a.set_permissions("ub", "tenant-b")
    sec_broker.call(setup)
    ca = sec_broker.connect(user="ua", password="pa", vhost="tenant-a")
    cb = sec_broker.connect(user="ub", password="pb", vhost="tenant-b")
    try:
        cha, chb = ca.channel(), cb.channel()
        cha.queue_declare("shared-name")
        chb.queue_declare("shared-name")
        cha.basic_publish("", "shared-name", b"for-a")
        # b's queue of the same name is another queue
        assert wait_until(lambda: sec_broker.call(
            lambda: sec_broker.broker.vhosts["tenant-a"].queues["shared-name"].message_count) == 1)
        method, _, _ = chb.basic_get("shared-name", auto_ack=True)
        assert method is None
        method, _, body = cha.basic_get("shared-name", auto_ack=True)
        assert body == b"for-a"
        # ua may not open tenant-b
        with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as info:
            sec_broker.connect(user="ua", password="pa", vhost="tenant-b")
        assert "access to vhost 'tenant-b' refused for user 'ua'" in str(info.value)
        roundtrip(cb)
    finally:
        ca.close()
        cb.close()


# ------------------------------------------------------------ permissions


def test_permission_regexes_limit_names(sec_broker: Any) -> None:
    add_user(sec_broker, "alice", perms=(r"^alice\.", r"^alice\.", r"^alice\."))
    guest = sec_broker.connect()
    conn = sec_broker.connect(user="alice", password="pw")
    try:
        ch = conn.channel()
        ch.queue_declare("alice.q")
        ch.exchange_declare("alice.x", "direct")
        ch.queue_bind("alice.q", "alice.x", "k")
        ch.basic_publish("alice.x", "k", b"hello")
        assert wait_until(
            lambda: ch.queue_declare("alice.q", passive=True).method.message_count == 1
        )
        _, _, body = ch.basic_get("alice.q", auto_ack=True)
        assert body == b"hello"
        code, text = refused(lambda: conn.channel().queue_declare("bob.q"))
        assert (code, text) == (
            403, "ACCESS_REFUSED - access to queue 'bob.q' in vhost '/' refused for user 'alice'"
        )
        # the default exchange is checked as amq.default
        ch2 = conn.channel()
        ch2.basic_publish("", "alice.q", b"x")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch2.queue_declare("alice.q", passive=True)
        assert info.value.reply_code == 403
        assert info.value.reply_text == (
            "ACCESS_REFUSED - access to exchange 'amq.default' in vhost '/' "
            "refused for user 'alice'"
        )
        # another tenant is unaffected
        roundtrip(guest)
    finally:
        conn.close()
        guest.close()


# operation -> (permissions to grant (configure, write, read), op, expected refused resource)
OPS: list[tuple[str, tuple[str, str, str], str]] = [
    ("exchange.declare", ("^$", ".*", ".*"), "exchange 'p.x2'"),
    ("exchange.delete", ("^p\\.q$", ".*", ".*"), "exchange 'p.x'"),
    ("queue.declare", ("^p\\.x$", ".*", ".*"), "queue 'p.q2'"),
    ("queue.delete", ("^p\\.x$", ".*", ".*"), "queue 'p.q'"),
    ("queue.bind/write", (".*", "^p\\.x$", ".*"), "queue 'p.q'"),
    ("queue.bind/read", (".*", ".*", "^p\\.q$"), "exchange 'p.x'"),
    ("queue.unbind/write", (".*", "^p\\.x$", ".*"), "queue 'p.q'"),
    ("queue.unbind/read", (".*", ".*", "^p\\.q$"), "exchange 'p.x'"),
    ("exchange.bind/write", (".*", "^p\\.x$", ".*"), "exchange 'p.x3'"),
    ("exchange.bind/read", (".*", ".*", "^p\\.x3$"), "exchange 'p.x'"),
    ("basic.publish", (".*", "^p\\.q$", ".*"), "exchange 'p.x'"),
    ("basic.get", (".*", ".*", "^p\\.x$"), "queue 'p.q'"),
    ("basic.consume", (".*", ".*", "^p\\.x$"), "queue 'p.q'"),
    ("queue.purge", (".*", ".*", "^p\\.x$"), "queue 'p.q'"),
    ("queue.declare+dlx/write", (".*", "^$", ".*"), "exchange 'p.x'"),
    ("exchange.declare+ae/write", (".*", "^$", ".*"), "exchange 'p.x'"),
]


def _do(op: str, ch: Any) -> None:
    if op == "exchange.declare":
        ch.exchange_declare("p.x2", "direct")
    elif op == "exchange.delete":
        ch.exchange_delete("p.x")
    elif op == "queue.declare":
        ch.queue_declare("p.q2")
    elif op == "queue.delete":
        ch.queue_delete("p.q")
    elif op.startswith("queue.bind"):
        ch.queue_bind("p.q", "p.x", "k2")
    elif op.startswith("queue.unbind"):
        ch.queue_unbind("p.q", "p.x", "k")
    elif op.startswith("exchange.bind"):
        ch.exchange_bind("p.x3", "p.x", "k")
    elif op == "basic.publish":
        ch.basic_publish("p.x", "k", b"m")
        ch.queue_declare("p.q", passive=True)  # round trip: see the close
    elif op == "basic.get":
        ch.basic_get("p.q")
    elif op == "basic.consume":
        ch.basic_consume("p.q", lambda *a: None)
    elif op == "queue.purge":
        ch.queue_purge("p.q")
    elif op == "queue.declare+dlx/write":
        ch.queue_declare("p.q3", arguments={"x-dead-letter-exchange": "p.x"})
    elif op == "exchange.declare+ae/write":
        ch.exchange_declare("p.x4", "direct", arguments={"alternate-exchange": "p.x"})
    else:
        raise AssertionError(op)


@pytest.mark.parametrize("op,perms,resource", OPS, ids=[o[0] for o in OPS])
def test_operation_to_permission_mapping(sec_broker: Any, op: str,
                                         perms: tuple[str, str, str], resource: str) -> None:
    """RabbitMQ's table (access-control.md): each operation needs exactly
    the listed permission; we grant everything else and expect 403 on
    the one resource the operation needs."""
    with contextlib.closing(sec_broker.connect()) as admin:
        ch = admin.channel()
        ch.exchange_declare("p.x", "direct")
        ch.exchange_declare("p.x3", "direct")
        ch.queue_declare("p.q")
        ch.queue_bind("p.q", "p.x", "k")
    add_user(sec_broker, "pu", perms=perms)
    with contextlib.closing(sec_broker.connect(user="pu", password="pw")) as conn:
        ch = conn.channel()
        code, text = refused(lambda: _do(op, ch))
        assert code == 403
        assert text == f"ACCESS_REFUSED - access to {resource} in vhost '/' refused for user 'pu'"
        assert conn.is_open  # a channel error only
        roundtrip(sec_broker.connect())  # other users unaffected
    # With full permissions the same operation succeeds.
    add_user(sec_broker, "pu2")
    with contextlib.closing(sec_broker.connect(user="pu2", password="pw")) as conn:
        _do(op, conn.channel())


def test_server_named_queue_checked_under_generated_name(sec_broker: Any) -> None:
    add_user(sec_broker, "gen", perms=(r"^amq\.gen-", ".*", ".*"))
    add_user(sec_broker, "nogen", perms=(r"^named$", ".*", ".*"))
    with contextlib.closing(sec_broker.connect(user="gen", password="pw")) as conn:
        q = conn.channel().queue_declare("", exclusive=True).method.queue
        assert q.startswith("amq.gen-")
    with contextlib.closing(sec_broker.connect(user="nogen", password="pw")) as conn:
        code, text = refused(lambda: conn.channel().queue_declare(""))
        assert code == 403
        assert text.startswith("ACCESS_REFUSED - access to queue 'amq.gen-")
        assert text.endswith("' in vhost '/' refused for user 'nogen'")
        name = text.split("'")[1]
        # the refused queue does not linger
        assert sec_broker.call(lambda: name not in sec_broker.broker.vhosts["/"].queues)


def test_permission_change_applies_to_open_connection(sec_broker: Any) -> None:
    add_user(sec_broker, "chg")
    with contextlib.closing(sec_broker.connect(user="chg", password="pw")) as conn:
        conn.channel().queue_declare("chg.q")
        sec_broker.call(lambda: sec_broker.access.set_permissions("chg", "/", "^$", ".*", ".*"))
        code, _ = refused(lambda: conn.channel().queue_declare("chg.q2"))
        assert code == 403


def test_passive_declares_need_no_permission(sec_broker: Any) -> None:
    with contextlib.closing(sec_broker.connect()) as admin:
        admin.channel().queue_declare("pd.q")
        admin.channel().exchange_declare("pd.x", "fanout")
    add_user(sec_broker, "pd", perms=("^$", "^$", "^$"))
    with contextlib.closing(sec_broker.connect(user="pd", password="pw")) as conn:
        ch = conn.channel()
        ch.queue_declare("pd.q", passive=True)
        ch.exchange_declare("pd.x", "fanout", passive=True)


# ------------------------------------------------------------ users


def test_user_lifecycle_password_and_tags(sec_broker: Any) -> None:
    add_user(sec_broker, "lc", password="one", tags=("management",))
    assert sec_broker.call(lambda: sec_broker.access.has_tag("lc", "management", "administrator"))
    assert not sec_broker.call(lambda: sec_broker.access.has_tag("lc", "administrator"))
    assert sec_broker.call(lambda: sec_broker.access.has_tag("guest", "administrator"))
    with contextlib.closing(sec_broker.connect(user="lc", password="one")):
        pass
    sec_broker.call(lambda: sec_broker.access.change_password("lc", "two"))
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        sec_broker.connect(user="lc", password="one")
    with contextlib.closing(sec_broker.connect(user="lc", password="two")):
        pass


def test_delete_user_closes_its_connections_320(sec_broker: Any) -> None:
    add_user(sec_broker, "gone")
    conn = sec_broker.connect(user="gone", password="pw")
    guest = sec_broker.connect()
    try:
        assert sec_broker.call(lambda: sec_broker.access.delete_user("gone"))
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
            for _ in range(100):
                conn.process_data_events(0.05)
        assert info.value.reply_code == 320
        assert info.value.reply_text == "CONNECTION_FORCED - user 'gone' was deleted"
        with pytest.raises(pika.exceptions.ProbableAuthenticationError):
            sec_broker.connect(user="gone", password="pw")
        roundtrip(guest)
    finally:
        guest.close()


def test_delete_vhost_closes_connections_and_drops_contents(sec_broker: Any) -> None:
    def setup() -> None:
        sec_broker.access.add_vhost("doomed")
        sec_broker.access.set_permissions("guest", "doomed")
    sec_broker.call(setup)
    conn = sec_broker.connect(vhost="doomed")
    guest = sec_broker.connect()
    ch = conn.channel()
    ch.queue_declare("dq", durable=True)
    ch.exchange_declare("dx", "topic", durable=True)
    ch.queue_bind("dq", "dx", "#")
    ch.basic_publish("dx", "a", b"m", pika.BasicProperties(delivery_mode=2))
    try:
        assert sec_broker.call(lambda: sec_broker.access.delete_vhost("doomed"))
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
            for _ in range(100):
                conn.process_data_events(0.05)
        assert info.value.reply_code == 320
        assert info.value.reply_text == "CONNECTION_FORCED - vhost 'doomed' is deleted"
        assert sec_broker.call(lambda: "doomed" not in sec_broker.broker.vhosts)
        with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as info2:
            sec_broker.connect(vhost="doomed")
        assert "NOT_ALLOWED - vhost doomed not found" in str(info2.value)
        roundtrip(guest)
    finally:
        guest.close()
    # gone for good: nothing comes back after a restart
    sec_broker.restart()
    assert sec_broker.call(lambda: "doomed" not in sec_broker.broker.vhosts)
    defs = sec_broker.call(lambda: [
        r for kind in ("queue", "exchange", "binding", "vhost", "permission")
        for _, r in sec_broker.broker.store.definitions(kind)
        if r.get("vhost") == "doomed" or r.get("name") == "doomed"])
    assert defs == []


def test_users_vhosts_permissions_survive_restart(sec_broker: Any) -> None:
    def setup() -> None:
        a = sec_broker.access
        a.add_vhost("durable-vh", max_queues=5)
        a.add_user("dur", "secret", ["monitoring"])
        a.set_permissions("dur", "durable-vh", "^d", "^d", "^d")
        a.delete_user("guest")
    sec_broker.call(setup)
    sec_broker.restart()
    a = sec_broker.access
    assert sec_broker.call(lambda: sorted(a.users.users)) == ["dur"]
    perm = sec_broker.call(lambda: a.permissions[("dur", "durable-vh")])
    assert (perm.configure, perm.write, perm.read) == ("^d", "^d", "^d")
    assert sec_broker.call(lambda: a.vhost_limit("durable-vh", "max-queues")) == 5
    assert sec_broker.call(lambda: a.user_tags("dur")) == ["monitoring"]
    with contextlib.closing(sec_broker.connect(user="dur", password="secret", vhost="durable-vh")) as c:
        c.channel().queue_declare("dq")
    # guest was deleted and stays deleted (seeded only on first boot)
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        sec_broker.connect()
    # the password is stored hashed, never in clear
    records = sec_broker.call(lambda: [r for _, r in sec_broker.broker.store.definitions("user")])
    assert all("secret" not in str(r) for r in records)
    assert records[0]["password_hash"].startswith("pbkdf2-sha256$")


def test_deleted_default_vhost_stays_deleted(sec_broker: Any) -> None:
    def setup() -> None:
        sec_broker.access.add_vhost("other")
        sec_broker.access.set_permissions("guest", "other")
        sec_broker.access.delete_vhost("/")
    sec_broker.call(setup)
    sec_broker.restart()
    assert sec_broker.call(lambda: sorted(sec_broker.broker.vhosts)) == ["other"]


# ------------------------------------------------------------ authentication


def _non_loopback_ip() -> str | None:
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return str(a.address)
    return None


def test_guest_only_from_loopback(make_broker: Any) -> None:
    ip = _non_loopback_ip()
    if ip is None:
        pytest.skip("no non-loopback IPv4 address on this machine")
    b = make_broker(host="0.0.0.0")
    add_user(b, "remote")
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as info:
        b.connect(host=ip)
    assert "403" in str(info.value) and "ACCESS_REFUSED - Login was refused" in str(info.value)
    with RawClient(ip, b.port) as r:
        r.start_ok("guest", "guest")
        close = r.read_until_close()
        assert close is not None
        assert close_code(close) == (
            403,
            "ACCESS_REFUSED - Login was refused using authentication mechanism "
            "PLAIN. For details see the broker logfile.",
        )
    # another user from the same address, and guest over loopback, work
    with contextlib.closing(b.connect(host=ip, user="remote", password="pw")) as conn:
        roundtrip(conn)
    with contextlib.closing(b.connect(host="127.0.0.1")) as conn:
        roundtrip(conn)


def test_loopback_users_configurable(make_broker: Any) -> None:
    ip = _non_loopback_ip()
    if ip is None:
        pytest.skip("no non-loopback IPv4 address on this machine")
    b = make_broker(host="0.0.0.0", loopback_users=())
    with contextlib.closing(b.connect(host=ip)) as conn:
        roundtrip(conn)


@pytest.mark.parametrize(
    "mechanism,response",
    [
        ("PLAIN", "\0guest\0wrong"),
        ("PLAIN", "guest\0guest"),  # no authzid separator: malformed
        ("PLAIN", "\0guest\0"),  # blank password
        ("PLAIN", "admin\0guest\0guest"),  # authzid != authcid
        ("PLAIN", "\0" + "g" * 3000 + "\0guest"),  # long user name
        ("AMQPLAIN", b"\x05LOGINI\x00\x00\x00\x01"),  # wrongly typed table
        ("AMQPLAIN", b"\xff\xff"),  # garbage
        ("CRAM-MD5", "x"),  # not offered
        ("ANONYMOUS", ""),  # not offered
        ("EXTERNAL", ""),  # not offered without a TLS client certificate
    ],
)
def test_bad_logins_get_403_without_detail(sec_broker: Any, mechanism: str, response: Any) -> None:
    with RawClient(sec_broker.host, sec_broker.port) as r:
        r.start_ok(mechanism=mechanism, response=response)
        close = r.read_until_close()
        assert close is not None
        code, text = close_code(close)
        assert code == 403
        assert text == (
            f"ACCESS_REFUSED - Login was refused using authentication mechanism "
            f"{mechanism}. For details see the broker logfile."
        )
        assert r.wait_eof()
    with contextlib.closing(sec_broker.connect()) as conn:
        roundtrip(conn)


def test_oversized_start_ok_is_frame_error(sec_broker: Any) -> None:
    """Before tune the frame limit is 4096 (RabbitMQ's initial frame_max):
    a 64 KiB PLAIN response is a 501, not a login attempt."""
    with RawClient(sec_broker.host, sec_broker.port) as r:
        r.start_ok(response="\0" + "g" * 65536 + "\0guest")
        close = r.read_until_close()
        assert close is not None
        assert close_code(close)[0] == 501


def test_auth_failure_without_capability_just_closes(sec_broker: Any) -> None:
    """RabbitMQ sends connection.close 403 only to clients that advertise
    authentication_failure_close; others see the socket close."""
    with RawClient(sec_broker.host, sec_broker.port) as r:
        r.start_ok("guest", "wrong", capabilities={})
        assert r.read_until_close() is None


def test_offered_mechanisms(sec_broker: Any) -> None:
    with RawClient(sec_broker.host, sec_broker.port) as r:
        r.send(b"AMQP\x00\x00\x09\x01")
        r.start = r.expect(commands.Connection.Start)
        assert r.mechanisms() == ["PLAIN", "AMQPLAIN"]


def test_amqplain_login(sec_broker: Any) -> None:
    import struct

    def table(**kv: str) -> bytes:
        out = b""
        for k, v in kv.items():
            out += bytes([len(k)]) + k.encode() + b"S" + struct.pack(">I", len(v)) + v.encode()
        return out

    with RawClient(sec_broker.host, sec_broker.port) as r:
        r.start_ok(mechanism="AMQPLAIN", response=table(LOGIN="guest", PASSWORD="guest"))
        r.expect(commands.Connection.Tune)
