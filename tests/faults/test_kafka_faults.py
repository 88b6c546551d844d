"""Kafka down, stalled, or losing its partition leader: no acknowledged event is ever lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from dualstream.transport.server import Sidecar
from dualstream_client import (
    DualstreamClient,
    EventInput,
    ResourceExhaustedError,
    UnavailableError,
)
from stack.localstack import KafkaBroker, KafkaCluster, RedisServer, SidecarProcess, create_topic
from stack.localstack import free_port as any_free_port
from tests.conftest import make_settings, target_of
from tests.faults.figures import latency_summary, record, rss_kib
from tests.faults.load import Load
from tests.faults.verify import check_acknowledged_exactly_once_in_order

pytestmark = pytest.mark.faults
DELIVERY_TIMEOUT = 3.0


async def test_kafka_down_answers_unavailable_then_recovers_by_itself(
    private_kafka: KafkaBroker, shared_redis: RedisServer, tracer: Any, source_type: str
) -> None:
    settings = make_settings(
        private_kafka.bootstrap, shared_redis.url, "events", kafka_delivery_timeout=DELIVERY_TIMEOUT
    )
    async with Sidecar(settings, tracer) as sidecar, DualstreamClient(target_of(sidecar)) as client:
        await client.publish(EventInput("t", source_type, "x"))
        await asyncio.to_thread(private_kafka.stop)
        waits = []
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(UnavailableError):
                await client.publish(EventInput("t", source_type, "x"))
            waits.append(time.monotonic() - started)
        await asyncio.to_thread(private_kafka.start)
        recovered_at = time.monotonic()
        while True:
            try:
                await client.publish(EventInput("t", source_type, "x"))
                break
            except UnavailableError:
                await asyncio.sleep(0.2)
        recovery = time.monotonic() - recovered_at
    assert max(waits) <= DELIVERY_TIMEOUT + 1.0
    record(
        "kafka_down",
        unavailable_answers=len(waits),
        longest_wait_s=round(max(waits), 2),
        delivery_timeout_s=DELIVERY_TIMEOUT,
        recovered_after_broker_restart_s=round(recovery, 2),
    )


async def test_kafka_stalled_fills_a_bounded_buffer_then_fails_fast(
    private_kafka: KafkaBroker, shared_redis: RedisServer, tmp_path: Path, source_type: str
) -> None:
    port = any_free_port()
    sidecar = SidecarProcess(
        tmp_path / "sidecar",
        port,
        private_kafka.bootstrap,
        shared_redis.url,
        "events",
        extra_args=[
            "--kafka-buffer-events", "500",
            "--kafka-buffer-bytes", str(8 * 1024 * 1024),
            "--kafka-buffer-wait", "0.2",
            "--kafka-delivery-timeout", "5",
        ],
    )  # fmt: skip
    sidecar.start()
    try:
        assert sidecar.pid is not None
        async with DualstreamClient(f"127.0.0.1:{port}", timeout=30) as client:
            for _ in range(50):
                await client.publish(EventInput("t", source_type, "x", b"y" * 10_000))
            rss_before = rss_kib(sidecar.pid)
            private_kafka.pause()
            outcomes: dict[str, list[float]] = {
                "ok": [],
                "RESOURCE_EXHAUSTED": [],
                "UNAVAILABLE": [],
            }
            peak_rss = rss_before

            async def one(number: int) -> None:
                started = time.monotonic()
                try:
                    await client.publish(
                        EventInput("t", source_type, f"s{number % 20}", b"y" * 10_000)
                    )
                    outcomes["ok"].append(time.monotonic() - started)
                except ResourceExhaustedError:
                    outcomes["RESOURCE_EXHAUSTED"].append(time.monotonic() - started)
                except UnavailableError:
                    outcomes["UNAVAILABLE"].append(time.monotonic() - started)

            async def sample() -> None:
                nonlocal peak_rss
                while True:
                    assert sidecar.pid is not None
                    peak_rss = max(peak_rss, rss_kib(sidecar.pid))
                    await asyncio.sleep(0.1)

            sampler = asyncio.create_task(sample())
            try:
                for wave in range(4):  # 4 waves of 1,000 concurrent 10 kB publishes
                    await asyncio.gather(*(one(wave * 1000 + i) for i in range(1000)))
            finally:
                sampler.cancel()
            status = await client.status()
            private_kafka.resume()
            recovered_at = time.monotonic()
            while True:
                try:
                    await client.publish(EventInput("t", source_type, "x"))
                    break
                except (UnavailableError, ResourceExhaustedError):
                    await asyncio.sleep(0.2)
            recovery = time.monotonic() - recovered_at
    finally:
        sidecar.stop()
    assert outcomes["ok"] == []  # nothing is acknowledged while the broker is stopped
    assert outcomes["RESOURCE_EXHAUSTED"], "the buffer never filled"
    assert status.kafka.buffered_events <= 500
    record(
        "kafka_stalled",
        sent=4000,
        resource_exhausted=len(outcomes["RESOURCE_EXHAUSTED"]),
        unavailable=len(outcomes["UNAVAILABLE"]),
        acknowledged=len(outcomes["ok"]),
        resource_exhausted_latency=latency_summary(outcomes["RESOURCE_EXHAUSTED"]),
        buffered_events_at_end=status.kafka.buffered_events,
        buffered_bytes_at_end=status.kafka.buffered_bytes,
        rss_kib_before=rss_before,
        rss_kib_peak=peak_rss,
        recovered_after_resume_s=round(recovery, 2),
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    nodes = KafkaCluster(tmp_path_factory.mktemp("cluster"), size=3)
    nodes.start()
    yield nodes
    nodes.stop()


async def _leader_of(bootstrap: str, topic: str, partition: int) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
        for info in described["partitions"]:
            if info["partition"] == partition:
                return int(info["leader"])
    finally:
        await admin.close()
    raise AssertionError(f"no leader for {topic}/{partition}")


async def test_partition_leader_killed_and_brokers_bounced_under_load(
    cluster: KafkaCluster, shared_redis: RedisServer, tracer: Any, source_type: str
) -> None:
    topic = "replicated"
    await asyncio.to_thread(
        create_topic, cluster.bootstrap, topic, 6, 3, config={"min.insync.replicas": "2"}
    )
    settings = make_settings(
        cluster.bootstrap, shared_redis.url, topic, kafka_delivery_timeout=10.0
    )
    events: list[str] = []
    async with (
        Sidecar(settings, tracer) as sidecar,
        DualstreamClient(target_of(sidecar), timeout=60) as client,
    ):
        assert await sidecar.publisher.event_log.wait_ready(30)
        load = Load(client, source_type, total=8_000, concurrency=24)

        async def inject() -> None:
            while len(load.outcomes) < 1_000:
                await asyncio.sleep(0.01)
            leader = await _leader_of(cluster.bootstrap, topic, 0)
            cluster.broker(leader).kill()
            events.append(f"killed leader {leader} at {len(load.outcomes)}")
            while len(load.outcomes) < 2_000:
                await asyncio.sleep(0.01)
            await asyncio.to_thread(cluster.broker(leader).start)
            events.append(f"restarted {leader} at {len(load.outcomes)}")
            other = next(b.node_id for b in cluster.brokers if b.node_id != leader)
            await asyncio.to_thread(cluster.broker(other).restart)
            events.append(f"bounced {other} at {len(load.outcomes)}")

        injector = asyncio.create_task(inject())
        outcomes = await load.run()
        await injector
    found = await check_acknowledged_exactly_once_in_order(cluster.bootstrap, topic, outcomes)
    failed = [o for o in outcomes if not o.ok]
    longest = max(o.seconds for o in outcomes)
    assert longest <= settings.kafka_delivery_timeout + 2.0
    record(
        "kafka_leader_killed",
        faults=events,
        sent=len(outcomes),
        failed_calls=len(failed),
        failed_codes=sorted({o.code for o in failed}),
        **found,
        latency=latency_summary([o.seconds for o in outcomes]),
        delivery_timeout_s=settings.kafka_delivery_timeout,
    )


async def test_too_few_in_sync_replicas_is_unavailable_never_ok(
    cluster: KafkaCluster, shared_redis: RedisServer, tracer: Any, source_type: str
) -> None:
    topic = "replicated-isr"
    await asyncio.to_thread(
        create_topic, cluster.bootstrap, topic, 3, 3, config={"min.insync.replicas": "2"}
    )
    settings = make_settings(
        cluster.bootstrap, shared_redis.url, topic, kafka_delivery_timeout=DELIVERY_TIMEOUT
    )
    down = [b for b in cluster.brokers[1:]]
    async with Sidecar(settings, tracer) as sidecar, DualstreamClient(target_of(sidecar)) as client:
        assert await sidecar.publisher.event_log.wait_ready(30)
        await client.publish(EventInput("t", source_type, "x"))
        for broker in down:
            await asyncio.to_thread(broker.stop)
        codes = []
        try:
            for number in range(5):
                try:
                    await client.publish(EventInput("t", source_type, f"k{number}"))
                    codes.append("OK")
                except UnavailableError:
                    codes.append("UNAVAILABLE")
        finally:
            for broker in down:
                await asyncio.to_thread(broker.start)
    assert "OK" not in codes
    record("kafka_too_few_replicas", answers=codes)
