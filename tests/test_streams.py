"""Subscriptions that never silently miss: wildcards, cursors, replay, slow consumers, outages."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import grpc
import pytest
import redis.asyncio as redis

from dualstream.transport.server import Sidecar
from dualstream.v1 import event_service_pb2 as pb
from dualstream.v1 import event_service_pb2_grpc as pb_grpc
from dualstream_client import (
    CaughtUp,
    DualstreamClient,
    EventInput,
    Gap,
    InvalidArgumentError,
    Notification,
    ResourceExhaustedError,
    StreamMessage,
    Subscription,
)
from stack.localstack import KafkaBroker, RedisServer
from tests.conftest import eventually, make_settings, next_notification, target_of


async def take(stream: Subscription, count: int, timeout: float = 15.0) -> list[StreamMessage]:
    """The next ``count`` messages of any kind."""
    messages: list[StreamMessage] = []
    async with asyncio.timeout(timeout):
        while len(messages) < count:
            messages.append(await anext(stream))
    return messages


async def notifications_until(
    stream: Subscription, ids: set[str], timeout: float = 20.0
) -> list[StreamMessage]:
    """Messages until every id in ``ids`` was delivered as a notification."""
    messages: list[StreamMessage] = []
    seen: set[str] = set()
    async with asyncio.timeout(timeout):
        while not ids <= seen:
            message = await anext(stream)
            messages.append(message)
            if isinstance(message, Notification):
                seen.add(message.id)
    return messages


def ids_of(messages: list[StreamMessage]) -> list[str]:
    return [m.id for m in messages if isinstance(m, Notification)]


async def test_wildcard_follows_every_source_of_a_type(
    client: DualstreamClient, redis_client: redis.Redis, source_type: str
) -> None:
    async with client.subscribe([(source_type, "*")]) as stream:
        assert stream.channels == (f"events:{source_type}:*",)
        assert await redis_client.pubsub_numpat() >= 1
        a = await client.publish(EventInput("t", source_type, "a"))
        await client.publish(EventInput("t", source_type + "x", "a"))  # another type
        b = await client.publish(EventInput("t", source_type, "b:with:colons"))
        got = [await next_notification(stream), await next_notification(stream)]
    assert [n.id for n in got] == [a.id, b.id]
    assert got[1].source_id == "b:with:colons"


async def test_type_filter(client: DualstreamClient, source_type: str) -> None:
    async with client.subscribe([(source_type, "x")], types=["wanted"]) as stream:
        await client.publish(EventInput("unwanted", source_type, "x"))
        wanted = await client.publish(EventInput("wanted", source_type, "x"))
        assert (await next_notification(stream)).id == wanted.id


async def test_overlapping_selectors_deliver_each_event_once(
    client: DualstreamClient, source_type: str
) -> None:
    async with client.subscribe([(source_type, "x"), (source_type, "*")]) as stream:
        first = await client.publish(EventInput("t", source_type, "x"))
        second = await client.publish(EventInput("t", source_type, "y"))
        got = [await next_notification(stream), await next_notification(stream)]
        assert [n.id for n in got] == [first.id, second.id]
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(stream), 0.5)


async def test_resume_from_a_cursor_replays_then_goes_live(
    client: DualstreamClient, source_type: str
) -> None:
    async with client.subscribe([(source_type, "x")]) as stream:
        first = await client.publish(EventInput("t", source_type, "x"))
        delivered = await next_notification(stream)
        assert delivered.id == first.id
        cursor = delivered.cursor
    missed = [
        (await client.publish(EventInput("t", source_type, "x", id=f"m{i}"))).id for i in range(5)
    ]
    await client.publish(EventInput("t", source_type, "other"))
    async with client.subscribe([(source_type, "x")], resume_cursor=cursor) as stream:
        replay = await take(stream, 6)
        live = await client.publish(EventInput("t", source_type, "x", id="live"))
        after = await next_notification(stream)
    assert ids_of(replay) == missed
    assert all(isinstance(m, Notification) and m.replayed for m in replay[:5])
    assert isinstance(replay[5], CaughtUp)
    assert replay[5].replayed == 5
    assert after.id == live.id
    assert not after.replayed


async def test_subscribed_cursor_covers_everything_after_it(
    client: DualstreamClient, source_type: str
) -> None:
    async with client.subscribe([(source_type, "x")]) as stream:
        cursor = stream.cursor
    published = [(await client.publish(EventInput("t", source_type, "x"))).id for _ in range(3)]
    async with client.subscribe([(source_type, "x")], resume_cursor=cursor) as stream:
        assert ids_of(await take(stream, 3)) == published


async def test_start_from_earliest(client: DualstreamClient, source_type: str) -> None:
    published = [(await client.publish(EventInput("t", source_type, "x"))).id for _ in range(3)]
    async with client.subscribe([(source_type, "*")], start_earliest=True) as stream:
        messages = await take(stream, 4)
    assert ids_of(messages) == published
    assert isinstance(messages[3], CaughtUp)


async def test_include_data_hydrates_live_and_replayed(
    client: DualstreamClient, source_type: str
) -> None:
    await client.publish(EventInput("t", source_type, "x", data=b"old", attributes={"k": "v"}))
    async with client.subscribe(
        [(source_type, "x")], start_earliest=True, include_data=True
    ) as stream:
        replayed = await next_notification(stream)
        assert isinstance(await anext(stream), CaughtUp)
        await client.publish(EventInput("t", source_type, "x", data=b"new"))
        live = await next_notification(stream)
    assert replayed.event is not None
    assert replayed.event.data == b"old"
    assert replayed.event.attributes == {"k": "v"}
    assert live.event is not None
    assert live.event.data == b"new"


@pytest.mark.parametrize(
    "cursor",
    ["garbage", "v1.!!!!", "v1." + "A" * 20, "v2.abc"],
)
async def test_malformed_cursors_are_invalid_argument(
    client: DualstreamClient, cursor: str
) -> None:
    with pytest.raises(InvalidArgumentError, match="resume_cursor"):
        await client.subscribe([("user", "x")], resume_cursor=cursor).wait_live()


async def test_cursor_of_another_topic_is_refused(client: DualstreamClient) -> None:
    from dualstream.cursor import Cursor

    foreign = Cursor("another-topic", {0: 1}).encode()
    with pytest.raises(InvalidArgumentError, match="another-topic"):
        await client.subscribe([("user", "x")], resume_cursor=foreign).wait_live()


async def test_unknown_policy_and_conflicting_start_are_refused(sidecar: Sidecar) -> None:
    async with grpc.aio.insecure_channel(target_of(sidecar)) as channel:
        stub = pb_grpc.EventServiceStub(channel)
        source = pb.Source(source_type="user", source_id="x")
        for request, field in [
            (
                pb.SubscribeRequest(
                    sources=[source],
                    slow_consumer_policy=cast(pb.SlowConsumerPolicy.ValueType, 42),
                ),
                "slow_consumer_policy",
            ),
            (
                pb.SubscribeRequest(
                    sources=[source], resume_cursor="v1.x", start=pb.StartPosition(earliest=True)
                ),
                "start",
            ),
            (pb.SubscribeRequest(sources=[source], types=["a*"]), "types[0]"),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in stub.Subscribe(request):
                    pass
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (caught.value.details() or "").startswith(field)


@pytest.fixture
async def tiny_queue_sidecar(
    kafka: KafkaBroker, shared_redis: RedisServer, topic: str, tracer: Any
) -> Any:
    settings = make_settings(kafka.bootstrap, shared_redis.url, topic, stream_queue_size=4)
    async with Sidecar(settings, tracer) as sidecar:
        yield sidecar


async def overflow(
    sidecar: Sidecar, client: DualstreamClient, source_type: str, policy: str, count: int = 40
) -> tuple[list[str], Subscription]:
    """Open a stream and publish ``count`` events in one batch: their notifications reach the
    hub in one burst, dispatched before the stream's task can drain its 4-slot queue."""
    stream = client.subscribe([(source_type, "x")], policy=policy)
    await stream.wait_live()
    results = await client.publish_batch(
        [EventInput("t", source_type, "x", id=f"e{i:03}") for i in range(count)]
    )
    return [r.id for r in results], stream


async def test_slow_consumer_gap_policy_reports_the_gap_with_a_cursor(
    tiny_queue_sidecar: Sidecar, source_type: str
) -> None:
    async with DualstreamClient(target_of(tiny_queue_sidecar)) as client:
        published, stream = await overflow(tiny_queue_sidecar, client, source_type, "gap")
        messages = await take(stream, 1)
        while not any(isinstance(m, Gap) for m in messages):
            messages += await take(stream, 1)
        gap = next(m for m in messages if isinstance(m, Gap))
        delivered = ids_of(messages)
        assert gap.reason == "slow_consumer"
        assert gap.missed == len(published) - len(delivered)
        stream.close()
        # The gap's cursor gets exactly what was missed.
        async with client.subscribe([(source_type, "x")], resume_cursor=gap.cursor) as resumed:
            rest = await notifications_until(resumed, set(published) - set(delivered))
        assert delivered + ids_of(rest) == published


async def test_slow_consumer_close_policy_ends_the_stream(
    tiny_queue_sidecar: Sidecar, source_type: str
) -> None:
    async with DualstreamClient(target_of(tiny_queue_sidecar)) as client:
        _, stream = await overflow(tiny_queue_sidecar, client, source_type, "close")
        with pytest.raises(ResourceExhaustedError, match="resume from cursor"):
            async for _ in stream:
                pass


async def test_slow_consumer_replay_policy_misses_nothing(
    tiny_queue_sidecar: Sidecar, source_type: str
) -> None:
    async with DualstreamClient(target_of(tiny_queue_sidecar)) as client:
        published, stream = await overflow(
            tiny_queue_sidecar, client, source_type, "replay", count=300
        )
        messages = await notifications_until(stream, set(published))
        if not isinstance(messages[-1], CaughtUp):
            # The replay that filled the gap ends with the seam marker.
            messages += await take(stream, 1)
        stream.close()
    assert ids_of(messages) == published
    assert any(isinstance(m, CaughtUp) for m in messages)


@pytest.mark.parametrize("fault", ["restart", "pause"])
@pytest.mark.parametrize("policy", ["gap", "replay"])
async def test_redis_outage_is_reported_or_filled(
    kafka: KafkaBroker,
    private_redis: RedisServer,
    topic: str,
    tracer: Any,
    source_type: str,
    fault: str,
    policy: str,
) -> None:
    settings = make_settings(kafka.bootstrap, private_redis.url, topic, redis_timeout=0.2)
    async with (
        Sidecar(settings, tracer) as sidecar,
        DualstreamClient(target_of(sidecar)) as client,
        client.subscribe([(source_type, "x")], policy=policy) as stream,
    ):
        before = await client.publish(EventInput("t", source_type, "x", id="before"))
        assert (await next_notification(stream)).id == before.id
        if fault == "restart":
            await asyncio.to_thread(private_redis.kill)
        else:
            private_redis.pause()
        # Published while the hub cannot hear Redis: durable in Kafka, not delivered live.
        during = [
            (await client.publish(EventInput("t", source_type, "x", id=f"d{i}"))).id
            for i in range(3)
        ]

        async def hub_noticed() -> bool:
            return not sidecar.hub.connected

        await eventually(hub_noticed, timeout=10)  # ping_interval + ping_timeout is 2 s
        if fault == "restart":
            await asyncio.to_thread(private_redis.start)
        else:
            private_redis.resume()

        async def hub_back() -> bool:
            return sidecar.hub.connected

        await eventually(hub_back, timeout=15)
        messages: list[StreamMessage] = []
        async with asyncio.timeout(20):
            while not any(isinstance(m, Gap | CaughtUp) for m in messages):
                messages.append(await anext(stream))
        # The notifier's breaker may still skip Redis for up to a probe interval; events it
        # skips are durable but not live (see the README), so count only notified ones.
        live_ids: list[str] = []
        for i in range(100):
            result = await client.publish(EventInput("t", source_type, "x", id=f"after{i}"))
            if result.notified:
                live_ids.append(result.id)
                break
            await asyncio.sleep(0.1)
        rest = await notifications_until(stream, set(live_ids))
    delivered = [i for i in ids_of(messages + rest) if not i.startswith("after") or i in live_ids]
    assert live_ids
    if policy == "gap":
        gap = next(m for m in messages if isinstance(m, Gap))
        assert gap.reason == "redis_outage"
        assert gap.since <= gap.until
        assert delivered == live_ids
    else:
        assert delivered == [*during, *live_ids]


async def test_thousands_of_subscribe_cancel_cycles_leak_nothing(
    sidecar: Sidecar, client: DualstreamClient, redis_client: redis.Redis, source_type: str
) -> None:
    baseline_patterns = await redis_client.pubsub_numpat()
    # The first stream makes what the sidecar keeps for all streams (the Kafka reader's
    # shared consumer, four tasks of its own): it counts in the baseline, not as a leak.
    async with client.subscribe([(source_type, "warm-up")]):
        pass
    baseline_tasks = len(asyncio.all_tasks())
    streams = [client.subscribe([(source_type, "x"), (source_type, "*")]) for _ in range(100)]
    await asyncio.gather(*(s.wait_live() for s in streams))
    [(_, subscribers)] = await redis_client.pubsub_numsub(f"events:{source_type}:x")
    assert subscribers == 1
    assert await redis_client.pubsub_numpat() == baseline_patterns + 1
    for stream in streams:
        stream.close()

    async def cycle(i: int) -> None:
        stream = client.subscribe([(source_type, f"s{i % 50}"), (source_type, "*")])
        await stream.wait_live()
        stream.close()

    for start in range(0, 10_000, 100):
        await asyncio.gather(*(cycle(i) for i in range(start, start + 100)))

    async def back_to_baseline() -> bool:
        channels = await redis_client.pubsub_channels(f"events:{source_type}:*")
        return (
            sidecar.hub.stream_count == 0
            and sidecar.hub.route_count == 0
            and not channels
            and await redis_client.pubsub_numpat() == baseline_patterns
        )

    await eventually(back_to_baseline, timeout=20)
    # gRPC keeps no task per finished call; a leak would show thousands here.
    assert len(asyncio.all_tasks()) <= baseline_tasks + 5


async def test_a_stream_that_never_reads_under_load_costs_bounded_memory(
    kafka: KafkaBroker, shared_redis: RedisServer, topic: str, tracer: Any, source_type: str
) -> None:
    """1,000 events/s for 5 s with one stream that never reads: its share stays bounded (the
    hub queue and the HTTP/2 window) and the stream that reads gets every event."""
    settings = make_settings(kafka.bootstrap, shared_redis.url, topic, stream_queue_size=256)
    async with Sidecar(settings, tracer) as sidecar, DualstreamClient(target_of(sidecar)) as client:
        never_reads = client.subscribe([(source_type, "x")])
        await never_reads.wait_live()
        reader = client.subscribe([(source_type, "x")])
        await reader.wait_live()
        received: list[float] = []

        async def read() -> None:
            loop = asyncio.get_running_loop()
            async for message in reader:
                if isinstance(message, Notification):
                    received.append(loop.time())

        reading = asyncio.create_task(read())
        loop = asyncio.get_running_loop()
        sent: list[float] = []
        peak_queued = 0
        started = loop.time()
        for tick in range(500):  # 10 events every 10 ms
            await asyncio.sleep(max(0.0, started + tick * 0.01 - loop.time()))
            sent.extend([loop.time()] * 10)
            await client.publish_batch([EventInput("t", source_type, "x")] * 10)
            peak_queued = max(peak_queued, *(s._queued_notifications for s in sidecar.hub._streams))
        await eventually(lambda: _count_is(received, 5000), timeout=30)
        reading.cancel()
        never_reads.close()
        reader.close()
    elapsed = received[-1] - started
    print(f"\n5000 events in {elapsed:.2f}s to the reading stream; peak queue {peak_queued}")
    assert peak_queued <= 256


async def _count_is(items: list[float], count: int) -> bool:
    return len(items) >= count
