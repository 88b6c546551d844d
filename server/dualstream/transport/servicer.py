"""``dualstream.v1.EventService``: a thin adapter over the publisher and the subscription hub."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

import grpc
from google.protobuf.message import DecodeError, Message
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.semconv._incubating.attributes.rpc_attributes import (
    RPC_METHOD,
    RPC_RESPONSE_STATUS_CODE,
    RPC_SYSTEM_NAME,
)
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from dualstream.errors import DualstreamError, InvalidArgumentError, ResourceExhaustedError
from dualstream.lifecycle import event_set_within
from dualstream.metrics import Count, RpcCalls, SidecarMetrics
from dualstream.publisher import Publisher
from dualstream.status import SidecarStatus
from dualstream.streams import Deliveries, Delivery, Gap, StreamService
from dualstream.telemetry import (
    DeliveryTracer,
    TraceContext,
    context_from_metadata,
    records_spans,
    server_attributes,
)
from dualstream.transport import convert
from dualstream.transport.admission import Admission
from dualstream.transport.deliveries import DeliveryEncoder
from dualstream.transport.status import Trailers, retry_trailers, status_code_for, trailers_for
from dualstream.transport.wire import find_invalid_field
from dualstream.v1 import event_service_pb2 as pb
from dualstream.v1 import event_service_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)
SERVICE_NAME = "dualstream.v1.EventService"


class CallContext(Protocol):
    """What the handlers other than the publishes use of a call's context: grpc.aio's, or the
    delivery process's own HTTP/2 server's (``transport/h2_server.py``)."""

    def invocation_metadata(self) -> Iterable[tuple[str, str | bytes]] | None: ...

    def peer(self) -> str: ...

    def time_remaining(self) -> float | None: ...

    def cancelled(self) -> bool: ...

    async def abort(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: Sequence[tuple[str, str | bytes]] = (),
    ) -> NoReturn: ...


class UnaryCallContext(CallContext, Protocol):
    """What the publishes use besides: a status set without aborting, for refusals."""

    def set_code(self, code: grpc.StatusCode) -> None: ...

    def set_details(self, details: str) -> None: ...

    def set_trailing_metadata(
        self, trailing_metadata: Sequence[tuple[str, str | bytes]]
    ) -> None: ...


_REFUSED_PUBLISH = pb.PublishResponse()
_REFUSED_BATCH = pb.PublishBatchResponse()


def _refuse(context: UnaryCallContext, refusal: tuple[str, Trailers]) -> None:
    """End a call the sidecar has no room for, as cheaply as a call can end on grpc.aio: no
    span, no exception, RESOURCE_EXHAUSTED with its retry hint."""
    context.set_code(grpc.StatusCode.RESOURCE_EXHAUSTED)
    context.set_details(refusal[0])
    context.set_trailing_metadata(refusal[1])


class _StatusError(Exception):
    """Carries the status a handler must end with out of the span's scope."""

    def __init__(self, code: grpc.StatusCode, details: str, trailers: Trailers = ()) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.trailers = trailers


class _Calls:
    """A SERVER span per call, child of the caller's ``traceparent``, that maps errors to a
    status; and the call's duration in ``rpc.server.call.duration``."""

    def __init__(self, tracer: Tracer, rpc: RpcCalls, listen: str) -> None:
        self._tracer = tracer
        self.rpc = rpc
        self._attributes = {
            method: {
                RPC_SYSTEM_NAME: "grpc",
                RPC_METHOD: f"{SERVICE_NAME}/{method}",
                **server_attributes(listen),
            }
            for method in ("Publish", "PublishBatch", "Subscribe", "GetStatus")
        }

    @contextmanager
    def __call__(
        self, method: str, context: CallContext, *, streaming: bool = False
    ) -> Iterator[Span]:
        """A streaming handler yields between its steps, possibly resumed in another context,
        so its span is not made current (that would leave a context token that cannot be
        detached)."""
        started = time.perf_counter()
        metadata = {
            key: value
            for key, value in context.invocation_metadata() or ()
            if isinstance(value, str)
        }
        span = self._tracer.start_span(
            f"{SERVICE_NAME}/{method}",
            context=context_from_metadata(metadata),
            kind=SpanKind.SERVER,
            attributes=self._attributes[method],
        )
        code = grpc.StatusCode.OK
        # Current for the publish path's spans and trace headers; attached by hand (use_span
        # would also record errors, which is done below by the conventions' rules instead).
        token = None if streaming else otel_context.attach(trace.set_span_in_context(span))
        try:
            yield span
        except DualstreamError as exc:
            code = status_code_for(exc)
            raise _StatusError(code, str(exc), trailers_for(exc, code)) from exc
        except Exception as exc:
            logger.exception("%s failed unexpectedly", method)
            span.record_exception(exc)
            code = grpc.StatusCode.INTERNAL
            raise _StatusError(code, "internal error; see the sidecar log") from exc
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED  # The client went away (or the server stops).
            raise
        finally:
            if token is not None:
                otel_context.detach(token)
            self.rpc.record(method, code.name, time.perf_counter() - started)
            span.set_attribute(RPC_RESPONSE_STATUS_CODE, code.name)
            if code.name in RpcCalls.SERVER_ERRORS:
                span.set_attribute(ERROR_TYPE, code.name)
                span.set_status(Status(StatusCode.ERROR, code.name))
            span.end()


async def _end_call(context: CallContext, failure: _StatusError) -> None:
    """End the call with ``failure``'s status; always raises.

    When the caller is already gone (it cancelled, or its deadline passed) no status can reach
    it, and grpc.aio logs the failed write of one as an error with a traceback, racing its own
    bookkeeping of the cancellation. The call then ends as the cancelled call it is.
    """
    remaining = context.time_remaining()
    if context.cancelled() or (remaining is not None and remaining <= 0):
        raise asyncio.CancelledError
    await context.abort(failure.code, failure.details, failure.trailers)


def client_connection(peer: str) -> str:
    """The client a Subscribe counts against for ``max_streams_per_client``: its TCP
    connection, which gRPC names by the client's address and port (``ipv4:10.0.0.7:51234``).

    On a unix socket gRPC names every caller alike (``unix:``), so no client can be told from
    another; "" then: the per-client cap does not apply there, and ``max_streams`` bounds the
    callers together (they are the pod's own processes, where the socket is the k8s example's).
    """
    return peer if peer.startswith(("ipv4:", "ipv6:")) else ""


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


class RunningStreams:
    """How many Subscribe handlers are running, and a wait for none to be.

    A stream whose client went away is over for gRPC's core at once, so the server's stop does
    not wait for its handler, which may still be closing its subscription. A handler left
    running when the event loop closes is cancelled there, and grpc.aio logs that as an
    unhandled error; the sidecar waits for them after the server stopped."""

    def __init__(self) -> None:
        self.count = 0
        self._none = asyncio.Event()
        self._none.set()

    def started(self) -> None:
        self.count += 1
        self._none.clear()

    def finished(self) -> None:
        self.count -= 1
        if not self.count:
            self._none.set()

    async def none_within(self, timeout: float) -> bool:
        """Until no handler runs, for up to ``timeout`` seconds; whether none does."""
        return await event_set_within(self._none, timeout)


class EventServicer(pb_grpc.EventServiceServicer):
    def __init__(
        self,
        publisher: Publisher,
        streams: StreamService,
        tracer: Tracer,
        *,
        status: Callable[[], SidecarStatus],
        max_streams_per_client: int,
        admission: Admission,
        metrics: SidecarMetrics | None = None,
        listen: str = "",
    ) -> None:
        self._publisher = publisher
        self._streams = streams
        metrics = metrics or SidecarMetrics()
        self._call = _Calls(tracer, metrics.rpc, listen)
        topic = publisher.event_log.topic
        self._deliveries = DeliveryTracer(tracer, topic) if records_spans(tracer) else None
        self._live_deliveries, self._replayed_deliveries = metrics.delivery_counts(topic)
        self._gap_counts = metrics.gaps
        self._gaps: dict[str, tuple[Count, Count]] = {}
        self._gap_missed = metrics.gap_missed
        self._status = status
        self._max_streams_per_client = max_streams_per_client
        self._streams_by_peer: collections.Counter[str] = collections.Counter()
        self.running_streams = RunningStreams()
        self._encoder = DeliveryEncoder()
        # Our own bound on publish calls (grpc.aio's maximum_concurrent_rpcs is not reliable:
        # it can stop counting), and refusal past capacity.
        self._admission = admission
        # Refusals' messages and trailers by (reason, retry hint): built once each.
        self._refusals: dict[tuple[bool, int], tuple[str, Trailers]] = {}

    def refusal(self, method: str) -> tuple[str, Trailers] | None:
        """Take a publish call on, or say why not: None, the call is admitted (and must be
        released with ``release``); else the message and trailers of its refusal, past
        capacity, with a retry hint (see ``transport/admission.py``)."""
        admission = self._admission
        if admission.try_admit():
            return None
        retry_ms = round(admission.retry_after * 100) * 10  # Hints in steps of 10 ms.
        key = (admission.limited, retry_ms)
        refusal = self._refusals.get(key)
        if refusal is None:
            reason = (
                "calls are queueing for it"
                if admission.limited
                else f"{admission.max_calls} publish calls are in progress, its limit"
            )
            message = f"the sidecar is past capacity ({reason}); retry in {retry_ms} ms"
            trailers = retry_trailers(grpc.StatusCode.RESOURCE_EXHAUSTED, message, retry_ms / 1000)
            refusal = self._refusals[key] = (message, trailers)
        self._call.rpc.record(method, "RESOURCE_EXHAUSTED", 0.0)
        return refusal

    def release(self) -> None:
        """An admitted publish call has ended."""
        self._admission.release()

    async def Publish(  # type: ignore[override]
        self, request: pb.PublishRequest, context: UnaryCallContext
    ) -> pb.PublishResponse:
        refusal = self.refusal("Publish")
        if refusal is not None:
            _refuse(context, refusal)
            # grpc.aio drops a message answered with a status other than OK, but still sends
            # an empty one before that status: clients must judge a call by its status (the
            # Java client once took that empty message for an acknowledgement).
            return _REFUSED_PUBLISH
        try:
            return await self.publish_admitted(request, context)
        finally:
            self.release()

    async def publish_admitted(
        self, request: pb.PublishRequest, context: CallContext
    ) -> pb.PublishResponse:
        """Publish, for a call ``refusal`` took on."""
        try:
            with self._call("Publish", context):
                if isinstance(request, MalformedRequest):
                    raise request.error()
                if not request.HasField("event"):
                    raise InvalidArgumentError("event", "is required")
                event = convert.event_from_proto(request.event, "event")
                return convert.publish_response(await self._publisher.publish(event))
        except _StatusError as failure:
            await _end_call(context, failure)
            raise  # Unreachable: abort raises. Keeps the type checker honest.

    async def PublishBatch(  # type: ignore[override]
        self, request: pb.PublishBatchRequest, context: UnaryCallContext
    ) -> pb.PublishBatchResponse:
        refusal = self.refusal("PublishBatch")
        if refusal is not None:
            _refuse(context, refusal)
            return _REFUSED_BATCH
        try:
            return await self.publish_batch_admitted(request, context)
        finally:
            self.release()

    async def publish_batch_admitted(
        self, request: pb.PublishBatchRequest, context: CallContext
    ) -> pb.PublishBatchResponse:
        """PublishBatch, for a call ``refusal`` took on."""
        try:
            with self._call("PublishBatch", context):
                if isinstance(request, MalformedRequest):
                    raise request.error()
                events = [
                    convert.event_from_proto(event, "events", i)
                    for i, event in enumerate(request.events)
                ]
                outcomes = await self._publisher.publish_batch(events)
                return convert.batch_response(outcomes)
        except _StatusError as failure:
            await _end_call(context, failure)
            raise

    async def Subscribe(  # type: ignore[override]  # Bytes: the handler's serializer is none.
        self, request: pb.SubscribeRequest, context: CallContext
    ) -> AsyncIterator[bytes]:
        """Yields ``SubscribeResponse`` messages already encoded (the method's serializer is
        the identity): a live notification's shared fields are encoded once for all streams."""
        running = self.running_streams
        running.started()
        try:
            with self._call("Subscribe", context, streaming=True) as span:
                if isinstance(request, MalformedRequest):
                    raise request.error()
                stream_request = convert.stream_request_from_proto(request)
                with self._client_stream(client_connection(context.peer())):
                    async with self._streams.open(stream_request) as items:
                        stream = span.get_span_context()
                        gate = self._admission.gate
                        first = True
                        while True:
                            # Publishes first (transport/admission.py): every message but the
                            # first, `subscribed`, waits for the fan-out's rate limit, and
                            # before the stream takes its next item: while it waits, its
                            # notifications only queue (and overflow into a gap, as its policy
                            # says), so a held stream costs nothing.
                            if not first and not gate.try_pass():
                                await gate.wait()
                            first = False
                            try:
                                item = await anext(items)
                            except StopAsyncIteration:
                                break
                            if isinstance(item, Delivery):
                                self._count_delivery(item)
                                if self._deliveries is None:
                                    yield self._encoder.single(item)
                                    continue
                                with self._delivery_span(item, stream) as trace_context:
                                    yield self._encoder.single(item, trace_context)
                            elif isinstance(item, Deliveries):
                                gate.charge(len(item.deliveries))
                                for delivery in item.deliveries:
                                    self._count_delivery(delivery)
                                if self._deliveries is None:
                                    for message in self._encoder.batches(item.deliveries):
                                        yield message
                                    continue
                                with ExitStack() as spans:
                                    traces = [
                                        spans.enter_context(self._delivery_span(d, stream))
                                        for d in item.deliveries
                                    ]
                                    for message in self._encoder.batches(item.deliveries, traces):
                                        yield message
                            else:
                                if isinstance(item, Gap):
                                    self._count_gap(item)
                                yield convert.stream_item_to_proto(item).SerializeToString()
        except _StatusError as failure:
            await _end_call(context, failure)
        finally:
            running.finished()

    @contextmanager
    def _client_stream(self, peer: str) -> Iterator[None]:
        """One more stream of this client's, within ``max_streams_per_client``."""
        if peer and self._streams_by_peer[peer] >= self._max_streams_per_client:
            raise ResourceExhaustedError(
                f"this client already has {self._max_streams_per_client} streams open, its limit"
            )
        self._streams_by_peer[peer] += 1
        try:
            yield
        finally:
            self._streams_by_peer[peer] -= 1
            if not self._streams_by_peer[peer]:
                del self._streams_by_peer[peer]

    def _count_delivery(self, delivery: Delivery) -> None:
        counter = self._replayed_deliveries if delivery.replayed else self._live_deliveries
        counter.value += 1

    def _delivery_span(
        self, delivery: Delivery, stream: trace.SpanContext
    ) -> AbstractContextManager[TraceContext | None]:
        assert self._deliveries is not None
        notification = delivery.notification
        return self._deliveries.deliver(
            notification.traceparent,
            event_id=notification.id,
            partition=notification.partition,
            offset=notification.offset,
            replayed=delivery.replayed,
            stream=stream,
        )

    def _count_gap(self, gap: Gap) -> None:
        reason = gap.reason.value
        counts = self._gaps.get(reason)
        if counts is None:
            attributes = {"dualstream.gap.reason": reason}
            counts = self._gaps[reason] = (
                self._gap_counts.bind(attributes),
                self._gap_missed.bind(attributes),
            )
        gaps, missed = counts
        gaps.value += 1
        missed.value += gap.missed

    async def GetStatus(  # type: ignore[override]  # Also served by transport/h2_server.py.
        self, request: pb.GetStatusRequest, context: CallContext
    ) -> pb.GetStatusResponse:
        return convert.status_to_proto(self._status())
