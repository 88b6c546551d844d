"""The publishing address on either server (``api_server``): grpc.aio, or the sidecar's own
HTTP/2. The rest of the suite runs on the default; these run on both, whatever it is."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from dualstream.transport.server import Sidecar
from dualstream.v1 import event_service_pb2 as pb
from dualstream.v1 import event_service_pb2_grpc as pb_grpc
from dualstream_client import DualstreamClient, EventInput, ResourceExhaustedError
from stack.localstack import KafkaBroker, RedisServer
from tests.conftest import make_settings, next_notification, target_of


@pytest.fixture(params=["grpcio", "h2"])
async def api_sidecar(
    request: pytest.FixtureRequest,
    kafka: KafkaBroker,
    shared_redis: RedisServer,
    topic: str,
    tracer: Any,
) -> AsyncIterator[Sidecar]:
    settings = make_settings(
        kafka.bootstrap, shared_redis.url, topic, api_server=request.param, max_payload_bytes=1000
    )
    async with Sidecar(settings, tracer) as sidecar:
        assert sidecar.own_http2 == (request.param == "h2")
        assert await sidecar.publisher.event_log.wait_ready(30)
        yield sidecar


async def test_publish_subscribe_and_status(api_sidecar: Sidecar, source_type: str) -> None:
    async with DualstreamClient(target_of(api_sidecar)) as client:
        stream = client.subscribe([(source_type, "a")])
        await stream.wait_live()
        published = await client.publish(EventInput("t", source_type, "a", data=b"x"))
        assert (await next_notification(stream)).id == published.id
        results = await client.publish_batch([EventInput("t", source_type, "a") for _ in range(3)])
        assert [(await next_notification(stream)).id for _ in results] == [r.id for r in results]
        assert (await client.status()).streams == 1
        stream.close()


async def test_health_check_and_watch(api_sidecar: Sidecar) -> None:
    async with grpc.aio.insecure_channel(target_of(api_sidecar)) as channel:
        health: Any = health_pb2_grpc.HealthStub(channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert reply.status == serving
        watch = health.Watch(
            health_pb2.HealthCheckRequest(service="dualstream.v1.EventService"), timeout=10
        )
        assert (await watch.read()).status == serving
        watch.cancel()
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_the_services(api_sidecar: Sidecar) -> None:
    async with grpc.aio.insecure_channel(target_of(api_sidecar)) as channel:
        reflection: Any = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = reflection.ServerReflectionInfo(timeout=10)
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        listed = await call.read()
        names = {service.name for service in listed.list_services_response.service}
        assert "dualstream.v1.EventService" in names
        await call.write(
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="dualstream.v1.EventService"
            )
        )
        described = await call.read()
        assert described.file_descriptor_response.file_descriptor_proto
        await call.done_writing()


async def test_past_max_concurrent_rpcs_a_publish_is_refused_with_a_retry_hint(
    api_sidecar: Sidecar, source_type: str
) -> None:
    api_sidecar.admission.max_calls = api_sidecar.admission.limit = 0
    async with DualstreamClient(target_of(api_sidecar)) as client:
        with pytest.raises(ResourceExhaustedError) as refused:
            await client.publish(EventInput("t", source_type, "a"))
    assert refused.value.retry_after is not None


async def test_an_oversized_request_is_refused_and_the_connection_goes_on(
    api_sidecar: Sidecar, source_type: str
) -> None:
    async with grpc.aio.insecure_channel(target_of(api_sidecar)) as channel:
        stub: Any = pb_grpc.EventServiceStub(channel)
        too_big = pb.Event(type="t", source_type=source_type, source_id="a", data=b"x" * 2**21)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Publish(pb.PublishRequest(event=too_big), timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        fine = pb.Event(type="t", source_type=source_type, source_id="a", data=b"x")
        assert (await stub.Publish(pb.PublishRequest(event=fine), timeout=10)).id


async def test_a_stream_past_its_deadline_ends_deadline_exceeded(
    api_sidecar: Sidecar, source_type: str
) -> None:
    async with grpc.aio.insecure_channel(target_of(api_sidecar)) as channel:
        stub: Any = pb_grpc.EventServiceStub(channel)
        call = stub.Subscribe(
            pb.SubscribeRequest(sources=[pb.Source(source_type=source_type, source_id="a")]),
            timeout=1,
        )
        # Whether "subscribed" came first or not (a loaded machine may take longer than the
        # deadline to subscribe), the stream ends with its deadline.
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await _read_to_the_end(call)
        assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def _read_to_the_end(call: Any) -> None:
    while await asyncio.wait_for(call.read(), 30) is not grpc.aio.EOF:  # type: ignore[attr-defined]
        pass
