"""Subscribe: live notifications, local fan-out over one Redis subscription per channel."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

import grpc
import pytest
import redis.asyncio as redis

from dualstream.connections import RedisAddress
from dualstream.events import Source
from dualstream.hub import HubSettings, Overflow, SubscriptionHub
from dualstream.notifications import Notification
from dualstream.transport.server import Sidecar
from dualstream.v1 import event_service_pb2 as pb
from dualstream.v1 import event_service_pb2_grpc as pb_grpc
from dualstream_client import DualstreamClient, EventInput, Gap, ResourceExhaustedError
from stack.localstack import KafkaBroker, RedisServer
from tests.conftest import eventually, make_settings, next_notification, target_of


async def numsub(client: redis.Redis, channel: str) -> int:
    [(_, count)] = await client.pubsub_numsub(channel)
    return int(count)


async def test_subscriber_receives_what_is_published_after_subscribed(
    client: DualstreamClient, source_type: str
) -> None:
    async with client.subscribe([(source_type, "octocat"), (source_type, "hubot")]) as stream:
        assert stream.channels == (f"events:{source_type}:octocat", f"events:{source_type}:hubot")
        published = [
            await client.publish(EventInput("a", source_type, "octocat")),
            await client.publish(EventInput("b", source_type, "other")),
            await client.publish(EventInput("c", source_type, "hubot")),
        ]
        received = [await next_notification(stream), await next_notification(stream)]
    assert [(n.id, n.type) for n in received] == [(published[0].id, "a"), (published[2].id, "c")]
    first = received[0]
    assert (first.topic, first.partition, first.offset) == (
        published[0].topic,
        published[0].partition,
        published[0].offset,
    )


async def test_many_local_streams_share_one_redis_subscription(
    client: DualstreamClient, sidecar: Sidecar, redis_client: redis.Redis, source_type: str
) -> None:
    channel = f"events:{source_type}:octocat"
    streams = [client.subscribe([(source_type, "octocat")]) for _ in range(50)]
    for stream in streams:
        await stream.wait_live()
    assert await numsub(redis_client, channel) == 1
    assert sidecar.hub.stream_count == 50

    published = await client.publish(EventInput("fan", source_type, "octocat"))
    received = await asyncio.gather(*(next_notification(stream) for stream in streams))
    assert {n.id for n in received} == {published.id}

    for stream in streams[:-1]:
        stream.close()
    await eventually(lambda: _stream_count_is(sidecar, 1))
    assert await numsub(redis_client, channel) == 1
    streams[-1].close()

    async def unsubscribed() -> bool:
        return await numsub(redis_client, channel) == 0

    await eventually(unsubscribed)
    assert sidecar.hub.route_count == 0


async def _stream_count_is(sidecar: Sidecar, count: int) -> bool:
    return sidecar.hub.stream_count == count


async def test_a_source_named_twice_is_delivered_once(
    client: DualstreamClient, source_type: str
) -> None:
    async with client.subscribe([(source_type, "x"), (source_type, "x")]) as stream:
        assert len(stream.channels) == 1
        first = await client.publish(EventInput("one", source_type, "x"))
        second = await client.publish(EventInput("two", source_type, "x"))
        assert [(await next_notification(stream)).id for _ in range(2)] == [first.id, second.id]


@pytest.mark.parametrize(
    ("source", "field"),
    [
        (pb.Source(source_type="", source_id="x"), "sources[0].source_type"),
        (pb.Source(source_type="user", source_id=""), "sources[0].source_id"),
        (pb.Source(source_type="us:er", source_id="x"), "sources[0].source_type"),
        (pb.Source(source_type="user", source_id="oct*"), "sources[0].source_id"),
        (pb.Source(source_type="us*", source_id="*"), "sources[0].source_type"),
        (pb.Source(source_type="[a-z]", source_id="*"), "sources[0].source_type"),
        (pb.Source(source_type="user", source_id="oct?cat"), "sources[0].source_id"),
    ],
)
async def test_bad_sources_are_invalid_argument(
    sidecar: Sidecar, source: pb.Source, field: str
) -> None:
    async with grpc.aio.insecure_channel(target_of(sidecar)) as channel:
        stub = pb_grpc.EventServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in stub.Subscribe(pb.SubscribeRequest(sources=[source])):
                pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith(field)


async def test_too_many_sources_and_streams_are_refused(
    kafka: KafkaBroker, shared_redis: RedisServer, topic: str, tracer: Any, source_type: str
) -> None:
    settings = make_settings(
        kafka.bootstrap, shared_redis.url, topic, max_sources_per_stream=2, max_streams=2
    )
    async with Sidecar(settings, tracer) as sidecar, DualstreamClient(target_of(sidecar)) as client:
        async with grpc.aio.insecure_channel(target_of(sidecar)) as channel:
            stub = pb_grpc.EventServiceStub(channel)
            sources = [pb.Source(source_type=source_type, source_id=f"s{i}") for i in range(3)]
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in stub.Subscribe(pb.SubscribeRequest(sources=sources)):
                    pass
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "at most 2" in (caught.value.details() or "")

        first = client.subscribe([(source_type, "a")])
        second = client.subscribe([(source_type, "b")])
        await first.wait_live()
        await second.wait_live()
        with pytest.raises(ResourceExhaustedError, match="limit"):
            await client.subscribe([(source_type, "c")]).wait_live()
        first.close()
        await eventually(lambda: _stream_count_is(sidecar, 1))
        async with client.subscribe([(source_type, "c")]):
            pass


async def test_a_stream_that_never_reads_costs_a_bounded_queue(
    kafka: KafkaBroker, shared_redis: RedisServer, topic: str, tracer: Any, source_type: str
) -> None:
    settings = make_settings(kafka.bootstrap, shared_redis.url, topic, stream_queue_size=8)
    async with Sidecar(settings, tracer) as sidecar, DualstreamClient(target_of(sidecar)) as client:
        hub = sidecar.hub
        never_reads = await hub.subscribe(hub.validate([Source(source_type, "x")], []))
        async with client.subscribe([(source_type, "x")]) as reader:
            got = []
            for i in range(20):
                await client.publish(EventInput("e", source_type, "x", id=f"e{i}"))
                got.append((await next_notification(reader)).id)
        # The reading stream got everything; the other kept 8 and counted the rest.
        assert got == [f"e{i}" for i in range(20)]
        queued = [await never_reads.next() for _ in range(8)]
        assert [n.id for n in queued if isinstance(n, Notification)] == [f"e{i}" for i in range(8)]
        overflow = await never_reads.next()
        assert isinstance(overflow, Overflow)
        assert overflow.missed == 12
        never_reads.close()


async def test_hub_survives_redis_restart(
    kafka: KafkaBroker, private_redis: RedisServer, topic: str, tracer: Any, source_type: str
) -> None:
    settings = make_settings(kafka.bootstrap, private_redis.url, topic)
    async with (
        Sidecar(settings, tracer) as sidecar,
        DualstreamClient(target_of(sidecar)) as client,
        client.subscribe([(source_type, "x")]) as stream,
    ):
        await asyncio.to_thread(private_redis.restart)
        await eventually(lambda: _hub_live(sidecar), timeout=15)

        async def delivered() -> bool:
            result = await client.publish(EventInput("after", source_type, "x"))
            return result.notified

        await eventually(delivered, timeout=15)
        first = await asyncio.wait_for(anext(stream), 10)
        assert isinstance(first, Gap)  # The outage window is reported ...
        assert first.reason == "redis_outage"
        notification = await next_notification(stream)  # ... and delivery goes on.
        assert notification.type == "after"


async def _hub_live(sidecar: Sidecar) -> bool:
    return sidecar.hub.connected


async def test_concurrent_publishes_of_one_source_are_notified_in_offset_order(
    kafka: KafkaBroker, shared_redis: RedisServer, topic: str, tracer: Any, source_type: str
) -> None:
    """Acks of one partition come back in offset order and every notification goes down one
    pipelined Redis connection in the order its ack arrived, so a stream sees one source's
    events in offset order even when many publishes of it are in flight at once.

    The Redis timeout is generous: this is about order, and a stall of the loaded CI machine
    past the default 0.25 s would report events "not notified" (once seen in the full suite)."""
    settings = make_settings(kafka.bootstrap, shared_redis.url, topic, redis_timeout=5.0)
    async with (
        Sidecar(settings, tracer) as sidecar,
        DualstreamClient(target_of(sidecar)) as client,
        client.subscribe([(source_type, "busy")]) as stream,
    ):
        for _ in range(3):
            published = await asyncio.gather(
                *(client.publish(EventInput("t", source_type, "busy")) for _ in range(200))
            )
            assert all(p.notified for p in published)
            received = [await next_notification(stream) for _ in published]
            offsets = [n.offset for n in received]
            assert offsets == sorted(offsets)
            assert {n.id for n in received} == {p.id for p in published}


@pytest.mark.timeout(900)
async def test_subscribe_and_unsubscribe_racing_on_one_channel_miss_nothing(
    shared_redis: RedisServer, redis_client: redis.Redis, source_type: str
) -> None:
    """10,000 interleavings of one stream leaving a channel (before or after Redis confirmed
    it, so its UNSUBSCRIBE may cross its own SUBSCRIBE's answer) and another joining it, with
    publishes in between: every message published once the new stream is live reaches it."""
    hub = SubscriptionHub(
        HubSettings(redis=RedisAddress.from_url(shared_redis.url), subscribe_timeout=30)
    )
    schedule = random.Random(9)
    channel = f"events:{source_type}:x"
    raced = 0
    async with hub:
        routes = hub.validate([Source(source_type, "x")], [])
        for cycle in range(10_000):
            leaving = asyncio.create_task(hub.subscribe(routes))
            if schedule.random() < 0.2:
                await leaving  # Now and then it leaves once live.
            for _ in range(schedule.randrange(4)):
                await asyncio.sleep(0)
            if leaving.done():
                leaving.result().close()
            else:
                raced += 1
                leaving.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await leaving
            if schedule.random() < 0.5:
                await redis_client.publish(channel, _probe(source_type, -1 - cycle))
            for _ in range(schedule.randrange(4)):
                await asyncio.sleep(0)
            joining = await hub.subscribe(routes)
            await redis_client.publish(channel, _probe(source_type, cycle))
            async with asyncio.timeout(10):
                while True:  # Messages published before it went live may come first.
                    received = await joining.next()
                    if isinstance(received, Notification) and received.offset == cycle:
                        break
            joining.close()
    assert raced > 1000  # Enough of the cycles left before Redis answered the SUBSCRIBE.
    print(f"\n10,000 interleavings, {raced} left before Redis confirmed them; 0 misses")


def _probe(source_type: str, offset: int) -> bytes:
    return Notification(f"p{offset}", "t", source_type, "x", "topic", 0, offset).to_json()


@pytest.mark.parametrize("delivery_process", [False, True])
async def test_a_stopped_sidecar_leaves_no_stream_handler_running(
    settings: Any, tracer: Any, source_type: str, delivery_process: bool
) -> None:
    """Streams whose clients just went, and streams still open, have all finished once the
    sidecar has stopped: none is left for the event loop's close to cancel (which grpc.aio
    logs as an unhandled error)."""
    sidecar = Sidecar(settings, tracer, delivery_process=delivery_process)
    async with sidecar, DualstreamClient(target_of(sidecar), timeout=30) as client:
        streams = [client.subscribe([(source_type, f"s{n}")]) for n in range(6)]
        for stream in streams:
            await stream.wait_live()
        for stream in streams[:3]:
            stream.close()
        assert sidecar.running_streams > 0
    assert sidecar.running_streams == 0
