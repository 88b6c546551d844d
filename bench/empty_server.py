"""The gRPC floor: an EventService whose Publish does nothing, on grpc.aio like the sidecar."""

from __future__ import annotations

import sys
from typing import Any

import grpc
import uvloop

from dualstream.v1 import event_service_pb2 as pb
from dualstream.v1 import event_service_pb2_grpc as pb_grpc

_RESPONSE = pb.PublishResponse(id="x", topic="events", partition=0, offset=0, notified=True)


class EmptyService(pb_grpc.EventServiceServicer):
    """Only Publish: the floor is the cost of one unary call through grpc.aio."""

    async def Publish(self, request: pb.PublishRequest, context: Any) -> pb.PublishResponse:
        return _RESPONSE


async def serve(port: int) -> None:
    server = grpc.aio.server()
    pb_grpc.add_EventServiceServicer_to_server(EmptyService(), server)  # type: ignore[abstract]
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
