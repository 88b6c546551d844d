"""Local fan-out: one Redis subscription per channel or pattern, shared by every local stream.

The hub holds a single Redis connection in subscriber mode. A channel (exact source) or
pattern (every source of a type) is subscribed when the first local stream asks for it and
unsubscribed when the last one leaves; each message is parsed once and offered to every stream
on it without ever waiting for one.

The connection is health-checked with PING: a Redis that closes, restarts or silently stops
answering is noticed within ``ping_interval + ping_timeout``; the hub tells every stream
(``Outage``), reconnects with jittered backoff, subscribes everything again, and tells each
stream when all of its routes are live again (``Restored``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from dualstream.connections import RedisAddress
from dualstream.errors import (
    InvalidArgumentError,
    ResourceExhaustedError,
    ShuttingDownError,
    UnavailableError,
)
from dualstream.events import (
    EventLimits,
    Source,
    check_identifier,
    check_source,
    check_source_type,
)
from dualstream.lifecycle import Service
from dualstream.notifications import Notification, channel_for
from dualstream.resp import Reply, encode_command, read_reply

logger = logging.getLogger(__name__)

RECONNECT_BACKOFF_INITIAL = 0.05
RECONNECT_BACKOFF_MAX = 2.0
WILDCARD = "*"


@dataclass(frozen=True, slots=True)
class HubSettings:
    redis: RedisAddress
    channel_prefix: str = "events"
    max_streams: int = 10000
    max_sources_per_stream: int = 64
    stream_queue_size: int = 1024
    subscribe_timeout: float = 5.0
    ping_interval: float = 1.0
    ping_timeout: float = 1.0
    limits: EventLimits = field(default_factory=EventLimits)


@dataclass(frozen=True, slots=True)
class Route:
    """What the hub subscribes in Redis: an exact channel, or a pattern for a wildcard."""

    name: str
    pattern: bool

    @property
    def subscribe_command(self) -> str:
        return "PSUBSCRIBE" if self.pattern else "SUBSCRIBE"

    @property
    def unsubscribe_command(self) -> str:
        return "PUNSUBSCRIBE" if self.pattern else "UNSUBSCRIBE"


@dataclass(frozen=True, slots=True)
class Overflow:
    """The stream's queue was full: ``missed`` notifications were dropped from ``since`` on."""

    missed: int
    since: datetime


@dataclass(frozen=True, slots=True)
class Outage:
    """The hub lost Redis at ``since``; nothing arrives until ``Restored``."""

    since: datetime


@dataclass(frozen=True, slots=True)
class Restored:
    """Every route of the stream is live again."""

    at: datetime


StreamSignal = Overflow | Outage | Restored


def _now() -> datetime:
    return datetime.now(UTC)


def route_for(source: Source, prefix: str) -> Route:
    if source.source_id == WILDCARD:
        # source_type was checked: no glob characters and no ':', so this cannot widen.
        return Route(f"{prefix}:{source.source_type}:{WILDCARD}", pattern=True)
    return Route(channel_for(source, prefix), pattern=False)


class Subscription:
    """One local stream's share of the hub: a bounded queue of notifications and signals.

    Notifications beyond ``queue_size`` are dropped and counted, and the stream reads an
    ``Overflow`` after the ones queued before the drop; a client that stops reading costs
    bounded memory and never delays anyone else.
    """

    def __init__(self, hub: SubscriptionHub, routes: tuple[Route, ...], queue_size: int) -> None:
        self._hub = hub
        self.routes = routes
        # A deque and one waiter rather than an asyncio.Queue: a stream has a single reader,
        # and with thousands of streams the Queue's three deques and wake-up machinery show in
        # both memory per stream and CPU per delivery.
        self._items: collections.deque[Notification | StreamSignal | BaseException] = (
            collections.deque()
        )
        self._waiter: asyncio.Future[None] | None = None
        self._queue_size = queue_size
        self._queued_notifications = 0
        self._missed = 0
        self._missed_since: datetime | None = None
        self._in_outage = False
        self._closed = False
        # The same PUBLISH reaches a stream twice, back to back, when a channel and a pattern
        # of the stream both match it; remembering the last one delivers it once.
        self._last_position: tuple[str, int, int] | None = None

    @property
    def in_outage(self) -> bool:
        return self._in_outage

    @property
    def queued(self) -> int:
        """Notifications waiting to be read (signals not counted)."""
        return self._queued_notifications

    def offer(self, notification: Notification) -> None:
        """Queue a notification without waiting; past the bound it is dropped and counted."""
        if self._closed:
            return
        position = (notification.topic, notification.partition, notification.offset)
        if position == self._last_position:
            return
        self._last_position = position
        if self._missed or self._queued_notifications >= self._queue_size:
            if not self._missed:
                self._missed_since = _now()
            self._missed += 1
            return
        self._queued_notifications += 1
        self._put(notification)

    def signal(self, signal: Outage | Restored) -> None:
        if self._closed:
            return
        if isinstance(signal, Outage) == self._in_outage:
            return  # Already in that state.
        self._in_outage = isinstance(signal, Outage)
        self._put(signal)

    def fail(self, error: BaseException) -> None:
        """End the stream with ``error`` after what is queued."""
        if not self._closed:
            self._put(error)

    def _put(self, item: Notification | StreamSignal | BaseException) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next(self) -> Notification | StreamSignal:
        """The next notification or signal; raises the error the stream was failed with."""
        while not self._items:
            if self._missed:
                return self._take_overflow()
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = self._items.popleft()
        if isinstance(item, BaseException):
            self._items.appendleft(item)
            raise item
        if isinstance(item, Notification):
            self._queued_notifications -= 1
        return item

    def take_queued(self, limit: int) -> list[Notification]:
        """Up to ``limit`` notifications already queued, without waiting; stops before any
        signal or error, which ``next()`` returns in its turn."""
        taken: list[Notification] = []
        items = self._items
        while items and len(taken) < limit:
            item = items[0]
            if not isinstance(item, Notification):
                break
            items.popleft()
            taken.append(item)
        self._queued_notifications -= len(taken)
        return taken

    def _take_overflow(self) -> Overflow:
        assert self._missed_since is not None
        overflow = Overflow(self._missed, self._missed_since)
        self._missed, self._missed_since = 0, None
        return overflow

    def close(self) -> None:
        """Leave the hub and free the queue; idempotent, and safe while being cancelled."""
        if self._closed:
            return
        self._closed = True
        self._items.clear()
        self._hub.release(self)


@dataclass(slots=True)
class _RouteState:
    members: set[Subscription] = field(default_factory=set)
    live: asyncio.Event = field(default_factory=asyncio.Event)
    # Subscribe replies still to come for this route on the current connection; the route is
    # live once the reply to the newest (P)SUBSCRIBE has arrived.
    replies_due: int = 0


class SubscriptionHub(Service):
    def __init__(self, settings: HubSettings) -> None:
        self._settings = settings
        self._address = settings.redis
        self._routes: dict[Route, _RouteState] = {}
        self._streams: set[Subscription] = set()
        self._writer: asyncio.StreamWriter | None = None
        self._runner: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._ever_connected = False
        # Connections made again after one was lost (for metrics).
        self.reconnects = 0

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    @property
    def route_count(self) -> int:
        return len(self._routes)

    def queue_depths(self) -> list[int]:
        """How many notifications wait in each stream's queue. Safe from another thread (a
        metrics reader's): the set is copied in one step under the GIL."""
        return [subscription.queued for subscription in list(self._streams)]

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
        for subscription in list(self._streams):
            subscription.fail(ShuttingDownError("the sidecar is shutting down"))
        self._streams.clear()
        self._routes.clear()

    def validate(self, sources: Sequence[Source], types: Sequence[str]) -> tuple[Route, ...]:
        """Check a stream's selectors and return its routes, each once."""
        settings = self._settings
        if not sources:
            raise InvalidArgumentError("sources", "is required: name at least one source")
        if len(sources) > settings.max_sources_per_stream:
            raise InvalidArgumentError(
                "sources",
                f"has {len(sources)} sources, at most {settings.max_sources_per_stream}",
            )
        for index, source in enumerate(sources):
            if source.source_id == WILDCARD:
                check_source_type(
                    source.source_type, f"sources[{index}].source_type", settings.limits
                )
            else:
                check_source(source, f"sources[{index}]", settings.limits)
        for index, event_type in enumerate(types):
            check_identifier(event_type, f"types[{index}]", settings.limits.max_type_length)
        return tuple(dict.fromkeys(route_for(s, settings.channel_prefix) for s in sources))

    async def subscribe(self, routes: tuple[Route, ...]) -> Subscription:
        """Join ``routes``; returns once Redis confirmed all of them live."""
        if not self.started:
            raise ShuttingDownError("the subscription hub is not running")
        if len(self._streams) >= self._settings.max_streams:
            raise ResourceExhaustedError(
                f"the sidecar already serves {len(self._streams)} streams, its limit"
            )
        subscription = Subscription(self, routes, self._settings.stream_queue_size)
        self._streams.add(subscription)
        fresh: list[Route] = []
        for route in routes:
            state = self._routes.get(route)
            if state is None:
                state = self._routes[route] = _RouteState()
                fresh.append(route)
            state.members.add(subscription)
        self._send_subscribe(fresh)
        try:
            async with asyncio.timeout(self._settings.subscribe_timeout):
                for route in routes:
                    await self._routes[route].live.wait()
        except TimeoutError as exc:
            subscription.close()
            raise UnavailableError(
                f"Redis at {self._address.location} did not confirm the "
                f"subscription within {self._settings.subscribe_timeout:g}s"
            ) from exc
        except BaseException:
            subscription.close()
            raise
        return subscription

    def release(self, subscription: Subscription) -> None:
        if subscription not in self._streams:
            return
        self._streams.discard(subscription)
        emptied: list[Route] = []
        for route in subscription.routes:
            state = self._routes.get(route)
            if state is None:
                continue
            state.members.discard(subscription)
            if not state.members:
                del self._routes[route]
                emptied.append(route)
        if self._writer is not None:
            for group in _by_kind(emptied):
                self._writer.write(
                    encode_command(group[0].unsubscribe_command, *(r.name for r in group))
                )

    def _send_subscribe(self, routes: list[Route]) -> None:
        if self._writer is None or not routes:
            return  # The reconnect subscribes every route the hub then holds.
        for group in _by_kind(routes):
            for route in group:
                self._routes[route].replies_due += 1
            self._writer.write(encode_command(group[0].subscribe_command, *(r.name for r in group)))

    async def _run(self) -> None:
        backoff = RECONNECT_BACKOFF_INITIAL
        while True:
            try:
                async with asyncio.timeout(self._settings.ping_timeout + 1.0):
                    reader, writer = await self._address.open()
            except (OSError, TimeoutError) as exc:
                if backoff == RECONNECT_BACKOFF_INITIAL:  # Once per outage, not per attempt.
                    logger.warning("Redis subscriber connection failed (%s); retrying", exc)
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, RECONNECT_BACKOFF_MAX)
                continue
            backoff = RECONNECT_BACKOFF_INITIAL
            try:
                await self._serve_connection(reader, writer)
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                logger.warning(
                    "Redis subscriber connection lost (%s); reconnecting",
                    exc.__class__.__name__ if not str(exc) else exc,
                )
            finally:
                self._on_disconnect(writer)

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._writer = writer
        for state in self._routes.values():
            state.replies_due = 0
        self._send_subscribe(list(self._routes))
        # A stopped Redis still accepts connections (the kernel does), so the connection only
        # counts once Redis answered on it.
        writer.write(encode_command("PING"))
        pinger = asyncio.create_task(self._ping(writer), name="hub-redis-ping")
        try:
            while True:
                # Pings guarantee traffic, so silence this long means Redis stopped answering.
                async with asyncio.timeout(
                    self._settings.ping_interval + self._settings.ping_timeout
                ):
                    reply = await read_reply(reader)
                if not self._connected.is_set():
                    self._connected.set()
                    if self._ever_connected:
                        self.reconnects += 1
                    self._ever_connected = True
                    logger.info("Redis subscriber connected to %s", self._address.location)
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
        outage = Outage(_now())
        for state in self._routes.values():
            state.live.clear()
            state.replies_due = 0
        for subscription in self._streams:
            subscription.signal(outage)

    def _dispatch(self, reply: Reply) -> None:
        if not isinstance(reply, list) or not reply or not isinstance(reply[0], bytes):
            return  # +PONG while nothing is subscribed.
        kind = reply[0]
        if kind == b"message" and len(reply) == 3:
            self._deliver(Route(_text(reply[1]), pattern=False), reply[2])
        elif kind == b"pmessage" and len(reply) == 4:
            self._deliver(Route(_text(reply[1]), pattern=True), reply[3])
        elif kind in (b"subscribe", b"psubscribe") and len(reply) == 3:
            self._confirm(Route(_text(reply[1]), pattern=kind == b"psubscribe"))

    def _confirm(self, route: Route) -> None:
        state = self._routes.get(route)
        if state is None or state.replies_due == 0:
            return
        state.replies_due -= 1
        if state.replies_due:
            return
        state.live.set()
        restored = Restored(_now())
        for subscription in state.members:
            if subscription.in_outage and all(
                self._routes[r].live.is_set() for r in subscription.routes
            ):
                subscription.signal(restored)

    def _deliver(self, route: Route, payload: Reply) -> None:
        state = self._routes.get(route)
        if state is None or not isinstance(payload, bytes):
            return
        try:
            notification = Notification.from_json(payload)
        except ValueError as exc:
            logger.warning("ignoring a malformed notification on %s: %s", route.name, exc)
            return
        for subscription in tuple(state.members):
            subscription.offer(notification)


def _by_kind(routes: list[Route]) -> list[list[Route]]:
    """Channels and patterns apart, each non-empty, for one (P)(UN)SUBSCRIBE command each."""
    groups = [[r for r in routes if not r.pattern], [r for r in routes if r.pattern]]
    return [group for group in groups if group]


def _text(value: Reply) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
