"""A v2 cursor (what a not_notified gap hands out, issue 9 item 4): its holes are replayed
before its frontier, and each cursor handed out meanwhile names what is left."""

from __future__ import annotations

from dualstream.cursor import Cursor, OffsetRange
from dualstream_client import CaughtUp, DualstreamClient, EventInput
from dualstream_client.client import Notification
from tests.test_streams import ids_of, notifications_until, take


async def test_a_resume_replays_the_cursors_holes_first_and_each_cursor_names_what_is_left(
    client: DualstreamClient, topic: str, source_type: str
) -> None:
    """A v2 cursor (what a not_notified gap hands out): the holes below its frontier are
    replayed first, in order, then what follows the frontier; a stream that breaks while
    filling them hands out cursors that still name the rest."""
    results = [
        await client.publish(EventInput("t", source_type, "x", id=f"e{i}")) for i in range(8)
    ]
    partition = results[0].partition
    at = [r.offset for r in results]
    end = {p: 0 for p in range(6)}
    end[partition] = at[6]  # e6 and e7 follow the frontier.
    holes = (
        OffsetRange(partition, at[1], at[1] + 1),
        OffsetRange(partition, at[3], at[5] + 1),
    )
    cursor = Cursor(topic, end, holes).encode()
    wanted = ["e1", "e3", "e4", "e5", "e6", "e7"]
    async with client.subscribe([(source_type, "x")], resume_cursor=cursor) as resumed:
        messages = await notifications_until(resumed, set(wanted))
    assert ids_of(messages) == wanted
    first = next(m for m in messages if isinstance(m, Notification))
    assert Cursor.decode(first.cursor, topic).holes == holes[1:]
    async with client.subscribe([(source_type, "x")], resume_cursor=first.cursor) as again:
        rest = await notifications_until(again, set(wanted[1:]))
    assert ids_of(rest) == wanted[1:]
    # A hole of other sources' events only replays nothing of this stream's.
    other = await client.publish(EventInput("t", source_type, "y", id="other"))
    foreign = Cursor(
        topic,
        {**end, other.partition: max(end[other.partition], other.offset + 1)},
        (OffsetRange(other.partition, other.offset, other.offset + 1),),
    ).encode()
    async with client.subscribe([(source_type, "x")], resume_cursor=foreign) as quiet:
        messages = await take(quiet, 1)
        while not isinstance(messages[-1], CaughtUp):
            messages += await take(quiet, 1)
    assert ids_of(messages) == ["e6", "e7"]
