"""The check every secured-connection test makes: through the sidecar, events published are
replayed from Kafka (the reader's admin client and consumers), and later ones arrive live
(the notifier's PUBLISH and the hub's SUBSCRIBE in Redis), each with its payload (fetched
from Kafka by the reader)."""

from __future__ import annotations

from opentelemetry.trace import Tracer

from dualstream.settings import Settings
from dualstream.transport.server import Sidecar
from dualstream_client import CaughtUp, DualstreamClient, EventInput
from tests.conftest import next_notification, target_of

TIMEOUT = 60.0


async def assert_publish_replay_and_live(sidecar: Sidecar, source_type: str) -> None:
    assert await sidecar.publisher.event_log.wait_ready(TIMEOUT), "Kafka never connected"
    async with DualstreamClient(target_of(sidecar), timeout=TIMEOUT) as client:
        first = await client.publish(EventInput("t", source_type, "x", data=b"before"))
        async with client.subscribe(
            [(source_type, "x")], start_earliest=True, include_data=True
        ) as stream:
            replayed = await next_notification(stream, TIMEOUT)
            caught_up = await anext(stream)
            assert isinstance(caught_up, CaughtUp), caught_up
            second = await client.publish(EventInput("t", source_type, "x", data=b"after"))
            live = await next_notification(stream, TIMEOUT)
    assert (replayed.id, replayed.replayed) == (first.id, True)
    assert replayed.event is not None
    assert replayed.event.data == b"before"
    assert second.notified, "the notification did not reach Redis"
    assert (live.id, live.replayed) == (second.id, False)
    assert live.event is not None
    assert live.event.data == b"after"


async def assert_round_trip(settings: Settings, tracer: Tracer, source_type: str) -> None:
    """``assert_publish_replay_and_live`` on a sidecar of its own with ``settings``."""
    async with Sidecar(settings, tracer) as sidecar:
        await assert_publish_replay_and_live(sidecar, source_type)
