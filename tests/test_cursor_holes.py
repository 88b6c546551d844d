"""A cursor never claims an event the stream did not deliver without saying so (issue 9, item 4):
resuming below Kafka's retention start reports what retention deleted (``expired``), and a v2
cursor's holes are replayed before its frontier."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from dualstream.cursor import Cursor, OffsetRange
from dualstream_client import (
    CaughtUp,
    DualstreamClient,
    EventInput,
    Gap,
    StreamMessage,
)
from dualstream_client.client import Notification
from stack.localstack import KafkaBroker
from tests.test_streams import ids_of, notifications_until, take


async def delete_records_before(bootstrap: str, topic: str, partition: int, offset: int) -> None:
    """Move the partition's log start to ``offset``, as retention would."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        moved = await admin.delete_records(
            {TopicPartition(topic, partition): RecordsToDelete(before_offset=offset)},
            timeout_ms=30_000,
        )
    finally:
        await admin.close()
    assert moved[TopicPartition(topic, partition)] == offset


@pytest.mark.parametrize("policy", ["gap", "replay", "close"])
async def test_resume_below_the_log_start_reports_what_expired_then_replays_the_rest(
    client: DualstreamClient, kafka: KafkaBroker, topic: str, source_type: str, policy: str
) -> None:
    async with client.subscribe([(source_type, "x")]) as live:
        before_all = live.cursor
    results = [
        await client.publish(EventInput("t", source_type, "x", id=f"e{i}")) for i in range(10)
    ]
    partition = results[0].partition
    assert {r.partition for r in results} == {partition}  # One key, one partition.
    await delete_records_before(kafka.bootstrap, topic, partition, results[3].offset)

    async with client.subscribe(
        [(source_type, "x")], resume_cursor=before_all, policy=policy
    ) as resumed:
        messages: list[StreamMessage] = await notifications_until(
            resumed, {r.id for r in results[3:]}
        )
        if not isinstance(messages[-1], CaughtUp):
            messages += await take(resumed, 1)
    gaps = [m for m in messages if isinstance(m, Gap)]
    assert [(g.reason, g.missed) for g in gaps] == [("expired", 3)]
    assert messages.index(gaps[0]) == 0  # Said before the replay goes on from the log start.
    assert ids_of(messages) == [r.id for r in results[3:]]
    assert isinstance(messages[-1], CaughtUp)

    # The gap's cursor does not claim to replay what is gone: from it, no gap, the rest once.
    async with client.subscribe([(source_type, "x")], resume_cursor=gaps[0].cursor) as again:
        messages = await notifications_until(again, {r.id for r in results[3:]})
        if not isinstance(messages[-1], CaughtUp):
            messages += await take(again, 1)
    assert not any(isinstance(m, Gap) for m in messages)
    assert ids_of(messages) == [r.id for r in results[3:]]


async def test_everything_expired_is_one_gap_and_the_stream_goes_live(
    client: DualstreamClient, kafka: KafkaBroker, topic: str, source_type: str
) -> None:
    async with client.subscribe([(source_type, "x")]) as live:
        before_all = live.cursor
    results = [
        await client.publish(EventInput("t", source_type, "x", id=f"e{i}")) for i in range(4)
    ]
    await delete_records_before(
        kafka.bootstrap, topic, results[0].partition, results[-1].offset + 1
    )
    async with client.subscribe([(source_type, "x")], resume_cursor=before_all) as resumed:
        first = await take(resumed, 1)
        later = await client.publish(EventInput("t", source_type, "x", id="later"))
        rest = await notifications_until(resumed, {later.id})
    messages = first + rest
    gaps = [m for m in messages if isinstance(m, Gap)]
    assert [(g.reason, g.missed) for g in gaps] == [("expired", 4)]
    assert ids_of(messages) == ["later"]


async def test_a_resume_replays_the_cursors_holes_first_and_each_cursor_names_what_is_left(
    client: DualstreamClient, topic: str, source_type: str
) -> None:
    """A v2 cursor (what a not_notified gap hands out): the holes below its frontier are
    replayed first, in order, then what follows the frontier; a stream that breaks while
    filling them hands out cursors that still name the rest."""
    results = [
        await client.publish(EventInput("t", source_type, "x", id=f"e{i}")) for i in range(8)
    ]
    partition = results[0].partition
    at = [r.offset for r in results]
    end = {p: 0 for p in range(6)}
    end[partition] = at[6]  # e6 and e7 follow the frontier.
    holes = (
        OffsetRange(partition, at[1], at[1] + 1),
        OffsetRange(partition, at[3], at[5] + 1),
    )
    cursor = Cursor(topic, end, holes).encode()
    wanted = ["e1", "e3", "e4", "e5", "e6", "e7"]
    async with client.subscribe([(source_type, "x")], resume_cursor=cursor) as resumed:
        messages = await notifications_until(resumed, set(wanted))
    assert ids_of(messages) == wanted
    first = next(m for m in messages if isinstance(m, Notification))
    assert Cursor.decode(first.cursor, topic).holes == holes[1:]
    async with client.subscribe([(source_type, "x")], resume_cursor=first.cursor) as again:
        rest = await notifications_until(again, set(wanted[1:]))
    assert ids_of(rest) == wanted[1:]
    # A hole of other sources' events only replays nothing of this stream's.
    other = await client.publish(EventInput("t", source_type, "y", id="other"))
    foreign = Cursor(
        topic,
        {**end, other.partition: max(end[other.partition], other.offset + 1)},
        (OffsetRange(other.partition, other.offset, other.offset + 1),),
    ).encode()
    async with client.subscribe([(source_type, "x")], resume_cursor=foreign) as quiet:
        messages = await take(quiet, 1)
        while not isinstance(messages[-1], CaughtUp):
            messages += await take(quiet, 1)
    assert ids_of(messages) == ["e6", "e7"]
