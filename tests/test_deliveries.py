"""Deliveries on the wire: encoded once per notification, and batched for streams that ask.

The encoder's bytes must parse to exactly the message the plain protobuf conversion builds, for
any notification, cursor and trace context; a stream that opts in to batches gets its queued
notifications together, in order, each with its own cursor; one that does not never sees a
batch.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import grpc
from hypothesis import given
from hypothesis import strategies as st

from dualstream.events import Event
from dualstream.hub import Subscription
from dualstream.notifications import Notification
from dualstream.streams import Deliveries, Delivery
from dualstream.transport import convert, deliveries
from dualstream.transport.deliveries import DeliveryEncoder
from dualstream.transport.server import Sidecar
from dualstream.v1 import event_service_pb2 as pb
from dualstream.v1 import event_service_pb2_grpc as pb_grpc
from dualstream_client import DualstreamClient, EventInput
from tests.conftest import target_of

text = st.text(max_size=40)
notifications = st.builds(
    Notification,
    id=text,
    type=text,
    source_type=text,
    source_id=text,
    topic=text,
    partition=st.integers(0, 2**31 - 1),
    offset=st.integers(0, 2**63 - 1),
    traceparent=text,
)
events = st.builds(
    Event,
    id=text,
    type=text,
    source_type=text,
    source_id=text,
    data=st.binary(max_size=64),
    content_type=text,
    time=st.one_of(st.none(), st.just(datetime(2026, 11, 29, 12, 0, tzinfo=UTC))),
    attributes=st.dictionaries(st.from_regex(r"[a-z]{1,5}", fullmatch=True), text, max_size=3),
)
deliveries_of = st.builds(
    Delivery,
    notification=notifications,
    cursor=text,
    replayed=st.booleans(),
    event=st.one_of(st.none(), events),
)


class Trace:
    def __init__(self, traceparent: str, tracestate: str) -> None:
        self.traceparent = traceparent
        self.tracestate = tracestate


traces = st.one_of(st.none(), st.builds(Trace, text, text))


def parsed(raw: bytes) -> pb.SubscribeResponse:
    return pb.SubscribeResponse.FromString(raw)


def expected(delivery: Delivery, trace: Trace | None) -> pb.Notification:
    message = convert.delivery_to_proto(delivery)
    if trace is not None:
        message.traceparent = trace.traceparent
        message.tracestate = trace.tracestate
    return message


@given(deliveries_of, traces)
def test_a_delivery_encodes_as_the_protobuf_message(
    delivery: Delivery, trace: Trace | None
) -> None:
    encoder = DeliveryEncoder()
    assert parsed(encoder.single(delivery, trace)) == pb.SubscribeResponse(
        notification=expected(delivery, trace)
    )
    # Again, now from the shared fields encoded above.
    assert parsed(encoder.single(delivery, trace)).notification == expected(delivery, trace)


@given(st.lists(st.tuples(deliveries_of, traces), min_size=2, max_size=6))
def test_several_deliveries_encode_as_one_batch(pairs: list[tuple[Delivery, Trace | None]]) -> None:
    items = [delivery for delivery, _ in pairs]
    messages = list(DeliveryEncoder().batches(items, [trace for _, trace in pairs]))
    assert len(messages) == 1
    assert parsed(messages[0]) == pb.SubscribeResponse(
        notifications=pb.NotificationBatch(notifications=[expected(d, t) for d, t in pairs])
    )


@given(st.lists(deliveries_of, min_size=2, max_size=6))
def test_a_batch_encodes_as_the_protobuf_message(items: list[Delivery]) -> None:
    (message,) = DeliveryEncoder().batches(items)
    assert parsed(message) == convert.stream_item_to_proto(Deliveries(tuple(items)))


def test_one_notification_shared_by_many_streams_is_encoded_once(monkeypatch: Any) -> None:
    calls = 0
    plain = convert.notification_to_proto

    def counted(notification: Notification) -> pb.Notification:
        nonlocal calls
        calls += 1
        return plain(notification)

    monkeypatch.setattr(convert, "notification_to_proto", counted)
    encoder = DeliveryEncoder()
    shared = Notification("id", "t", "user", "u1", "events", 2, 41, "00-" + "a" * 32 + "-b-01")
    for stream in range(100):
        message = parsed(encoder.single(Delivery(shared, f"cursor-{stream}", replayed=False)))
        assert message.notification.cursor == f"cursor-{stream}"
        assert message.notification.offset == 41
    assert calls == 1


def test_a_batch_is_split_before_it_grows_too_large() -> None:
    big = Event("id", "t", "user", "u1", data=b"x" * (deliveries.MAX_BATCH_BYTES // 3))
    items = [
        Delivery(Notification(f"n{i}", "t", "user", "u1", "events", 0, i), f"c{i}", False, big)
        for i in range(7)
    ]
    messages = [parsed(raw) for raw in DeliveryEncoder().batches(items)]
    assert len(messages) > 1
    assert all(len(m.SerializeToString()) <= deliveries.MAX_BATCH_BYTES + 1024 for m in messages)
    carried = [
        n.id
        for m in messages
        for n in (
            m.notifications.notifications if m.HasField("notifications") else [m.notification]
        )
    ]
    assert carried == [f"n{i}" for i in range(7)]


class _NoHub:
    def release(self, subscription: Subscription) -> None:
        pass


def test_take_queued_stops_at_a_signal_and_keeps_the_bound() -> None:
    subscription = Subscription(_NoHub(), (), queue_size=3)  # type: ignore[arg-type]
    first, second, third = (
        Notification(f"n{i}", "t", "user", "u", "events", 0, i) for i in range(3)
    )
    subscription.offer(first)
    subscription.offer(second)
    subscription.fail(RuntimeError("ended"))
    assert subscription.take_queued(10) == [first, second]
    assert subscription.take_queued(10) == []
    # Room for three again: the two taken no longer count against the bound.
    subscription.close()
    other = Subscription(_NoHub(), (), queue_size=2)  # type: ignore[arg-type]
    other.offer(first)
    other.offer(second)
    assert other.take_queued(1) == [first]
    other.offer(third)
    assert other.take_queued(5) == [second, third]


async def _read_notifications(
    stub: pb_grpc.EventServiceStub, request: pb.SubscribeRequest, count: int, live: asyncio.Event
) -> list[pb.SubscribeResponse]:
    """The messages of a stream until ``count`` notifications arrived; ``live`` is set once
    the stream is."""
    messages: list[pb.SubscribeResponse] = []
    received = 0
    call: Any = stub.Subscribe(request)  # A grpc.aio call; the stubs' types are the sync API's.
    try:
        first = await call.read()
        assert first.HasField("subscribed")
        live.set()
        while received < count:
            message = await call.read()
            assert message is not grpc.aio.EOF  # type: ignore[attr-defined]
            messages.append(message)
            received += len(_notifications_of([message]))
    finally:
        call.cancel()
    return messages


def _notifications_of(messages: list[pb.SubscribeResponse]) -> list[pb.Notification]:
    return [
        notification
        for message in messages
        for notification in (
            message.notifications.notifications
            if message.HasField("notifications")
            else [message.notification]
        )
    ]


async def test_a_stream_that_opts_in_gets_queued_notifications_in_batches(
    sidecar: Sidecar, client: DualstreamClient, source_type: str
) -> None:
    """One PublishBatch notifies in one Redis pipeline, so the hub queues the notifications
    for all streams in one go: the streams that opted in take them together, with the events
    read from Kafka when asked for."""
    source = pb.Source(source_type=source_type, source_id="s")
    count = 40
    async with grpc.aio.insecure_channel(target_of(sidecar)) as channel:
        stub = pb_grpc.EventServiceStub(channel)
        readers = []
        for request in (
            pb.SubscribeRequest(sources=[source], max_notifications_per_message=16),
            pb.SubscribeRequest(sources=[source]),
            pb.SubscribeRequest(
                sources=[source], max_notifications_per_message=16, include_data=True
            ),
        ):
            live = asyncio.Event()
            readers.append(asyncio.create_task(_read_notifications(stub, request, count, live)))
            await asyncio.wait_for(live.wait(), 30)
        results = await client.publish_batch(
            [EventInput("t", source_type, "s", data=b"%d" % i) for i in range(count)]
        )
        batched, single, with_data = await asyncio.wait_for(asyncio.gather(*readers), 30)
    published = [result.id for result in results]
    assert [n.id for n in _notifications_of(batched)] == published
    assert [n.id for n in _notifications_of(single)] == published
    assert any(m.HasField("notifications") for m in batched)
    assert all(len(m.notifications.notifications) <= 16 for m in batched)
    assert not any(m.HasField("notifications") for m in single)
    # Each notification of a batch has its own cursor, the one it would have had alone.
    cursors = [n.cursor for n in _notifications_of(batched)]
    assert cursors == [n.cursor for n in _notifications_of(single)]
    assert len(set(cursors)) == count
    assert [(n.id, n.event.data) for n in _notifications_of(with_data)] == [
        (id, b"%d" % i) for i, id in enumerate(published)
    ]
    assert all(len(m.notifications.notifications) <= 16 for m in with_data)
