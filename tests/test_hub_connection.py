"""The hub's subscriber connection against a scripted peer: whatever goes wrong on it (an error
reply, a RESP3 frame, garbage, a reply nobody asked for, silence) is a lost connection, logged
once, reported to every stream, and followed by a reconnect with backoff; a stale SUBSCRIBE
confirmation never makes a new route live; a runner that dies anyway says so."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from dualstream.connections import RedisAddress
from dualstream.errors import UnavailableError
from dualstream.events import Source
from dualstream.hub import HubSettings, Outage, Restored, Route, Subscription, SubscriptionHub
from dualstream.notifications import Notification
from tests.scripted_redis import Peer, ScriptedRedis, array, bulk

CHANNEL = "events:user:x"
NOTIFICATION = Notification("id1", "t", "user", "x", "events", 0, 7)


@pytest.fixture
async def redis() -> AsyncIterator[ScriptedRedis]:
    async with ScriptedRedis() as scripted:
        yield scripted


def hub_for(redis: ScriptedRedis, ping_interval: float = 0.2) -> SubscriptionHub:
    return SubscriptionHub(
        HubSettings(
            redis=RedisAddress.from_url(redis.url),
            ping_interval=ping_interval,
            ping_timeout=0.3,
            subscribe_timeout=30,
        )
    )


async def connected_peer(redis: ScriptedRedis) -> Peer:
    """The hub's next connection, past the PING that opening it sends."""
    peer = await redis.peer()
    peer.answer(await peer.command())
    return peer


def routes(hub: SubscriptionHub, source_id: str = "x") -> tuple[Route, ...]:
    return hub.validate([Source("user", source_id)], [])


async def live_stream(
    hub: SubscriptionHub, redis: ScriptedRedis
) -> tuple[Subscription, Peer, asyncio.Task[None]]:
    """A stream on CHANNEL, live over the hub's next connection, which answers like Redis."""
    subscribing = asyncio.create_task(hub.subscribe(routes(hub)))
    peer = await connected_peer(redis)
    serving = asyncio.create_task(peer.serve())
    return await subscribing, peer, serving


BAD_FRAMES = {
    "noperm": b"-NOPERM this user has no permissions to access one of the channels\r\n",
    "loading": b"-LOADING Redis is loading the dataset in memory\r\n",
    "max-clients": b"-ERR max number of clients reached\r\n",
    "resp3-push": array(bulk("message"), bulk(CHANNEL)).replace(b"*", b">", 1),
    "resp3-map": b"%1\r\n+key\r\n:1\r\n",
    "garbage": b"hello\r\n",
    "unasked-integer": b":5\r\n",
    "unasked-confirmation": array(bulk("subscribe"), bulk("events:user:other"), b":1\r\n"),
}


@pytest.mark.parametrize("frame", BAD_FRAMES.values(), ids=BAD_FRAMES.keys())
async def test_anything_wrong_on_the_connection_is_a_lost_connection(
    redis: ScriptedRedis, frame: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async with hub_for(redis) as hub:
        stream, first, serving = await live_stream(hub, redis)
        serving.cancel()
        first.send(frame)
        assert isinstance(await asyncio.wait_for(stream.next(), 10), Outage)
        # Reconnected, subscribed again, and live: the stream hears so, then gets messages.
        second = await connected_peer(redis)
        serving = asyncio.create_task(second.serve())
        assert isinstance(await asyncio.wait_for(stream.next(), 10), Restored)
        second.message(CHANNEL, NOTIFICATION.to_json())
        assert await asyncio.wait_for(stream.next(), 10) == NOTIFICATION
        assert hub.connected
        stream.close()
        serving.cancel()
    warnings = [r for r in caplog.records if r.name == "dualstream.hub" and r.levelno >= 30]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "lost" in warnings[0].getMessage()
    assert warnings[0].exc_info is None


async def test_a_silent_redis_is_a_lost_connection(redis: ScriptedRedis) -> None:
    async with hub_for(redis) as hub:
        subscribing = asyncio.create_task(hub.subscribe(routes(hub)))
        first = await connected_peer(redis)
        serving = asyncio.create_task(first.serve(count=1))  # The SUBSCRIBE, then silence.
        stream = await subscribing
        await serving
        # Pings go unanswered: within ping_interval + ping_timeout the hub gives up.
        assert isinstance(await asyncio.wait_for(stream.next(), 30), Outage)
        second = await connected_peer(redis)
        serving = asyncio.create_task(second.serve())
        assert isinstance(await asyncio.wait_for(stream.next(), 10), Restored)
        stream.close()
        serving.cancel()


async def test_a_redis_refusing_every_connection_is_retried_with_backoff_and_logged_once(
    redis: ScriptedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    async with hub_for(redis) as hub:

        async def refuse_all() -> None:
            while True:
                peer = await redis.peer(timeout=3600)
                await peer.command()
                peer.send(b"-ERR max number of clients reached\r\n")

        refusing = asyncio.create_task(refuse_all())
        await asyncio.sleep(2.0)
        refusing.cancel()
        assert not hub.connected
    # Backoff from 50 ms doubling to 2 s: a handful of attempts in 2 s, not a busy loop.
    assert 1 <= redis.connections <= 10
    warnings = [r for r in caplog.records if r.name == "dualstream.hub" and r.levelno >= 30]
    assert len(warnings) == 1
    assert "max number of clients" in warnings[0].getMessage()


async def test_a_stale_subscribe_confirmation_does_not_make_a_new_route_live(
    redis: ScriptedRedis,
) -> None:
    """SUBSCRIBE c (stream A), UNSUBSCRIBE c (A leaves before the answer), SUBSCRIBE c (stream
    B): the answer to the first SUBSCRIBE says nothing about B, for which Redis has not run
    the second one yet; B is live only after the third answer."""
    async with hub_for(redis, ping_interval=60) as hub:  # No PINGs between the commands.
        warm = asyncio.create_task(hub.subscribe(routes(hub, "warm")))
        peer = await connected_peer(redis)
        peer.answer(await peer.command())  # SUBSCRIBE warm
        peer.answer(await peer.command())  # The PING that follows a connection's subscribes.
        await warm
        first = asyncio.create_task(hub.subscribe(routes(hub)))
        subscribe_a = await peer.command()
        first.cancel()  # A leaves before Redis answered: UNSUBSCRIBE c.
        with pytest.raises(asyncio.CancelledError):
            await first
        unsubscribe_a = await peer.command()
        second = asyncio.create_task(hub.subscribe(routes(hub)))
        subscribe_b = await peer.command()
        assert [c[0] for c in (subscribe_a, unsubscribe_a, subscribe_b)] == [
            b"SUBSCRIBE",
            b"UNSUBSCRIBE",
            b"SUBSCRIBE",
        ]
        peer.answer(subscribe_a)
        peer.answer([b"PING"])  # A marker: once its answer is read, so was the one before.
        await asyncio.sleep(0.5)
        assert not second.done(), "a stale confirmation made the new route live"
        peer.answer(unsubscribe_a)
        peer.answer(subscribe_b)
        stream = await asyncio.wait_for(second, 10)
        stream.close()


class _Crash(BaseException):
    """Stands for a bug that ends the runner in a way no except clause expected."""


async def test_a_runner_that_dies_anyway_says_so(
    redis: ScriptedRedis, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with hub_for(redis) as hub:
        stream, peer, serving = await live_stream(hub, redis)

        def crash(reply: object) -> None:
            raise _Crash

        monkeypatch.setattr(hub, "_dispatch", crash)
        peer.message(CHANNEL, NOTIFICATION.to_json())
        # The connection is gone (an Outage), and then so is the stream.
        assert isinstance(await asyncio.wait_for(stream.next(), 10), Outage)
        with pytest.raises(UnavailableError, match="stopped working"):
            await asyncio.wait_for(stream.next(), 10)
        assert not hub.connected
        assert hub.failure is not None
        with pytest.raises(UnavailableError, match="stopped working"):
            await hub.subscribe(routes(hub, "other"))
        serving.cancel()
    assert any(r.exc_info for r in caplog.records if r.name == "dualstream.hub")


async def test_an_unexpected_error_in_the_hub_costs_a_reconnect_not_the_runner(
    redis: ScriptedRedis, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with hub_for(redis) as hub:
        stream, first, serving = await live_stream(hub, redis)
        dispatch = hub._dispatch

        def fail_once(reply: object) -> None:
            monkeypatch.setattr(hub, "_dispatch", dispatch)
            raise KeyError("a bug")

        monkeypatch.setattr(hub, "_dispatch", fail_once)
        first.message(CHANNEL, NOTIFICATION.to_json())
        assert isinstance(await asyncio.wait_for(stream.next(), 10), Outage)
        second = await connected_peer(redis)
        serving.cancel()
        serving = asyncio.create_task(second.serve())
        assert isinstance(await asyncio.wait_for(stream.next(), 10), Restored)
        assert hub.failure is None
        stream.close()
        serving.cancel()
    [bug] = [r for r in caplog.records if r.name == "dualstream.hub" and r.exc_info]
    assert "KeyError" in bug.getMessage()
