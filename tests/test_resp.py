"""dualstream's RESP2 reader and the notifier's connection, against bytes and a scripted peer:
every reply type, frames split at every byte, error replies, RESP3 frames, malformed and
oversized frames, a peer that closes mid-frame or stops answering."""

from __future__ import annotations

import asyncio

import pytest

from dualstream.connections import RedisAddress
from dualstream.notifications import Notification
from dualstream.redis_notifier import RedisNotifier
from dualstream.resp import (
    MAX_BULK_BYTES,
    MAX_LINE_BYTES,
    MAX_NESTING,
    Reply,
    ReplyLines,
    RespError,
    RespProtocolError,
    encode_command,
    one_line_reply,
    read_reply,
)
from stack.localstack import free_port
from tests.scripted_redis import ScriptedRedis, array, bulk

# One of each RESP2 reply, as Redis sends them, and what each reads as.
REPLIES: list[tuple[bytes, Reply]] = [
    (b"+OK\r\n", "OK"),
    (b":-42\r\n", -42),
    (bulk("hello\r\nworld"), b"hello\r\nworld"),
    (b"$0\r\n\r\n", b""),
    (b"$-1\r\n", None),
    (b"*-1\r\n", None),
    (b"*0\r\n", []),
    (
        array(bulk("message"), bulk("events:user:x"), bulk('{"id":"1"}')),
        [b"message", b"events:user:x", b'{"id":"1"}'],
    ),
    (array(array(b":1\r\n", b"+two\r\n"), b"$-1\r\n"), [[1, "two"], None]),
]


def reader_of(*chunks: bytes, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    for chunk in chunks:
        reader.feed_data(chunk)
    if eof:
        reader.feed_eof()
    return reader


async def read_all(reader: asyncio.StreamReader, count: int) -> list[Reply]:
    return [await read_reply(reader) for _ in range(count)]


@pytest.mark.parametrize(("raw", "expected"), REPLIES)
async def test_every_resp2_reply_type(raw: bytes, expected: Reply) -> None:
    assert await read_reply(reader_of(raw)) == expected


async def test_replies_split_at_every_byte_read_the_same() -> None:
    stream = b"".join(raw for raw, _ in REPLIES)
    expected = [value for _, value in REPLIES]
    for cut in range(1, len(stream)):
        assert await read_all(reader_of(stream[:cut], stream[cut:]), len(REPLIES)) == expected
    # And one byte at a time, arriving while the reader waits.
    reader = asyncio.StreamReader()
    reading = asyncio.create_task(read_all(reader, len(REPLIES)))
    for byte in stream:
        reader.feed_data(bytes([byte]))
        await asyncio.sleep(0)
    assert await reading == expected


async def test_an_error_reply_raises_with_its_text() -> None:
    reader = reader_of(b"-NOAUTH Authentication required.\r\n+OK\r\n")
    with pytest.raises(RespError, match="NOAUTH Authentication required"):
        await read_reply(reader)
    assert await read_reply(reader) == "OK"  # The stream stays in step after an error reply.


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        (b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nx\r\n", "push"),
        (b"%1\r\n+key\r\n:1\r\n", "map"),
        (b"~1\r\n:1\r\n", "set"),
        (b"_\r\n", "null"),
        (b"#t\r\n", "boolean"),
        (b",1.5\r\n", "double"),
    ],
)
async def test_resp3_frames_are_refused_by_name(raw: bytes, name: str) -> None:
    with pytest.raises(RespProtocolError, match=f"RESP3 {name}"):
        await read_reply(reader_of(raw))


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"$abc\r\n", "not an integer"),
        (b":1.5\r\n", "not an integer"),
        (b"$3\r\nabcd\r\n", "longer than its declared length"),
        (b"$-2\r\n", "length -2"),
        (b"$%d\r\n" % (MAX_BULK_BYTES + 1), "the limit"),
        (b"*99999999999\r\n", "the limit"),
        (b"*1\r\n" * (MAX_NESTING + 1) + b":1\r\n", "nested deeper"),
        (b"hello\r\n", "unknown reply type"),
        (b"+" + b"x" * 200_000 + b"\r\n", "longer than the reader's limit"),
    ],
)
async def test_malformed_and_oversized_frames_are_protocol_errors(raw: bytes, problem: str) -> None:
    with pytest.raises(RespProtocolError, match=problem):
        await read_reply(reader_of(raw))


@pytest.mark.parametrize("cut", [1, 3, 5, 12])
async def test_a_stream_ending_inside_a_frame_is_an_incomplete_read(cut: int) -> None:
    frame = array(bulk("message"), bulk("chan"))
    with pytest.raises(asyncio.IncompleteReadError):
        await read_reply(reader_of(frame[:cut]))


def test_reply_lines_split_at_every_byte_give_the_same_lines() -> None:
    """What the notifier reads: one-line replies, in chunks cut anywhere (inside a CRLF too)."""
    stream = b":1\r\n:22\r\n+OK\r\n-ERR no\r\n:0\r\n"
    expected = [b":1", b":22", b"+OK", b"-ERR no", b":0"]
    for cut in range(len(stream) + 1):
        lines = ReplyLines()
        assert lines.feed(stream[:cut]) + lines.feed(stream[cut:]) == expected
    lines = ReplyLines()
    assert [line for byte in stream for line in lines.feed(bytes([byte]))] == expected


def test_a_reply_line_past_the_bound_is_a_protocol_error() -> None:
    lines = ReplyLines()
    assert lines.feed(b":" + b"1" * (MAX_LINE_BYTES - 1)) == []
    with pytest.raises(RespProtocolError, match="longer than"):
        lines.feed(b"1")


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b"$5", "several lines"),
        (b"*2", "several lines"),
        (b">2", "RESP3 push"),
        (b"garbage", "unknown reply type"),
        (b":x", "not an integer"),
    ],
)
def test_one_line_replies_refuse_what_is_not_one(line: bytes, problem: str) -> None:
    with pytest.raises(RespProtocolError, match=problem):
        one_line_reply(line)


def test_one_line_replies_read_as_read_reply_reads_them() -> None:
    assert one_line_reply(b"+OK") == "OK"
    assert one_line_reply(b":-42") == -42
    with pytest.raises(RespError, match="NOAUTH"):
        one_line_reply(b"-NOAUTH Authentication required.")


def test_commands_are_arrays_of_bulk_strings() -> None:
    assert encode_command("PUBLISH", b"c\r\n", "é") == (
        b"*3\r\n$7\r\nPUBLISH\r\n$3\r\nc\r\n\r\n$2\r\n\xc3\xa9\r\n"
    )


def _notification(offset: int) -> Notification:
    return Notification(f"id{offset}", "t", "user", "x", "events", 0, offset)


@pytest.mark.parametrize(
    "bad_answer",
    [
        b"-NOAUTH Authentication required.\r\n",
        b">2\r\n$10\r\ninvalidate\r\n*0\r\n",
        b"garbage\r\n",
        b":1\r\n:1\r\n",  # One answer more than asked for.
    ],
    ids=["error-reply", "resp3-push", "garbage", "unasked-reply"],
)
async def test_the_notifier_drops_a_connection_that_misbehaves_and_makes_a_new_one(
    bad_answer: bytes,
) -> None:
    async with ScriptedRedis() as redis:
        notifier = RedisNotifier(RedisAddress.from_url(redis.url), 5.0, "events")
        async with notifier:
            first = asyncio.create_task(notifier.notify(_notification(1)))
            peer = await redis.peer()
            peer.answer(await peer.command())  # The PING that proves the connection.
            await peer.command()  # The PUBLISH.
            peer.send(bad_answer)
            if bad_answer.startswith(b":1"):
                # The first answer is a good one; the extra one is noticed on its arrival.
                assert await first is True
            else:
                assert await first is False
            # From here on every connection is answered like Redis: the notifier's new one,
            # and the one its hole reporter makes to announce the failed notification.
            serving = asyncio.create_task(redis.serve_every_peer())
            assert await notifier.notify(_notification(2)) is True
            serving.cancel()


async def test_an_error_reply_fails_only_the_calls_it_answers() -> None:
    """Replies that come in one read with an error after them still answer their calls; the
    error fails the call it answers and loses the connection."""
    async with ScriptedRedis() as redis:
        notifier = RedisNotifier(RedisAddress.from_url(redis.url), 5.0, "events")
        async with notifier:
            first = asyncio.create_task(notifier.notify_many([_notification(1), _notification(2)]))
            peer = await redis.peer()
            peer.answer(await peer.command())  # The PING that proves the connection.
            await peer.command()
            await peer.command()
            second = asyncio.create_task(notifier.notify(_notification(3)))
            await peer.command()
            peer.send(b":1\r\n:1\r\n-OOM command not allowed\r\n")
            assert await first == [True, True]
            assert await second is False
            assert "OOM" in notifier.stats.last_error


async def test_the_notifier_gives_up_on_a_silent_redis_within_its_timeout() -> None:
    async with ScriptedRedis() as redis:
        notifier = RedisNotifier(RedisAddress.from_url(redis.url), 0.3, "events")
        async with notifier:
            sent = asyncio.create_task(notifier.notify(_notification(1)))
            peer = await redis.peer()
            await peer.command()  # PING, never answered.
            assert await asyncio.wait_for(sent, 30) is False
            assert "0.3s" in notifier.stats.last_error or "timed out" in notifier.stats.last_error


async def test_the_breaker_counts_failed_calls_not_notifications() -> None:
    """One failed batch of three is one failure of the Redis leg: with a breaker of three, it
    takes three failed calls to open."""
    nowhere = RedisAddress.from_url(f"redis://127.0.0.1:{free_port()}/0")  # Refused at once.
    notifier = RedisNotifier(nowhere, 5.0, "events", breaker_failures=3, probe_interval=60)
    async with notifier:
        assert await notifier.notify_many([_notification(i) for i in range(3)]) == [False] * 3
        assert not notifier.breaker_open
        assert notifier.stats.failed == 3
        await notifier.notify(_notification(3))
        assert not notifier.breaker_open
        await notifier.notify(_notification(4))
        assert notifier.breaker_open
        assert await notifier.notify(_notification(5)) is False  # Skipped, without a try.
        assert notifier.stats.skipped == 1
