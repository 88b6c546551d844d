"""Fixtures: real Kafka and Redis processes on free ports, and a sidecar wired to them.

One broker and one Redis serve the whole session; every test gets its own topic and channel
names, so tests cannot see each other's events. Tests that kill or stop a service ask for a
private one (``private_redis``, ``private_kafka``). A real Jaeger (``jaeger``) starts for the
session on first use; the tests that use it run last (see ``pytest_collection_modifyitems``).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import hypothesis
import pytest
import redis.asyncio as redis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer

from dualstream.settings import Settings
from dualstream.transport.server import Sidecar
from dualstream_client import DualstreamClient, Notification, Subscription
from stack.jaeger import JaegerServer
from stack.localstack import KafkaBroker, RedisServer, create_topic, free_port, free_ports

TEST_PARTITIONS = 6
# How long the first test that uses Jaeger may wait for its build, which `make test` starts in
# the background (25 minutes measured cold beside the suite, at a load average of 20-40).
JAEGER_BUILD_WAIT = 3600

# The property tests check logic, not speed: on two cores shared with a CPU hog, one example
# can take longer than Hypothesis's default deadline of 200 ms without anything being wrong.
hypothesis.settings.register_profile("shared-cores", deadline=None)
hypothesis.settings.load_profile("shared-cores")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the tests that use Jaeger last, so that building it on a fresh machine overlaps
    the rest of the suite; the first of them waits for the build, so it gets the time."""
    uses_jaeger = [item for item in items if "jaeger" in getattr(item, "fixturenames", ())]
    if not uses_jaeger:
        return
    items[:] = [item for item in items if item not in uses_jaeger] + uses_jaeger
    uses_jaeger[0].add_marker(pytest.mark.timeout(JAEGER_BUILD_WAIT))


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(
        tmp_path_factory.mktemp("kafka"), port=free_port(), controller_port=free_port()
    )
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JaegerServer]:
    """Jaeger v2 (memory storage): ``otlp_endpoint`` takes spans, ``query_url`` answers."""
    otlp_port, query_port, http_port = free_ports(3)
    with JaegerServer(
        tmp_path_factory.mktemp("jaeger"), otlp_port, query_port, otlp_http_port=http_port
    ) as server:
        yield server


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of the test's own, for tests that kill, stop or restart it."""
    server = RedisServer(tmp_path / "redis", port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def private_kafka(tmp_path: Path) -> Iterator[KafkaBroker]:
    """A broker of the test's own, with a 2-partition topic `events`, for tests that stop it."""
    broker = KafkaBroker(tmp_path / "kafka", port=free_port(), controller_port=free_port())
    broker.start()
    create_topic(broker.bootstrap, "events", partitions=2)
    yield broker
    broker.stop()


@pytest.fixture
def topic(kafka: KafkaBroker) -> str:
    name = f"events-{uuid.uuid4().hex[:12]}"
    create_topic(kafka.bootstrap, name, partitions=TEST_PARTITIONS)
    return name


@pytest.fixture
def source_type() -> str:
    """A source type no other test uses, so channels never collide."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def span_exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer(span_exporter: InMemorySpanExporter) -> Iterator[Tracer]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    yield provider.get_tracer("tests")
    provider.shutdown()


def make_settings(
    kafka_bootstrap: str, redis_url: str, topic: str, **overrides: object
) -> Settings:
    values: dict[str, object] = {
        "listen": "127.0.0.1:0",
        "admin_listen": "127.0.0.1:0",
        "kafka_bootstrap": kafka_bootstrap,
        "redis_url": redis_url,
        "kafka_topic": topic,
        "kafka_delivery_timeout": 5.0,
        # Wall-clock time, which a loaded machine eats: a stream its client just cancelled can
        # take seconds to finish there, and past the grace gRPC force-cancels it (and logs a
        # traceback the fault suite rejects). A sidecar with no call open does not wait for it.
        "shutdown_grace": 10.0,
        # Tests fire bursts of calls on a machine that may be loaded, and check what the
        # sidecar does with them; refusing them for queueing has tests of its own.
        "max_queue_delay": 30.0,
    }
    # The whole suite runs on either server of the publishing address, as `serve` would be
    # told (`DUALSTREAM_API_SERVER=grpcio make test`); the default's unless told.
    if "DUALSTREAM_API_SERVER" in os.environ:
        values["api_server"] = os.environ["DUALSTREAM_API_SERVER"]
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(kafka: KafkaBroker, shared_redis: RedisServer, topic: str) -> Settings:
    return make_settings(kafka.bootstrap, shared_redis.url, topic)


@pytest.fixture
async def sidecar(settings: Settings, tracer: Tracer) -> AsyncIterator[Sidecar]:
    async with Sidecar(settings, tracer) as running:
        assert await running.publisher.event_log.wait_ready(30)
        yield running


def target_of(sidecar: Sidecar) -> str:
    return f"127.0.0.1:{sidecar.port}"


@pytest.fixture
async def client(sidecar: Sidecar) -> AsyncIterator[DualstreamClient]:
    async with DualstreamClient(target_of(sidecar), timeout=30) as connected:
        yield connected


@pytest.fixture
async def redis_client(shared_redis: RedisServer) -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(shared_redis.url)
    yield client
    await client.aclose()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Poll ``check`` until it returns True; a TimeoutError fails the test otherwise."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.05)


async def next_notification(stream: Subscription, timeout: float = 10.0) -> Notification:
    """The stream's next message, which must be a notification."""
    message = await asyncio.wait_for(anext(stream), timeout)
    assert isinstance(message, Notification), f"expected a notification, got {message}"
    return message
