"""The admin HTTP listener: its protocol edges against a scripted status, then the real sidecar:
/readyz follows Kafka, and a Redis outage leaves it ready (DEGRADED)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace

import pytest
from opentelemetry.trace import Tracer

from dualstream.admin import PROMETHEUS_CONTENT_TYPE, AdminLimits, AdminServer, describe
from dualstream.errors import ListenError
from dualstream.settings import Settings
from dualstream.status import ServingState, SidecarStatus
from dualstream.transport.server import Sidecar
from stack.localstack import REPO_ROOT, KafkaBroker, RedisServer
from tests.conftest import eventually, make_settings


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


async def exchange(port: int, request: bytes, timeout: float = 30.0) -> Reply:
    """Send raw bytes, read the whole answer (the listener closes after one response)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(int(status_line.split(" ")[1]), headers, body)


async def get(port: int, path: str, method: str = "GET") -> Reply:
    return await exchange(port, f"{method} {path} HTTP/1.1\r\nHost: probe\r\n\r\n".encode())


def a_status(state: ServingState, **changes: object) -> SidecarStatus:
    status = SidecarStatus(
        state=state,
        kafka_connected=state is not ServingState.NOT_SERVING,
        kafka_topic="events",
        kafka_buffered_events=0,
        kafka_buffered_bytes=0,
        kafka_last_error="",
        redis_publishing=state is ServingState.SERVING,
        redis_breaker_open=False,
        redis_sent=0,
        redis_failed=0,
        redis_skipped=0,
        redis_last_error="",
        subscriber_connected=True,
        streams=0,
        routes=0,
    )
    return replace(status, **changes)  # type: ignore[arg-type]


class ScriptedStatus:
    def __init__(self) -> None:
        self.current = a_status(ServingState.SERVING)

    def __call__(self) -> SidecarStatus:
        return self.current


@pytest.fixture
def scripted() -> ScriptedStatus:
    return ScriptedStatus()


@pytest.fixture
async def admin(scripted: ScriptedStatus) -> AsyncIterator[AdminServer]:
    async with AdminServer("127.0.0.1:0", scripted, lambda: "up 1\n") as server:
        yield server


def port_of(server: AdminServer) -> int:
    assert server.port is not None
    return server.port


# ---- the protocol, against a scripted status --------------------------------------------------


async def test_the_three_paths_answer_get_with_their_content(
    admin: AdminServer, scripted: ScriptedStatus
) -> None:
    port = port_of(admin)
    alive = await get(port, "/healthz")
    assert (alive.status, alive.body) == (200, b"alive\n")
    assert alive.headers["connection"] == "close"
    ready = await get(port, "/readyz")
    assert (ready.status, ready.body) == (200, b"ready: SERVING\n")
    metrics = await get(port, "/metrics")
    assert (metrics.status, metrics.body) == (200, b"up 1\n")
    assert metrics.headers["content-type"] == PROMETHEUS_CONTENT_TYPE
    scripted.current = a_status(ServingState.NOT_SERVING, kafka_last_error="no broker\nat all")
    not_ready = await get(port, "/readyz?verbose=1")
    assert not_ready.status == 503
    assert not_ready.body == b"not ready: NOT_SERVING (Kafka not connected: no broker at all)\n"


async def test_degraded_is_ready_and_says_why(admin: AdminServer, scripted: ScriptedStatus) -> None:
    scripted.current = a_status(ServingState.DEGRADED, redis_last_error="Connection refused")
    reply = await get(port_of(admin), "/readyz")
    assert reply.status == 200
    assert reply.body.startswith(b"ready: DEGRADED (")
    assert b"Connection refused" in reply.body


async def test_head_has_the_headers_of_get_and_no_body(admin: AdminServer) -> None:
    port = port_of(admin)
    got, head = await get(port, "/readyz"), await get(port, "/readyz", "HEAD")
    assert head.status == 200
    assert head.body == b""
    assert head.headers["content-length"] == got.headers["content-length"] == str(len(got.body))


async def test_unknown_paths_are_404_and_other_methods_405_with_allow(admin: AdminServer) -> None:
    port = port_of(admin)
    assert (await get(port, "/")).status == 404
    assert (await get(port, "/dualstream.v1.EventService/Publish", "POST")).status == 404
    refused = await get(port, "/readyz", "DELETE")
    assert refused.status == 405
    assert refused.headers["allow"] == "GET, HEAD"
    posted = await exchange(port, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert posted.status == 405


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /readyz\r\n\r\n", 400),  # HTTP/0.9 style: no version
        (b"GET  /readyz HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"G(T /readyz HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /readyz HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
        (b"GET /readyz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400),
        (b"GET /readyz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", 400),
        (b"GET /readyz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /readyz HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET /readyz HTTP/1.0\r\n\r\n", 200),  # HTTP/1.0 needs no Host
        (b"GET http://pod:9464/readyz HTTP/1.1\r\nHost: pod\r\n\r\n", 200),  # absolute form
        (b"\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 200),  # one leading empty line
    ],
)
async def test_malformed_requests_get_a_precise_status(
    admin: AdminServer, request_bytes: bytes, status: int
) -> None:
    assert (await exchange(port_of(admin), request_bytes)).status == status


async def test_oversized_heads_are_refused(scripted: ScriptedStatus) -> None:
    limits = AdminLimits(max_head_bytes=1024, max_headers=8)
    async with AdminServer("127.0.0.1:0", scripted, limits=limits) as server:
        port = port_of(server)
        long_target = b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        assert (await exchange(port, long_target)).status == 414
        long_header = b"GET /readyz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 2000 + b"\r\n\r\n"
        assert (await exchange(port, long_header)).status == 431
        many = b"".join(b"X-%d: 1\r\n" % n for n in range(9))
        assert (
            await exchange(port, b"GET /readyz HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
        ).status == 431
        # Many short lines that add up past the head limit.
        lines = b"".join(b"X-%d: %s\r\n" % (n, b"v" * 150) for n in range(7))
        assert (
            await exchange(port, b"GET /readyz HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n")
        ).status == 431


async def test_a_request_head_not_finished_in_time_gets_408(scripted: ScriptedStatus) -> None:
    limits = AdminLimits(read_timeout=0.3)
    async with AdminServer("127.0.0.1:0", scripted, limits=limits) as server:
        reply = await exchange(port_of(server), b"GET /readyz HTTP/1.1\r\nHost: x\r\n")
        assert reply.status == 408


async def test_connections_beyond_the_limit_are_answered_503(scripted: ScriptedStatus) -> None:
    limits = AdminLimits(max_connections=2, read_timeout=60)
    async with AdminServer("127.0.0.1:0", scripted, limits=limits) as server:
        port = port_of(server)
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        try:
            # The listener must have accepted both idle connections before the third arrives.
            await eventually(lambda: _true(len(server._connections) == 2), timeout=30)
            assert (await get(port, "/healthz")).status == 503
        finally:
            for _, writer in idle:
                writer.close()
                await writer.wait_closed()
        await eventually(lambda: _true(not server._connections), timeout=30)
        assert (await get(port, "/healthz")).status == 200


async def _true(value: bool) -> bool:
    return value


async def test_stop_ends_open_connections_and_start_stop_are_idempotent(
    scripted: ScriptedStatus,
) -> None:
    server = AdminServer("127.0.0.1:0", scripted, limits=AdminLimits(read_timeout=60))
    await server.start()
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
    await eventually(lambda: _true(len(server._connections) == 1), timeout=30)
    await asyncio.wait_for(server.stop(), 30)
    await server.stop()
    assert await asyncio.wait_for(reader.read(), 30) == b""
    writer.close()
    await writer.wait_closed()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port_of(server))


async def test_a_failing_metrics_hook_answers_500_and_leaves_the_probes_alone(
    scripted: ScriptedStatus,
) -> None:
    def broken() -> str:
        raise RuntimeError("exporter bug")

    async with AdminServer("127.0.0.1:0", scripted, broken) as server:
        port = port_of(server)
        assert (await get(port, "/metrics")).status == 500
        assert (await get(port, "/readyz")).status == 200


async def test_healthz_fails_while_the_liveness_hook_names_a_hung_process(
    scripted: ScriptedStatus,
) -> None:
    problem: list[str] = []
    async with AdminServer(
        "127.0.0.1:0", scripted, liveness=lambda: problem[0] if problem else None
    ) as server:
        port = port_of(server)
        assert (await get(port, "/healthz")).status == 200
        problem.append("the delivery process (pid 7) has not answered for 31 s")
        hung = await get(port, "/healthz")
        assert (hung.status, hung.body) == (
            503,
            b"not alive: the delivery process (pid 7) has not answered for 31 s\n",
        )
        # Readiness is about publishing, which the hung process does not do.
        assert (await get(port, "/readyz")).status == 200


async def test_a_taken_port_is_a_listen_error_naming_the_address(scripted: ScriptedStatus) -> None:
    with taken_port() as port:
        server = AdminServer(f"127.0.0.1:{port}", scripted)
        with pytest.raises(ListenError, match=f"127.0.0.1:{port}"):
            await server.start()
        assert not server.started


def test_describe_names_the_leg_at_fault() -> None:
    assert describe(a_status(ServingState.SERVING)) == "SERVING"
    draining = a_status(ServingState.NOT_SERVING, kafka_connected=True)
    assert describe(draining) == "NOT_SERVING (draining)"
    unsubscribed = a_status(
        ServingState.DEGRADED, redis_publishing=True, subscriber_connected=False
    )
    assert "Redis subscriber not connected" in describe(unsubscribed)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("9464", "not host:port"),
        ("127.0.0.1:http", "not host:port"),
        ("127.0.0.1:70000", "not host:port"),
        ("127.0.0.1:50051", "must be different"),
    ],
)
def test_admin_listen_is_checked_at_start_up(value: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Settings(admin_listen=value)


def test_admin_listen_forms() -> None:
    assert Settings(admin_listen="").admin_listen == ""
    assert Settings(admin_listen="[::]:9464").admin_listen == "[::]:9464"
    assert Settings.load({"DUALSTREAM_ADMIN_LISTEN": ""}).admin_listen == ""


@pytest.fixture
def taken_port_fixture() -> Iterator[int]:
    with taken_port() as port:
        yield port


class taken_port:  # noqa: N801 - used as a context manager, like a function
    """A loopback port held by a listening socket for the duration of the ``with``."""

    def __enter__(self) -> int:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        port: int = self.sock.getsockname()[1]
        return port

    def __exit__(self, *exc_info: object) -> None:
        self.sock.close()


# ---- against the real sidecar ----------------------------------------------------------------


async def test_a_serving_sidecar_is_alive_ready_and_serves_an_empty_exposition(
    sidecar: Sidecar,
) -> None:
    port = sidecar.admin_port
    assert port is not None
    assert (await get(port, "/healthz")).status == 200
    assert (await get(port, "/readyz")).status == 200
    # The hub's Redis connection is made in the background: DEGRADED (and ready) until then.
    await eventually(status_is(sidecar, 200, b"ready: SERVING\n"), timeout=30)
    metrics = await get(port, "/metrics")
    assert metrics.status == 200
    # The gRPC API is not on this port.
    assert (await get(port, "/grpc.health.v1.Health/Check", "POST")).status == 404


async def readyz(sidecar: Sidecar) -> Reply:
    assert sidecar.admin_port is not None
    return await get(sidecar.admin_port, "/readyz")


def status_is(sidecar: Sidecar, code: int, text: bytes = b"") -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        reply = await readyz(sidecar)
        return reply.status == code and text in reply.body

    return check


async def test_readyz_follows_kafka(
    private_kafka: KafkaBroker, shared_redis: RedisServer, tracer: Tracer
) -> None:
    settings = make_settings(private_kafka.bootstrap, shared_redis.url, "events")
    await asyncio.to_thread(private_kafka.stop)
    async with Sidecar(settings, tracer) as sidecar:
        reply = await readyz(sidecar)
        assert reply.status == 503
        assert reply.body.startswith(b"not ready: NOT_SERVING (Kafka not connected")
        assert (await get(sidecar.admin_port or 0, "/healthz")).status == 200
        await asyncio.to_thread(private_kafka.start)
        await eventually(status_is(sidecar, 200, b"ready: SERVING"), timeout=60)
        # A broker that goes away unreadies the sidecar, and its return readies it again.
        await asyncio.to_thread(private_kafka.stop)
        await eventually(status_is(sidecar, 503, b"not ready: NOT_SERVING (Kafka"), timeout=60)
        assert (await get(sidecar.admin_port or 0, "/healthz")).status == 200
        await asyncio.to_thread(private_kafka.start)
        await eventually(status_is(sidecar, 200, b"ready: SERVING"), timeout=60)


async def test_redis_down_is_degraded_and_still_ready(
    kafka: KafkaBroker, private_redis: RedisServer, topic: str, tracer: Tracer
) -> None:
    settings = make_settings(kafka.bootstrap, private_redis.url, topic, redis_timeout=0.2)
    async with Sidecar(settings, tracer) as sidecar:
        assert await sidecar.publisher.event_log.wait_ready(30)
        await eventually(status_is(sidecar, 200, b"ready: SERVING"), timeout=30)
        await asyncio.to_thread(private_redis.kill)
        # The hub's PING notices within seconds; readiness must stay 200 all along.
        await eventually(status_is(sidecar, 200, b"ready: DEGRADED"), timeout=30)
        assert (await readyz(sidecar)).status == 200


async def test_readyz_is_503_while_draining(sidecar: Sidecar) -> None:
    port = sidecar.admin_port
    assert port is not None
    sidecar.draining = True  # What stop() sets before it drains calls for shutdown_grace.
    reply = await get(port, "/readyz")
    assert reply.status == 503
    assert reply.body == b"not ready: NOT_SERVING (draining)\n"
    sidecar.draining = False


@pytest.mark.parametrize(
    ("setting", "error"), [("admin_listen", "admin listener"), ("listen", "gRPC API")]
)
async def test_a_taken_port_fails_start_up_and_leaves_nothing_running(
    settings: Settings, tracer: Tracer, taken_port_fixture: int, setting: str, error: str
) -> None:
    address: dict[str, object] = {setting: f"127.0.0.1:{taken_port_fixture}"}
    busy = replace(settings, **address)  # type: ignore[arg-type]
    tasks_before = asyncio.all_tasks()
    sidecar = Sidecar(busy, tracer)
    with pytest.raises(ListenError, match=error):
        await sidecar.start()
    assert sidecar.admin is not None
    assert not sidecar.admin.started
    assert not sidecar.publisher.started
    assert not sidecar.publisher.event_log.started
    assert not sidecar.publisher.notifier.started
    assert not sidecar.reader.started
    assert not sidecar.hub.started
    # Nothing it started still runs: no producer, probe, hub or health task left behind.
    assert asyncio.all_tasks() - tasks_before == set()


def test_serve_with_a_taken_admin_port_exits_1_with_one_clear_line(taken_port_fixture: int) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dualstream.cli",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            f"127.0.0.1:{taken_port_fixture}",
            "--kafka-bootstrap",
            "127.0.0.1:1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        check=False,
    )
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    address = f"127.0.0.1:{taken_port_fixture}"
    assert last_line.startswith(
        f"dualstream: cannot start: the admin listener cannot listen on {address}"
    )
    assert "Traceback" not in result.stderr
