"""Publish and PublishBatch against real Kafka and Redis."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import pytest
import redis.asyncio as redis
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from dualstream.connections import RedisAddress
from dualstream.errors import UnavailableError as SidecarUnavailableError
from dualstream.events import NotPublished, Published, PublishOutcome, RecordPosition
from dualstream.notifications import Notification
from dualstream.redis_notifier import RedisNotifier
from dualstream.settings import Settings
from dualstream.transport import convert
from dualstream.transport.server import Sidecar
from dualstream.v1 import event_service_pb2 as pb
from dualstream.v1 import event_service_pb2_grpc as pb_grpc
from dualstream_client import DualstreamClient, EventInput, UnavailableError
from stack.localstack import KafkaBroker, RedisServer
from tests.conftest import make_settings, target_of
from tests.kafka_records import read_all

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class ChannelListener:
    """A raw Redis subscriber, independent of the sidecar, recording what a channel carries."""

    def __init__(self, client: redis.Redis, channel: str) -> None:
        self.pubsub = client.pubsub()
        self.channel = channel
        self.messages: list[dict[str, Any]] = []

    async def __aenter__(self) -> ChannelListener:
        await self.pubsub.subscribe(self.channel)
        await self.pubsub.get_message(timeout=1)  # the subscribe confirmation
        return self

    async def collect(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while len(self.messages) < count:
                message = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
                if message is not None:
                    self.messages.append(json.loads(message["data"]))
        return self.messages

    async def __aexit__(self, *exc_info: object) -> None:
        await self.pubsub.aclose()  # type: ignore[no-untyped-call]


async def test_publish_writes_cloudevent_then_notifies(
    sidecar: Sidecar, kafka: KafkaBroker, redis_client: redis.Redis, topic: str, source_type: str
) -> None:
    channel = f"events:{source_type}:octocat"
    async with (
        ChannelListener(redis_client, channel) as listener,
        grpc.aio.insecure_channel(target_of(sidecar)) as channel_to_sidecar,
    ):
        stub = pb_grpc.EventServiceStub(channel_to_sidecar)
        response = await stub.Publish(
            pb.PublishRequest(
                event=pb.Event(
                    type="order.created",
                    source_type=source_type,
                    source_id="octocat",
                    data=b'{"total": 42}',
                    content_type="application/json",
                    attributes={"tenant": "acme"},
                )
            ),
            metadata=[("traceparent", TRACEPARENT)],
        )
        notifications = await listener.collect(1)

    assert response.notified
    assert response.topic == topic
    [record] = await read_all(kafka.bootstrap, topic, 1)
    headers = {name: value.decode() for name, value in record.headers}
    assert record.key == b"octocat"
    assert record.value == b'{"total": 42}'
    assert (record.partition, record.offset) == (response.partition, response.offset)
    assert headers["ce_specversion"] == "1.0"
    assert headers["ce_id"] == response.id
    assert headers["ce_type"] == "order.created"
    assert headers["ce_source"] == f"/{source_type}/octocat"
    assert headers["ce_time"].endswith("Z")
    assert headers["ce_tenant"] == "acme"
    assert headers["content-type"] == "application/json"
    # The caller's trace continues through the sidecar into the record.
    assert headers["traceparent"].split("-")[1] == TRACEPARENT.split("-")[1]

    [notification] = notifications
    assert notification == {
        "id": response.id,
        "type": "order.created",
        "source_type": source_type,
        "source_id": "octocat",
        "topic": topic,
        "partition": response.partition,
        "offset": response.offset,
        "traceparent": headers["traceparent"],
    }
    assert "total" not in json.dumps(notification)


async def test_batch_results_in_request_order(
    client: DualstreamClient,
    kafka: KafkaBroker,
    redis_client: redis.Redis,
    topic: str,
    source_type: str,
) -> None:
    events = [
        EventInput("tick", source_type, f"s{i % 3}", data=str(i).encode(), id=f"e{i}")
        for i in range(30)
    ]
    async with ChannelListener(redis_client, f"events:{source_type}:s0") as listener:
        results = await client.publish_batch(events)
        notified = await listener.collect(10)

    assert [r.id for r in results] == [f"e{i}" for i in range(30)]
    assert all(r.published is not None and r.published.notified for r in results)
    assert [n["id"] for n in notified] == [f"e{i}" for i in range(0, 30, 3)]

    records = await read_all(kafka.bootstrap, topic, 30)
    assert len(records) == 30
    for result in results:
        assert result.published is not None
    positions = {(r.partition, r.offset): r for r in records}
    for i, result in enumerate(results):
        assert result.published is not None
        record = positions[(result.published.partition, result.published.offset)]
        assert record.value == str(i).encode()
    # Per source, Kafka holds the events in the order they were sent.
    for source in ("s0", "s1", "s2"):
        values = [
            int(r.value)
            for r in sorted(records, key=lambda r: r.offset)
            if r.key == source.encode()
        ]
        assert values == sorted(values)


def test_batch_response_carries_each_outcome_in_order() -> None:
    """Results built in place: acknowledged events with their position, failed ones with the
    status code and message of their error, each in its oneof."""
    outcomes: list[PublishOutcome] = [
        Published("a", RecordPosition("events", 2, 40), True),
        NotPublished("b", SidecarUnavailableError("Kafka did not acknowledge the event")),
        Published("c", RecordPosition("events", 0, 7), False),
    ]
    results = convert.batch_response(outcomes).results
    assert [r.id for r in results] == ["a", "b", "c"]
    assert [r.WhichOneof("outcome") for r in results] == ["published", "error", "published"]
    assert results[0].published == pb.PublishResponse(
        id="a", topic="events", partition=2, offset=40, notified=True
    )
    assert results[1].error == pb.Error(
        code=grpc.StatusCode.UNAVAILABLE.value[0], message="Kafka did not acknowledge the event"
    )
    assert results[2].published == pb.PublishResponse(id="c", topic="events", offset=7)


async def test_redis_down_still_publishes_with_notified_false(
    kafka: KafkaBroker, private_redis: RedisServer, topic: str, tracer: Any, source_type: str
) -> None:
    settings = make_settings(kafka.bootstrap, private_redis.url, topic, redis_timeout=0.2)
    async with Sidecar(settings, tracer) as sidecar, DualstreamClient(target_of(sidecar)) as client:
        assert (await client.publish(EventInput("a", source_type, "x"))).notified
        await asyncio.to_thread(private_redis.stop)
        started = asyncio.get_running_loop().time()
        result = await client.publish(EventInput("b", source_type, "x"))
        elapsed = asyncio.get_running_loop().time() - started
        batch = await client.publish_batch([EventInput("c", source_type, "x")] * 3)
        assert sidecar.publisher.notifier.stats.failed >= 4
    assert not result.notified
    assert all(r.published is not None and not r.published.notified for r in batch)
    # Bounded by the Redis timeout, not by the client's deadline (a generous margin for CI).
    assert elapsed < 5
    assert len(await read_all(kafka.bootstrap, topic, 5)) == 5


async def test_notifications_made_while_connecting_keep_their_order(
    shared_redis: RedisServer, redis_client: redis.Redis, source_type: str
) -> None:
    """The connection is made on first use. Calls arriving while it is made, and calls arriving
    just after, must reach Redis in the order they were made (the order of their Kafka acks)."""
    notifier = RedisNotifier(
        RedisAddress.from_url(shared_redis.url), timeout=5.0, channel_prefix="events"
    )
    channel = f"events:{source_type}:x"
    async with ChannelListener(redis_client, channel) as listener, notifier:
        calls = []
        for offset in range(200):
            note = Notification(f"id{offset}", "t", source_type, "x", "topic", 0, offset)
            calls.append(asyncio.create_task(notifier.notify(note)))
            await asyncio.sleep(0)  # Spread the calls over the loop turns the connection takes.
        assert all(await asyncio.gather(*calls))
        received = await listener.collect(200)
    assert [n["offset"] for n in received] == list(range(200))


async def test_redis_paused_does_not_stall_publish(
    kafka: KafkaBroker, private_redis: RedisServer, topic: str, tracer: Any, source_type: str
) -> None:
    settings = make_settings(kafka.bootstrap, private_redis.url, topic, redis_timeout=0.2)
    async with Sidecar(settings, tracer) as sidecar, DualstreamClient(target_of(sidecar)) as client:
        await client.publish(EventInput("warm", source_type, "x"))
        private_redis.pause()
        try:
            result = await asyncio.wait_for(client.publish(EventInput("b", source_type, "x")), 5)
        finally:
            private_redis.resume()
    assert not result.notified


async def test_kafka_down_is_unavailable_and_not_notified(
    private_kafka: KafkaBroker,
    shared_redis: RedisServer,
    redis_client: redis.Redis,
    tracer: Any,
    source_type: str,
) -> None:
    settings = make_settings(
        private_kafka.bootstrap, shared_redis.url, "events", kafka_delivery_timeout=3.0
    )
    async with (
        Sidecar(settings, tracer) as sidecar,
        DualstreamClient(target_of(sidecar)) as client,
        ChannelListener(redis_client, f"events:{source_type}:x") as listener,
    ):
        assert await sidecar.publisher.event_log.wait_ready(30)
        await client.publish(EventInput("before", source_type, "x"))
        await listener.collect(1)
        await asyncio.to_thread(private_kafka.stop)
        with pytest.raises(UnavailableError, match="Kafka"):
            await client.publish(EventInput("during", source_type, "x"))
        with pytest.raises(UnavailableError):
            await client.publish_batch([EventInput("during", source_type, "x")] * 2)
        await asyncio.sleep(0.5)
        assert [m["type"] for m in listener.messages] == ["before"]
        assert (
            await listener.pubsub.get_message(ignore_subscribe_messages=True, timeout=0.3) is None
        )


async def test_sidecar_starts_before_kafka_and_answers_unavailable(
    shared_redis: RedisServer, tracer: Any, source_type: str
) -> None:
    from stack.localstack import free_port

    settings = make_settings(f"127.0.0.1:{free_port()}", shared_redis.url, "events")
    async with Sidecar(settings, tracer) as sidecar, DualstreamClient(target_of(sidecar)) as client:
        with pytest.raises(UnavailableError, match="not connected"):
            await client.publish(EventInput("a", source_type, "x"))


INVALID_EVENTS = [
    ({"type": ""}, "event.type"),
    ({"source_type": ""}, "event.source_type"),
    ({"source_id": ""}, "event.source_id"),
    ({"source_type": "a:b"}, "event.source_type"),
    ({"source_type": "user*"}, "event.source_type"),
    ({"source_id": "a?"}, "event.source_id"),
    ({"source_id": "[a]"}, "event.source_id"),
    ({"source_id": "a\\b"}, "event.source_id"),
    ({"source_id": "a\x01b"}, "event.source_id"),
    ({"type": "x\u200by"}, "event.type"),
    ({"data": b"x" * 2049}, "event.data"),
    ({"attributes": {"UPPER": "v"}}, "event.attributes"),
]


@pytest.fixture
def small_settings(kafka: KafkaBroker, shared_redis: RedisServer, topic: str) -> Settings:
    return make_settings(
        kafka.bootstrap, shared_redis.url, topic, max_payload_bytes=2048, max_batch_events=5
    )


@pytest.mark.parametrize(("changes", "field"), INVALID_EVENTS)
async def test_bad_input_is_invalid_argument_naming_the_field(
    small_settings: Settings,
    tracer: Any,
    kafka: KafkaBroker,
    topic: str,
    changes: dict[str, Any],
    field: str,
) -> None:
    fields: dict[str, Any] = {"type": "t", "source_type": "user", "source_id": "octocat"}
    fields.update(changes)
    async with (
        Sidecar(small_settings, tracer) as sidecar,
        grpc.aio.insecure_channel(target_of(sidecar)) as channel,
    ):
        stub = pb_grpc.EventServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as single:
            await stub.Publish(pb.PublishRequest(event=pb.Event(**fields)))
        good = pb.Event(type="t", source_type="user", source_id="octocat")
        with pytest.raises(grpc.aio.AioRpcError) as batch:
            await stub.PublishBatch(pb.PublishBatchRequest(events=[good, pb.Event(**fields)]))
    assert single.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (single.value.details() or "").startswith(field)
    assert batch.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (batch.value.details() or "").startswith(field.replace("event.", "events[1].", 1))
    # Nothing was half-written: the good event of the rejected batch is not in Kafka either.
    assert await read_all(kafka.bootstrap, topic, 0, timeout=2) == []


async def test_missing_event_and_oversize_batch(client: DualstreamClient, sidecar: Sidecar) -> None:
    async with grpc.aio.insecure_channel(target_of(sidecar)) as channel:
        stub = pb_grpc.EventServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.Publish(pb.PublishRequest())
        too_many = [pb.Event(type="t", source_type="u", source_id="x")] * 1001
        with pytest.raises(grpc.aio.AioRpcError) as oversize:
            await stub.PublishBatch(pb.PublishBatchRequest(events=too_many))
        with pytest.raises(grpc.aio.AioRpcError) as empty:
            await stub.PublishBatch(pb.PublishBatchRequest())
    assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (missing.value.details() or "").startswith("event: is required")
    assert oversize.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 1000" in (oversize.value.details() or "")
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_span_tree(
    client: DualstreamClient, span_exporter: InMemorySpanExporter, topic: str, source_type: str
) -> None:
    result = await client.publish(EventInput("t", source_type, "octocat", data=b"secret"))
    spans = {span.name: span for span in span_exporter.get_finished_spans()}
    server = spans["dualstream.v1.EventService/Publish"]
    producer = spans[f"send {topic}"]
    publish = spans["PUBLISH"]
    assert server.kind == SpanKind.SERVER
    assert producer.kind == SpanKind.PRODUCER
    assert publish.kind == SpanKind.CLIENT
    assert producer.parent is not None
    assert producer.parent.span_id == server.context.span_id
    assert publish.parent is not None
    assert publish.parent.span_id == server.context.span_id
    assert producer.attributes is not None
    assert publish.attributes is not None
    assert producer.attributes["messaging.system"] == "kafka"
    assert producer.attributes["messaging.destination.name"] == topic
    assert producer.attributes["messaging.destination.partition.id"] == str(result.partition)
    assert producer.attributes["messaging.kafka.message.key"] == "octocat"
    assert producer.attributes["messaging.kafka.offset"] == result.offset
    assert producer.attributes["messaging.operation.type"] == "send"
    assert producer.attributes["messaging.message.id"] == result.id
    assert "messaging.batch.message_count" not in producer.attributes
    assert publish.attributes["db.system.name"] == "redis"
    assert publish.attributes["db.operation.name"] == "PUBLISH"
    assert server.attributes is not None
    assert server.attributes["rpc.system.name"] == "grpc"
    assert server.attributes["rpc.method"] == "dualstream.v1.EventService/Publish"
    assert server.attributes["rpc.response.status_code"] == "OK"
    for span in spans.values():
        assert "secret" not in repr(dict(span.attributes or {}))
