"""The client proper. It depends only on the generated protos, not on the sidecar's code."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Self

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from dualstream.v1 import event_service_pb2 as pb
from dualstream.v1 import event_service_pb2_grpc as pb_grpc
from dualstream_client.errors import DualstreamClientError, from_rpc_error


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
        )


@dataclass(frozen=True, slots=True)
class Gap:
    """Notifications were missed and not replayed; resume from ``cursor`` to get them."""

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
    ) -> None:
        """``token`` is sent as ``authorization: Bearer <token>``; ``tls_root_certificates``
        (PEM) switches to TLS, trusting those roots."""
        self._target = target
        self._timeout = timeout
        auth = (("authorization", f"Bearer {token}"),) if token else ()
        self._metadata = tuple(metadata) + auth
        self._tls_roots = tls_root_certificates
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.EventServiceAsyncStub | None = None

    async def __aenter__(self) -> Self:
        if self._tls_roots is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates=self._tls_roots)
            self._channel = grpc.aio.secure_channel(self._target, credentials)
        else:
            self._channel = grpc.aio.insecure_channel(self._target)
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
        try:
            response = await self._require_stub().Publish(
                pb.PublishRequest(event=event.to_proto()),
                timeout=self._timeout,
                metadata=self._metadata,
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc
        return PublishResult.from_proto(response)

    async def publish_batch(self, events: Iterable[EventInput]) -> list[BatchItemResult]:
        try:
            response = await self._require_stub().PublishBatch(
                pb.PublishBatchRequest(events=[event.to_proto() for event in events]),
                timeout=self._timeout,
                metadata=self._metadata,
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc
        results = []
        for item in response.results:
            if item.HasField("published"):
                results.append(
                    BatchItemResult(item.id, PublishResult.from_proto(item.published), None)
                )
            else:
                code = _status_code(item.error.code)
                results.append(
                    BatchItemResult(item.id, None, DualstreamClientError(code, item.error.message))
                )
        return results

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
    ) -> Subscription:
        """Open a stream for ``(source_type, source_id)`` pairs; ``source_id`` may be ``*``.

        ``async with client.subscribe(...) as stream`` returns once the sidecar confirmed the
        stream live, so everything published after that is seen; ``async for`` over it yields
        ``Notification``, ``Gap`` and ``CaughtUp`` messages, and ``stream.cursor`` is always
        the cursor to resume from. ``policy`` is ``gap``, ``close`` or ``replay``.
        """
        request = pb.SubscribeRequest(
            sources=[pb.Source(source_type=t, source_id=i) for t, i in sources],
            types=list(types),
            resume_cursor=resume_cursor,
            slow_consumer_policy=POLICIES[policy],
            include_data=include_data,
        )
        if start_earliest:
            request.start.earliest = True
        elif start_time is not None:
            request.start.time.FromDatetime(start_time)
        return Subscription(self._require_stub().Subscribe(request, metadata=self._metadata))


class Subscription:
    """A live Subscribe stream. ``async for`` yields notifications; ``close()`` cancels it."""

    def __init__(
        self, call: grpc.aio.UnaryStreamCall[pb.SubscribeRequest, pb.SubscribeResponse]
    ) -> None:
        self._call = call
        self._live = False
        self.channels: tuple[str, ...] = ()
        self.cursor = ""

    async def wait_live(self) -> None:
        """Wait for the stream's ``subscribed`` message; idempotent."""
        if self._live:
            return
        try:
            first = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc
        if not isinstance(first, pb.SubscribeResponse) or not first.HasField("subscribed"):
            self.close()
            raise DualstreamClientError(grpc.StatusCode.UNKNOWN, "stream did not confirm")
        self.channels = tuple(first.subscribed.channels)
        self.cursor = first.subscribed.cursor
        self._live = True

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> StreamMessage:
        await self.wait_live()
        while True:
            try:
                message = await self._call.read()
            except grpc.aio.AioRpcError as exc:
                raise from_rpc_error(exc) from exc
            if not isinstance(message, pb.SubscribeResponse):
                raise StopAsyncIteration  # The sidecar ended the stream.
            kind = message.WhichOneof("message")
            if kind == "notification":
                self.cursor = message.notification.cursor
                return Notification.from_proto(message.notification)
            if kind == "gap":
                gap = message.gap
                self.cursor = gap.cursor
                return Gap(
                    reason=pb.GapReason.Name(gap.reason).removeprefix("GAP_REASON_").lower(),
                    missed=gap.missed,
                    cursor=gap.cursor,
                    since=gap.since.ToDatetime(tzinfo=UTC),
                    until=gap.until.ToDatetime(tzinfo=UTC),
                )
            if kind == "caught_up":
                self.cursor = message.caught_up.cursor
                return CaughtUp(message.caught_up.replayed, message.caught_up.cursor)

    def close(self) -> None:
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
