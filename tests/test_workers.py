"""``--workers N`` and ``--subscribe-listen``: sidecar processes supervised as one."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from dualstream.settings import Settings
from dualstream.v1 import event_service_pb2 as pb
from dualstream.v1 import event_service_pb2_grpc as pb_grpc
from dualstream.workers import _roles, _take_idle_policy
from dualstream_client import DualstreamClient, DualstreamClientError, EventInput
from stack.localstack import (
    TCP_ESTABLISHED,
    TCP_LISTEN,
    KafkaBroker,
    RedisServer,
    SidecarProcess,
    free_port,
    process_socket_inodes,
    tcp_socket_inodes,
)
from tests.conftest import eventually, next_notification
from tests.test_admin import get
from tests.test_health_command import health
from tests.test_metrics import scrape_admin, value


def _alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


async def _open_streams(admin: str) -> float:
    """``dualstream_streams_open`` as an admin listener's /metrics says."""
    return value(await asyncio.to_thread(scrape_admin, admin), "dualstream_streams_open")


def _thread_niceness(pid: int) -> set[int]:
    """The niceness of each of a process's threads (Linux keeps one per thread)."""
    values = set()
    for thread in os.listdir(f"/proc/{pid}/task"):
        stat = Path(f"/proc/{pid}/task/{thread}/stat").read_text()
        values.add(int(stat.rsplit(")", 1)[1].split()[16]))  # Field 19 of proc(5).
    return values


def test_the_delivery_process_takes_sched_idle_by_default_and_a_niceness_otherwise() -> None:
    publishing, delivering = _roles(Settings(subscribe_listen="127.0.0.1:50052"))
    assert (publishing.niceness, publishing.idle_policy, publishing.delivery_process) == (
        0, False, False,
    )  # fmt: skip
    # The niceness stays: it is what the process falls back to without SCHED_IDLE.
    assert (delivering.niceness, delivering.idle_policy, delivering.delivery_process) == (
        19, True, True,
    )  # fmt: skip
    niced = Settings(subscribe_listen="127.0.0.1:50052", delivery_cpu_policy="nice", workers=2)
    *_, delivering = _roles(niced)
    assert (delivering.niceness, delivering.idle_policy) == (19, False)


def test_sched_idle_is_taken_by_the_calling_thread_alone() -> None:
    """What the delivery process does first, before it starts any thread (threads inherit
    the policy); here in a thread of the test's, which ends with it."""
    seen: dict[str, object] = {}

    def take() -> None:
        seen["refused"] = _take_idle_policy()
        seen["policy"] = os.sched_getscheduler(0)

    thread = threading.Thread(target=take)
    thread.start()
    thread.join()
    assert seen == {"refused": None, "policy": os.SCHED_IDLE}
    assert os.sched_getscheduler(0) != os.SCHED_IDLE


def test_a_refused_sched_idle_is_reported_and_the_niceness_stands(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(pid: int, policy: int, param: os.sched_param) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    assert _take_idle_policy() == "sched_setscheduler refused it: [Errno 1] Operation not permitted"
    monkeypatch.delattr(os, "SCHED_IDLE")
    assert _take_idle_policy() == "this system has no SCHED_IDLE"


@contextlib.asynccontextmanager
async def with_delivery_process(
    kafka: KafkaBroker, redis: RedisServer, topic: str, tmp_path: Path, *extra_args: str
) -> AsyncIterator[SidecarProcess]:
    """A sidecar whose streams have a process of their own (``--subscribe-listen``)."""
    sidecar = SidecarProcess(
        tmp_path / "sidecar", free_port(), kafka.bootstrap, redis.url, topic,
        subscribe_port=free_port(),
        # Neither SCHED_IDLE nor niceness 19, the defaults: beside a CPU hog (CI's check under
        # load) they would leave the delivery process next to no CPU to start in, which is what
        # they are for.
        extra_args=["--delivery-cpu-policy", "nice", "--delivery-nice", "5", *extra_args],
    )  # fmt: skip
    await asyncio.to_thread(sidecar.start)
    try:
        yield sidecar
    finally:
        await asyncio.to_thread(sidecar.stop)


def delivery_pid(sidecar: SidecarProcess) -> int:
    """The process that serves the subscribe port, found by the socket it listens on."""
    assert sidecar.subscribe_port is not None
    listening = tcp_socket_inodes(sidecar.subscribe_port, TCP_LISTEN)
    (delivering,) = [p for p in sidecar.worker_pids() if process_socket_inodes(p) & listening]
    return delivering


async def _both_healthy(sidecar: SidecarProcess) -> None:
    """`dualstream health`, from the same environment as `serve`, checks both processes."""
    status, output = await health(
        env={
            "DUALSTREAM_LISTEN": sidecar.listen,
            "DUALSTREAM_SUBSCRIBE_LISTEN": sidecar.subscribe_target,
            "DUALSTREAM_ADMIN_LISTEN": f"127.0.0.1:{sidecar.admin_port}",
        }
    )
    assert status == 0, output
    assert output.startswith(
        f"healthy: gRPC {sidecar.listen} SERVING; gRPC {sidecar.subscribe_target} SERVING; "
    ), output


@pytest.fixture
async def two_workers(
    kafka: KafkaBroker, shared_redis: RedisServer, topic: str, tmp_path: Path
) -> AsyncIterator[tuple[SidecarProcess, int]]:
    """A sidecar started with ``--workers 2``, and its port."""
    port = free_port()
    sidecar = SidecarProcess(
        tmp_path / "sidecar", port, kafka.bootstrap, shared_redis.url, topic,
        extra_args=["--workers", "2"],
    )  # fmt: skip
    await asyncio.to_thread(sidecar.start)
    try:
        yield sidecar, port
    finally:
        await asyncio.to_thread(sidecar.stop)


async def test_workers_share_the_port_and_stop_together(
    two_workers: tuple[SidecarProcess, int], source_type: str
) -> None:
    sidecar, port = two_workers
    target = f"127.0.0.1:{port}"
    # Own subchannel pools: separate connections, which the kernel spreads over the workers.
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(16)]
    try:
        assert sidecar.pid is not None
        workers = sidecar.worker_pids()
        assert len(workers) == 2
        async with DualstreamClient(target) as client:
            stream = client.subscribe([(source_type, "shared")])
            await stream.wait_live()
            stubs = [pb_grpc.EventServiceStub(channel) for channel in channels]
            event = pb.Event(type="t", source_type=source_type, source_id="shared", data=b"x")
            replies = [await stub.Publish(pb.PublishRequest(event=event)) for stub in stubs]
            assert all(reply.notified for reply in replies)
            # Every worker took connections, and the stream hears the events of both.
            established = tcp_socket_inodes(port, TCP_ESTABLISHED)
            for worker in workers:
                assert process_socket_inodes(worker) & established, f"worker {worker} took no call"
            received = {(await next_notification(stream)).id for _ in replies}
            assert received == {reply.id for reply in replies}
            stream.close()
        sidecar.request_stop()
        assert await asyncio.to_thread(sidecar.wait_exit, 30) == 0
        assert not any(_alive(worker) for worker in workers)
    finally:
        for channel in channels:
            await channel.close(None)


async def test_a_dead_worker_stops_the_others(two_workers: tuple[SidecarProcess, int]) -> None:
    sidecar, _ = two_workers
    assert sidecar.pid is not None
    first, second = sidecar.worker_pids()
    os.kill(first, signal.SIGKILL)
    # The supervisor exits non-zero, so whatever runs it restarts the sidecar whole.
    assert await asyncio.to_thread(sidecar.wait_exit, 30) == 1
    assert not _alive(second)


async def test_streams_on_the_subscribe_listener_have_a_process_that_yields_the_cpu(
    kafka: KafkaBroker, shared_redis: RedisServer, topic: str, tmp_path: Path, source_type: str
) -> None:
    delivery_admin = f"127.0.0.1:{free_port()}"
    # On grpcio: the default, h2, has a test of its own below.
    async with with_delivery_process(
        kafka, shared_redis, topic, tmp_path,
        "--delivery-admin-listen", delivery_admin, "--subscribe-server", "grpcio",
    ) as sidecar:  # fmt: skip
        assert sidecar.subscribe_port is not None
        listening = tcp_socket_inodes(sidecar.subscribe_port, TCP_LISTEN)
        delivering = delivery_pid(sidecar)
        (publishing,) = set(sidecar.worker_pids()) - {delivering}
        # Every thread of the delivery process, gRPC's own included, is 5 nicer than the
        # publishing process, which keeps the niceness this test runs at.
        assert _thread_niceness(publishing) == {os.nice(0)}
        assert _thread_niceness(delivering) == {min(os.nice(0) + 5, 19)}
        assert not process_socket_inodes(publishing) & listening
        assert process_socket_inodes(publishing) & tcp_socket_inodes(sidecar.port, TCP_LISTEN)
        async with (
            DualstreamClient(sidecar.subscribe_target) as streams,
            DualstreamClient(sidecar.listen) as publisher,
        ):
            stream = streams.subscribe([(source_type, "split")])
            await stream.wait_live()
            published = await publisher.publish(EventInput("t", source_type, "split"))
            assert (await next_notification(stream)).id == published.id
            # The stream's figures are the delivery process's, on its own admin listener.
            assert await _open_streams(delivery_admin) == 1
            assert await _open_streams(f"127.0.0.1:{sidecar.admin_port}") == 0
            stream.close()
        await _both_healthy(sidecar)
        sidecar.request_stop()
        assert await asyncio.to_thread(sidecar.wait_exit, 30) == 0
        assert not _alive(delivering)


async def test_a_hung_delivery_process_fails_healthz_on_the_sidecars_admin_listener(
    kafka: KafkaBroker, shared_redis: RedisServer, topic: str, tmp_path: Path
) -> None:
    async with with_delivery_process(
        kafka, shared_redis, topic, tmp_path, "--worker-stall-timeout", "2"
    ) as sidecar:
        delivering = delivery_pid(sidecar)
        admin_port = sidecar.admin_port

        async def healthz_status(status: int) -> bool:
            return (await get(admin_port, "/healthz")).status == status

        # Polled, not asserted once: beside a CPU hog a process may answer late now and then.
        await eventually(lambda: healthz_status(200), timeout=60)
        # A stopped process neither exits nor answers: the supervisor cannot see it.
        os.kill(delivering, signal.SIGSTOP)
        try:
            await eventually(lambda: healthz_status(503), timeout=60)
            reply = await get(admin_port, "/healthz")
            assert reply.body.startswith(
                f"not alive: the delivery process (pid {delivering}) has not answered for ".encode()
            ), reply.body
            # Publishing goes on: readiness is not the hung process's to take away.
            assert (await get(admin_port, "/readyz")).status == 200
        finally:
            os.kill(delivering, signal.SIGCONT)
        await eventually(lambda: healthz_status(200), timeout=60)
        sidecar.request_stop()
        assert await asyncio.to_thread(sidecar.wait_exit, 30) == 0


async def test_the_delivery_process_can_serve_streams_with_its_own_http2(
    kafka: KafkaBroker, shared_redis: RedisServer, topic: str, tmp_path: Path, source_type: str
) -> None:
    """``--subscribe-server h2``, the default: gRPC clients subscribe, read status and check
    health as on grpcio; anything else is refused naming where to publish."""
    async with with_delivery_process(kafka, shared_redis, topic, tmp_path) as sidecar:
        async with (
            DualstreamClient(sidecar.subscribe_target) as streams,
            DualstreamClient(sidecar.listen) as publisher,
        ):
            stream = streams.subscribe([(source_type, "own-h2")])
            await stream.wait_live()
            published = [
                await publisher.publish(EventInput("t", source_type, "own-h2", data=b"%d" % n))
                for n in range(20)
            ]
            received = [(await next_notification(stream)).id for _ in published]
            assert received == [reply.id for reply in published]
            status = await streams.status()
            assert status.streams == 1
            with pytest.raises(DualstreamClientError) as refused:
                await streams.publish(EventInput("t", source_type, "own-h2"))
            assert refused.value.code == grpc.StatusCode.UNIMPLEMENTED
            assert "publish on the sidecar's main address" in refused.value.details
            stream.close()
        await _both_healthy(sidecar)
        sidecar.request_stop()
        assert await asyncio.to_thread(sidecar.wait_exit, 30) == 0
