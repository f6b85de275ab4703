"""aio-pika (asyncio, aiormq underneath) flows.

Each test is a plain sync function that runs its coroutine with
``asyncio.run`` under ``asyncio.wait_for``, so a silent broker fails the
test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import aiormq.exceptions
import pytest
from aio_pika.patterns import RPC

pytestmark = pytest.mark.timeout(40)

LIMIT = 20.0


def run(coro_fn: Callable[[], Awaitable[Any]], limit: float = LIMIT) -> Any:
    async def main() -> Any:
        return await asyncio.wait_for(coro_fn(), limit)

    return asyncio.run(main())


def connect_robust(
    broker: Any,
) -> Awaitable[aio_pika.abc.AbstractRobustConnection]:
    return aio_pika.connect_robust(broker.url, timeout=10)


def test_connect_declare_publish_with_confirms_and_consume(broker, uniq):
    async def flow() -> None:
        connection = await connect_robust(broker)
        async with connection:
            assert connection.connected.is_set()
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.declare_exchange(
                uniq("aio-ex"), aio_pika.ExchangeType.DIRECT, auto_delete=True
            )
            queue = await channel.declare_queue(
                uniq("aio-q"), auto_delete=True
            )
            await queue.bind(exchange, routing_key="k")
            for i in range(10):
                confirmation = await exchange.publish(
                    aio_pika.Message(
                        f"m{i}".encode(),
                        content_type="text/plain",
                        headers={"i": i},
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key="k",
                )
                assert isinstance(confirmation, aiormq.spec.Basic.Ack)
            # (RobustChannel.declare_queue would return its cached object; redeclare for real.)
            declare_ok = await queue.declare()
            assert declare_ok.message_count == 10
            assert declare_ok.consumer_count == 0

            received = []
            async with queue.iterator() as it:
                async for message in it:
                    async with message.process():
                        received.append(
                            (
                                message.body,
                                message.headers["i"],
                                message.content_type,
                            )
                        )
                    if len(received) == 10:
                        break
            assert received == [
                (f"m{i}".encode(), i, "text/plain") for i in range(10)
            ]
            # Leaving the iterator cancelled the only consumer of an auto-delete
            # queue, so the broker deleted it.
            for _ in range(100):
                probe = (
                    await connection.channel()
                )  # fresh: robust channels cache declares
                try:
                    await probe.declare_queue(queue.name, passive=True)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    break
                await probe.close()
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(
                    "auto-delete queue survived its last consumer"
                )
            await exchange.delete()

    run(flow)


def test_ack_nack_reject(broker, uniq):
    async def flow() -> None:
        async with await connect_robust(broker) as connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(exclusive=True)
            for body in (b"ack-me", b"nack-me", b"reject-me", b"drop-me"):
                await channel.default_exchange.publish(
                    aio_pika.Message(body), routing_key=queue.name
                )

            seen: list[tuple[bytes, bool]] = []
            async with queue.iterator() as it:
                async for message in it:
                    seen.append((message.body, message.redelivered))
                    if message.body == b"ack-me":
                        await message.ack()
                    elif (
                        message.body == b"nack-me" and not message.redelivered
                    ):
                        await message.nack(requeue=True)
                    elif (
                        message.body == b"reject-me"
                        and not message.redelivered
                    ):
                        await message.reject(requeue=True)
                    elif message.body == b"drop-me":
                        await message.reject(requeue=False)
                    else:
                        await message.ack()
                    if len(seen) == 6:
                        break
            assert sorted(seen) == sorted(
                [
                    (b"ack-me", False),
                    (b"nack-me", False),
                    (b"reject-me", False),
                    (b"drop-me", False),
                    (b"nack-me", True),
                    (b"reject-me", True),
                ]
            )
            assert seen[:4] == [
                (b"ack-me", False),
                (b"nack-me", False),
                (b"reject-me", False),
                (b"drop-me", False),
            ]
            assert await queue.get(fail=False) is None

    run(flow)


def test_basic_get_and_message_count(broker):
    async def flow() -> None:
        async with await connect_robust(broker) as connection:
            channel = await connection.channel(publisher_confirms=True)
            queue = await channel.declare_queue(exclusive=True)
            for body in (b"1", b"2"):
                await channel.default_exchange.publish(
                    aio_pika.Message(body), routing_key=queue.name
                )
            first = await queue.get(no_ack=True)
            assert first.body == b"1" and first.message_count == 1
            second = await queue.get(no_ack=False)
            assert second.body == b"2" and second.message_count == 0
            await second.ack()
            with pytest.raises(aio_pika.exceptions.QueueEmpty):
                await queue.get()

    run(flow)


def test_mandatory_unroutable_raises_with_confirms(broker, uniq):
    async def flow() -> None:
        async with await connect_robust(broker) as connection:
            channel = await connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            with pytest.raises(aio_pika.exceptions.PublishError) as info:
                await channel.default_exchange.publish(
                    aio_pika.Message(b"lost", message_id=str(uuid.uuid4())),
                    routing_key=uniq("no-such-queue"),
                    mandatory=True,
                )
            assert info.value.frame.reply_code == 312
            assert info.value.frame.reply_text == "NO_ROUTE"
            # The channel is still usable.
            queue = await channel.declare_queue(exclusive=True)
            await channel.default_exchange.publish(
                aio_pika.Message(b"ok"), routing_key=queue.name
            )

    run(flow)


def test_404_surfaces_as_exception(broker, uniq):
    async def flow() -> None:
        async with await connect_robust(broker) as connection:
            channel = await connection.channel()
            missing = uniq("missing")
            with pytest.raises(
                aiormq.exceptions.ChannelNotFoundEntity
            ) as info:
                await channel.declare_queue(missing, passive=True)
            assert info.value.args[0].startswith(
                f"NOT_FOUND - no queue '{missing}' in vhost"
            )
            assert isinstance(info.value, aio_pika.exceptions.ChannelClosed)

            channel2 = await connection.channel()
            with pytest.raises(
                aiormq.exceptions.ChannelNotFoundEntity
            ) as info2:
                await channel2.get_exchange(missing, ensure=True)
            assert info2.value.args[0].startswith(
                f"NOT_FOUND - no exchange '{missing}' in vhost"
            )

            # Publishing to a missing exchange: with confirms, the publish fails.
            channel3 = await connection.channel(publisher_confirms=True)
            exchange = aio_pika.Exchange(
                channel3, missing, aio_pika.ExchangeType.DIRECT
            )
            with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
                await exchange.publish(aio_pika.Message(b"x"), routing_key="k")

            # The connection survives soft errors.
            channel4 = await connection.channel()
            queue = await channel4.declare_queue(
                exclusive=True
            )  # aio-pika names it client-side
            await channel4.default_exchange.publish(
                aio_pika.Message(b"alive"), routing_key=queue.name
            )
            assert (await queue.get(timeout=5)).body == b"alive"

    run(flow)


def test_405_and_406_surface_as_exceptions(broker, uniq):
    async def flow() -> None:
        owner = await aio_pika.connect(broker.url, timeout=10)
        other = await aio_pika.connect(broker.url, timeout=10)
        try:
            owner_channel = await owner.channel()
            q = await owner_channel.declare_queue(
                uniq("aio-excl"), exclusive=True
            )
            channel = await other.channel()
            with pytest.raises(
                aiormq.exceptions.ChannelLockedResource
            ) as info:
                await channel.declare_queue(q.name, passive=True)
            assert info.value.args[0].startswith("RESOURCE_LOCKED")

            channel = await owner.channel()
            with pytest.raises(
                aiormq.exceptions.ChannelPreconditionFailed
            ) as info2:
                await channel.declare_queue(
                    q.name, exclusive=True, auto_delete=True
                )
            assert info2.value.args[0].startswith(
                "PRECONDITION_FAILED - inequivalent arg 'auto_delete'"
            )
        finally:
            await other.close()
            await owner.close()

    run(flow)


def test_rpc_pattern(broker, uniq):
    method = uniq("multiply").replace(".", "_")

    async def flow() -> None:
        async with (
            await connect_robust(broker) as server_conn,
            await connect_robust(broker) as client_conn,
        ):
            server_rpc = await RPC.create(await server_conn.channel())

            async def multiply(*, x: int, y: int) -> int:
                return x * y

            await server_rpc.register(method, multiply, auto_delete=True)
            client_rpc = await RPC.create(await client_conn.channel())
            results = await asyncio.gather(
                *(
                    client_rpc.call(method, kwargs={"x": i, "y": 3})
                    for i in range(10)
                )
            )
            assert results == [i * 3 for i in range(10)]
            await server_rpc.unregister(multiply)
            await client_rpc.close()
            await server_rpc.close()

    run(flow)


def test_rpc_by_hand_with_reply_to_and_correlation_id(broker, uniq):
    async def flow() -> None:
        async with await connect_robust(broker) as connection:
            server_ch = await connection.channel()
            request_q = await server_ch.declare_queue(
                uniq("aio-rpc"), auto_delete=True
            )

            async def serve(
                message: aio_pika.abc.AbstractIncomingMessage,
            ) -> None:
                async with message.process():
                    await server_ch.default_exchange.publish(
                        aio_pika.Message(
                            str(int(message.body) ** 2).encode(),
                            correlation_id=message.correlation_id,
                        ),
                        routing_key=message.reply_to,
                    )

            await request_q.consume(serve)

            client_ch = await connection.channel()
            callback_q = await client_ch.declare_queue(exclusive=True)
            futures: dict[str, asyncio.Future[bytes]] = {}

            async def on_reply(
                message: aio_pika.abc.AbstractIncomingMessage,
            ) -> None:
                futures.pop(message.correlation_id).set_result(message.body)

            await callback_q.consume(on_reply, no_ack=True)
            loop = asyncio.get_running_loop()
            waits = []
            for n in range(5):
                cid = str(uuid.uuid4())
                futures[cid] = loop.create_future()
                waits.append(futures[cid])
                await client_ch.default_exchange.publish(
                    aio_pika.Message(
                        str(n).encode(),
                        correlation_id=cid,
                        reply_to=callback_q.name,
                    ),
                    routing_key=request_q.name,
                )
            assert await asyncio.gather(*waits) == [
                str(n * n).encode() for n in range(5)
            ]

    run(flow)


def test_qos_prefetch_limits_inflight(broker):
    async def flow() -> None:
        async with await connect_robust(broker) as connection:
            channel = await connection.channel(publisher_confirms=True)
            await channel.set_qos(prefetch_count=2)
            queue = await channel.declare_queue(exclusive=True)
            for i in range(5):
                await channel.default_exchange.publish(
                    aio_pika.Message(str(i).encode()), routing_key=queue.name
                )
            got: list[aio_pika.abc.AbstractIncomingMessage] = []
            two = asyncio.Event()

            async def on_message(
                message: aio_pika.abc.AbstractIncomingMessage,
            ) -> None:
                got.append(message)
                if len(got) >= 2:
                    two.set()

            await queue.consume(on_message)
            await two.wait()
            await asyncio.sleep(
                0.2
            )  # a third delivery would arrive now if qos were ignored
            assert len(got) == 2
            await got[0].ack()
            while len(got) < 3:
                await asyncio.sleep(0.01)
            assert [m.body for m in got] == [b"0", b"1", b"2"]

    run(flow)
