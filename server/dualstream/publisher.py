"""The publish path: validate, write to Kafka and wait for the ack, then notify Redis.

Kafka is the source of truth and must succeed; Redis is told only about events Kafka
acknowledged, and its failure never fails the call.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from time import perf_counter

from opentelemetry.semconv._incubating.attributes.messaging_attributes import (
    MESSAGING_BATCH_MESSAGE_COUNT,
    MESSAGING_CLIENT_ID,
    MESSAGING_DESTINATION_NAME,
    MESSAGING_DESTINATION_PARTITION_ID,
    MESSAGING_KAFKA_MESSAGE_KEY,
    MESSAGING_KAFKA_OFFSET,
    MESSAGING_MESSAGE_ID,
    MESSAGING_OPERATION_NAME,
    MESSAGING_OPERATION_TYPE,
    MESSAGING_SYSTEM,
)
from opentelemetry.semconv.attributes.db_attributes import (
    DB_OPERATION_BATCH_SIZE,
    DB_OPERATION_NAME,
    DB_SYSTEM_NAME,
)
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from dualstream.cloudevents import to_record, to_records
from dualstream.errors import DualstreamError
from dualstream.events import (
    Event,
    EventLimits,
    NotPublished,
    Published,
    PublishOutcome,
    RecordPosition,
    prepare_batch,
    prepare_event,
)
from dualstream.kafka_log import KafkaEventLog
from dualstream.lifecycle import Service
from dualstream.metrics import SidecarMetrics
from dualstream.notifications import Notification
from dualstream.redis_notifier import RedisNotifier
from dualstream.telemetry import (
    error_type,
    mark_failed,
    redis_server_attributes,
    server_attributes,
    trace_headers,
)

# error.type of a Redis leg skipped because the breaker is open (no command was sent).
BREAKER_OPEN = "breaker_open"


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Publisher(Service):
    def __init__(
        self,
        event_log: KafkaEventLog,
        notifier: RedisNotifier,
        limits: EventLimits,
        tracer: Tracer,
        *,
        clock: Callable[[], datetime] = _utc_now,
        metrics: SidecarMetrics | None = None,
    ) -> None:
        self._log = event_log
        self._notifier = notifier
        self._limits = limits
        self._tracer = tracer
        self._clock = clock
        metrics = metrics or SidecarMetrics()
        kafka_server = server_attributes(event_log.bootstrap)
        redis_server = redis_server_attributes(notifier.address)
        self._kafka_sends = metrics.kafka_send(event_log.topic, kafka_server)
        self._redis_publishes = metrics.redis_publish(redis_server)
        # Bound once: the attributes every span of a leg has.
        self._send_span_name = f"send {event_log.topic}"
        self._send_attributes = {
            MESSAGING_SYSTEM: "kafka",
            MESSAGING_OPERATION_NAME: "send",
            MESSAGING_OPERATION_TYPE: "send",
            MESSAGING_DESTINATION_NAME: event_log.topic,
            MESSAGING_CLIENT_ID: event_log.client_id,
            **kafka_server,
        }
        self._publish_attributes = {
            DB_SYSTEM_NAME: "redis",
            DB_OPERATION_NAME: "PUBLISH",
            **redis_server,
        }

    @property
    def event_log(self) -> KafkaEventLog:
        return self._log

    @property
    def notifier(self) -> RedisNotifier:
        return self._notifier

    async def _start(self) -> None:
        await self._notifier.start()
        await self._log.start()

    async def _stop(self) -> None:
        # The log flushes on stop, so every event acknowledged to a caller is written first.
        try:
            await self._log.stop()
        finally:
            await self._notifier.stop()

    async def publish(self, event: Event) -> Published:
        event = prepare_event(event, "event", self._limits, self._clock())
        # The spans are started and ended by hand, not made current: nothing runs inside them
        # that looks for a current span, and attaching a context costs a traced call more.
        span = self._tracer.start_span(
            self._send_span_name, kind=SpanKind.PRODUCER, attributes=self._send_attributes
        )
        try:
            headers = trace_headers(span)
            recording = span.is_recording()
            if recording:
                span.set_attributes(
                    {MESSAGING_MESSAGE_ID: event.id, MESSAGING_KAFKA_MESSAGE_KEY: event.source_id}
                )
            started = perf_counter()
            try:
                position = await self._log.append(to_record(event, headers))
            except Exception as exc:
                self._kafka_sends.failed(error_type(exc), perf_counter() - started)
                mark_failed(span, exc)
                raise
            self._kafka_sends.succeeded(perf_counter() - started)
            if recording:
                span.set_attributes(
                    {
                        MESSAGING_DESTINATION_PARTITION_ID: str(position.partition),
                        MESSAGING_KAFKA_OFFSET: position.offset,
                    }
                )
        finally:
            span.end()
        notification = Notification.of(event, position, headers.get("traceparent", ""))
        span = self._tracer.start_span(
            "PUBLISH", kind=SpanKind.CLIENT, attributes=self._publish_attributes
        )
        try:
            skipped_before = self._notifier.stats.skipped
            started = perf_counter()
            notified = await self._notifier.notify(notification)
            self._notified(span, notified, perf_counter() - started, skipped_before)
        finally:
            span.end()
        return Published(event.id, position, notified)

    async def publish_batch(self, events: list[Event]) -> list[PublishOutcome]:
        """Publish a validated batch; only events Kafka acknowledged are notified.

        When every event fails for the same reason the call fails with it, so a caller sees
        one UNAVAILABLE rather than a response full of identical errors.
        """
        events = prepare_batch(events, self._limits, self._clock())
        span = self._tracer.start_span(
            self._send_span_name, kind=SpanKind.PRODUCER, attributes=self._send_attributes
        )
        try:
            span.set_attribute(MESSAGING_BATCH_MESSAGE_COUNT, len(events))
            headers = trace_headers(span)
            started = perf_counter()
            try:
                positions = await self._log.append_many(to_records(events, headers))
            except Exception as exc:
                self._kafka_sends.failed(error_type(exc), perf_counter() - started, len(events))
                mark_failed(span, exc)
                raise
            self._count_batch_sends(span, positions, perf_counter() - started)
        finally:
            span.end()
        acknowledged = [
            (event, position)
            for event, position in zip(events, positions, strict=True)
            if isinstance(position, RecordPosition)
        ]
        if not acknowledged:
            _raise_common_failure(positions)
        traceparent = headers.get("traceparent", "")
        span = self._tracer.start_span(
            "PUBLISH", kind=SpanKind.CLIENT, attributes=self._publish_attributes
        )
        try:
            span.set_attribute(DB_OPERATION_BATCH_SIZE, len(acknowledged))
            skipped_before = self._notifier.stats.skipped
            started = perf_counter()
            outcomes = await self._notifier.notify_many(
                [Notification.of(e, p, traceparent) for e, p in acknowledged]
            )
            self._notified(span, all(outcomes), perf_counter() - started, skipped_before)
        finally:
            span.end()
        notified = iter(outcomes)
        return [
            Published(event.id, position, next(notified))
            if isinstance(position, RecordPosition)
            else NotPublished(event.id, position)
            for event, position in zip(events, positions, strict=True)
        ]

    def _count_batch_sends(
        self, span: Span, positions: list[RecordPosition | Exception], seconds: float
    ) -> None:
        """One operation, its events counted by outcome (Kafka can fail some of a batch)."""
        failures = [p for p in positions if isinstance(p, Exception)]
        acknowledged = len(positions) - len(failures)
        if acknowledged:
            self._kafka_sends.succeeded(seconds, acknowledged)
        if failures:
            kind = error_type(failures[0])
            self._kafka_sends.failed(kind, 0.0 if acknowledged else seconds, len(failures))
            span.set_attribute(ERROR_TYPE, kind)
            span.set_status(Status(StatusCode.ERROR, f"{len(failures)} events not written"))

    def _notified(self, span: Span, notified: bool, seconds: float, skipped_before: int) -> None:
        stats = self._notifier.stats
        if notified:
            self._redis_publishes.succeeded(seconds)
        elif stats.skipped != skipped_before:
            # Nothing was sent to Redis: counted as skipped, and no Redis operation to time.
            span.set_attribute(ERROR_TYPE, BREAKER_OPEN)
            span.set_status(Status(StatusCode.ERROR, "skipped: the Redis breaker is open"))
        else:
            self._redis_publishes.failed(stats.last_error_type, seconds)
            span.set_attribute(ERROR_TYPE, stats.last_error_type)
            span.set_status(Status(StatusCode.ERROR, stats.last_error))


def _raise_common_failure(positions: list[RecordPosition | Exception]) -> None:
    errors = [p for p in positions if isinstance(p, Exception)]
    first = errors[0]
    if isinstance(first, DualstreamError):
        raise first
    raise DualstreamError(str(first)) from first
