"""Proto messages <-> domain types. No validation beyond what the wire format needs."""

from __future__ import annotations

from datetime import UTC

from dualstream.errors import InvalidArgumentError
from dualstream.events import Event, NotPublished, Published, PublishOutcome, Source
from dualstream.notifications import Notification
from dualstream.transport.status import status_code_for
from dualstream.v1 import event_service_pb2 as pb


def event_from_proto(message: pb.Event, field: str) -> Event:
    time = None
    if message.HasField("time"):
        try:
            time = message.time.ToDatetime(tzinfo=UTC)
        except (ValueError, OverflowError) as exc:
            raise InvalidArgumentError(f"{field}.time", f"is not a valid timestamp: {exc}") from exc
    return Event(
        id=message.id,
        type=message.type,
        source_type=message.source_type,
        source_id=message.source_id,
        data=message.data,
        content_type=message.content_type,
        time=time,
        attributes=dict(message.attributes),
    )


def sources_from_proto(request: pb.SubscribeRequest) -> list[Source]:
    return [Source(s.source_type, s.source_id) for s in request.sources]


def publish_response(outcome: Published) -> pb.PublishResponse:
    return pb.PublishResponse(
        id=outcome.event_id,
        topic=outcome.position.topic,
        partition=outcome.position.partition,
        offset=outcome.position.offset,
        notified=outcome.notified,
    )


def batch_result(outcome: PublishOutcome) -> pb.PublishBatchResult:
    if isinstance(outcome, NotPublished):
        return pb.PublishBatchResult(
            id=outcome.event_id,
            error=pb.Error(
                code=status_code_for(outcome.error).value[0], message=str(outcome.error)
            ),
        )
    return pb.PublishBatchResult(id=outcome.event_id, published=publish_response(outcome))


def notification_to_proto(notification: Notification) -> pb.Notification:
    return pb.Notification(
        id=notification.id,
        type=notification.type,
        source_type=notification.source_type,
        source_id=notification.source_id,
        topic=notification.topic,
        partition=notification.partition,
        offset=notification.offset,
    )
