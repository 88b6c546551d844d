"""The record of notifications that failed, the notice that announces them, and the reporter
that sends it once Redis takes commands again (against a real Redis)."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime

import pytest
import redis.asyncio as redis

from dualstream.connections import RedisAddress
from dualstream.holes import (
    HoleNotice,
    HoleRange,
    HoleRecord,
    HoleReporter,
    NoticeFilter,
    holes_channel,
)
from dualstream.notifications import Notification
from stack.localstack import RedisServer
from tests.faults.holes import publishing_user

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def notification(offset: int, partition: int = 0, source_id: str = "x") -> Notification:
    return Notification(f"e{partition}-{offset}", "t", "s", source_id, "events", partition, offset)


def test_a_notice_round_trips_with_events_and_with_ranges() -> None:
    events = HoleNotice("n1", "events", T0, events=(notification(3), notification(5, 1)))
    assert HoleNotice.from_json(events.to_json()) == events
    ranges = HoleNotice("n2", "events", T0, ranges=(HoleRange(2, 10, 20, 7),))
    assert HoleNotice.from_json(ranges.to_json()) == ranges
    assert (events.count, ranges.count) == (2, 7)


SINCE = b'"since":"2026-11-29T12:00:00+00:00"'


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"not json", "Expecting value"),
        (b"[]", "is a JSON object"),
        (b'{"id":"n","topic":"events",' + SINCE + b',"events":[]}', "ranges"),
        (b'{"id":1,"topic":"e",' + SINCE + b',"events":[],"ranges":[]}', "string id"),
        (
            b'{"id":"n","topic":"e","since":"2026-11-29T12:00:00","events":[],"ranges":[]}',
            "zoned time",
        ),
        (b'{"id":"n","topic":"e",' + SINCE + b',"events":[],"ranges":[[0,5,5,1]]}', "non-empty"),
        (b'{"id":"n","topic":"e",' + SINCE + b',"events":[],"ranges":[[0,1,true,1]]}', "integers"),
        (
            b'{"id":"n","topic":"events",' + SINCE + b',"ranges":[],"events":[{"id":"e",'
            b'"type":"t","source_type":"s","source_id":"x","topic":"other","partition":0,'
            b'"offset":1}]}',
            "its own topic",
        ),
        (b'{"id":"n","topic":"e","since":"x","events":[],"ranges":[]}', "isoformat"),
        (b"{" + b" " * (9 * 1024 * 1024) + b"}", "at most"),
    ],
)
def test_malformed_notices_are_refused(raw: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        HoleNotice.from_json(raw)


def test_the_record_keeps_notifications_then_ranges_past_its_bound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    record = HoleRecord(max_events=4)
    record.add([notification(7), notification(2, 1)], T0)
    record.add([notification(5)], T0)
    assert len(record) == 3
    [notice] = record.take()
    assert [(n.partition, n.offset) for n in notice.events] == [(0, 5), (0, 7), (1, 2)]
    assert notice.since == T0
    assert not record

    with caplog.at_level(logging.WARNING):
        record.add([notification(o) for o in (10, 11, 14)], T0)
        record.add([notification(12), notification(3, 1)], T0)  # 5 > 4: coarsened
        record.add([notification(20)], T0)
    assert "offset range per partition" in caplog.text
    [notice] = record.take()
    assert notice.events == ()
    assert notice.ranges == (HoleRange(0, 10, 21, 5), HoleRange(1, 3, 4, 1))
    assert (record.recorded, record.coarsened, record.coarsenings) == (9, 6, 1)


def test_the_record_bounds_the_bytes_it_keeps_too() -> None:
    record = HoleRecord(max_events=1000, max_bytes=1000)
    record.add([notification(o, source_id="y" * 300) for o in range(4)], T0)
    [notice] = record.take()
    assert notice.ranges == (HoleRange(0, 0, 4, 4),)


def test_what_could_not_be_sent_goes_back_before_anything_newer() -> None:
    record = HoleRecord()
    record.add([notification(1)], T0)
    taken = record.take()
    later = datetime(2026, 11, 29, 12, 1, tzinfo=UTC)
    record.add([notification(2)], later)
    record.restore(taken)
    [notice] = record.take()
    assert [n.offset for n in notice.events] == [1, 2]
    assert notice.since == T0


def test_a_hub_passes_each_notice_on_once(caplog: pytest.LogCaptureFixture) -> None:
    notices = NoticeFilter(remembered=2)
    first = HoleNotice("a", "events", T0, events=(notification(1),)).to_json()
    assert notices.fresh(first) is not None
    assert notices.fresh(first) is None
    assert notices.fresh(HoleNotice("b", "events", T0).to_json()) is not None
    assert notices.fresh(HoleNotice("c", "events", T0).to_json()) is not None
    assert notices.fresh(first) is not None  # Forgotten: the memory is bounded.
    with caplog.at_level(logging.WARNING):
        assert notices.fresh(b"") is None  # A reporter's probe: nothing to say.
        assert not caplog.text
        assert notices.fresh(b"{") is None
    assert "malformed hole notice" in caplog.text


async def test_the_reporter_announces_once_redis_takes_commands_and_repeats(
    shared_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = f"p{id(caplog)}"
    listener = redis.Redis.from_url(shared_redis.url)
    pubsub = listener.pubsub()
    await pubsub.subscribe(holes_channel(prefix))
    await pubsub.get_message(timeout=5)
    announced: list[bool] = []
    async with publishing_user(shared_redis.url) as user:
        reporter = HoleReporter(
            RedisAddress.from_url(user.url),
            prefix,
            retry_interval=0.2,
            on_redis_works=lambda: announced.append(True),
            repeat_after=(0.3, 0.6),
        )
        await user.deny_publish()
        async with reporter:
            reporter.add([notification(1), notification(2)])
            await asyncio.sleep(1.0)  # Several refused attempts.
            assert len(reporter.record) == 2
            assert not announced
            reporter.add([notification(3)])
            await user.allow_publish()
            received: list[bytes] = []
            async with asyncio.timeout(20):
                while len(received) < 3:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                    if message is not None and message["data"]:  # Empty: the probe.
                        received.append(message["data"])
            assert len(set(received)) == 1  # The same notice, sent three times.
            notice = HoleNotice.from_json(received[0])
            assert [n.offset for n in notice.events] == [1, 2, 3]
            assert announced == [True]
            assert reporter.stats.events_announced == 3
            assert "cannot announce" in caplog.text
            await user.deny_publish()
            reporter.add([notification(9)])
        # Stopped with one event it never got out: said and counted.
        assert reporter.stats.events_unannounced_at_stop == 1
        assert "stopping with 1 events" in caplog.text
    await pubsub.aclose()  # type: ignore[no-untyped-call]
    await listener.aclose()
    assert json.loads(received[0])["topic"] == "events"
