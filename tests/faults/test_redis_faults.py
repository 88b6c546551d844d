"""Redis dies or stops answering under load: publishing does not notice beyond notified=false."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis.asyncio as redis

from dualstream.transport.server import Sidecar
from dualstream_client import DualstreamClient, EventInput, Gap
from stack.localstack import KafkaBroker, RedisServer
from tests.conftest import eventually, make_settings, next_notification, target_of
from tests.faults.figures import latency_summary, record
from tests.faults.load import Load
from tests.faults.verify import check_acknowledged_exactly_once_in_order

pytestmark = pytest.mark.faults


async def test_redis_killed_during_10k_publishes_loses_nothing(
    kafka: KafkaBroker, private_redis: RedisServer, topic: str, tracer: Any, source_type: str
) -> None:
    settings = make_settings(kafka.bootstrap, private_redis.url, topic, redis_timeout=0.2)
    async with Sidecar(settings, tracer) as sidecar, DualstreamClient(target_of(sidecar)) as client:
        load = Load(client, source_type, total=10_000, concurrency=32)
        marks: dict[str, float] = {}

        async def inject() -> None:
            while len(load.outcomes) < 2_000:
                await asyncio.sleep(0.005)
            private_redis.kill()
            marks["killed"] = time.monotonic()
            while len(load.outcomes) < 6_000:
                await asyncio.sleep(0.005)
            await asyncio.to_thread(private_redis.start)
            marks["restarted"] = time.monotonic()

        injector = asyncio.create_task(inject())
        outcomes = await load.run()
        await injector
        stats = sidecar.publisher.notifier.stats
        skipped, failed_notifications = stats.skipped, stats.failed

    failed = [o for o in outcomes if not o.ok]
    assert failed == [], f"{len(failed)} publishes failed: {failed[:3]}"
    before = [o.seconds for o in outcomes if o.started < marks["killed"]]
    down = [o.seconds for o in outcomes if marks["killed"] <= o.started < marks["restarted"]]
    after = [o for o in outcomes if o.started >= marks["restarted"] + 2.0]
    assert skipped > 0, "the breaker never skipped the Redis leg"
    assert any(o.notified for o in after), "notifications did not resume after Redis returned"
    found = await check_acknowledged_exactly_once_in_order(kafka.bootstrap, topic, outcomes)
    record(
        "redis_killed",
        sent=len(outcomes),
        failed_calls=len(failed),
        **found,
        notifications_failed=failed_notifications,
        notifications_skipped_by_breaker=skipped,
        latency_before=latency_summary(before),
        latency_while_redis_down=latency_summary(down),
        notified_after_restart=sum(o.notified for o in after),
    )


async def test_redis_blackholed_is_noticed_and_nothing_hangs(
    kafka: KafkaBroker, private_redis: RedisServer, topic: str, tracer: Any, source_type: str
) -> None:
    settings = make_settings(kafka.bootstrap, private_redis.url, topic, redis_timeout=0.2)
    async with Sidecar(settings, tracer) as sidecar, DualstreamClient(target_of(sidecar)) as client:
        stream = client.subscribe([(source_type, "x")])
        await stream.wait_live()
        private_redis.pause()
        paused = time.monotonic()
        try:
            while sidecar.hub.connected:
                await asyncio.sleep(0.02)
            noticed = time.monotonic() - paused
            status = await client.status()
            started = time.monotonic()
            results = [
                await asyncio.wait_for(client.publish(_event(source_type, i)), 5) for i in range(20)
            ]
            publish_seconds = (time.monotonic() - started) / 20
        finally:
            private_redis.resume()
        stream.close()
    assert noticed <= 1.0 + 1.0 + 1.0  # ping interval + ping timeout, plus scheduling slack
    assert status.state == 2  # SERVING_STATE_DEGRADED: publishing works, Redis does not
    assert status.kafka.connected
    assert not status.redis.subscriber_connected
    assert not any(r.notified for r in results)
    record(
        "redis_blackholed",
        noticed_after_s=round(noticed, 2),
        health_state="DEGRADED",
        publishes_while_blackholed=len(results),
        mean_publish_ms_while_blackholed=round(publish_seconds * 1000, 2),
    )


def _event(source_type: str, number: int) -> Any:
    return EventInput("t", source_type, "x", id=f"{source_type}-b{number}")


# Error replies on the hub's connection, from real Redis: the reproduction (a password
# appears, the subscriber connection is killed, every reconnect hears NOAUTH), and a user whose
# channel permissions are revoked (Redis kills its subscriber connection, and every SUBSCRIBE
# after that answers NOPERM, an error reply on an otherwise working connection).
async def _require_password(admin: redis.Redis) -> None:
    await admin.config_set("requirepass", "x")
    await admin.client_kill_filter(_type="pubsub")


async def _drop_password(admin: redis.Redis) -> None:
    await admin.config_set("requirepass", "")


async def _revoke_channels(admin: redis.Redis) -> None:
    await admin.acl_setuser("default", enabled=True, reset_channels=True)


async def _grant_channels(admin: redis.Redis) -> None:
    await admin.acl_setuser("default", enabled=True, channels=["*"])


REFUSALS = {
    "requirepass": (_require_password, _drop_password),
    "acl-channels": (_revoke_channels, _grant_channels),
}


@pytest.mark.parametrize("refusal", REFUSALS)
async def test_redis_refusing_the_subscriber_for_a_while_does_not_wedge_the_hub(
    kafka: KafkaBroker,
    private_redis: RedisServer,
    topic: str,
    tracer: Any,
    source_type: str,
    refusal: str,
) -> None:
    refuse, allow = REFUSALS[refusal]
    settings = make_settings(kafka.bootstrap, private_redis.url, topic)
    admin = redis.Redis.from_url(private_redis.url)  # Authenticated before any password.
    try:
        async with (
            Sidecar(settings, tracer) as sidecar,
            DualstreamClient(target_of(sidecar)) as client,
            client.subscribe([(source_type, "x")]) as stream,
        ):
            before = await client.publish(EventInput("t", source_type, "x", id="before"))
            assert (await next_notification(stream)).id == before.id
            await refuse(admin)
            await eventually(lambda: _connected_is(sidecar, False), timeout=30)
            await asyncio.sleep(5)  # Refused for a while: every reconnect hears an error reply.
            refused_status = await client.status()
            await allow(admin)
            allowed = time.monotonic()
            await eventually(lambda: _connected_is(sidecar, True), timeout=30)
            reconnected = time.monotonic() - allowed
            gap = await asyncio.wait_for(anext(stream), 30)
            # Live again: on the stream that lived through it, and on a new one.
            async with client.subscribe([(source_type, "x")]) as fresh:
                after = await _publish_notified(client, EventInput("t", source_type, "x"))
                assert (await next_notification(stream)).id == after.id
                assert (await next_notification(fresh)).id == after.id
            status = await client.status()
    finally:
        await admin.aclose()
    assert isinstance(gap, Gap)
    assert gap.reason == "redis_outage"
    assert not refused_status.redis.subscriber_connected
    assert status.redis.subscriber_connected
    assert status.state == 1  # SERVING_STATE_SERVING
    record(
        f"redis_refuses_subscriber_{refusal.replace('-', '_')}",
        refused_for_s=5,
        state_while_refused="DEGRADED" if refused_status.state == 2 else refused_status.state,
        reconnected_after_allowed_s=round(reconnected, 2),
        stream_got=f"gap ({gap.reason}), then live",
        new_subscribe="live",
    )


async def _connected_is(sidecar: Sidecar, connected: bool) -> bool:
    return sidecar.hub.connected is connected


async def _publish_notified(client: DualstreamClient, event: EventInput) -> Any:
    """Publish until one is notified: the notifier's breaker may still skip Redis briefly."""
    async with asyncio.timeout(30):
        while not (result := await client.publish(event)).notified:
            await asyncio.sleep(0.1)
    return result
