"""The etcd client and the election against a real etcd."""

from __future__ import annotations

import trio

from mqbroker.cluster.election import Election
from mqbroker.cluster.etcd import EtcdClient, EtcdError


async def test_kv_prefix_and_fenced_txn(etcd_url: str) -> None:
    client = EtcdClient([etcd_url], prefix="kv/")
    await client.put("members/a", b"1")
    await client.put("members/b", b"2")
    await client.put("other", b"3")
    assert sorted(await client.get_prefix("members/")) == [("members/a", b"1"), ("members/b", b"2")]
    found = await client.get("other")
    assert found is not None and found[0] == b"3"
    created = found[2]
    assert await client.txn([client.compare_create("other", created)], [client.op_put("x", b"ok")])
    assert not await client.txn([client.compare_create("other", created + 99)],
                                [client.op_put("x", b"no")])
    x = await client.get("x")
    assert x is not None and x[0] == b"ok"
    await client.delete("other")
    assert await client.get("other") is None
    await client.aclose()


async def test_an_unreachable_endpoint_is_skipped_and_none_is_an_error(etcd_url: str) -> None:
    client = EtcdClient(["http://127.0.0.1:9", etcd_url], prefix="fo/")
    await client.put("k", b"v")  # the first endpoint refuses: the second answers
    await client.aclose()
    dead = EtcdClient(["http://127.0.0.1:9"], prefix="fo/")
    try:
        await dead.get("k")
    except EtcdError:
        pass
    else:
        raise AssertionError("no endpoint answered, yet no error")
    await dead.aclose()


async def test_one_leader_then_the_other_with_a_higher_term(etcd_url: str) -> None:
    a = Election(EtcdClient([etcd_url], prefix="el/"), "a", ttl=2)
    b = Election(EtcdClient([etcd_url], prefix="el/"), "b", ttl=2)
    term_a = await a.campaign(b"a", eligible=lambda: True)
    async with trio.open_nursery() as nursery:
        won: list[int] = []

        async def run_b() -> None:
            won.append(await b.campaign(b"b", eligible=lambda: True))

        nursery.start_soon(run_b)
        await trio.sleep(1.0)
        assert not won  # a holds the key
        leader = await b.leader()
        assert leader == (b"a", term_a)
        assert await a.write_isr({"a", "b"}, term_a)
        await a.resign()
    assert won[0] > term_a
    assert await b.read_isr() == {"a", "b"}
    assert not await a.write_isr({"a"}, term_a)  # a stale term is fenced off
    assert await b.write_isr({"b"}, won[0])
    await b.resign()


async def test_a_lapsed_lease_hands_over_and_the_ineligible_never_win(etcd_url: str) -> None:
    a = Election(EtcdClient([etcd_url], prefix="lease/"), "a", ttl=2)
    b = Election(EtcdClient([etcd_url], prefix="lease/"), "b", ttl=2)
    c = Election(EtcdClient([etcd_url], prefix="lease/"), "c", ttl=2)
    await a.campaign(b"a", eligible=lambda: True)
    won: list[str] = []
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:

            async def run(e: Election, eligible: bool) -> None:
                await e.campaign(e.node.encode(), eligible=lambda: eligible)
                won.append(e.node)
                nursery.cancel_scope.cancel()

            nursery.start_soon(run, b, True)
            nursery.start_soon(run, c, False)
            # a never renews its lease: etcd expires the key after the TTL
    assert won == ["b"]
    await b.resign()


async def test_keep_alive_reports_a_lost_lease(etcd_url: str) -> None:
    a = Election(EtcdClient([etcd_url], prefix="lost/"), "a", ttl=2)
    await a.campaign(b"a", eligible=lambda: True)
    await a.client.lease_revoke(a.lease)  # as etcd does when it lapses
    with trio.fail_after(5):
        await a.keep_alive()
    assert a.lost.is_set()
