"""The client proper. It depends only on the generated protos, not on the sidecar's code."""

from __future__ import annotations

import asyncio
import collections
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import TracebackType
from typing import Self, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from dualstream.v1 import event_service_pb2 as pb
from dualstream.v1 import event_service_pb2_grpc as pb_grpc
from dualstream_client.errors import (
    DualstreamClientError,
    ResourceExhaustedError,
    UnavailableError,
    from_rpc_error,
    from_status,
)
from dualstream_client.throttle import AdaptiveThrottle, Throttle

T = TypeVar("T")
# A sidecar restart takes seconds: the channel reconnects within a few, not gRPC's default two
# minutes of backoff at worst. (Not grpc.min_reconnect_backoff_ms: gRPC core takes it as the
# connect timeout, which a loaded machine can exceed.)
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
)


def new_event_id() -> str:
    """A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then random bits, so ids sort by
    creation time like the ones the sidecar assigns."""
    value = int.from_bytes(os.urandom(16)) & ~(0xFFFF_FFFF_FFFF << 80)
    value |= (time.time_ns() // 1_000_000) << 80
    value = value & ~(0xF << 76) | 0x7 << 76  # version 7
    value = value & ~(0x3 << 62) | 0x2 << 62  # variant 10
    return str(uuid.UUID(int=value))


def parse_source(text: str) -> tuple[str, str]:
    """A source as command lines write it, ``TYPE:ID`` (``user:octocat``; ``ID`` may be ``*``
    or contain more colons), as the ``(source_type, source_id)`` pair ``subscribe`` takes."""
    source_type, separator, source_id = text.partition(":")
    if not separator or not source_type or not source_id:
        raise ValueError(f"{text!r}: write a source as TYPE:ID, e.g. user:octocat")
    return source_type, source_id


@dataclass(frozen=True, slots=True)
class Retry:
    """How ``publish`` and ``publish_batch`` retry on ``UNAVAILABLE`` and on capacity refusals
    (``ResourceExhaustedError`` with ``retry_after``: the sidecar's, or the client's throttle's).

    A retry sends the same event ids (the client gives an event without one a UUIDv7 before
    the first attempt), so an event written by an attempt whose answer was lost is at worst
    written twice under one id, which consumers deduplicate; it is never lost or renamed.
    ``max_attempts`` counts the first attempt. Waits double from ``initial_backoff`` up to
    ``max_backoff``, each drawn between half and all of it; ``max_elapsed`` (seconds), when
    set, stops retrying once that long has passed since the first attempt. After a capacity
    refusal the wait is the longer of the backoff's and the refusal's ``retry_after``.
    """

    # The defaults ride out a sidecar restart: 3.5 to 7 s of waits in all.
    max_attempts: int = 8
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    max_elapsed: float | None = None


class _Backoff:
    """The waits of a jittered ("equal jitter") exponential backoff."""

    def __init__(self, initial: float, maximum: float) -> None:
        self._next = initial
        self._max = max(initial, maximum)

    def wait(self) -> float:
        current, self._next = self._next, min(2 * self._next, self._max)
        return random.uniform(current / 2, current)


def _least_wait_to_retry(error: DualstreamClientError) -> float | None:
    """How long to wait at least before retrying a call that failed with ``error``; None when
    a retry would not help. A capacity refusal wrote nothing; after UNAVAILABLE the events may
    have been written, which resending the same ids makes harmless."""
    if isinstance(error, UnavailableError):
        return 0.0
    if isinstance(error, ResourceExhaustedError):
        return error.retry_after  # None unless a capacity refusal.
    return None


async def _retrying(policy: Retry | None, attempt: Callable[[], Awaitable[T]]) -> T:
    """Run ``attempt`` until it succeeds, fails in a way a retry would not help, or ``policy``
    is spent."""
    policy = policy or Retry(max_attempts=1)
    started = time.monotonic()
    waits = _Backoff(policy.initial_backoff, policy.max_backoff)
    number = 1
    while True:
        try:
            return await attempt()
        except DualstreamClientError as error:
            least = _least_wait_to_retry(error)
            if least is None:
                raise
            wait = max(least, waits.wait())
            spent = number >= policy.max_attempts or (
                policy.max_elapsed is not None
                and time.monotonic() - started + wait > policy.max_elapsed
            )
            if spent:
                raise
        await asyncio.sleep(wait)
        number += 1


@dataclass(frozen=True, slots=True)
class EventInput:
    """An event to publish; leave ``id`` empty to have the sidecar assign a UUIDv7."""

    type: str
    source_type: str
    source_id: str
    data: bytes = b""
    content_type: str = ""
    id: str = ""
    time: datetime | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)

    def to_proto(self) -> pb.Event:
        timestamp = None
        if self.time is not None:
            timestamp = Timestamp()
            timestamp.FromDatetime(self.time)
        return pb.Event(
            id=self.id,
            type=self.type,
            source_type=self.source_type,
            source_id=self.source_id,
            data=self.data,
            content_type=self.content_type,
            time=timestamp,
            attributes=dict(self.attributes),
        )


@dataclass(frozen=True, slots=True)
class PublishResult:
    id: str
    topic: str
    partition: int
    offset: int
    notified: bool

    @classmethod
    def from_proto(cls, message: pb.PublishResponse) -> PublishResult:
        return cls(message.id, message.topic, message.partition, message.offset, message.notified)


@dataclass(frozen=True, slots=True)
class BatchItemResult:
    """One event of a batch: ``published`` when Kafka acknowledged it, else ``error``."""

    id: str
    published: PublishResult | None
    error: DualstreamClientError | None


@dataclass(frozen=True, slots=True)
class Notification:
    """An event was published. ``event`` is the whole event when ``include_data`` was asked."""

    id: str
    type: str
    source_type: str
    source_id: str
    topic: str
    partition: int
    offset: int
    cursor: str = ""
    replayed: bool = False
    event: EventInput | None = None
    # The W3C trace context to continue the event's trace from ("" when it had none):
    # ``TraceContextTextMapPropagator().extract(notification.trace_carrier())``.
    traceparent: str = ""
    tracestate: str = ""

    def trace_carrier(self) -> dict[str, str]:
        """The trace context as W3C headers, for an OpenTelemetry propagator's ``extract``."""
        carrier = {}
        if self.traceparent:
            carrier["traceparent"] = self.traceparent
            if self.tracestate:
                carrier["tracestate"] = self.tracestate
        return carrier

    @classmethod
    def from_proto(cls, n: pb.Notification) -> Notification:
        event = None
        if n.HasField("event"):
            e = n.event
            event = EventInput(
                type=e.type,
                source_type=e.source_type,
                source_id=e.source_id,
                data=e.data,
                content_type=e.content_type,
                id=e.id,
                time=e.time.ToDatetime(tzinfo=UTC) if e.HasField("time") else None,
                attributes=dict(e.attributes),
            )
        return cls(
            n.id,
            n.type,
            n.source_type,
            n.source_id,
            n.topic,
            n.partition,
            n.offset,
            n.cursor,
            n.replayed,
            event,
            n.traceparent,
            n.tracestate,
        )


@dataclass(frozen=True, slots=True)
class Gap:
    """Notifications were missed and not replayed; resume from ``cursor`` to get them.

    ``reason`` is ``slow_consumer``, ``redis_outage``, ``not_notified`` (a publishing sidecar
    could not notify them; ``cursor`` replays exactly those) or ``expired`` (Kafka's retention
    deleted them: ``missed`` counts them, and nothing can replay them); a reason newer than
    this client comes as its lower-case proto name."""

    reason: str
    missed: int
    cursor: str
    since: datetime
    until: datetime


@dataclass(frozen=True, slots=True)
class CaughtUp:
    """A replay from Kafka reached the live stream."""

    replayed: int
    cursor: str


StreamMessage = Notification | Gap | CaughtUp
# How many notifications the sidecar may pack in one message unless a subscription says
# otherwise: a stream with a backlog then costs the sidecar a fraction per notification, so it
# catches up instead of being held back into gaps.
DEFAULT_MAX_NOTIFICATIONS_PER_MESSAGE = 64
POLICIES = {
    "gap": pb.SLOW_CONSUMER_POLICY_GAP,
    "close": pb.SLOW_CONSUMER_POLICY_CLOSE,
    "replay": pb.SLOW_CONSUMER_POLICY_REPLAY,
}


class DualstreamClient:
    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        timeout: float | None = 30.0,
        metadata: Sequence[tuple[str, str]] = (),
        token: str = "",
        tls_root_certificates: bytes | None = None,
        retry: Retry | None = None,
        throttle: Throttle | None = None,
    ) -> None:
        """``target`` is ``host:port`` or ``unix:/path/to.sock``. ``timeout`` is the deadline
        of each call attempt (None: no deadline). ``token`` is sent as ``authorization: Bearer
        <token>``; ``tls_root_certificates`` (PEM) switches to TLS, trusting those roots.

        ``retry`` retries publishes on ``UNAVAILABLE`` with the same event ids; ``Retry()``
        rides out a sidecar restart. It is off (None) by default, as before it existed: callers
        that count or time each answer, like the fault-injection suite, see every one. It also
        retries capacity refusals (``ResourceExhaustedError`` with ``retry_after``), waiting
        at least the sidecar's hint.

        ``throttle`` holds publishes back on the client, without sending them, while the
        sidecar refuses this client's publishes as past capacity (see ``Throttle``): at twice
        the sidecar's capacity, most of the surplus is refused at once instead of waiting in
        the sidecar's queue to be refused there. Off (None) by default, like ``retry``;
        ``Throttle()`` turns it on. One throttle serves every call of this client.
        """
        self._target = target
        self._timeout = timeout
        auth = (("authorization", f"Bearer {token}"),) if token else ()
        self._metadata = tuple(metadata) + auth
        self._tls_roots = tls_root_certificates
        self._retry = retry
        self._throttle = AdaptiveThrottle(throttle) if throttle is not None else None
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.EventServiceAsyncStub | None = None

    async def __aenter__(self) -> Self:
        if self._tls_roots is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates=self._tls_roots)
            self._channel = grpc.aio.secure_channel(self._target, credentials, CHANNEL_OPTIONS)
        else:
            self._channel = grpc.aio.insecure_channel(self._target, CHANNEL_OPTIONS)
        self._stub = pb_grpc.EventServiceStub(self._channel)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close(grace=None)

    def _require_stub(self) -> pb_grpc.EventServiceAsyncStub:
        if self._stub is None:
            raise RuntimeError("use the client inside `async with DualstreamClient(...)`")
        return self._stub

    async def publish(self, event: EventInput) -> PublishResult:
        """Write one event; returns once Kafka acknowledged it. An event without an id gets a
        UUIDv7 here, so that a retry (see ``retry``) sends the same id."""
        request = pb.PublishRequest(event=_with_id(event).to_proto())

        async def attempt() -> pb.PublishResponse:
            return await self._publishing(
                lambda stub: stub.Publish(request, timeout=self._timeout, metadata=self._metadata)
            )

        return PublishResult.from_proto(await _retrying(self._retry, attempt))

    async def _publishing(self, call: Callable[[pb_grpc.EventServiceAsyncStub], Awaitable[T]]) -> T:
        """One attempt of a Publish or PublishBatch ``call``, through the throttle if any."""
        stub = self._require_stub()
        throttle = self._throttle
        if throttle is not None:
            throttle.admit()
        try:
            response = await call(stub)
        except grpc.aio.AioRpcError as exc:
            error = from_rpc_error(exc)
            if throttle is not None:
                throttle.record(error)
            raise error from exc
        if throttle is not None:
            throttle.record(None)
        return response

    async def publish_batch(self, events: Iterable[EventInput]) -> list[BatchItemResult]:
        """Write several events in one call; one result per event, in order. One invalid event
        rejects the batch with ``InvalidArgumentError`` (``field`` names it) and nothing is
        written. With ``retry``, a call failing ``UNAVAILABLE`` or refused as past capacity
        (nothing of it was written) is sent again whole, and the events that failed
        ``UNAVAILABLE`` are sent again on their own, with the same ids."""
        messages = [_with_id(event).to_proto() for event in events]
        results: list[BatchItemResult | None] = [None] * len(messages)
        pending = list(range(len(messages)))

        async def attempt() -> None:
            nonlocal pending
            request = pb.PublishBatchRequest(events=[messages[i] for i in pending])
            response = await self._publishing(
                lambda stub: stub.PublishBatch(
                    request, timeout=self._timeout, metadata=self._metadata
                )
            )
            again = []
            for index, item in zip(pending, response.results, strict=True):
                result = _batch_item(item)
                results[index] = result
                if isinstance(result.error, UnavailableError):
                    again.append(index)
            pending = again
            if pending:
                raise UnavailableError(
                    grpc.StatusCode.UNAVAILABLE, "some events of the batch were not acknowledged"
                )

        try:
            await _retrying(self._retry, attempt)
        except DualstreamClientError as error:
            # Retrying the unacknowledged events failed as a whole and the policy is spent: the
            # events acknowledged earlier stay acknowledged, the others keep their UNAVAILABLE
            # results.
            if _least_wait_to_retry(error) is None or len(pending) == len(messages):
                raise
        return [result for result in results if result is not None]

    async def status(self) -> pb.GetStatusResponse:
        """The sidecar's detailed status (the proto message; see GetStatusResponse)."""
        try:
            return await self._require_stub().GetStatus(
                pb.GetStatusRequest(), timeout=self._timeout, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc

    def subscribe(
        self,
        sources: Iterable[tuple[str, str]],
        *,
        types: Iterable[str] = (),
        resume_cursor: str = "",
        start_earliest: bool = False,
        start_time: datetime | None = None,
        policy: str = "gap",
        include_data: bool = False,
        max_notifications_per_message: int = DEFAULT_MAX_NOTIFICATIONS_PER_MESSAGE,
        auto_resume: bool | None = None,
        resume_timeout: float = 300.0,
    ) -> Subscription:
        """Open a stream for ``(source_type, source_id)`` pairs; ``source_id`` may be ``*``.

        ``async with client.subscribe(...) as stream`` returns once the sidecar confirmed the
        stream live, so everything published after that is seen; ``async for`` over it yields
        ``Notification``, ``Gap`` and ``CaughtUp`` messages, and ``stream.cursor`` is always
        the cursor to resume from. ``policy`` is ``gap``, ``close`` or ``replay``.

        Automatic resume (``auto_resume``; on by default except with ``policy="close"``,
        whose caller asked to be told): when the live stream breaks (the sidecar restarted,
        the network failed, ``UNAVAILABLE``) it reconnects with jittered backoff and resumes
        from ``stream.cursor``, so every event is yielded once, in per-source order, across
        the break; ``resume_timeout`` seconds of failed reconnects end it with the last error.
        ``max_notifications_per_message`` above 1 (the default is 64) lets the sidecar batch
        notifications of a backlog; they are unpacked, one ``Notification`` at a time. A
        stream with a backlog then costs the sidecar a fraction per notification, so it
        catches up instead of being held back into gaps; 1 keeps one per message.
        """
        request = pb.SubscribeRequest(
            sources=[pb.Source(source_type=t, source_id=i) for t, i in sources],
            types=list(types),
            resume_cursor=resume_cursor,
            slow_consumer_policy=POLICIES[policy],
            include_data=include_data,
            max_notifications_per_message=max_notifications_per_message,
        )
        if start_earliest:
            request.start.earliest = True
        elif start_time is not None:
            request.start.time.FromDatetime(start_time)
        if auto_resume is None:
            auto_resume = policy != "close"
        return Subscription(
            self._require_stub(),
            request,
            self._metadata,
            auto_resume=auto_resume,
            resume_timeout=resume_timeout,
        )


def _with_id(event: EventInput) -> EventInput:
    return event if event.id else replace(event, id=new_event_id())


def _batch_item(item: pb.PublishBatchResult) -> BatchItemResult:
    if item.HasField("published"):
        return BatchItemResult(item.id, PublishResult.from_proto(item.published), None)
    error = from_status(_status_code(item.error.code), item.error.message)
    return BatchItemResult(item.id, None, error)


class Subscription:
    """A Subscribe stream. ``async for`` yields its messages; ``close()`` cancels it."""

    def __init__(
        self,
        stub: pb_grpc.EventServiceAsyncStub,
        request: pb.SubscribeRequest,
        metadata: Sequence[tuple[str, str]],
        *,
        auto_resume: bool,
        resume_timeout: float,
    ) -> None:
        self._stub = stub
        self._request = request
        self._metadata = metadata
        self._auto_resume = auto_resume
        self._resume_timeout = resume_timeout
        self._call = stub.Subscribe(request, metadata=metadata)
        self._live = False
        self._closed = False
        self._unpacked: collections.deque[Notification] = collections.deque()
        self.channels: tuple[str, ...] = ()
        # The cursor of the last message given to the application (or of `subscribed`).
        self.cursor = ""
        # How many times the stream was resumed automatically.
        self.resumes = 0

    async def wait_live(self) -> None:
        """Wait for the stream's ``subscribed`` message; idempotent. Errors opening the stream
        (``UNAUTHENTICATED``, ``INVALID_ARGUMENT``, ...) are raised here, never resumed."""
        if self._live:
            return
        subscribed = await self._read_subscribed()
        self.channels = tuple(subscribed.channels)
        self.cursor = subscribed.cursor
        self._live = True

    async def _read_subscribed(self) -> pb.Subscribed:
        try:
            first = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc
        if not isinstance(first, pb.SubscribeResponse) or not first.HasField("subscribed"):
            self._call.cancel()
            raise DualstreamClientError(grpc.StatusCode.UNKNOWN, "stream did not confirm")
        return first.subscribed

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> StreamMessage:
        await self.wait_live()
        while True:
            if self._unpacked:
                notification = self._unpacked.popleft()
                self.cursor = notification.cursor
                return notification
            if self._closed:
                raise StopAsyncIteration
            try:
                message = await self._call.read()
            except grpc.aio.AioRpcError as exc:
                await self._resume(from_rpc_error(exc), exc)
                continue
            if not isinstance(message, pb.SubscribeResponse):
                # The sidecar ended the stream, which it does only when it stops.
                await self._resume(None, None)
                continue
            delivered = self._convert(message)
            if delivered is not None:
                self.cursor = delivered.cursor
                return delivered

    def _convert(self, message: pb.SubscribeResponse) -> StreamMessage | None:
        kind = message.WhichOneof("message")
        if kind == "notification":
            return Notification.from_proto(message.notification)
        if kind == "notifications":
            self._unpacked.extend(
                Notification.from_proto(n) for n in message.notifications.notifications
            )
            return None
        if kind == "gap":
            gap = message.gap
            return Gap(
                reason=pb.GapReason.Name(gap.reason).removeprefix("GAP_REASON_").lower(),
                missed=gap.missed,
                cursor=gap.cursor,
                since=gap.since.ToDatetime(tzinfo=UTC),
                until=gap.until.ToDatetime(tzinfo=UTC),
            )
        if kind == "caught_up":
            return CaughtUp(message.caught_up.replayed, message.caught_up.cursor)
        return None  # `subscribed` again, or a message newer than this client.

    async def _resume(
        self, failure: DualstreamClientError | None, cause: grpc.aio.AioRpcError | None
    ) -> None:
        """Reopen the stream from ``cursor`` after it broke; raise ``failure`` (or end the
        iteration after a clean end) when it must not or cannot be resumed."""
        resumable = failure is None or isinstance(failure, UnavailableError)
        if self._closed or not self._auto_resume or not resumable:
            if failure is None:
                raise StopAsyncIteration
            raise failure from cause
        deadline = time.monotonic() + self._resume_timeout
        waits = _Backoff(0.1, 5.0)
        while True:
            await asyncio.sleep(waits.wait())
            if self._closed:
                raise StopAsyncIteration
            request = pb.SubscribeRequest()
            request.CopyFrom(self._request)
            request.resume_cursor = self.cursor
            request.ClearField("start")
            self._call = self._stub.Subscribe(request, metadata=self._metadata)
            try:
                await self._read_subscribed()
            except UnavailableError:
                if time.monotonic() > deadline:
                    raise
                continue
            self.resumes += 1
            return

    def close(self) -> None:
        self._closed = True
        self._call.cancel()

    async def __aenter__(self) -> Self:
        await self.wait_live()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


def _status_code(number: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    return grpc.StatusCode.UNKNOWN
