"""Kafka's retention deleted what a resume was to replay (issue 9, item 4): the stream says
so with a gap of its own reason and the count lost, then replays the rest, whatever its
policy (nothing can fill it). Before, the replay consumer's auto_offset_reset=earliest jumped
to the log start silently."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from dualstream_client import CaughtUp, DualstreamClient, EventInput, Gap, StreamMessage
from stack.localstack import KafkaBroker
from tests.faults.figures import record
from tests.test_streams import ids_of, notifications_until, take

pytestmark = pytest.mark.faults


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
    if policy == "gap":
        record(
            "retention_expired",
            published=len(results),
            deleted_by_retention=3,
            gap={"reason": gaps[0].reason, "missed": gaps[0].missed, "first_message": True},
            replayed_after_the_gap=len(ids_of(messages)),
            gaps_resuming_from_its_cursor=0,
        )


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
