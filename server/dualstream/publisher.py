"""The publish path: validate, write to Kafka and wait for the ack, then notify Redis.

Kafka is the source of truth and must succeed; Redis is told only about events Kafka
acknowledged, and its failure never fails the call.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime

from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from dualstream.cloudevents import to_record
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
from dualstream.notifications import Notification
from dualstream.redis_notifier import RedisNotifier
from dualstream.telemetry import trace_headers


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Publisher(Service):
    def __init__(
        self,
        event_log: KafkaEventLog,
        notifier: RedisNotifier,
        limits: EventLimits,
        tracer: Tracer,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._log = event_log
        self._notifier = notifier
        self._limits = limits
        self._tracer = tracer
        self._clock = clock

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
        with self._producer_span(1) as span:
            headers = trace_headers()
            span.set_attribute("messaging.message.id", event.id)
            span.set_attribute("messaging.kafka.message.key", event.source_id)
            position = await self._log.append(to_record(event, headers))
            span.set_attribute("messaging.destination.partition.id", str(position.partition))
            span.set_attribute("messaging.kafka.offset", position.offset)
        notification = Notification.of(event, position, headers.get("traceparent", ""))
        with self._redis_span(1) as span:
            notified = await self._notifier.notify(notification)
            self._mark_notify_failure(span, notified)
        return Published(event.id, position, notified)

    async def publish_batch(self, events: list[Event]) -> list[PublishOutcome]:
        """Publish a validated batch; only events Kafka acknowledged are notified.

        When every event fails for the same reason the call fails with it, so a caller sees
        one UNAVAILABLE rather than a response full of identical errors.
        """
        events = prepare_batch(events, self._limits, self._clock())
        with self._producer_span(len(events)):
            headers = trace_headers()
            positions = await self._log.append_many([to_record(e, headers) for e in events])
        acknowledged = [
            (event, position)
            for event, position in zip(events, positions, strict=True)
            if isinstance(position, RecordPosition)
        ]
        if not acknowledged:
            _raise_common_failure(positions)
        traceparent = headers.get("traceparent", "")
        with self._redis_span(len(acknowledged)) as span:
            outcomes = await self._notifier.notify_many(
                [Notification.of(e, p, traceparent) for e, p in acknowledged]
            )
            self._mark_notify_failure(span, all(outcomes))
        notified = iter(outcomes)
        return [
            Published(event.id, position, next(notified))
            if isinstance(position, RecordPosition)
            else NotPublished(event.id, position)
            for event, position in zip(events, positions, strict=True)
        ]

    def _mark_notify_failure(self, span: Span, notified: bool) -> None:
        if not notified:
            span.set_status(Status(StatusCode.ERROR, self._notifier.stats.last_error))

    def _producer_span(self, count: int) -> AbstractContextManager[Span]:
        attributes: dict[str, str | int] = {
            "messaging.system": "kafka",
            "messaging.operation.name": "send",
            "messaging.operation.type": "send",
            "messaging.destination.name": self._log.topic,
        }
        if count > 1:
            attributes["messaging.batch.message_count"] = count
        return self._tracer.start_as_current_span(
            f"send {self._log.topic}", kind=SpanKind.PRODUCER, attributes=attributes
        )

    def _redis_span(self, count: int) -> AbstractContextManager[Span]:
        attributes: dict[str, str | int] = {
            "db.system.name": "redis",
            "db.operation.name": "PUBLISH",
        }
        if count > 1:
            attributes["db.operation.batch.size"] = count
        return self._tracer.start_as_current_span(
            "PUBLISH", kind=SpanKind.CLIENT, attributes=attributes
        )


def _raise_common_failure(positions: list[RecordPosition | Exception]) -> None:
    errors = [p for p in positions if isinstance(p, Exception)]
    first = errors[0]
    if isinstance(first, DualstreamError):
        raise first
    raise DualstreamError(str(first)) from first
