"""Notifications that fail while streams go on receiving others (issue 9, item 4).

An event whose notification failed (``notified=false``) and a later event of the same partition
that was delivered live: the later delivery moves the stream's frontier past the earlier one.
Before the sidecar announced such holes, every later cursor claimed the event and no gap was
ever sent. Now every stream open across the episode gets it: GAP a gap whose cursor replays
exactly the hole, REPLAY the event itself from Kafka, CLOSE the end with that cursor.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import pytest

from dualstream.holes import HoleRecord
from dualstream.transport.server import Sidecar
from dualstream_client import (
    CaughtUp,
    DualstreamClient,
    EventInput,
    Gap,
    Notification,
    StreamMessage,
    Subscription,
    UnavailableError,
)
from dualstream_client.client import PublishResult
from stack.localstack import KafkaBroker, RedisServer
from tests.conftest import make_settings, next_notification, target_of
from tests.faults.figures import record
from tests.faults.holes import (
    PublishingUser,
    cursor_in,
    cursor_replays,
    publish_until_notified,
    publishing_user,
)
from tests.test_streams import ids_of, take

pytestmark = pytest.mark.faults
# Events the episode's streams read before their readers started.
READ_BEFORE = ("first", "later")


async def read_all(stream: Subscription, into: list[StreamMessage | BaseException]) -> None:
    """Read the stream until it ends, keeping its messages and the error it ended with."""
    try:
        async for message in stream:
            into.append(message)
    except Exception as exc:
        into.append(exc)


async def wait_for(check: Any, what: str, timeout: float = 60.0, state: Any = None) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}: {state}") from None


async def resume_until_caught_up(
    client: DualstreamClient, sources: list[tuple[str, str]], cursor: str
) -> list[StreamMessage]:
    async with client.subscribe(sources, resume_cursor=cursor) as resumed:
        messages = await take(resumed, 1, timeout=60)
        while not isinstance(messages[-1], CaughtUp):
            messages += await take(resumed, 1, timeout=60)
    return messages


@dataclass
class Episode:
    """What was published around a hole, and what each stream received."""

    published: list[PublishResult]
    skipped_by_breaker: int
    told_after_s: float
    announced: int
    received: dict[str, list[StreamMessage | BaseException]]
    replayed_from_gap_cursor: list[str]

    @property
    def unnotified(self) -> list[PublishResult]:
        return [r for r in self.published if not r.notified]


async def test_an_event_not_notified_behind_a_live_delivery_is_never_skipped(
    kafka: KafkaBroker, shared_redis: RedisServer, topic: str, tracer: Any, source_type: str
) -> None:
    """Two sidecars: P publishes as an ACL user that loses ``publish`` for a while; the
    streams are on S. Events published through P meanwhile are not notified; one published
    through S after them is delivered live, so every stream's frontier passes them. Then P's
    Redis leg works again and it announces them."""
    async with publishing_user(shared_redis.url) as user:
        # A generous Redis timeout: on the loaded machine no notification may fail by chance.
        p_settings = make_settings(kafka.bootstrap, user.url, topic, redis_timeout=5.0)
        s_settings = make_settings(kafka.bootstrap, shared_redis.url, topic, redis_timeout=5.0)
        async with (
            Sidecar(p_settings, tracer) as p_sidecar,
            Sidecar(s_settings, tracer) as s_sidecar,
            DualstreamClient(target_of(p_sidecar), timeout=60) as p_client,
            DualstreamClient(target_of(s_sidecar), timeout=60) as s_client,
        ):
            episode = await _episode(p_sidecar, p_client, s_client, user, topic, source_type)
    published, unnotified = episode.published, episode.unnotified
    gap_messages = _messages(episode.received["gap"])
    gaps = [m for m in gap_messages if isinstance(m, Gap)]
    _check_gap_stream(gap_messages, published, topic)
    assert len(gaps) == 1  # One outage, one notice: the reporter probes before taking.
    assert sum(g.missed for g in gaps) == len(unnotified)
    # The first gap's cursor is a v2 one: it names the hole below the frontier.
    assert gaps[0].cursor.startswith("v2.")
    wanted = [r.id for r in published if cursor_replays(gaps[0].cursor, topic, *_at(r))]
    assert episode.replayed_from_gap_cursor == wanted
    assert {r.id for r in unnotified} <= set(wanted)
    assert "later" not in wanted  # Delivered before the gap: not repeated.

    replay_messages = _messages(episode.received["replay"])
    assert sorted(ids_of(replay_messages)) == sorted(
        r.id for r in published if r.id not in READ_BEFORE
    )
    filled = {m.id for m in replay_messages if isinstance(m, Notification) and m.replayed}
    assert filled == {r.id for r in unnotified}
    assert not any(isinstance(m, Gap) for m in replay_messages)

    close_end = episode.received["close"][-1]
    assert isinstance(close_end, UnavailableError), close_end
    close_cursor = cursor_in(str(close_end))
    close_delivered = {*ids_of(_messages(episode.received["close"])), *READ_BEFORE}
    for r in published:
        assert r.id in close_delivered or cursor_replays(close_cursor, topic, *_at(r)), r.id
    assert {r.id for r in unnotified} <= {
        r.id for r in published if cursor_replays(close_cursor, topic, *_at(r))
    }

    resumed_messages = _messages(episode.received["resumed"])
    assert not any(isinstance(m, Gap) for m in resumed_messages)
    assert ids_of(resumed_messages) == [r.id for r in published[1:]]

    assert episode.announced == len(unnotified)
    record(
        "notification_holes",
        events_not_notified=len(unnotified),
        of_which_the_breaker_skipped=episode.skipped_by_breaker,
        events_announced=episode.announced,
        told_after_redis_back_s=round(episode.told_after_s, 2),
        gap_stream={"gaps": len(gaps), "missed": sum(g.missed for g in gaps)},
        replayed_from_gap_cursor=len(episode.replayed_from_gap_cursor),
        replay_stream_filled=len(filled),
        close_stream_ended="UNAVAILABLE, its cursor replays the hole",
        resumed_stream_gaps=0,
    )


async def _episode(
    p_sidecar: Sidecar,
    p_client: DualstreamClient,
    s_client: DualstreamClient,
    user: PublishingUser,
    topic: str,
    source_type: str,
) -> Episode:
    sources = [(source_type, "x")]
    policies = ("gap", "replay", "close")
    streams = {policy: s_client.subscribe(sources, policy=policy) for policy in policies}
    for stream in streams.values():
        await stream.wait_live()
    first = await s_client.publish(EventInput("t", source_type, "x", id="first"))
    for stream in streams.values():
        assert (await next_notification(stream, timeout=30)).id == first.id
    before_hole = streams["gap"].cursor

    await user.deny_publish()
    # Three refused (the breaker opens), then one the breaker skips.
    holes = [
        await p_client.publish(EventInput("t", source_type, "x", id=f"hole{i}")) for i in range(4)
    ]
    assert p_sidecar.publisher.notifier.stats.skipped >= 1
    later = await s_client.publish(EventInput("t", source_type, "x", id="later"))
    assert later.notified
    for stream in streams.values():  # Every frontier is past the holes now.
        assert (await next_notification(stream, timeout=30)).id == later.id
    await user.allow_publish()
    allowed_at = time.monotonic()
    afters = await publish_until_notified(p_client, source_type, "x", "after")
    # Refused by Redis, and skipped by the open breaker until Redis took a notice.
    skipped = p_sidecar.publisher.notifier.stats.skipped
    published = [first, *holes, later, *afters]
    unnotified = [r for r in published if not r.notified]
    assert not any(r.notified for r in holes)

    received: dict[str, list[StreamMessage | BaseException]] = {p: [] for p in policies}
    readers = [asyncio.create_task(read_all(streams[p], received[p])) for p in policies]
    # A stream resumed from before the hole: its replay covers it, so the notice that comes
    # later must add nothing.
    resumed = s_client.subscribe(sources, resume_cursor=before_hole, policy="gap")
    await resumed.wait_live()
    received["resumed"] = []
    readers.append(asyncio.create_task(read_all(resumed, received["resumed"])))

    def gap_told() -> bool:
        gaps = [m for m in received["gap"] if isinstance(m, Gap)]
        return all(any(cursor_replays(g.cursor, topic, *_at(r)) for g in gaps) for r in unnotified)

    def have_all(name: str) -> bool:
        wanted = {r.id for r in published if r.id not in READ_BEFORE}
        return wanted <= set(ids_of(_messages(received[name])) + list(READ_BEFORE))

    await wait_for(gap_told, "the GAP stream's gap", state=received["gap"])
    told_after = time.monotonic() - allowed_at
    await wait_for(lambda: have_all("replay"), "the REPLAY fill", state=received["replay"])
    await wait_for(lambda: have_all("resumed"), "the resumed replay", state=received["resumed"])
    await wait_for(
        lambda: bool(received["close"]) and isinstance(received["close"][-1], Exception),
        "the CLOSE stream's end",
        state=received["close"],
    )
    reporter = p_sidecar.publisher.notifier.holes
    await wait_for(lambda: reporter.stats.notices_sent >= 3, "the notice's repeats")
    await asyncio.sleep(0.5)  # Anything more would be a duplicate or a stray gap.
    for stream in [*streams.values(), resumed]:
        stream.close()
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    first_gap = next(m for m in received["gap"] if isinstance(m, Gap))
    replayed = ids_of(await resume_until_caught_up(s_client, sources, first_gap.cursor))
    return Episode(
        published,
        skipped,
        told_after,
        reporter.stats.events_announced,
        received,
        replayed,
    )


def _check_gap_stream(
    messages: list[StreamMessage], published: list[PublishResult], topic: str
) -> None:
    """Everything notified was delivered; each event not notified is replayed by a
    not_notified gap's cursor, which replays nothing the stream delivered before it."""
    gaps = [m for m in messages if isinstance(m, Gap)]
    assert {g.reason for g in gaps} == {"not_notified"}
    assert sorted(ids_of(messages)) == sorted(
        r.id for r in published if r.notified and r.id not in READ_BEFORE
    )
    for gap in gaps:
        delivered_before = {*ids_of(messages[: messages.index(gap)]), *READ_BEFORE}
        for r in published:
            if r.id in delivered_before:
                assert not cursor_replays(gap.cursor, topic, *_at(r)), r.id


def _at(result: PublishResult) -> tuple[int, int]:
    return result.partition, result.offset


def _messages(items: list[StreamMessage | BaseException]) -> list[StreamMessage]:
    return [m for m in items if not isinstance(m, BaseException)]


@pytest.mark.parametrize("policy", ["gap", "replay", "close"])
async def test_a_redis_timeout_behind_a_live_delivery_is_never_skipped(
    kafka: KafkaBroker,
    private_redis: RedisServer,
    topic: str,
    tracer: Any,
    source_type: str,
    policy: str,
) -> None:
    """Redis stops answering for less than the hub's ping timeout: the publish times out, the
    next one is notified and delivered live. The event is delivered, or a gap's (or the
    close's) cursor replays it. (The timed-out PUBLISH may still reach Redis once it wakes,
    so the event may also arrive live.)"""
    sources = [(source_type, "x")]
    settings = make_settings(kafka.bootstrap, private_redis.url, topic, redis_timeout=0.25)
    async with (
        Sidecar(settings, tracer) as sidecar,
        DualstreamClient(target_of(sidecar), timeout=60) as client,
        client.subscribe(sources, policy=policy) as stream,
    ):
        first = await client.publish(EventInput("t", source_type, "x", id="first"))
        assert (await next_notification(stream, timeout=30)).id == first.id
        published: list[PublishResult] = [first]
        for attempt in range(20):
            private_redis.pause()
            try:
                result = await client.publish(EventInput("t", source_type, "x", id=f"t{attempt}"))
            finally:
                private_redis.resume()
            published.append(result)
            if not result.notified:
                break
        timed_out = [r for r in published if not r.notified]
        assert timed_out, "no publish timed out while Redis was stopped"
        published += await publish_until_notified(client, source_type, "x", "after")
        received: list[StreamMessage | BaseException] = []
        reader = asyncio.create_task(read_all(stream, received))

        def accounted() -> bool:
            messages = _messages(received)
            delivered = {first.id, *ids_of(messages)}
            cursors = [m.cursor for m in messages if isinstance(m, Gap)]
            if received and isinstance(received[-1], Exception):
                cursors.append(cursor_in(str(received[-1])))
            return all(
                r.id in delivered
                or any(cursor_replays(c, topic, r.partition, r.offset) for c in cursors)
                for r in published
            )

        await wait_for(
            accounted,
            "every event accounted for",
            state=(
                published,
                received,
                sidecar.publisher.notifier.holes.stats,
                sidecar.hub.reconnects,
            ),
        )
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    if policy == "replay":
        assert not any(isinstance(m, Gap) for m in _messages(received))
    if policy == "close" and sidecar.hub.reconnects == 0:
        assert isinstance(received[-1], UnavailableError)


async def test_past_its_bound_the_record_keeps_ranges_and_streams_still_get_everything(
    kafka: KafkaBroker, shared_redis: RedisServer, topic: str, tracer: Any, source_type: str
) -> None:
    """More failed notifications than the record keeps: it coarsens to one offset range per
    partition; a GAP stream gets a gap (count unknown) whose cursor replays the range, a
    REPLAY stream reads the range from Kafka."""
    sources = [(source_type, "x")]
    async with publishing_user(shared_redis.url) as user:
        settings = make_settings(kafka.bootstrap, user.url, topic, redis_timeout=5.0)
        async with (
            Sidecar(settings, tracer) as sidecar,
            DualstreamClient(target_of(sidecar), timeout=60) as client,
        ):
            reporter = sidecar.publisher.notifier.holes
            reporter.record = HoleRecord(max_events=5)
            gap_stream = client.subscribe(sources, policy="gap")
            replay_stream = client.subscribe(sources, policy="replay")
            await gap_stream.wait_live()
            await replay_stream.wait_live()
            first = await client.publish(EventInput("t", source_type, "x", id="first"))
            await user.deny_publish()
            holes = [
                (
                    await client.publish_batch(
                        [EventInput("t", source_type, "x", id=f"h{i}-{j}") for j in range(5)]
                    )
                )
                for i in range(4)
            ]
            await user.allow_publish()
            afters = await publish_until_notified(client, source_type, "x", "after")
            hole_results = [item.published for batch in holes for item in batch]
            assert all(r is not None and not r.notified for r in hole_results)
            published = [first, *[r for r in hole_results if r is not None], *afters]
            gap_received: list[StreamMessage | BaseException] = []
            replay_received: list[StreamMessage | BaseException] = []
            readers = [
                asyncio.create_task(read_all(gap_stream, gap_received)),
                asyncio.create_task(read_all(replay_stream, replay_received)),
            ]
            await wait_for(lambda: any(isinstance(m, Gap) for m in gap_received), "the coarse gap")
            await wait_for(
                lambda: {r.id for r in published} <= set(ids_of(_messages(replay_received))),
                "the REPLAY stream's fill",
            )
            await asyncio.sleep(0.3)
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            coarsened = reporter.record.coarsened
            gap = next(m for m in gap_received if isinstance(m, Gap))
            # The gap's cursor replays the range.
            replayed = ids_of(await resume_until_caught_up(client, sources, gap.cursor))
    assert (gap.reason, gap.missed) == ("not_notified", 0)
    hole_ids = {r.id for r in published if r.id.startswith("h")}
    assert hole_ids <= set(replayed)
    assert sorted(ids_of(_messages(replay_received))) == sorted(r.id for r in published)
    assert coarsened == len([r for r in published if not r.notified])


async def test_a_replay_stream_that_cannot_read_kafka_gaps_instead(
    private_kafka: KafkaBroker, shared_redis: RedisServer, tracer: Any, source_type: str
) -> None:
    """The notice comes while Kafka is down: a REPLAY stream cannot fill the hole, and ending
    the stream would leave its client a cursor that claims it; it sends a not_notified gap
    whose cursor replays it instead, and goes on."""
    sources = [(source_type, "x")]
    async with publishing_user(shared_redis.url) as user:
        p_settings = make_settings(private_kafka.bootstrap, user.url, "events", redis_timeout=5.0)
        s_settings = make_settings(
            private_kafka.bootstrap, shared_redis.url, "events", redis_timeout=5.0
        )
        async with (
            Sidecar(p_settings, tracer) as p_sidecar,
            Sidecar(s_settings, tracer) as s_sidecar,
            DualstreamClient(target_of(p_sidecar), timeout=60) as p_client,
            DualstreamClient(target_of(s_sidecar), timeout=60) as s_client,
            s_client.subscribe(sources, policy="replay") as stream,
        ):
            await user.deny_publish()
            hole = await p_client.publish(EventInput("t", source_type, "x", id="hole"))
            later = await s_client.publish(EventInput("t", source_type, "x", id="later"))
            assert (await next_notification(stream, timeout=30)).id == later.id
            await asyncio.to_thread(private_kafka.stop)
            await user.allow_publish()
            gap = await asyncio.wait_for(anext(stream), 120)
            assert isinstance(gap, Gap), gap
            assert (gap.reason, gap.missed) == ("not_notified", 1)
            assert cursor_replays(gap.cursor, "events", hole.partition, hole.offset)
            assert not cursor_replays(gap.cursor, "events", later.partition, later.offset)
            await asyncio.to_thread(private_kafka.start)
            assert await s_sidecar.publisher.event_log.wait_ready(120)
            replayed = ids_of(await resume_until_caught_up(s_client, sources, gap.cursor))
    assert replayed == ["hole"]
