"""The sidecar's own producer batches, against a real broker.

Records are placed as aiokafka's default partitioner places them (murmur2 of the key): the same
keys sent with ``send()`` land on the same partitions. Offsets derived from each batch's base
offset are where Kafka holds the records. Concurrent calls share fewer produce requests than
they have records, and a lone call is not held back.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from aiokafka import AIOKafkaProducer

from dualstream.kafka_batches import wave_hold
from dualstream.transport.server import Sidecar
from dualstream_client import BatchItemResult, DualstreamClient, EventInput, PublishResult
from stack.localstack import KafkaBroker, create_topic
from tests.conftest import make_settings, target_of
from tests.kafka_records import read_all


def _published(item: BatchItemResult) -> PublishResult:
    assert item.published is not None, item.error
    return item.published


KEYS = [f"key-{n}" for n in range(200)] + ["", "ü/ñ:ï", "a" * 500, "octocat", "repo:x/y"]


async def test_placement_is_the_default_partitioners(
    sidecar: Sidecar, client: DualstreamClient, kafka: KafkaBroker, source_type: str
) -> None:
    keys = [key for key in KEYS if key]  # source_id is required
    results = await client.publish_batch([EventInput("t", source_type, key) for key in keys])
    ours = {key: _published(result).partition for key, result in zip(keys, results, strict=True)}
    reference_topic = f"reference-{uuid.uuid4().hex[:8]}"
    create_topic(kafka.bootstrap, reference_topic, partitions=6)
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
    await producer.start()
    try:
        theirs = {
            key: (await producer.send_and_wait(reference_topic, b"", key=key.encode())).partition
            for key in keys
        }
    finally:
        await producer.stop()
    assert ours == theirs
    assert len(set(ours.values())) == 6, "200 keys should reach every partition"


async def test_offsets_are_where_kafka_holds_the_records(
    sidecar: Sidecar, client: DualstreamClient, kafka: KafkaBroker, source_type: str
) -> None:
    # Concurrent unary calls and batches of several partitions, so batches are shared.
    unary = [client.publish(EventInput("t", source_type, f"u{n % 7}")) for n in range(60)]
    batches = [
        client.publish_batch([EventInput("t", source_type, f"b{n}-{i}") for i in range(25)])
        for n in range(4)
    ]
    unary_results, batch_results = await asyncio.gather(
        asyncio.gather(*unary), asyncio.gather(*batches)
    )
    published = [*unary_results, *(_published(item) for batch in batch_results for item in batch)]
    positions = {result.id: (result.partition, result.offset) for result in published}
    records = await read_all(kafka.bootstrap, sidecar.settings.kafka_topic, len(positions))
    held = {
        dict(record.headers)["ce_id"].decode(): (record.partition, record.offset)
        for record in records
    }
    assert held == positions
    assert len(set(positions.values())) == len(positions)


async def test_per_source_order_holds_across_concurrent_calls(
    sidecar: Sidecar, client: DualstreamClient, source_type: str
) -> None:
    """One source's calls made one after another keep their order, whatever else shares
    their batches."""

    async def source(name: str) -> list[int]:
        offsets = []
        for _ in range(30):
            offsets.append((await client.publish(EventInput("t", source_type, name))).offset)
        return offsets

    for offsets in await asyncio.gather(*(source(f"s{n}") for n in range(10))):
        assert offsets == sorted(offsets)


async def test_concurrent_calls_share_produce_requests(
    kafka: KafkaBroker, shared_redis: Any, topic: str, tracer: Any, source_type: str
) -> None:
    settings = make_settings(kafka.bootstrap, shared_redis.url, topic, kafka_linger_ms=20)
    async with Sidecar(settings, tracer) as sidecar, DualstreamClient(target_of(sidecar)) as client:
        log = sidecar.publisher.event_log
        before = log.waves
        # A lone call goes at once, linger or not: nothing else is coming.
        await client.publish(EventInput("t", source_type, "alone"))
        assert log.waves == before + 1
        for _ in range(5):
            await asyncio.gather(
                *(client.publish(EventInput("t", source_type, f"k{n}")) for n in range(50))
            )
        waves = log.waves - before - 1
        assert waves < 5 * 50 / 4, f"{waves} waves (produce requests) for 250 records"


def test_the_hold_grows_with_the_calls_in_progress_within_bounds() -> None:
    # Up to 16 calls, the setting; then in proportion to the calls; at most four times it.
    assert [wave_hold(0.002, calls) for calls in (0, 1, 16)] == [0.002] * 3
    assert wave_hold(0.002, 32) == 0.004
    assert wave_hold(0.002, 64) == wave_hold(0.002, 10_000) == 0.008
