"""``dualstream.v1.EventService``: a thin adapter over the publisher and the subscription hub."""

from __future__ import annotations

import collections
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from dualstream.errors import DualstreamError, InvalidArgumentError, ResourceExhaustedError
from dualstream.publisher import Publisher
from dualstream.status import SidecarStatus
from dualstream.streams import Deliveries, Delivery, StreamService
from dualstream.telemetry import context_from_metadata
from dualstream.transport import convert
from dualstream.transport.deliveries import DeliveryEncoder
from dualstream.transport.status import status_code_for
from dualstream.transport.wire import find_invalid_field
from dualstream.v1 import event_service_pb2 as pb
from dualstream.v1 import event_service_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)
SERVICE_NAME = "dualstream.v1.EventService"
_Context = grpc.aio.ServicerContext[Any, Any]


class _StatusError(Exception):
    """Carries the status a handler must end with out of the span's scope."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


@contextmanager
def _rpc_span(
    tracer: Tracer, method: str, context: _Context, *, streaming: bool = False
) -> Iterator[Span]:
    """A SERVER span, child of the caller's ``traceparent``, that maps errors to a status.

    A streaming handler yields between its steps, possibly resumed in another context, so its
    span is not made current (that would leave a context token that cannot be detached).
    """
    metadata = {
        key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)
    }
    span = tracer.start_span(
        f"{SERVICE_NAME}/{method}",
        context=context_from_metadata(metadata),
        kind=SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": SERVICE_NAME, "rpc.method": method},
    )
    try:
        if streaming:
            yield span
        else:
            with trace.use_span(span, end_on_exit=False):
                yield span
    except DualstreamError as exc:
        code = status_code_for(exc)
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code is not grpc.StatusCode.INVALID_ARGUMENT:
            span.set_status(Status(StatusCode.ERROR, str(exc)))
        raise _StatusError(code, str(exc)) from exc
    except Exception as exc:
        logger.exception("%s failed unexpectedly", method)
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        span.set_attribute("rpc.grpc.status_code", grpc.StatusCode.INTERNAL.value[0])
        raise _StatusError(grpc.StatusCode.INTERNAL, "internal error; see the sidecar log") from exc
    else:
        span.set_attribute("rpc.grpc.status_code", grpc.StatusCode.OK.value[0])
    finally:
        span.end()


@dataclass(frozen=True, slots=True)
class MalformedRequest:
    """A request protobuf could not parse; ``field`` is the path of the field at fault."""

    field: str
    problem: str

    def error(self) -> InvalidArgumentError:
        return InvalidArgumentError(self.field, self.problem)


def tolerant_parser(message_class: type[Message]) -> Callable[[bytes], Any]:
    """A request deserializer that turns unparseable bytes into ``MalformedRequest``, so the
    handler can answer INVALID_ARGUMENT naming the field (gRPC itself would say INTERNAL)."""

    def parse(raw: bytes) -> Any:
        try:
            return message_class.FromString(raw)
        except DecodeError:
            field = find_invalid_field(message_class.DESCRIPTOR, raw) or "request"
            return MalformedRequest(field, "is not valid protobuf (a string that is not UTF-8?)")

    return parse


class EventServicer(pb_grpc.EventServiceServicer):
    def __init__(
        self,
        publisher: Publisher,
        streams: StreamService,
        tracer: Tracer,
        *,
        status: Callable[[], SidecarStatus],
        max_streams_per_client: int,
        max_concurrent_calls: int,
    ) -> None:
        self._publisher = publisher
        self._streams = streams
        self._tracer = tracer
        self._status = status
        self._max_streams_per_client = max_streams_per_client
        self._streams_by_peer: collections.Counter[str] = collections.Counter()
        self._encoder = DeliveryEncoder()
        # Our own bound on calls in progress: grpc.aio's maximum_concurrent_rpcs is not
        # reliable (it can stop counting, and overload then shows up as CANCELLED).
        self._max_calls = max_concurrent_calls
        self._calls = 0

    @contextmanager
    def _admitted(self) -> Iterator[None]:
        if self._calls >= self._max_calls:
            raise ResourceExhaustedError(
                f"the sidecar is already handling {self._calls} calls, its limit; retry later"
            )
        self._calls += 1
        try:
            yield
        finally:
            self._calls -= 1

    async def Publish(self, request: pb.PublishRequest, context: _Context) -> pb.PublishResponse:
        try:
            with _rpc_span(self._tracer, "Publish", context), self._admitted():
                if isinstance(request, MalformedRequest):
                    raise request.error()
                if not request.HasField("event"):
                    raise InvalidArgumentError("event", "is required")
                event = convert.event_from_proto(request.event, "event")
                return convert.publish_response(await self._publisher.publish(event))
        except _StatusError as failure:
            await context.abort(failure.code, failure.details)
            raise  # Unreachable: abort raises. Keeps the type checker honest.

    async def PublishBatch(
        self, request: pb.PublishBatchRequest, context: _Context
    ) -> pb.PublishBatchResponse:
        try:
            with _rpc_span(self._tracer, "PublishBatch", context), self._admitted():
                if isinstance(request, MalformedRequest):
                    raise request.error()
                events = [
                    convert.event_from_proto(event, f"events[{i}]")
                    for i, event in enumerate(request.events)
                ]
                outcomes = await self._publisher.publish_batch(events)
                return pb.PublishBatchResponse(
                    results=[convert.batch_result(outcome) for outcome in outcomes]
                )
        except _StatusError as failure:
            await context.abort(failure.code, failure.details)
            raise

    async def Subscribe(  # type: ignore[override]  # Bytes: the handler's serializer is none.
        self, request: pb.SubscribeRequest, context: _Context
    ) -> AsyncIterator[bytes]:
        """Yields ``SubscribeResponse`` messages already encoded (the method's serializer is
        the identity): a live notification's shared fields are encoded once for all streams."""
        try:
            with _rpc_span(self._tracer, "Subscribe", context, streaming=True):
                if isinstance(request, MalformedRequest):
                    raise request.error()
                stream_request = convert.stream_request_from_proto(request)
                peer = context.peer()
                if self._streams_by_peer[peer] >= self._max_streams_per_client:
                    raise ResourceExhaustedError(
                        f"this client already has {self._max_streams_per_client} streams open, "
                        "its limit"
                    )
                self._streams_by_peer[peer] += 1
                try:
                    async with aclosing(self._streams.open(stream_request)) as items:
                        async for item in items:
                            if isinstance(item, Delivery):
                                yield self._encoder.single(item)
                            elif isinstance(item, Deliveries):
                                for message in self._encoder.batches(item.deliveries):
                                    yield message
                            else:
                                yield convert.stream_item_to_proto(item).SerializeToString()
                finally:
                    self._streams_by_peer[peer] -= 1
                    if not self._streams_by_peer[peer]:
                        del self._streams_by_peer[peer]
        except _StatusError as failure:
            await context.abort(failure.code, failure.details)

    async def GetStatus(
        self, request: pb.GetStatusRequest, context: _Context
    ) -> pb.GetStatusResponse:
        return convert.status_to_proto(self._status())
