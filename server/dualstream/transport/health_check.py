"""The gRPC half of ``dualstream health``: ``grpc.health.v1.Health/Check`` on the API target."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dualstream.health_check import Verdict
from dualstream.text import one_line


async def check_grpc_health(target: str, timeout: float) -> Verdict:
    """Healthy when the sidecar's overall health status is SERVING (Kafka connected)."""
    label = f"gRPC {target}"
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code is grpc.StatusCode.UNAVAILABLE:
                return Verdict(False, f"{label} unreachable: {one_line(exc.details() or '')}")
            if code is grpc.StatusCode.DEADLINE_EXCEEDED:
                return Verdict(False, f"{label} did not answer within {timeout:g}s")
            return Verdict(False, f"{label} {code.name}: {one_line(exc.details() or '')}")
    state = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    return Verdict(answer.status == health_pb2.HealthCheckResponse.SERVING, f"{label} {state}")
