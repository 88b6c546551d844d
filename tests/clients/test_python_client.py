"""The Python client's own capabilities: client-side ids and the retry that reuses them, the
field path of INVALID_ARGUMENT, unix targets, trace context, batched notifications.

The retry and the unpacking of NotificationBatch are client logic, tested against a small
in-process fake EventService; everything else runs against a real sidecar, and automatic
resume against a SIGKILLed one in test_conformance.py."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from dualstream.settings import Settings
from dualstream.transport.server import Sidecar
from dualstream.v1 import event_service_pb2 as pb
from dualstream_client import (
    DEFAULT_MAX_NOTIFICATIONS_PER_MESSAGE,
    DualstreamClient,
    EventInput,
    Gap,
    InvalidArgumentError,
    Notification,
    Retry,
    UnavailableError,
    new_event_id,
)
from tests.clients.apps import REPO

UUID_V7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
QUICK_RETRY = Retry(max_attempts=4, initial_backoff=0.001, max_backoff=0.005)


def test_new_event_ids_are_time_ordered_uuid_v7() -> None:
    ids = [new_event_id() for _ in range(200)]
    assert all(UUID_V7.match(event_id) for event_id in ids)
    assert len(set(ids)) == len(ids)
    assert [event_id[:13] for event_id in ids] == sorted(event_id[:13] for event_id in ids)


class FakeEventService:
    """Fails the first ``failures`` publish calls with UNAVAILABLE and records every id sent;
    its Subscribe records the request and streams ``responses``."""

    def __init__(self, failures: int, responses: Sequence[pb.SubscribeResponse] = ()) -> None:
        self.failures = failures
        self.responses = responses
        self.seen: list[list[str]] = []
        self.subscribe_requests: list[pb.SubscribeRequest] = []

    async def _fail(self, ids: list[str], context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.seen.append(ids)
        if self.failures:
            self.failures -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "Kafka is not connected")

    async def publish(
        self, request: pb.PublishRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PublishResponse:
        await self._fail([request.event.id], context)
        return pb.PublishResponse(id=request.event.id, topic="events", offset=7)

    async def publish_batch(
        self, request: pb.PublishBatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PublishBatchResponse:
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
