"""SIGTERM under load: stop taking calls, finish the ones in flight, flush, lose nothing."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dualstream_client import DualstreamClient
from stack.localstack import KafkaBroker, RedisServer, SidecarProcess, free_port
from tests.faults.figures import record
from tests.faults.load import Load
from tests.faults.verify import check_acknowledged_exactly_once_in_order

pytestmark = pytest.mark.faults


async def test_sigterm_under_load_drains_and_flushes(
    kafka: KafkaBroker, shared_redis: RedisServer, topic: str, tmp_path: Path, source_type: str
) -> None:
    port = free_port()
    sidecar = SidecarProcess(
        tmp_path / "sidecar", port, kafka.bootstrap, shared_redis.url, topic,
        extra_args=["--shutdown-grace", "10", "--kafka-linger-ms", "20"],
    )  # fmt: skip
    sidecar.start()
    try:
        async with (
            DualstreamClient(f"127.0.0.1:{port}", timeout=30) as client,
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            health = health_pb2_grpc.HealthStub(channel)
            watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            load = Load(client, source_type, total=20_000, concurrency=64)
            running = asyncio.create_task(load.run())
            while len(load.outcomes) < 1_000:
                await asyncio.sleep(0.01)
            assert sidecar.pid is not None
            signalled = time.monotonic()
            sidecar.request_stop()  # SIGTERM
            update = await asyncio.wait_for(watch.read(), 5)
            not_serving_after = time.monotonic() - signalled
            await asyncio.wait_for(running, 60)
            exit_code = await asyncio.to_thread(sidecar.wait_exit, 30)
    finally:
        sidecar.stop()
    outcomes = load.outcomes
    after = [o for o in outcomes if o.started > signalled + 0.5]
    assert update.status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert exit_code == 0
    assert after
    assert all(not o.ok for o in after), "calls were taken after SIGTERM"
    assert {o.code for o in after} <= {"UNAVAILABLE"}
    found = await check_acknowledged_exactly_once_in_order(kafka.bootstrap, topic, outcomes)
    record(
        "sigterm_under_load",
        health_not_serving_after_s=round(not_serving_after, 3),
        acknowledged_before_exit=sum(o.ok for o in outcomes),
        refused_after_sigterm=len(after),
        exit_code=exit_code,
        **found,
    )
