"""The gRPC floor: an EventService that does nothing but what grpc.aio itself must do.

``Publish`` answers at once. For the fan-out floor it also hands one pre-encoded notification
(the event's id, a fixed cursor) to every open ``Subscribe`` stream, which writes it as it is,
or several queued ones in one ``notifications`` batch when the stream asked for batches: no
Kafka, no Redis, no cursor, no encoding per stream. What that costs per delivered message is
what grpc.aio costs, and so the least any Python sidecar's fan-out can cost here.

``python -m bench.empty_server PORT h2`` serves the same service with the delivery process's
own HTTP/2 server (``transport/h2_server.py``) instead: that server's floor.
"""

from __future__ import annotations

import asyncio
import collections
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
import uvloop

from dualstream.protowire import length_delimited
from dualstream.transport.h2_server import CallContext, H2Server, Method
from dualstream.v1 import event_service_pb2 as pb

_RESPONSE = pb.PublishResponse(id="x", topic="events", partition=0, offset=0, notified=True)
_SUBSCRIBED = pb.SubscribeResponse(subscribed=pb.Subscribed(cursor="c")).SerializeToString()


class _Stream:
    def __init__(self) -> None:
        self.queue: collections.deque[bytes] = collections.deque()
        self.waiter: asyncio.Future[None] | None = None

    def offer(self, notification: bytes) -> None:
        self.queue.append(notification)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class EmptyService:
    def __init__(self) -> None:
        self.streams: set[_Stream] = set()

    async def Publish(self, request: pb.PublishRequest, context: Any) -> pb.PublishResponse:
        if self.streams:
            notification = pb.Notification(id=request.event.id, cursor="c").SerializeToString()
            for stream in self.streams:
                stream.offer(notification)
        return _RESPONSE

    async def Subscribe(self, request: pb.SubscribeRequest, context: Any) -> AsyncIterator[bytes]:
        stream = _Stream()
        self.streams.add(stream)
        batch = max(1, request.max_notifications_per_message)
        try:
            yield _SUBSCRIBED
            loop = asyncio.get_running_loop()
            while True:
                while not stream.queue:
                    stream.waiter = loop.create_future()
                    await stream.waiter
                taken = [stream.queue.popleft() for _ in range(min(batch, len(stream.queue)))]
                if len(taken) == 1:
                    yield length_delimited(2, taken[0])  # SubscribeResponse.notification
                else:
                    entries = b"".join(length_delimited(1, n) for n in taken)
                    yield length_delimited(5, entries)  # SubscribeResponse.notifications
        finally:
            self.streams.discard(stream)


async def serve_h2(port: int) -> None:
    service = EmptyService()

    async def publish(request: bytes, context: CallContext) -> bytes:
        response = await service.Publish(pb.PublishRequest.FromString(request), context)
        return response.SerializeToString()

    def subscribe(request: bytes, context: CallContext) -> AsyncIterator[bytes]:
        return service.Subscribe(pb.SubscribeRequest.FromString(request), context)

    methods = {
        "/dualstream.v1.EventService/Publish": Method(unary=publish),
        "/dualstream.v1.EventService/Subscribe": Method(stream=subscribe),
    }
    async with H2Server(f"127.0.0.1:{port}", methods, max_calls_per_connection=10_000):
        await asyncio.Event().wait()


async def serve(port: int) -> None:
    server = grpc.aio.server()
    service = EmptyService()
    handlers = {
        "Publish": grpc.unary_unary_rpc_method_handler(
            service.Publish,
            request_deserializer=pb.PublishRequest.FromString,
            response_serializer=pb.PublishResponse.SerializeToString,
        ),
        "Subscribe": grpc.unary_stream_rpc_method_handler(
            service.Subscribe, request_deserializer=pb.SubscribeRequest.FromString
        ),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("dualstream.v1.EventService", handlers),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    uvloop.run((serve_h2 if sys.argv[2:] == ["h2"] else serve)(int(sys.argv[1])))
