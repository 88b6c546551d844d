"""The Python client's own capabilities: client-side ids and the retry that reuses them, the
field path of INVALID_ARGUMENT, unix targets, trace context, batched notifications, capacity
refusals and the client-side throttle.

The retry, the reading of retry hints and the unpacking of NotificationBatch are client
logic, tested against a small in-process fake EventService (the throttle's arithmetic in
test_python_throttle.py); everything else runs against a real sidecar, capacity refusals
against one that takes one call at a time, and automatic resume against a SIGKILLed one in
test_conformance.py."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from dualstream.settings import Settings
from dualstream.transport.server import Sidecar
from dualstream.transport.status import retry_trailers
from dualstream.v1 import event_service_pb2 as pb
from dualstream_client import (
    DEFAULT_MAX_NOTIFICATIONS_PER_MESSAGE,
    DualstreamClient,
    DualstreamClientError,
    EventInput,
    Gap,
    InvalidArgumentError,
    Notification,
    ResourceExhaustedError,
    Retry,
    Throttle,
    UnavailableError,
    new_event_id,
)
from stack.localstack import KafkaBroker, RedisServer
from tests.clients.apps import REPO
from tests.conftest import make_settings, target_of

UUID_V7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
QUICK_RETRY = Retry(max_attempts=4, initial_backoff=0.001, max_backoff=0.005)


def test_new_event_ids_are_time_ordered_uuid_v7() -> None:
    ids = [new_event_id() for _ in range(200)]
    assert all(UUID_V7.match(event_id) for event_id in ids)
    assert len(set(ids)) == len(ids)
    assert [event_id[:13] for event_id in ids] == sorted(event_id[:13] for event_id in ids)


Trailers = Sequence[tuple[str, str | bytes]]
RETRY_AFTER = 0.3
# What the sidecar ends a capacity refusal with, both forms of the hint, and each on its own.
BOTH_HINTS = retry_trailers(grpc.StatusCode.RESOURCE_EXHAUSTED, "past capacity", RETRY_AFTER)
RETRY_INFO_ONLY = tuple(t for t in BOTH_HINTS if t[0] == "grpc-status-details-bin")
PUSHBACK_ONLY = tuple(t for t in BOTH_HINTS if t[0] == "grpc-retry-pushback-ms")


class FakeEventService:
    """Fails the first ``failures`` publish calls with UNAVAILABLE, or with RESOURCE_EXHAUSTED
    and ``refusal_trailers`` when given, and records every id sent and when it arrived; its
    Subscribe records the request and streams ``responses``."""

    def __init__(
        self,
        failures: int,
        responses: Sequence[pb.SubscribeResponse] = (),
        refusal_trailers: Trailers | None = None,
    ) -> None:
        self.failures = failures
        self.responses = responses
        self.refusal_trailers = refusal_trailers
        self.seen: list[list[str]] = []
        self.arrivals: list[float] = []
        self.subscribe_requests: list[pb.SubscribeRequest] = []

    async def _fail(self, ids: list[str], context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.seen.append(ids)
        self.arrivals.append(time.monotonic())
        if self.failures:
            self.failures -= 1
            if self.refusal_trailers is not None:
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, "past capacity", self.refusal_trailers
                )
            await context.abort(grpc.StatusCode.UNAVAILABLE, "Kafka is not connected")

    async def publish(
        self, request: pb.PublishRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PublishResponse:
        await self._fail([request.event.id], context)
        return pb.PublishResponse(id=request.event.id, topic="events", offset=7)

    async def publish_batch(
        self, request: pb.PublishBatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PublishBatchResponse:
        if self.refusal_trailers is not None:
            await self._fail([event.id for event in request.events], context)
            return pb.PublishBatchResponse(
                results=[pb.PublishBatchResult(id=e.id, published=pb.PublishResponse(id=e.id))
                         for e in request.events]
            )  # fmt: skip
        failing = self.failures > 0
        if failing:
            self.failures -= 1
        self.seen.append([event.id for event in request.events])
        response = pb.PublishBatchResponse()
        for index, event in enumerate(request.events):
            result = response.results.add(id=event.id)
            if failing and index % 2:  # Every other event is not acknowledged this time.
                result.error.code = grpc.StatusCode.UNAVAILABLE.value[0]
                result.error.message = "not acknowledged"
            else:
                result.published.id = event.id
        return response

    async def subscribe(
        self, request: pb.SubscribeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.SubscribeResponse]:
        self.subscribe_requests.append(request)
        for response in self.responses:
            yield response

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        unary = grpc.unary_unary_rpc_method_handler
        return grpc.method_handlers_generic_handler(
            "dualstream.v1.EventService",
            {
                "Publish": unary(
                    self.publish,
                    request_deserializer=pb.PublishRequest.FromString,
                    response_serializer=pb.PublishResponse.SerializeToString,
                ),
                "PublishBatch": unary(
                    self.publish_batch,
                    request_deserializer=pb.PublishBatchRequest.FromString,
                    response_serializer=pb.PublishBatchResponse.SerializeToString,
                ),
                "Subscribe": grpc.unary_stream_rpc_method_handler(
                    self.subscribe,
                    request_deserializer=pb.SubscribeRequest.FromString,
                    response_serializer=pb.SubscribeResponse.SerializeToString,
                ),
            },
        )


Serve = Callable[[FakeEventService], Awaitable[str]]


@pytest.fixture
async def fake() -> AsyncIterator[Serve]:
    """Serves FakeEventServices on free ports (``await fake(service)`` is the target)."""
    servers: list[grpc.aio.Server] = []

    async def serve(service: FakeEventService) -> str:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((service.handler(),))
        port = server.add_insecure_port("127.0.0.1:0")
        servers.append(server)
        await server.start()
        return f"127.0.0.1:{port}"

    yield serve
    for server in servers:
        await server.stop(None)


async def test_publish_retries_unavailable_with_the_same_id(fake: Serve) -> None:
    service = FakeEventService(failures=2)
    target = await fake(service)
    async with DualstreamClient(target, retry=QUICK_RETRY) as client:
        result = await client.publish(EventInput("t", "s", "a"))
    assert UUID_V7.match(result.id)
    assert service.seen == [[result.id]] * 3


async def test_publish_retry_is_bounded_and_off_by_default(fake: Serve) -> None:
    service = FakeEventService(failures=100)
    target = await fake(service)
    async with DualstreamClient(target, retry=QUICK_RETRY) as client:
        with pytest.raises(UnavailableError):
            await client.publish(EventInput("t", "s", "a", id="x"))
    assert len(service.seen) == 4
    async with DualstreamClient(target) as client:
        with pytest.raises(UnavailableError):
            await client.publish(EventInput("t", "s", "a", id="x"))
    assert len(service.seen) == 5


async def test_publish_batch_retries_only_the_unacknowledged_events(fake: Serve) -> None:
    service = FakeEventService(failures=1)
    target = await fake(service)
    events = [EventInput("t", "s", "a", id="mine" if i == 2 else "") for i in range(4)]
    async with DualstreamClient(target, retry=QUICK_RETRY) as client:
        results = await client.publish_batch(events)
    first, second = service.seen
    assert first[2] == "mine"
    assert second == [first[1], first[3]]
    assert [r.id for r in results] == first
    assert all(r.published is not None and r.error is None for r in results)


@pytest.mark.parametrize(
    "trailers", [BOTH_HINTS, RETRY_INFO_ONLY, PUSHBACK_ONLY], ids=["both", "retry_info", "pushback"]
)
async def test_a_capacity_refusal_carries_the_sidecars_retry_hint(
    fake: Serve, trailers: Trailers
) -> None:
    target = await fake(FakeEventService(failures=1, refusal_trailers=trailers))
    async with DualstreamClient(target) as client:
        with pytest.raises(ResourceExhaustedError) as caught:
            await client.publish(EventInput("t", "s", "a"))
    assert caught.value.retry_after == pytest.approx(RETRY_AFTER)
    assert not caught.value.throttled


async def test_resource_exhausted_without_a_hint_is_not_retried(fake: Serve) -> None:
    service = FakeEventService(failures=1, refusal_trailers=())
    target = await fake(service)
    async with DualstreamClient(target, retry=QUICK_RETRY) as client:
        with pytest.raises(ResourceExhaustedError) as caught:
            await client.publish(EventInput("t", "s", "a"))
    assert caught.value.retry_after is None
    assert len(service.seen) == 1


async def test_a_retry_after_a_capacity_refusal_waits_at_least_the_hint(fake: Serve) -> None:
    service = FakeEventService(failures=2, refusal_trailers=BOTH_HINTS)
    target = await fake(service)
    async with DualstreamClient(target, retry=QUICK_RETRY) as client:
        result = await client.publish(EventInput("t", "s", "a"))
    assert service.seen == [[result.id]] * 3
    first, second, third = service.arrivals
    # QUICK_RETRY's own waits are milliseconds: only the hint makes these gaps this long.
    assert second - first >= RETRY_AFTER
    assert third - second >= RETRY_AFTER


async def test_a_batch_refused_for_capacity_is_retried_whole(fake: Serve) -> None:
    service = FakeEventService(failures=1, refusal_trailers=PUSHBACK_ONLY)
    target = await fake(service)
    async with DualstreamClient(target, retry=QUICK_RETRY) as client:
        results = await client.publish_batch([EventInput("t", "s", "a") for _ in range(3)])
    first, second = service.seen
    assert second == first
    assert [r.id for r in results] == first
    assert all(r.published is not None for r in results)


async def test_the_throttle_holds_calls_back_while_the_sidecar_refuses(fake: Serve) -> None:
    service = FakeEventService(failures=1000, refusal_trailers=BOTH_HINTS)
    target = await fake(service)
    outcomes: list[ResourceExhaustedError] = []
    async with DualstreamClient(target, throttle=Throttle()) as client:
        for _ in range(80):
            with pytest.raises(ResourceExhaustedError) as caught:
                await client.publish(EventInput("t", "s", "a"))
            outcomes.append(caught.value)
    held_back = [error for error in outcomes if error.throttled]
    # From the 21st call on, each is held back with p >= 20/21: all 60 sent is out of reach.
    assert held_back, "a sidecar refusing every call, and the throttle sent them all"
    assert len(service.seen) == len(outcomes) - len(held_back), "a held-back call was sent"
    assert all(error.retry_after == pytest.approx(RETRY_AFTER) for error in held_back)
    assert all("client-side throttling" in error.details for error in held_back)


async def test_batched_notifications_are_unpacked_with_their_cursors(fake: Serve) -> None:
    def notification(event_id: str) -> pb.Notification:
        return pb.Notification(id=event_id, source_type="s", source_id="a", cursor=f"c-{event_id}")

    batch = pb.NotificationBatch(notifications=[notification("n2"), notification("n3")])
    service = FakeEventService(
        failures=0,
        responses=[
            pb.SubscribeResponse(subscribed=pb.Subscribed(cursor="c0")),
            pb.SubscribeResponse(notification=notification("n1")),
            pb.SubscribeResponse(notifications=batch),
            pb.SubscribeResponse(gap=pb.Gap(reason=pb.GAP_REASON_EXPIRED, missed=2, cursor="g")),
        ],
    )
    target = await fake(service)
    async with (
        DualstreamClient(target) as client,
        client.subscribe([("s", "*")], max_notifications_per_message=8) as stream,
    ):
        seen = []
        cursors = []
        for _ in range(4):
            message = await asyncio.wait_for(anext(stream), 30)
            seen.append(message.id if isinstance(message, Notification) else message)
            cursors.append(stream.cursor)
    assert seen[:3] == ["n1", "n2", "n3"]
    assert isinstance(seen[3], Gap)
    assert seen[3].reason == "expired"
    assert cursors == ["c-n1", "c-n2", "c-n3", "g"]
    assert service.subscribe_requests[0].max_notifications_per_message == 8


async def test_streams_take_batches_unless_told_otherwise(fake: Serve) -> None:
    subscribed = pb.SubscribeResponse(subscribed=pb.Subscribed(cursor="c0"))
    service = FakeEventService(failures=0, responses=[subscribed])
    target = await fake(service)
    async with DualstreamClient(target) as client:
        async with client.subscribe([("s", "*")]):
            pass
        async with client.subscribe([("s", "*")], max_notifications_per_message=1):
            pass
    default, single = service.subscribe_requests
    assert default.max_notifications_per_message == DEFAULT_MAX_NOTIFICATIONS_PER_MESSAGE == 64
    assert single.max_notifications_per_message == 1


async def test_real_sidecar_ids_field_paths_and_trace_context(
    client: DualstreamClient, source_type: str
) -> None:
    async with client.subscribe([(source_type, "*")]) as stream:
        result = await client.publish(EventInput("t", source_type, "a"))
        message = await asyncio.wait_for(anext(stream), 30)
    assert UUID_V7.match(result.id)
    assert isinstance(message, Notification)
    assert message.id == result.id
    assert TRACEPARENT.match(message.traceparent), message
    assert message.trace_carrier()["traceparent"] == message.traceparent
    with pytest.raises(InvalidArgumentError) as caught:
        await client.publish_batch(
            [EventInput("t", source_type, "a"), EventInput("t", f"{source_type}:bad", "a")]
        )
    assert caught.value.field == "events[1].source_type"


async def test_unix_socket_target(
    settings: Settings, tracer: Any, tmp_path: Path, source_type: str
) -> None:
    socket = tmp_path / "sidecar.sock"
    unix_settings = dataclasses.replace(settings, listen=f"unix:{socket}")
    async with (
        Sidecar(unix_settings, tracer) as sidecar,
        DualstreamClient(f"unix:{socket}") as client,
    ):
        assert await sidecar.publisher.event_log.wait_ready(30)
        result = await client.publish(EventInput("t", source_type, "a"))
    assert result.offset >= 0


async def test_quickstart_runs_as_written(sidecar: Sidecar) -> None:
    quickstart = REPO / "clients" / "python" / "examples" / "quickstart.py"
    assert quickstart.read_text() in (REPO / "README.md").read_text(), (
        "the README's Python quickstart is clients/python/examples/quickstart.py, verbatim"
    )
    # The quickstart targets `make up`'s 127.0.0.1:50051; here the test's sidecar stands in.
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(quickstart),
        env={**os.environ, "DUALSTREAM_TARGET": f"127.0.0.1:{sidecar.port}"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 120)
    lines = output.decode().splitlines()
    assert process.returncode == 0, output
    assert [line.split()[0] for line in lines] == ["published", "notified"], output
    assert lines[0].split()[1] == lines[1].split()[1], "the notification is the published event's"


def one_call_at_a_time(kafka: KafkaBroker, redis: RedisServer, topic: str) -> Settings:
    """A sidecar that refuses publishes beyond the one in progress, as past capacity."""
    return make_settings(kafka.bootstrap, redis.url, topic, max_concurrent_rpcs=1)


async def publish_concurrently(
    client: DualstreamClient, source_type: str, count: int, concurrency: int
) -> list[DualstreamClientError | None]:
    """Publish ``count`` events with ``concurrency`` calls in flight; each call's error."""
    outcomes: list[DualstreamClientError | None] = []
    numbers = iter(range(count))

    async def publish_from() -> None:
        for _ in numbers:  # Shared: each worker takes the next number once its call is done.
            try:
                await client.publish(EventInput("overload", source_type, "a"))
            except DualstreamClientError as exc:
                outcomes.append(exc)
            else:
                outcomes.append(None)

    async with asyncio.TaskGroup() as workers:
        for _ in range(concurrency):
            workers.create_task(publish_from())
    return outcomes


async def test_a_sidecar_past_capacity_refuses_with_hints_and_the_throttle_joins_in(
    kafka: KafkaBroker, shared_redis: RedisServer, topic: str, tracer: Any, source_type: str
) -> None:
    settings = one_call_at_a_time(kafka, shared_redis, topic)
    async with Sidecar(settings, tracer) as sidecar:
        assert await sidecar.publisher.event_log.wait_ready(30)
        async with DualstreamClient(target_of(sidecar), throttle=Throttle()) as client:
            outcomes = await publish_concurrently(client, source_type, 400, 32)
        refused_by_sidecar = sidecar.admission.refused
    acknowledged = [outcome for outcome in outcomes if outcome is None]
    errors = [outcome for outcome in outcomes if outcome is not None]
    assert all(isinstance(error, ResourceExhaustedError) for error in errors), errors[:3]
    refused = [e for e in errors if isinstance(e, ResourceExhaustedError) and not e.throttled]
    held_back = [e for e in errors if isinstance(e, ResourceExhaustedError) and e.throttled]
    assert acknowledged, "nothing got through"
    assert refused, "32 calls in flight against a sidecar taking one, and none refused"
    assert held_back, f"{len(refused)} refusals and the throttle held nothing back"
    assert all(e.retry_after is not None and e.retry_after > 0 for e in refused + held_back)
    assert len(refused) == refused_by_sidecar, "every refusal the sidecar made was a hinted one"


async def test_retries_ride_out_capacity_refusals(
    kafka: KafkaBroker, shared_redis: RedisServer, topic: str, tracer: Any, source_type: str
) -> None:
    settings = one_call_at_a_time(kafka, shared_redis, topic)
    # Generous bounds: on a loaded machine one call at a time may be slow, and the sidecar's
    # hints grow with its queue.
    retry = Retry(max_attempts=1000, initial_backoff=0.01, max_backoff=0.5, max_elapsed=120)
    async with Sidecar(settings, tracer) as sidecar:
        assert await sidecar.publisher.event_log.wait_ready(30)
        async with DualstreamClient(target_of(sidecar), retry=retry, throttle=Throttle()) as client:
            outcomes = await publish_concurrently(client, source_type, 100, 16)
        refused_by_sidecar = sidecar.admission.refused
    assert outcomes == [None] * 100
    assert refused_by_sidecar > 0, "16 calls in flight against a sidecar taking one, none refused"
