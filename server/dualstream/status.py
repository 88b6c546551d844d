"""What the sidecar reports about itself: one summary plus each leg, never a green lie."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from dualstream.hub import SubscriptionHub
from dualstream.publisher import Publisher


class ServingState(enum.Enum):
    SERVING = "serving"
    DEGRADED = "degraded"
    NOT_SERVING = "not_serving"


@dataclass(frozen=True, slots=True)
class SidecarStatus:
    state: ServingState
    kafka_connected: bool
    kafka_topic: str
    kafka_buffered_events: int
    kafka_buffered_bytes: int
    kafka_last_error: str
    redis_publishing: bool
    redis_breaker_open: bool
    redis_sent: int
    redis_failed: int
    redis_skipped: int
    redis_last_error: str
    subscriber_connected: bool
    streams: int
    routes: int


def sidecar_status(publisher: Publisher, hub: SubscriptionHub, draining: bool) -> SidecarStatus:
    log, notifier = publisher.event_log, publisher.notifier
    if draining or not log.ready:
        state = ServingState.NOT_SERVING
    elif not notifier.healthy or not hub.connected:
        state = ServingState.DEGRADED
    else:
        state = ServingState.SERVING
    stats = notifier.stats
    return SidecarStatus(
        state=state,
        kafka_connected=log.ready,
        kafka_topic=log.topic,
        kafka_buffered_events=log.buffer.events,
        kafka_buffered_bytes=log.buffer.bytes,
        kafka_last_error="" if log.ready else log.last_connect_error,
        redis_publishing=notifier.healthy,
        redis_breaker_open=notifier.breaker_open,
        redis_sent=stats.sent,
        redis_failed=stats.failed,
        redis_skipped=stats.skipped,
        redis_last_error=stats.last_error,
        subscriber_connected=hub.connected,
        streams=hub.stream_count,
        routes=hub.route_count,
    )
