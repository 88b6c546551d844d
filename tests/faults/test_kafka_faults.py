"""Kafka down, stalled, or losing its partition leader: no acknowledged event is ever lost."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dualstream.transport.server import Sidecar
from dualstream_client import (
    DualstreamClient,
    DualstreamClientError,
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
from tests.kafka_records import read_all

# The longest tests restart JVMs several times: minutes each on a busy shared machine.
pytestmark = [pytest.mark.faults, pytest.mark.timeout(900)]
DELIVERY_TIMEOUT = 3.0
JVM_START_TIMEOUT = 300.0


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
        await asyncio.to_thread(private_kafka.start, JVM_START_TIMEOUT)
        recovery = await _seconds_until_published(client, EventInput("t", source_type, "x"))
    assert max(waits) <= DELIVERY_TIMEOUT + 1.0
    record(
        "kafka_down",
        unavailable_answers=len(waits),
        longest_wait_s=round(max(waits), 2),
        delivery_timeout_s=DELIVERY_TIMEOUT,
        recovered_after_broker_restart_s=round(recovery, 2),
    )


async def _seconds_until_published(client: DualstreamClient, event: EventInput) -> float:
    """Publish ``event`` until the sidecar takes it (Kafka is back); how long that took."""
    started = time.monotonic()
    async with asyncio.timeout(120):
        while True:
            try:
                await client.publish(event)
                return time.monotonic() - started
            except (UnavailableError, ResourceExhaustedError):
                await asyncio.sleep(0.2)


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
            recovery = await _seconds_until_published(client, EventInput("t", source_type, "x"))
    finally:
        sidecar.stop()
    assert outcomes["ok"] == []  # nothing is acknowledged while the broker is stopped
    # Until the probe notices the stall (about 2 s) the buffer fills and callers beyond it get
    # RESOURCE_EXHAUSTED after the 0.2 s wait; from then on UNAVAILABLE at once. How many of
    # each depends on how fast this machine sends the first wave, so only the sum is exact.
    assert len(outcomes["RESOURCE_EXHAUSTED"]) + len(outcomes["UNAVAILABLE"]) == 4000
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
    # Three JVMs electing a quorum on two shared, busy cores can take over a minute.
    nodes.start(timeout=JVM_START_TIMEOUT)
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
            await asyncio.to_thread(cluster.broker(leader).start, JVM_START_TIMEOUT)
            events.append(f"restarted {leader} at {len(load.outcomes)}")
            other = next(b.node_id for b in cluster.brokers if b.node_id != leader)
            await asyncio.to_thread(cluster.broker(other).restart, JVM_START_TIMEOUT)
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
                await asyncio.to_thread(broker.start, JVM_START_TIMEOUT)
    assert "OK" not in codes
    record("kafka_too_few_replicas", answers=codes)


async def _health(stub: health_pb2_grpc.HealthStub) -> int:
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    return int(reply.status)


async def _seconds_until_health(stub: health_pb2_grpc.HealthStub, wanted: int) -> float:
    """Poll the health service until it reports ``wanted``; generous bound, measured time."""
    started = time.monotonic()
    async with asyncio.timeout(60):
        while await _health(stub) != wanted:
            await asyncio.sleep(0.05)
    return time.monotonic() - started


async def test_kafka_killed_health_tells_and_publish_fails_fast(
    private_kafka: KafkaBroker, shared_redis: RedisServer, tracer: Any, source_type: str
) -> None:
    """Every broker gone: health NOT_SERVING and kafka.connected=false within 5 s, Publish
    answers UNAVAILABLE at once instead of waiting out the delivery timeout; back within 5 s."""
    settings = make_settings(
        private_kafka.bootstrap, shared_redis.url, "events", kafka_delivery_timeout=10.0
    )
    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        (health_pb2.HealthCheckResponse.NOT_SERVING),
    )
    async with (
        Sidecar(settings, tracer) as sidecar,
        DualstreamClient(target_of(sidecar)) as client,
        grpc.aio.insecure_channel(target_of(sidecar)) as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        assert await sidecar.publisher.event_log.wait_ready(30)
        await client.publish(EventInput("t", source_type, "x"))
        assert await _health(health) == serving
        await asyncio.to_thread(private_kafka.kill)
        noticed = await _seconds_until_health(health, not_serving)
        status = await client.status()
        waits = []
        for _ in range(5):
            started = time.monotonic()
            with pytest.raises(UnavailableError, match="Kafka"):
                await client.publish(EventInput("t", source_type, "x"))
            waits.append(time.monotonic() - started)
        # "Back" counts from when the broker answers metadata requests again.
        await asyncio.to_thread(private_kafka.start, JVM_START_TIMEOUT)
        back = await _seconds_until_health(health, serving)
        status_back = await client.status()
        await _seconds_until_published(client, EventInput("t", source_type, "x"))
    assert not status.kafka.connected
    assert status.state == 3  # SERVING_STATE_NOT_SERVING
    assert status_back.kafka.connected
    assert noticed <= 5.0
    assert back <= 5.0
    # "At once": far below the 10 s delivery timeout a dead broker used to cost each call.
    assert max(waits) < settings.kafka_delivery_timeout / 4
    record(
        "kafka_killed_health",
        not_serving_after_kill_s=round(noticed, 2),
        unavailable_answers=len(waits),
        longest_unavailable_answer_s=round(max(waits), 3),
        delivery_timeout_s=settings.kafka_delivery_timeout,
        serving_after_restart_s=round(back, 2),
    )


async def test_kafka_killed_under_load_then_sigterm_stops_cleanly(
    private_kafka: KafkaBroker, shared_redis: RedisServer, tmp_path: Path, source_type: str
) -> None:
    """Records still waiting for a dead Kafka at SIGTERM: the sidecar gives up on them within
    a bound (their callers already got UNAVAILABLE), exits 0, and logs no traceback (the
    autouse fixture reads its log)."""
    port = any_free_port()
    sidecar = SidecarProcess(
        tmp_path / "sidecar", port, private_kafka.bootstrap, shared_redis.url, "events",
        extra_args=["--kafka-delivery-timeout", str(DELIVERY_TIMEOUT), "--shutdown-grace", "2"],
    )  # fmt: skip
    sidecar.start()
    try:
        async with DualstreamClient(f"127.0.0.1:{port}", timeout=30) as client:
            # Load serialises each of its 10 sources, so after the kill the remaining calls
            # take up to 10 at a time; 100 of them keep the test short on the old code too.
            load = Load(client, source_type, total=1_600, concurrency=32)
            running = asyncio.create_task(load.run())
            while len(load.outcomes) < 1_500:
                await asyncio.sleep(0.005)
            await asyncio.to_thread(private_kafka.kill)
            killed_at = len(load.outcomes)
            await asyncio.wait_for(running, 150)
            signalled = time.monotonic()
            sidecar.request_stop()
            exit_code = await asyncio.to_thread(sidecar.wait_exit, 60)
            stopped_after = time.monotonic() - signalled
    finally:
        sidecar.stop()
    failed = [o for o in load.outcomes if not o.ok]
    assert exit_code == 0
    assert {o.code for o in failed} <= {"UNAVAILABLE"}
    record(
        "kafka_killed_then_sigterm",
        killed_after_calls=killed_at,
        acknowledged=sum(o.ok for o in load.outcomes),
        unavailable=len(failed),
        exit_code=exit_code,
        exit_after_sigterm_s=round(stopped_after, 2),
    )


async def test_cancelled_calls_while_kafka_is_stalled_stay_within_the_buffer(
    private_kafka: KafkaBroker, shared_redis: RedisServer, tracer: Any, source_type: str
) -> None:
    """Callers that give up (a 0.3 s deadline) while the broker is SIGSTOPped must not free
    buffer room: their records stay queued for Kafka. Every record queued during the stall
    lands in Kafka once the broker resumes, so Kafka itself shows how much was held.

    The buffer is smaller than what aiokafka queues by itself before its own back-pressure
    (a batch in flight and one filling, per partition), so only our bound can hold it."""
    payload = b"y" * 10_000
    keys = [f"k{i}" for i in range(8)]  # over both partitions of the private topic
    buffer_bytes = 50_000  # four records of this size, with their headers
    settings = make_settings(
        private_kafka.bootstrap, shared_redis.url, "events",
        kafka_buffer_events=10_000, kafka_buffer_bytes=buffer_bytes, kafka_buffer_wait=0.05,
        kafka_delivery_timeout=10.0,
    )  # fmt: skip
    codes: collections.Counter[str] = collections.Counter()
    async with (
        Sidecar(settings, tracer) as sidecar,
        DualstreamClient(target_of(sidecar)) as patient,
        DualstreamClient(target_of(sidecar), timeout=0.3) as impatient,
    ):
        assert await sidecar.publisher.event_log.wait_ready(30)
        for key in keys:
            await patient.publish(EventInput("warm", source_type, key))
        buffer = sidecar.publisher.event_log.buffer
        peak_buffered = 0
        private_kafka.pause()
        try:
            for wave in range(10):

                async def one(number: int, wave: int = wave) -> None:
                    key = keys[number % len(keys)]
                    event = EventInput("stalled", source_type, key, payload, id=f"{wave}-{number}")
                    try:
                        await impatient.publish(event)
                        codes["OK"] += 1
                    except DualstreamClientError as exc:
                        codes[exc.code.name] += 1

                await asyncio.gather(*(one(n) for n in range(100)))
                peak_buffered = max(peak_buffered, buffer.bytes)
        finally:
            private_kafka.resume()
        # One acknowledged record per key (so per partition) after the stall: every record
        # queued before it on that partition has been answered by then.
        for key in keys:
            await _seconds_until_published(patient, EventInput("after", source_type, key))
    records = await read_all(private_kafka.bootstrap, "events", 2 * len(keys))
    stalled = [r for r in records if dict(r.headers).get("ce_type") == b"stalled"]
    held_bytes = sum(len(r.value or b"") for r in stalled)
    assert codes["OK"] == 0
    assert peak_buffered <= buffer_bytes
    assert held_bytes <= buffer_bytes, (
        f"{len(stalled)} records ({held_bytes} bytes) were queued for a stalled Kafka, "
        f"over the {buffer_bytes}-byte buffer"
    )
    record(
        "kafka_stalled_cancelled_calls",
        calls=sum(codes.values()),
        answers=dict(codes),
        kafka_buffer_bytes=buffer_bytes,
        records_queued_during_stall=len(stalled),
        payload_bytes_queued_during_stall=held_bytes,
    )
