"""Local fan-out: one Redis subscription per channel or pattern, shared by every local stream.

The hub holds a single Redis connection in subscriber mode. A channel (exact source) or
pattern (every source of a type) is subscribed when the first local stream asks for it and
unsubscribed when the last one leaves; each message is parsed once and offered to every stream
on it without ever waiting for one.

The connection is health-checked with PING: a Redis that closes, restarts or silently stops
answering is noticed within ``ping_interval + ping_timeout``. Whatever ends a connection (a
closed socket, silence, an error reply such as NOAUTH, NOPERM or LOADING, a reply that is not
RESP2) counts the same: the hub logs it once, tells every stream (``Outage``), reconnects with
jittered backoff, subscribes everything again, and tells each stream when all of its routes
are live again (``Restored``). Nothing that happens on a connection ends the hub's runner; if
it ever ended anyway (a bug), the hub says so: it reports itself disconnected, ends every
stream with UNAVAILABLE and refuses new ones.

A route is live once Redis has answered the newest (P)SUBSCRIBE sent for it on the current
connection with nothing sent for it after that: a confirmation of an older SUBSCRIBE, whose
route was unsubscribed since and subscribed again, proves nothing about the new one.
"""

from __future__ import annotations

import asyncio
import collections
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
from dualstream.holes import HoleNotice, NoticeFilter, holes_channel
from dualstream.lifecycle import Service, cancel_and_wait
from dualstream.notifications import Notification, channel_for
from dualstream.resp import Reply, RespError, RespProtocolError, encode_command, read_reply

logger = logging.getLogger(__name__)

RECONNECT_BACKOFF_INITIAL = 0.05
RECONNECT_BACKOFF_MAX = 2.0
# A connection that served this long was healthy: the next reconnect starts from the initial
# backoff. One that fails sooner (an error reply right after connecting) keeps backing off.
STABLE_CONNECTION_SECONDS = 10.0
# How a connection is expected to fail; anything else is a bug, logged with its traceback
# (and still only costs a reconnect).
CONNECTION_FAILURES = (OSError, EOFError, TimeoutError, RespError, RespProtocolError)
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


StreamSignal = Overflow | Outage | Restored | HoleNotice


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
        # both memory per stream and CPU per delivery. The deque is made on the first item:
        # an empty one holds a block of 64 slots, most of an idle stream's Python heap.
        self._items: collections.deque[Notification | StreamSignal | BaseException] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._queue_size = queue_size
        self._queued_notifications = 0
        self._missed = 0
        self._missed_since: datetime | None = None
        self._in_outage = False
        self._closed = False
        # The same PUBLISH reaches a stream twice, back to back, when a channel and a pattern
        # of the stream both match it; remembering the last one delivers it once. A stream of
        # one route cannot get it twice, and skips the check (offer runs once per stream).
        self._last_position: tuple[str, int, int] | None = None
        self._twice_possible = len(routes) > 1
        self._parked = False

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
        if self._twice_possible:
            position = (notification.topic, notification.partition, notification.offset)
            if position == self._last_position:
                return
            self._last_position = position
        if self._missed or self._queued_notifications >= self._queue_size:
            if not self._missed:
                self._missed_since = _now()
            self._missed += 1
            if not self._twice_possible:
                self._parked = True
                self._hub.park(self)
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

    def tell(self, notice: HoleNotice) -> None:
        """Queue a hole notice; like a signal, it is never dropped for the queue's bound."""
        if not self._closed:
            self._put(notice)

    def fail(self, error: BaseException) -> None:
        """End the stream with ``error`` after what is queued."""
        if not self._closed:
            self._put(error)

    def _put(self, item: Notification | StreamSignal | BaseException) -> None:
        items = self._items
        if items is None:
            items = self._items = collections.deque()
        items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next(self) -> Notification | StreamSignal:
        """The next notification or signal; raises the error the stream was failed with."""
        while not (items := self._items):
            if self._missed:
                if self._parked:
                    self._parked = False
                    self._missed += self._hub.unpark(self)
                return self._take_overflow()
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = items.popleft()
        if isinstance(item, BaseException):
            items.appendleft(item)
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
        self._items = None
        self._hub.release(self)


@dataclass(slots=True)
class _RouteState:
    members: set[Subscription] = field(default_factory=set)
    live: asyncio.Event = field(default_factory=asyncio.Event)
    # The members each notification is offered to: all but the parked ones, streams of this
    # one route that are past their queue's bound. Those drop whatever comes until they have
    # caught up anyway; they count it when they do (``notifications`` then, less their mark),
    # so a thousand streams held back cost nothing per notification.
    listening: set[Subscription] = field(default_factory=set)
    parked: dict[Subscription, int] = field(default_factory=dict)
    notifications: int = 0


class SubscriptionHub(Service):
    def __init__(self, settings: HubSettings) -> None:
        self._settings = settings
        self._address = settings.redis
        self._routes: dict[Route, _RouteState] = {}
        # Per route, the commands sent for it on the current connection whose replies have
        # not come yet, oldest first: True for (P)SUBSCRIBE, False for (P)UNSUBSCRIBE. Kept
        # after a route is released, until Redis has answered its UNSUBSCRIBE.
        self._unanswered: dict[Route, collections.deque[bool]] = {}
        # Every stream also follows the holes channel (see dualstream.holes).
        self._holes_route = Route(holes_channel(settings.channel_prefix), pattern=False)
        self._notices = NoticeFilter()
        self._streams: set[Subscription] = set()
        self._writer: asyncio.StreamWriter | None = None
        self._runner: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._ever_connected = False
        self._trouble_logged = False
        # Why the hub stopped working for good (its runner ended: a bug); None while it works.
        self.failure: str | None = None
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
        self.failure = None
        self._runner = asyncio.create_task(self._run(), name="hub-redis-reader")
        self._runner.add_done_callback(self._runner_ended)

    async def _stop(self) -> None:
        await cancel_and_wait(self._runner)
        self._runner = None
        self._fail_streams(ShuttingDownError("the sidecar is shutting down"))

    def _fail_streams(self, error: Exception) -> None:
        for subscription in list(self._streams):
            subscription.fail(error)
        self._streams.clear()
        self._routes.clear()
        self._unanswered.clear()

    def _runner_ended(self, runner: asyncio.Task[None]) -> None:
        """The runner never ends while the hub serves; if it does, say so everywhere."""
        if runner.cancelled():
            return  # stop() ended it.
        error = runner.exception()
        self.failure = f"the subscription hub stopped working ({error!r}); restart the sidecar"
        logger.error("%s", self.failure, exc_info=error)
        self._writer = None
        self._connected.clear()
        self._fail_streams(UnavailableError(self.failure))

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
        if self.failure is not None:
            raise UnavailableError(self.failure)
        if len(self._streams) >= self._settings.max_streams:
            raise ResourceExhaustedError(
                f"the sidecar already serves {len(self._streams)} streams, its limit"
            )
        subscription = Subscription(self, routes, self._settings.stream_queue_size)
        self._streams.add(subscription)
        fresh: list[Route] = []
        for route in self._followed(subscription):
            state = self._routes.get(route)
            if state is None:
                state = self._routes[route] = _RouteState()
                fresh.append(route)
            state.members.add(subscription)
            state.listening.add(subscription)
        self._send_subscribe(fresh)
        try:
            async with asyncio.timeout(self._settings.subscribe_timeout):
                for route in self._followed(subscription):
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
        for route in self._followed(subscription):
            state = self._routes.get(route)
            if state is None:
                continue
            state.members.discard(subscription)
            state.listening.discard(subscription)
            state.parked.pop(subscription, None)
            if not state.members:
                del self._routes[route]
                emptied.append(route)
        self._send(emptied, subscribe=False)

    def _followed(self, subscription: Subscription) -> tuple[Route, ...]:
        """The stream's routes and the holes channel, which every stream follows (its notices
        go to every stream; see dualstream.holes)."""
        return (*subscription.routes, self._holes_route)

    def park(self, subscription: Subscription) -> None:
        """Stop offering notifications to a one-route stream past its bound (see _RouteState)."""
        state = self._routes.get(subscription.routes[0])
        if state is not None and subscription in state.listening:
            state.listening.discard(subscription)
            state.parked[subscription] = state.notifications

    def unpark(self, subscription: Subscription) -> int:
        """Offer to a parked stream again; how many notifications it missed meanwhile."""
        state = self._routes.get(subscription.routes[0])
        if state is None or subscription not in state.parked:
            return 0
        state.listening.add(subscription)
        return state.notifications - state.parked.pop(subscription)

    def _send_subscribe(self, routes: list[Route]) -> None:
        self._send(routes, subscribe=True)

    def _send(self, routes: list[Route], *, subscribe: bool) -> None:
        """Send (P)SUBSCRIBE or (P)UNSUBSCRIBE for ``routes`` and remember each is unanswered.
        Without a connection nothing is sent: a reconnect subscribes the routes held then."""
        if self._writer is None or not routes:
            return
        for group in _by_kind(routes):
            for route in group:
                self._unanswered.setdefault(route, collections.deque()).append(subscribe)
            command = group[0].subscribe_command if subscribe else group[0].unsubscribe_command
            self._writer.write(encode_command(command, *(r.name for r in group)))

    async def _run(self) -> None:
        """Keep a subscriber connection, for ever: nothing a connection does ends this loop."""
        loop = asyncio.get_running_loop()
        backoff = RECONNECT_BACKOFF_INITIAL
        while True:
            try:
                async with asyncio.timeout(self._settings.ping_timeout + 1.0):
                    reader, writer = await self._address.open()
            except Exception as exc:
                self._log_trouble("Redis subscriber connection failed", exc)
            else:
                served_since = loop.time()
                try:
                    await self._serve_connection(reader, writer)
                except Exception as exc:
                    self._log_trouble("Redis subscriber connection lost", exc)
                finally:
                    self._on_disconnect(writer)
                if loop.time() - served_since >= STABLE_CONNECTION_SECONDS:
                    backoff = RECONNECT_BACKOFF_INITIAL
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, RECONNECT_BACKOFF_MAX)

    def _log_trouble(self, what: str, exc: Exception) -> None:
        """Log once per outage (not per attempt); a failure of an unexpected kind is a bug and
        gets its traceback."""
        if not isinstance(exc, CONNECTION_FAILURES):
            logger.error("%s: unexpected %r; reconnecting", what, exc, exc_info=exc)
            self._trouble_logged = True
            return
        if self._trouble_logged:
            return
        self._trouble_logged = True
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        logger.warning("%s (%s); reconnecting with backoff", what, detail)

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._writer = writer
        self._unanswered.clear()
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
                    self._on_connected()
                self._dispatch(reply)
        finally:
            await cancel_and_wait(pinger)

    def _on_connected(self) -> None:
        self._connected.set()
        if self._ever_connected:
            self.reconnects += 1
        self._ever_connected = True
        self._trouble_logged = False
        logger.info("Redis subscriber connected to %s", self._address.location)

    async def _ping(self, writer: asyncio.StreamWriter) -> None:
        while True:
            await asyncio.sleep(self._settings.ping_interval)
            writer.write(encode_command("PING"))

    def _on_disconnect(self, writer: asyncio.StreamWriter) -> None:
        self._writer = None
        self._connected.clear()
        writer.close()
        self._unanswered.clear()
        outage = Outage(_now())
        for state in self._routes.values():
            state.live.clear()
        for subscription in self._streams:
            subscription.signal(outage)

    def _dispatch(self, reply: Reply) -> None:
        if not isinstance(reply, list):
            if reply == "PONG":
                return  # PING while nothing is subscribed.
            raise RespProtocolError(f"a reply no command asked for: {reply!r}")
        if not reply or not isinstance(reply[0], bytes):
            raise RespProtocolError(f"a reply no command asked for: {reply!r}")
        kind = reply[0]
        if kind == b"message" and len(reply) == 3:
            self._deliver(Route(_text(reply[1]), pattern=False), reply[2])
        elif kind == b"pmessage" and len(reply) == 4:
            self._deliver(Route(_text(reply[1]), pattern=True), reply[3])
        elif kind in _ANSWERS and len(reply) == 3:
            subscribe, pattern = _ANSWERS[kind]
            self._answered(Route(_text(reply[1]), pattern), subscribe)
        elif kind != b"pong":
            raise RespProtocolError(f"a reply no command asked for: {reply!r}")

    def _answered(self, route: Route, subscribe: bool) -> None:
        """Redis answered the oldest unanswered command for ``route``; the route is live when
        that was a (P)SUBSCRIBE and nothing was sent for it since."""
        unanswered = self._unanswered.get(route)
        if not unanswered or unanswered[0] is not subscribe:
            raise RespProtocolError(f"an answer to a command not sent for {route.name!r}")
        unanswered.popleft()
        if unanswered:
            return  # A later command for the route is still unanswered: not live yet.
        del self._unanswered[route]
        state = self._routes.get(route)
        if not subscribe or state is None:
            return
        state.live.set()
        restored = Restored(_now())
        for subscription in state.members:
            if subscription.in_outage and all(
                self._routes[r].live.is_set() for r in self._followed(subscription)
            ):
                subscription.signal(restored)

    def _deliver(self, route: Route, payload: Reply) -> None:
        state = self._routes.get(route)
        if state is None or not isinstance(payload, bytes):
            return
        if route == self._holes_route:
            notice = self._notices.fresh(payload)
            if notice is not None:
                for subscription in tuple(state.members):
                    subscription.tell(notice)
            return
        try:
            notification = Notification.from_json(payload)
        except ValueError as exc:
            logger.warning("ignoring a malformed notification on %s: %s", route.name, exc)
            return
        state.notifications += 1
        for subscription in tuple(state.listening):
            subscription.offer(notification)


# The answers to (P)(UN)SUBSCRIBE: whether it answers a subscribe, and for a pattern.
_ANSWERS = {
    b"subscribe": (True, False),
    b"psubscribe": (True, True),
    b"unsubscribe": (False, False),
    b"punsubscribe": (False, True),
}


def _by_kind(routes: list[Route]) -> list[list[Route]]:
    """Channels and patterns apart, each non-empty, for one (P)(UN)SUBSCRIBE command each."""
    groups = [[r for r in routes if not r.pattern], [r for r in routes if r.pattern]]
    return [group for group in groups if group]


def _text(value: Reply) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
