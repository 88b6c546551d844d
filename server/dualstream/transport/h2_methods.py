"""The sidecar's methods as ``transport/h2_server.py`` serves them: bytes in, bytes out, the
same ``EventServicer`` handlers as on grpc.aio, plus the health and reflection services."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

from dualstream.transport.h2_server import CallContext, Method
from dualstream.transport.servicer import SERVICE_NAME, EventServicer, tolerant_parser
from dualstream.v1 import event_service_pb2 as pb

Serving = Callable[[], "health_pb2.HealthCheckResponse.ServingStatus.ValueType"]
HEALTH = "grpc.health.v1.Health"
REFLECTION_METHOD = f"/{reflection.SERVICE_NAME}/ServerReflectionInfo"
# What reflection lists, on either server of the publishing address.
REFLECTED_SERVICES = (SERVICE_NAME, HEALTH, reflection.SERVICE_NAME)


def streams_methods(servicer: EventServicer, serving: Serving) -> dict[str, Method]:
    """What the delivery process serves: Subscribe, GetStatus and health checks."""
    parse_subscribe = tolerant_parser(pb.SubscribeRequest)
    parse_status = tolerant_parser(pb.GetStatusRequest)

    def subscribe(request: bytes, context: CallContext) -> AsyncIterator[bytes]:
        return servicer.Subscribe(parse_subscribe(request), context)

    async def get_status(request: bytes, context: CallContext) -> bytes:
        return (await servicer.GetStatus(parse_status(request), context)).SerializeToString()

    async def check_health(request: bytes, context: CallContext) -> bytes:
        service = health_pb2.HealthCheckRequest.FromString(request).service
        if service not in ("", SERVICE_NAME):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {service!r}")
        response: bytes = health_pb2.HealthCheckResponse(status=serving()).SerializeToString()
        return response

    return {
        f"/{SERVICE_NAME}/Subscribe": Method(stream=subscribe),
        f"/{SERVICE_NAME}/GetStatus": Method(unary=get_status),
        f"/{HEALTH}/Check": Method(unary=check_health),
    }


def api_methods(
    servicer: EventServicer, serving: Serving, health_poll_seconds: float
) -> dict[str, Method]:
    """What the publishing address serves: every method, health's Watch and reflection."""
    parse_publish = tolerant_parser(pb.PublishRequest)
    parse_batch = tolerant_parser(pb.PublishBatchRequest)

    async def publish(request: bytes, context: CallContext) -> bytes:
        response = await servicer.publish_admitted(parse_publish(request), context)
        return response.SerializeToString()

    async def publish_batch(request: bytes, context: CallContext) -> bytes:
        response = await servicer.publish_batch_admitted(parse_batch(request), context)
        return response.SerializeToString()

    async def watch_health(request: bytes, context: CallContext) -> AsyncIterator[bytes]:
        service = health_pb2.HealthCheckRequest.FromString(request).service
        last = None
        while True:
            status = (
                serving()
                if service in ("", SERVICE_NAME)
                else health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            )
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status).SerializeToString()
                last = status
            await asyncio.sleep(health_poll_seconds)

    reflector = reflection.aio.ReflectionServicer(REFLECTED_SERVICES)  # type: ignore[attr-defined]

    async def reflect(requests: AsyncIterator[bytes], context: CallContext) -> AsyncIterator[bytes]:
        parsed = (reflection_pb2.ServerReflectionRequest.FromString(raw) async for raw in requests)
        async for response in reflector.ServerReflectionInfo(parsed, context):
            yield response.SerializeToString()

    return {
        **streams_methods(servicer, serving),
        f"/{SERVICE_NAME}/Publish": Method(
            unary=publish, admit=lambda: servicer.refusal("Publish"), release=servicer.release
        ),
        f"/{SERVICE_NAME}/PublishBatch": Method(
            unary=publish_batch,
            admit=lambda: servicer.refusal("PublishBatch"),
            release=servicer.release,
        ),
        f"/{HEALTH}/Watch": Method(stream=watch_health),
        REFLECTION_METHOD: Method(bidi=reflect),
    }
