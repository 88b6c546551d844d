"""Local fan-out: one Redis subscription per channel, shared by every local stream.

The hub holds a single Redis connection in subscriber mode. A channel is subscribed when the
first local stream asks for it and unsubscribed when the last one leaves; each message is
parsed once and offered to every stream on its channel without ever waiting for one.

The connection is health-checked with PING: a Redis that closes, restarts or silently stops
answering is noticed within ``ping_interval + ping_timeout``, and the hub reconnects with
jittered backoff and subscribes every channel again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from dualstream.errors import (
    InvalidArgumentError,
    ResourceExhaustedError,
    ShuttingDownError,
    UnavailableError,
)
from dualstream.events import EventLimits, Source, check_source
from dualstream.lifecycle import Service
from dualstream.notifications import Notification, channel_for
from dualstream.resp import RedisAddress, Reply, encode_command, read_reply

logger = logging.getLogger(__name__)

RECONNECT_BACKOFF_INITIAL = 0.05
RECONNECT_BACKOFF_MAX = 2.0


@dataclass(frozen=True, slots=True)
class HubSettings:
    redis_url: str
    channel_prefix: str = "events"
    max_streams: int = 10000
    max_sources_per_stream: int = 64
    stream_queue_size: int = 1024
    subscribe_timeout: float = 5.0
    ping_interval: float = 1.0
    ping_timeout: float = 1.0
    limits: EventLimits = field(default_factory=EventLimits)


class _EndOfStream:
    """Queued after the last notification of a stream the hub ended."""


_END = _EndOfStream()


class Subscription:
    """One local stream's share of the hub: a bounded queue of its notifications.

    Iterate it with ``async for``. A stream that falls ``queue_size`` notifications behind is
    ended with ``ResourceExhaustedError`` and its queue freed, so a client that stops reading
    costs bounded memory and never delays anyone else.
    """

    def __init__(self, hub: SubscriptionHub, channels: tuple[str, ...], queue_size: int) -> None:
        self._hub = hub
        self.channels = channels
        self._queue: asyncio.Queue[Notification | _EndOfStream] = asyncio.Queue()
        self._queue_size = queue_size
        self._ended: BaseException | None = None

    def offer(self, notification: Notification) -> None:
        """Queue a notification without waiting; a full queue ends the stream instead."""
        if self._ended is not None:
            return
        if self._queue.qsize() >= self._queue_size:
            self.end(
                ResourceExhaustedError(
                    f"the stream fell {self._queue_size} notifications behind and was ended; "
                    "read faster or subscribe again"
                )
            )
            return
        self._queue.put_nowait(notification)

    def end(self, reason: BaseException | None = None) -> None:
        """End the stream: pending notifications are dropped and ``reason`` is raised, if any."""
        if self._ended is not None:
            return
        self._ended = reason or StopAsyncIteration()
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(_END)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Notification:
        item = await self._queue.get()
        if isinstance(item, _EndOfStream):
            self._queue.put_nowait(_END)
            assert self._ended is not None
            if isinstance(self._ended, StopAsyncIteration):
                raise StopAsyncIteration
            raise self._ended
        return item

    def close(self) -> None:
        """Leave the hub; idempotent, and safe to call while being cancelled."""
        self.end()
        self._hub.release(self)


@dataclass(slots=True)
class _Channel:
    members: set[Subscription] = field(default_factory=set)
    live: asyncio.Event = field(default_factory=asyncio.Event)
    # SUBSCRIBE replies still to come for this channel on the current connection; the
    # subscription is live once the reply to the newest SUBSCRIBE has arrived.
    replies_due: int = 0


class SubscriptionHub(Service):
    def __init__(self, settings: HubSettings) -> None:
        self._settings = settings
        self._address = RedisAddress.from_url(settings.redis_url)
        self._channels: dict[str, _Channel] = {}
        self._streams = 0
        self._writer: asyncio.StreamWriter | None = None
        self._runner: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    @property
    def stream_count(self) -> int:
        return self._streams

    @property
    def channel_count(self) -> int:
        return len(self._channels)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def _start(self) -> None:
        self._runner = asyncio.create_task(self._run(), name="hub-redis-reader")

    async def _stop(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
        for channel in list(self._channels.values()):
            for subscription in list(channel.members):
                subscription.end(ShuttingDownError("the sidecar is shutting down"))
        self._channels.clear()
        self._streams = 0

    def _validate(self, sources: Sequence[Source]) -> tuple[str, ...]:
        settings = self._settings
        if not sources:
            raise InvalidArgumentError("sources", "is required: name at least one source")
        if len(sources) > settings.max_sources_per_stream:
            raise InvalidArgumentError(
                "sources",
                f"has {len(sources)} sources, at most {settings.max_sources_per_stream}",
            )
        for index, source in enumerate(sources):
            check_source(source, f"sources[{index}]", settings.limits)
        # A source named twice is followed once, so each event is delivered once.
        return tuple(dict.fromkeys(channel_for(s, settings.channel_prefix) for s in sources))

    async def subscribe(self, sources: Sequence[Source]) -> Subscription:
        """Join the channels of ``sources``; returns once Redis confirmed all of them live."""
        if not self.started:
            raise ShuttingDownError("the subscription hub is not running")
        channels = self._validate(sources)
        if self._streams >= self._settings.max_streams:
            raise ResourceExhaustedError(
                f"the sidecar already serves {self._streams} streams, its limit"
            )
        subscription = Subscription(self, channels, self._settings.stream_queue_size)
        self._streams += 1
        fresh: list[str] = []
        for name in channels:
            channel = self._channels.get(name)
            if channel is None:
                channel = self._channels[name] = _Channel()
                fresh.append(name)
            channel.members.add(subscription)
        if fresh:
            self._send_subscribe(fresh)
        try:
            async with asyncio.timeout(self._settings.subscribe_timeout):
                for name in channels:
                    await self._channels[name].live.wait()
        except TimeoutError as exc:
            subscription.close()
            raise UnavailableError(
                f"Redis at {self._address.host}:{self._address.port} did not confirm the "
                f"subscription within {self._settings.subscribe_timeout:g}s"
            ) from exc
        except BaseException:
            subscription.close()
            raise
        return subscription

    def release(self, subscription: Subscription) -> None:
        released = False
        emptied: list[str] = []
        for name in subscription.channels:
            channel = self._channels.get(name)
            if channel is None or subscription not in channel.members:
                continue
            released = True
            channel.members.discard(subscription)
            if not channel.members:
                del self._channels[name]
                emptied.append(name)
        if released:
            self._streams -= 1
        if emptied and self._writer is not None:
            self._writer.write(encode_command("UNSUBSCRIBE", *emptied))

    def _send_subscribe(self, names: list[str]) -> None:
        if self._writer is None:
            return  # The reconnect subscribes every channel the hub then holds.
        for name in names:
            self._channels[name].replies_due += 1
        self._writer.write(encode_command("SUBSCRIBE", *names))

    async def _run(self) -> None:
        backoff = RECONNECT_BACKOFF_INITIAL
        while True:
            try:
                async with asyncio.timeout(self._settings.ping_timeout + 1.0):
                    reader, writer = await self._address.open()
            except (OSError, TimeoutError, ConnectionError) as exc:
                logger.warning("Redis subscriber connection failed (%s); retrying", exc)
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, RECONNECT_BACKOFF_MAX)
                continue
            backoff = RECONNECT_BACKOFF_INITIAL
            try:
                await self._serve_connection(reader, writer)
            except (OSError, TimeoutError, ConnectionError, asyncio.IncompleteReadError) as exc:
                logger.warning("Redis subscriber connection lost (%s); reconnecting", exc)
            finally:
                self._on_disconnect(writer)

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._writer = writer
        for channel in self._channels.values():
            channel.replies_due = 0
        if self._channels:
            self._send_subscribe(list(self._channels))
        self._connected.set()
        logger.info("Redis subscriber connected to %s:%d", self._address.host, self._address.port)
        pinger = asyncio.create_task(self._ping(writer), name="hub-redis-ping")
        try:
            while True:
                # Pings guarantee traffic, so silence this long means Redis stopped answering.
                async with asyncio.timeout(
                    self._settings.ping_interval + self._settings.ping_timeout
                ):
                    reply = await read_reply(reader)
                self._dispatch(reply)
        finally:
            pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pinger

    async def _ping(self, writer: asyncio.StreamWriter) -> None:
        while True:
            await asyncio.sleep(self._settings.ping_interval)
            writer.write(encode_command("PING"))

    def _on_disconnect(self, writer: asyncio.StreamWriter) -> None:
        self._writer = None
        self._connected.clear()
        writer.close()
        for channel in self._channels.values():
            channel.live.clear()
            channel.replies_due = 0

    def _dispatch(self, reply: Reply) -> None:
        if not isinstance(reply, list) or not reply or not isinstance(reply[0], bytes):
            return  # +PONG while no channel is subscribed.
        kind = reply[0]
        if kind == b"message" and len(reply) == 3:
            name, payload = reply[1], reply[2]
            if isinstance(name, bytes) and isinstance(payload, bytes):
                self._deliver(name.decode(), payload)
        elif kind == b"subscribe" and isinstance(reply[1], bytes):
            channel = self._channels.get(reply[1].decode())
            if channel is not None and channel.replies_due > 0:
                channel.replies_due -= 1
                if channel.replies_due == 0:
                    channel.live.set()

    def _deliver(self, name: str, payload: bytes) -> None:
        channel = self._channels.get(name)
        if channel is None:
            return
        try:
            notification = Notification.from_json(payload)
        except ValueError as exc:
            logger.warning("ignoring a malformed notification on %s: %s", name, exc)
            return
        for subscription in tuple(channel.members):
            subscription.offer(notification)
