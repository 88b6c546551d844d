"""Property: whatever the interleaving, every stream sees exactly the Kafka sequence of its
sources from its starting point, once each, in per-source order — whether it started live,
resumed from a cursor, or lagged until its queue overflowed and the gap was filled from Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dualstream.transport.server import Sidecar
from dualstream_client import DualstreamClient, EventInput, Notification, Subscription
from stack.localstack import KafkaBroker, RedisServer
from tests.conftest import make_settings, target_of

SOURCES = ["a", "b", "c"]

publish_op = st.tuples(st.just("publish"), st.sampled_from(SOURCES), st.integers(1, 6))
subscribe_op = st.tuples(
    st.just("subscribe"),
    st.sets(st.sampled_from(SOURCES), min_size=1),
    st.sampled_from(["live", "resume", "lagging"]),
)
Op = tuple[str, Any, Any]
scenarios: st.SearchStrategy[list[Op]] = st.lists(
    st.one_of(publish_op, subscribe_op), min_size=3, max_size=12
)


@dataclass
class Watcher:
    """A stream under test. A lagging one is not read until the end, so its queue overflows
    and the sidecar has to fill the gap from Kafka; the others are read as things arrive."""

    sources: set[str]
    stream: Subscription
    expected: list[tuple[str, str]] = field(default_factory=list)  # (source, id)
    received: list[Notification] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    def start_reading(self) -> None:
        # A reader task, because cancelling a gRPC read (a timeout) cancels the whole call.
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.stream:
            if isinstance(message, Notification):
                self.received.append(message)

    async def drain(self, timeout: float = 20.0) -> None:
        if self.reader is None:
            self.start_reading()
        want = {event_id for _, event_id in self.expected}
        async with asyncio.timeout(timeout):
            while not want <= {n.id for n in self.received}:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # Anything more would be a duplicate or a stray.
        self.stream.close()
        assert self.reader is not None
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.reader


async def run_scenario(bootstrap: str, redis_url: str, topic: str, ops: list[Op]) -> None:
    source_type = f"p{uuid.uuid4().hex[:10]}"
    config = make_settings(bootstrap, redis_url, topic, stream_queue_size=4)
    async with (
        Sidecar(config, _tracer()) as sidecar,
        DualstreamClient(target_of(sidecar)) as client,
    ):
        pairs = [(source_type, s) for s in SOURCES]
        recorder = client.subscribe(pairs, policy="replay")
        await recorder.wait_live()
        history: list[tuple[str, str, str]] = []  # (source, id, cursor after it)
        watchers: list[Watcher] = []
        counter = 0
        for op in ops:
            if op[0] == "publish":
                _, source, count = op
                # One batch: its notifications reach the hub in a burst that overflows the
                # 4-slot stream queues, so the replay path is exercised, not just live delivery.
                ids = [f"{source}-{counter + i}" for i in range(1, count + 1)]
                counter += count
                await client.publish_batch(
                    [EventInput("t", source_type, source, id=event_id) for event_id in ids]
                )
                for event_id in ids:
                    message = await asyncio.wait_for(_next_notification(recorder), 10)
                    assert message.id == event_id
                    history.append((source, event_id, message.cursor))
                    for watcher in watchers:
                        if source in watcher.sources:
                            watcher.expected.append((source, event_id))
            else:
                _, sources, mode = op
                chosen = sorted(sources)
                resume_at = len(history) // 2 if mode == "resume" and history else None
                cursor = history[resume_at][2] if resume_at is not None else ""
                stream = client.subscribe(
                    [(source_type, s) for s in chosen], resume_cursor=cursor, policy="replay"
                )
                await stream.wait_live()
                watcher = Watcher(set(chosen), stream)
                if mode != "lagging":
                    watcher.start_reading()
                if resume_at is not None:
                    watcher.expected = [
                        (s, e) for s, e, _ in history[resume_at + 1 :] if s in watcher.sources
                    ]
                watchers.append(watcher)
        for watcher in watchers:
            await watcher.drain()
            got = [(n.source_id, n.id) for n in watcher.received]
            assert len(got) == len(set(got)), f"duplicates: {got}"
            assert sorted(got) == sorted(watcher.expected)
            for source in watcher.sources:
                in_order = [e for s, e in watcher.expected if s == source]
                assert [e for s, e in got if s == source] == in_order
        recorder.close()


async def _next_notification(stream: Subscription) -> Notification:
    while True:
        message = await anext(stream)
        if isinstance(message, Notification):
            return message


def _tracer() -> Any:
    from opentelemetry.sdk.trace import TracerProvider

    return TracerProvider().get_tracer("seam")


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=scenarios)
def test_every_stream_sees_exactly_its_kafka_sequence(
    kafka: KafkaBroker, shared_redis: RedisServer, topic: str, ops: list[Op]
) -> None:
    asyncio.run(run_scenario(kafka.bootstrap, shared_redis.url, topic, ops))
