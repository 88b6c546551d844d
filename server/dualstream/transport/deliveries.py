"""Subscribe responses as wire bytes, each notification's shared part encoded once.

A live notification reaches every local stream that follows its source. What they receive
differs only in the stream's own fields: its ``cursor``, ``replayed``, the event when it asked
for ``include_data``, and the trace context when the sidecar traces each stream's delivery.
Protobuf fields concatenate (a message is the sequence of its fields, in any order), so a
``Notification`` is the shared fields, encoded once per notification, followed by the stream's
own; the ``SubscribeResponse`` around it is a tag and a length. The Subscribe handler yields
these bytes to gRPC with an identity serializer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from dualstream.notifications import Notification
from dualstream.protowire import length_delimited
from dualstream.streams import Delivery
from dualstream.transport import convert
from dualstream.v1 import event_service_pb2 as pb

# Field numbers of protos/dualstream/v1/event_service.proto.
_RESPONSE_NOTIFICATION = 2
_RESPONSE_NOTIFICATIONS = 5
_BATCH_NOTIFICATION = 1
_CURSOR = 8
_REPLAYED = 9
_EVENT = 10
_TRACEPARENT = 11
_TRACESTATE = 12
_REPLAYED_TRUE = bytes([_REPLAYED << 3, 1])  # Field 9, varint 1.

# A batch stops growing past this many bytes (a notification carrying its event's payload can
# be a megabyte), so a batch never nears the 4 MiB clients accept by default.
MAX_BATCH_BYTES = 1024 * 1024
# Shared encodings kept: enough for every notification in flight to the streams at once.
_CACHE_SIZE = 4096


class TraceFields(Protocol):
    """The W3C trace context of the sidecar's span delivering a notification to one stream."""

    @property
    def traceparent(self) -> str: ...

    @property
    def tracestate(self) -> str: ...


def _string(field: int, text: str) -> bytes:
    return length_delimited(field, text.encode()) if text else b""


class DeliveryEncoder:
    """Encodes deliveries into ``SubscribeResponse`` bytes.

    The shared fields of a notification are encoded on its first delivery and reused for every
    other stream it reaches, keyed by the object itself: the hub hands the same ``Notification``
    to all local streams. A bounded number are kept, oldest dropped first.
    """

    def __init__(self) -> None:
        # id(notification) -> the notification (held, so its id cannot be reused while it is
        # here), its shared fields without the publisher's traceparent, and with it.
        self._shared: dict[int, tuple[Notification, bytes, bytes]] = {}

    def _shared_fields(self, notification: Notification, *, publisher_trace: bool) -> bytes:
        entry = self._shared.get(id(notification))
        if entry is None or entry[0] is not notification:
            message = convert.notification_to_proto(notification)
            message.ClearField("traceparent")
            bare = message.SerializeToString()
            with_trace = bare + _string(_TRACEPARENT, notification.traceparent)
            if len(self._shared) >= _CACHE_SIZE:
                del self._shared[next(iter(self._shared))]  # The oldest.
            entry = self._shared[id(notification)] = (notification, bare, with_trace)
        return entry[2] if publisher_trace else entry[1]

    def _notification(self, delivery: Delivery, trace: TraceFields | None) -> bytes:
        """One ``Notification`` message: the shared fields, then the stream's own. ``trace``,
        when the sidecar traces the delivery, replaces the publisher's trace context."""
        parts = [self._shared_fields(delivery.notification, publisher_trace=trace is None)]
        parts.append(_string(_CURSOR, delivery.cursor))
        if delivery.replayed:
            parts.append(_REPLAYED_TRUE)
        if delivery.event is not None:
            event = convert.event_to_proto(delivery.event).SerializeToString()
            parts.append(length_delimited(_EVENT, event))
        if trace is not None:
            parts.append(_string(_TRACEPARENT, trace.traceparent))
            parts.append(_string(_TRACESTATE, trace.tracestate))
        return b"".join(parts)

    def single(self, delivery: Delivery, trace: TraceFields | None = None) -> bytes:
        """A ``SubscribeResponse`` whose ``notification`` is this delivery."""
        return length_delimited(_RESPONSE_NOTIFICATION, self._notification(delivery, trace))

    def batches(
        self, deliveries: Sequence[Delivery], traces: Sequence[TraceFields | None] = ()
    ) -> Iterator[bytes]:
        """``SubscribeResponse`` messages carrying these deliveries in order: one
        ``notifications`` batch, split where it would pass ``MAX_BATCH_BYTES``; a lone
        delivery goes as a plain ``notification``. ``traces``, if given, has one entry per
        delivery."""
        pending: list[bytes] = []
        size = 0
        for index, delivery in enumerate(deliveries):
            trace = traces[index] if traces else None
            entry = length_delimited(_BATCH_NOTIFICATION, self._notification(delivery, trace))
            if pending and size + len(entry) > MAX_BATCH_BYTES:
                yield self._batch(pending)
                pending, size = [], 0
            pending.append(entry)
            size += len(entry)
        if pending:
            yield self._batch(pending)

    def _batch(self, entries: list[bytes]) -> bytes:
        if len(entries) == 1:
            # The entry is the notification's bytes behind the batch's tag and length; a lone
            # one is sent the way a client that never asked for batches would get it.
            return length_delimited(_RESPONSE_NOTIFICATION, _untagged(entries[0]))
        return length_delimited(_RESPONSE_NOTIFICATIONS, b"".join(entries))


def _untagged(entry: bytes) -> bytes:
    """The body of a length-delimited field encoded by ``_length_delimited``."""
    position = 1  # The tag of field 1 is one byte.
    while entry[position] & 0x80:
        position += 1
    return entry[position + 1 :]


def serialize(response: pb.SubscribeResponse) -> bytes:
    """Any other Subscribe message (``subscribed``, ``gap``, ``caught_up``) as wire bytes."""
    return response.SerializeToString()
