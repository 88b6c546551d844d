"""The delivery process's methods as ``transport/h2_server.py`` serves them: bytes in, bytes
out, the same ``EventServicer`` handlers as on grpc.aio, and the health service's Check."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc
from grpc_health.v1 import health_pb2

from dualstream.transport.h2_server import CallContext, Method
from dualstream.transport.servicer import SERVICE_NAME, EventServicer, tolerant_parser
from dualstream.v1 import event_service_pb2 as pb

Serving = Callable[[], "health_pb2.HealthCheckResponse.ServingStatus.ValueType"]
HEALTH = "grpc.health.v1.Health"


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
