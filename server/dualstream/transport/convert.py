"""Proto messages <-> domain types. No validation beyond what the wire format needs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from dualstream.errors import InvalidArgumentError
from dualstream.events import (
    NO_ATTRIBUTES,
    Event,
    NotPublished,
    Published,
    PublishOutcome,
    Source,
)
from dualstream.notifications import Notification
from dualstream.status import ServingState, SidecarStatus
from dualstream.streams import (
    MAX_DELIVERIES_PER_ITEM,
    Deliveries,
    Delivery,
    Gap,
    GapReason,
    SlowConsumerPolicy,
    StreamItem,
    StreamRequest,
    Subscribed,
    frozen,
)
from dualstream.transport.status import status_code_for
from dualstream.v1 import event_service_pb2 as pb


def _timestamp(message: Timestamp, field: str) -> datetime:
    try:
        return message.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        raise InvalidArgumentError(field, f"is not a valid timestamp: {exc}") from exc


def event_from_proto(message: pb.Event, field: str, index: int | None = None) -> Event:
    """The event of ``message``, found at ``field`` (``field[index]`` if an index is given: a
    batch's events get a name of their own only when they need one)."""
    time = None
    if message.HasField("time"):
        where = field if index is None else f"{field}[{index}]"
        time = _timestamp(message.time, f"{where}.time")
    attributes = message.attributes
    return Event(
        message.id,
        message.type,
        message.source_type,
        message.source_id,
        message.data,
        message.content_type,
        time,
        dict(attributes) if attributes else NO_ATTRIBUTES,
    )


_POLICIES = {
    pb.SLOW_CONSUMER_POLICY_UNSPECIFIED: SlowConsumerPolicy.GAP,
    pb.SLOW_CONSUMER_POLICY_GAP: SlowConsumerPolicy.GAP,
    pb.SLOW_CONSUMER_POLICY_CLOSE: SlowConsumerPolicy.CLOSE,
    pb.SLOW_CONSUMER_POLICY_REPLAY: SlowConsumerPolicy.REPLAY,
}
_GAP_REASONS = {
    GapReason.SLOW_CONSUMER: pb.GAP_REASON_SLOW_CONSUMER,
    GapReason.REDIS_OUTAGE: pb.GAP_REASON_REDIS_OUTAGE,
    GapReason.NOT_NOTIFIED: pb.GAP_REASON_NOT_NOTIFIED,
    GapReason.EXPIRED: pb.GAP_REASON_EXPIRED,
}


def stream_request_from_proto(request: pb.SubscribeRequest) -> StreamRequest:
    policy = _POLICIES.get(request.slow_consumer_policy)
    if policy is None:
        raise InvalidArgumentError(
            "slow_consumer_policy", f"has the unknown value {request.slow_consumer_policy}"
        )
    start_time = None
    start_earliest = False
    if request.HasField("start"):
        which = request.start.WhichOneof("position")
        if which is None:
            raise InvalidArgumentError("start", "names no position: set earliest or time")
        start_earliest = which == "earliest"
        if which == "time":
            start_time = _timestamp(request.start.time, "start.time")
    return StreamRequest(
        sources=tuple(Source(s.source_type, s.source_id) for s in request.sources),
        types=frozen(request.types),
        resume_cursor=request.resume_cursor,
        start_earliest=start_earliest,
        start_time=start_time,
        policy=policy,
        include_data=request.include_data,
        # "The most the sidecar may put in one message": it puts at most its own bound.
        max_per_message=max(1, min(request.max_notifications_per_message, MAX_DELIVERIES_PER_ITEM)),
    )


def stream_item_to_proto(item: StreamItem) -> pb.SubscribeResponse:
    """The message for a stream item. Deliveries go out through ``transport.deliveries``,
    which encodes the same messages more cheaply; this is the reference it is tested against."""
    if isinstance(item, Delivery):
        return pb.SubscribeResponse(notification=delivery_to_proto(item))
    if isinstance(item, Deliveries):
        batch = pb.NotificationBatch(notifications=[delivery_to_proto(d) for d in item.deliveries])
        return pb.SubscribeResponse(notifications=batch)
    if isinstance(item, Subscribed):
        return pb.SubscribeResponse(
            subscribed=pb.Subscribed(channels=item.routes, cursor=item.cursor)
        )
    if isinstance(item, Gap):
        gap = pb.Gap(reason=_GAP_REASONS[item.reason], missed=item.missed, cursor=item.cursor)
        gap.since.FromDatetime(item.since)
        gap.until.FromDatetime(item.until)
        return pb.SubscribeResponse(gap=gap)
    return pb.SubscribeResponse(caught_up=pb.CaughtUp(replayed=item.replayed, cursor=item.cursor))


def delivery_to_proto(delivery: Delivery) -> pb.Notification:
    message = notification_to_proto(delivery.notification)
    message.cursor = delivery.cursor
    message.replayed = delivery.replayed
    if delivery.event is not None:
        message.event.CopyFrom(event_to_proto(delivery.event))
    return message


def event_to_proto(event: Event) -> pb.Event:
    message = pb.Event(
        id=event.id,
        type=event.type,
        source_type=event.source_type,
        source_id=event.source_id,
        data=event.data,
        content_type=event.content_type,
        attributes=dict(event.attributes),
    )
    if event.time is not None:
        message.time.FromDatetime(event.time)
    return message


def publish_response(outcome: Published) -> pb.PublishResponse:
    response = pb.PublishResponse()
    _fill_publish_response(response, outcome)
    return response


def _fill_publish_response(message: pb.PublishResponse, outcome: Published) -> None:
    position = outcome.position
    message.id = outcome.event_id
    message.topic = position.topic
    message.partition = position.partition
    message.offset = position.offset
    message.notified = outcome.notified


def batch_response(outcomes: Sequence[PublishOutcome]) -> pb.PublishBatchResponse:
    """The response to a batch, one result per event in request order. Built in place: results
    made apart and then passed in are copied once more, which cost a batch of 100 three times
    as much."""
    response = pb.PublishBatchResponse()
    add_result = response.results.add
    for outcome in outcomes:
        result = add_result()
        result.id = outcome.event_id
        if isinstance(outcome, NotPublished):
            result.error.CopyFrom(
                pb.Error(code=status_code_for(outcome.error).value[0], message=str(outcome.error))
            )
        else:
            _fill_publish_response(result.published, outcome)
    return response


def notification_to_proto(notification: Notification) -> pb.Notification:
    return pb.Notification(
        id=notification.id,
        type=notification.type,
        source_type=notification.source_type,
        source_id=notification.source_id,
        topic=notification.topic,
        partition=notification.partition,
        offset=notification.offset,
        traceparent=notification.traceparent,
    )


_SERVING_STATES = {
    ServingState.SERVING: pb.SERVING_STATE_SERVING,
    ServingState.DEGRADED: pb.SERVING_STATE_DEGRADED,
    ServingState.NOT_SERVING: pb.SERVING_STATE_NOT_SERVING,
}


def status_to_proto(status: SidecarStatus) -> pb.GetStatusResponse:
    return pb.GetStatusResponse(
        state=_SERVING_STATES[status.state],
        kafka=pb.KafkaStatus(
            connected=status.kafka_connected,
            topic=status.kafka_topic,
            buffered_events=status.kafka_buffered_events,
            buffered_bytes=status.kafka_buffered_bytes,
            last_error=status.kafka_last_error,
        ),
        redis=pb.RedisStatus(
            publishing=status.redis_publishing,
            breaker_open=status.redis_breaker_open,
            sent=status.redis_sent,
            failed=status.redis_failed,
            skipped=status.redis_skipped,
            last_error=status.redis_last_error,
            subscriber_connected=status.subscriber_connected,
        ),
        streams=status.streams,
        routes=status.routes,
    )
