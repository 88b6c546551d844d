"""Subscribe streams that never silently miss: live from Redis, gaps filled from Kafka.

A stream's *frontier* is, per partition, the offset up to which it has delivered (or passed
over) everything matching it; its cursor is the frontier, encoded. The seam rule makes replay
and live delivery meet without a gap or a duplicate: the hub subscription goes live first,
then the end offsets ``E`` are read; the replay covers ``[frontier, E)`` from Kafka, and live
notifications are delivered only from ``E`` on. Every event at an offset ``>= E`` was
published after the subscription was live, so Redis delivers it (or the hub reports why not).
"""

from __future__ import annotations

import enum
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar
from urllib.parse import unquote

from dualstream.cloudevents import from_record
from dualstream.cursor import Cursor, OffsetRange, normalize_holes
from dualstream.errors import InvalidArgumentError, ResourceExhaustedError, UnavailableError
from dualstream.events import Event, Source
from dualstream.holes import HoleNotice
from dualstream.hub import WILDCARD, Outage, Overflow, Restored, Subscription, SubscriptionHub
from dualstream.kafka_reader import Expired, KafkaReader, RecordFetcher
from dualstream.notifications import Notification

# The most deliveries one Deliveries item carries, whatever a client asks for.
MAX_DELIVERIES_PER_ITEM = 256


class SlowConsumerPolicy(enum.Enum):
    GAP = "gap"
    CLOSE = "close"
    REPLAY = "replay"


class GapReason(enum.Enum):
    SLOW_CONSUMER = "slow_consumer"
    REDIS_OUTAGE = "redis_outage"
    NOT_NOTIFIED = "not_notified"
    EXPIRED = "expired"


_Item = TypeVar("_Item")
_NO_ITEMS: frozenset[Any] = frozenset()


def frozen(items: Iterable[_Item]) -> frozenset[_Item]:
    """``frozenset(items)``, or one shared empty set when there are none (Python 3.11 makes a
    new empty set each time, and a stream keeps its sets as long as it is open)."""
    result = frozenset(items)
    return result if result else _NO_ITEMS


@dataclass(frozen=True, slots=True)
class StreamRequest:
    sources: tuple[Source, ...]
    types: frozenset[str] = frozenset()
    resume_cursor: str = ""
    start_earliest: bool = False
    start_time: datetime | None = None
    policy: SlowConsumerPolicy = SlowConsumerPolicy.GAP
    include_data: bool = False
    # The most deliveries one item may carry when notifications are queued (see Deliveries).
    max_per_message: int = 1


@dataclass(frozen=True, slots=True)
class Subscribed:
    routes: tuple[str, ...]
    cursor: str


class Delivery(NamedTuple):
    """A notification as one stream receives it (a named tuple: one is built per stream)."""

    notification: Notification
    cursor: str
    replayed: bool
    event: Event | None = None


@dataclass(frozen=True, slots=True)
class Deliveries:
    """Several live deliveries in stream order, for a stream that accepts them together: the
    notifications that were already queued when the stream took the first."""

    deliveries: tuple[Delivery, ...]


@dataclass(frozen=True, slots=True)
class Gap:
    reason: GapReason
    missed: int
    cursor: str
    since: datetime
    until: datetime


@dataclass(frozen=True, slots=True)
class CaughtUp:
    replayed: int
    cursor: str


StreamItem = Subscribed | Delivery | Deliveries | Gap | CaughtUp


@dataclass(slots=True)
class _Selection:
    """Which events a stream wants, for records read back from Kafka."""

    exact: frozenset[tuple[str, str]] = frozenset()
    every_of_type: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()

    @classmethod
    def of(cls, request: StreamRequest) -> _Selection:
        sources = request.sources
        return cls(
            exact=frozen((s.source_type, s.source_id) for s in sources if s.source_id != WILDCARD),
            every_of_type=frozen(s.source_type for s in sources if s.source_id == WILDCARD),
            types=request.types,
        )

    def wants_type(self, event_type: str) -> bool:
        return not self.types or event_type in self.types

    def wants(self, source_type: str, source_id: str, event_type: str) -> bool:
        return self.wants_type(event_type) and (
            source_type in self.every_of_type or (source_type, source_id) in self.exact
        )


def notification_from_record(record: Any) -> Notification | None:
    """The notification a record would have had; None for records not written by dualstream."""
    headers = {name: value for name, value in record.headers}
    try:
        _, source_type, source_id = headers["ce_source"].decode().split("/", 2)
        return Notification(
            id=headers["ce_id"].decode(),
            type=headers["ce_type"].decode(),
            source_type=unquote(source_type),
            source_id=unquote(source_id),
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            traceparent=headers.get("traceparent", b"").decode(),
        )
    except (KeyError, ValueError, UnicodeDecodeError):
        return None


def _utc_now() -> datetime:
    return datetime.now(UTC)


class StreamService:
    """Runs Subscribe streams over the shared hub and the Kafka reader."""

    def __init__(self, hub: SubscriptionHub, reader: KafkaReader) -> None:
        self._hub = hub
        self._reader = reader

    @asynccontextmanager
    async def open(self, request: StreamRequest) -> AsyncIterator[AsyncIterator[StreamItem]]:
        """A stream's items, for as long as the context lasts. A context rather than a
        generator of its own: every message of every stream would pass through one more."""
        routes = self._hub.validate(request.sources, sorted(request.types))
        if request.resume_cursor and (request.start_earliest or request.start_time):
            raise InvalidArgumentError("start", "cannot be combined with resume_cursor")
        resume = (
            Cursor.decode(request.resume_cursor, self._reader.topic)
            if request.resume_cursor
            else None
        )
        subscription = await self._hub.subscribe(routes)
        fetcher = RecordFetcher(self._reader) if request.include_data else None
        try:
            stream = _Stream(request, subscription, self._reader, fetcher)
            async with aclosing(stream.run(resume, tuple(r.name for r in routes))) as items:
                yield items
        finally:
            subscription.close()
            if fetcher is not None:
                await fetcher.close()


class _Stream:
    def __init__(
        self,
        request: StreamRequest,
        subscription: Subscription,
        reader: KafkaReader,
        fetcher: RecordFetcher | None,
    ) -> None:
        self._request = request
        self._subscription = subscription
        self._reader = reader
        self._fetcher = fetcher
        self._selection = _Selection.of(request)
        self._frontier: dict[int, int] = {}
        self._seam: dict[int, int] = {}
        # Ranges below the frontier still to replay (from a v2 cursor, or announced holes
        # being filled); part of every cursor until replayed.
        self._holes: list[OffsetRange] = []

    def _cursor(self) -> str:
        return Cursor(self._reader.topic, self._frontier, tuple(self._holes)).encode()

    async def _starting_point(
        self, resume: Cursor | None, live_at: Mapping[int, int]
    ) -> dict[int, int]:
        if resume is not None:
            # A partition added after the cursor was issued is read from its start.
            return {p: resume.offsets.get(p, 0) for p in live_at}
        if self._request.start_earliest:
            return await self._reader.beginning_offsets()
        if self._request.start_time is not None:
            return await self._reader.offsets_for_time(
                int(self._request.start_time.timestamp() * 1000)
            )
        return dict(live_at)

    async def run(
        self, resume: Cursor | None, routes: tuple[str, ...]
    ) -> AsyncGenerator[StreamItem, None]:
        live_at = await self._reader.end_offsets()
        self._frontier = await self._starting_point(resume, live_at)
        if resume is not None:
            self._holes = list(resume.holes)
        yield Subscribed(routes, self._cursor())
        if self._frontier != live_at or self._holes:
            async with aclosing(self._replay(live_at)) as replayed:
                async for item in replayed:
                    yield item
        self._seam = live_at  # Read from Kafka for this stream alone.
        outage_since: datetime | None = None
        while True:
            received = await self._subscription.next()
            if isinstance(received, Notification):
                delivered: Delivery | Deliveries | None
                if self._request.max_per_message > 1:
                    delivered = await self._live_backlog(received)
                elif self._fetcher is None:
                    delivered = self._live_without_data(received)
                else:
                    delivered = await self._live_with_data(self._fetcher, received)
                if delivered is not None:
                    yield delivered
            elif isinstance(received, Overflow):
                async with aclosing(
                    self._handle_gap(GapReason.SLOW_CONSUMER, received.missed, received.since)
                ) as handled:
                    async for out in handled:
                        yield out
            elif isinstance(received, Outage):
                outage_since = received.since
                if self._request.policy is SlowConsumerPolicy.CLOSE:
                    raise UnavailableError(
                        "the sidecar lost its Redis connection; resume from cursor "
                        + self._cursor()
                    )
            elif isinstance(received, Restored):
                async with aclosing(
                    self._handle_gap(GapReason.REDIS_OUTAGE, 0, outage_since or received.at)
                ) as handled:
                    async for out in handled:
                        yield out
                outage_since = None
            elif isinstance(received, HoleNotice):
                async with aclosing(self._handle_holes(received)) as handled:
                    async for out in handled:
                        yield out

    async def _handle_holes(self, notice: HoleNotice) -> AsyncGenerator[StreamItem, None]:
        """A publishing sidecar could not notify these events. Those at or past the seam were
        not covered by a replay from Kafka; if any is the stream's, the policy decides:
        REPLAY reads them from Kafka, GAP sends a gap whose cursor replays exactly them (and,
        as a cursor always does, what follows the frontier), CLOSE ends the stream with it."""
        if notice.topic != self._reader.topic:
            return
        seam = self._seam
        if notice.events:
            wanted = [
                n
                for n in notice.events
                if n.offset >= seam.get(n.partition, 0)
                and self._selection.wants(n.source_type, n.source_id, n.type)
            ]
            spans = [OffsetRange(n.partition, n.offset, n.offset + 1) for n in wanted]
            missed = len(wanted)
        else:
            clipped = (
                OffsetRange(r.partition, max(r.start, seam.get(r.partition, 0)), r.end)
                for r in notice.ranges
            )
            spans = [r for r in clipped if r.start < r.end]
            missed = 0  # Unknown: a coarse range holds other sources' events too.
        if not spans:
            return
        frontier = self._frontier
        behind = normalize_holes(
            OffsetRange(r.partition, r.start, min(r.end, frontier.get(r.partition, 0)))
            for r in spans
        )
        ahead: dict[int, int] = {}  # Not passed yet: the frontier covers them.
        for r in spans:
            if r.end > frontier.get(r.partition, 0):
                ahead[r.partition] = max(ahead.get(r.partition, 0), r.end)
        policy = self._request.policy
        if policy is SlowConsumerPolicy.REPLAY:
            self._holes = list(normalize_holes([*self._holes, *behind]))
            filled = 0
            try:
                async with aclosing(self._replay(ahead)) as replayed:
                    async for item in replayed:
                        filled += isinstance(item, Delivery)
                        yield item
            except UnavailableError:
                # Kafka cannot be read now. Ending the stream would leave its client with a
                # cursor that claims the holes; a gap hands it one that names what is left.
                cursor, self._holes = self._cursor(), []
                left = max(0, missed - filled) if missed else 0
                yield Gap(GapReason.NOT_NOTIFIED, left, cursor, notice.since, _utc_now())
                return
            for partition, end in ahead.items():
                self._seam[partition] = max(self._seam.get(partition, 0), end)
            return
        cursor = Cursor(self._reader.topic, frontier, behind).encode()
        if policy is SlowConsumerPolicy.CLOSE:
            raise UnavailableError(
                f"a publishing sidecar could not notify {missed or 'some'} events of this "
                f"stream (its Redis leg failed); resume from cursor {cursor}"
            )
        yield Gap(GapReason.NOT_NOTIFIED, missed, cursor, notice.since, _utc_now())

    async def _handle_gap(
        self, reason: GapReason, missed: int, since: datetime
    ) -> AsyncGenerator[StreamItem, None]:
        policy = self._request.policy
        if policy is SlowConsumerPolicy.CLOSE:
            raise ResourceExhaustedError(
                f"the stream fell more than {missed} notifications behind and was ended; "
                f"resume from cursor {self._cursor()}"
            )
        if policy is SlowConsumerPolicy.GAP:
            yield Gap(reason, missed, self._cursor(), since, datetime.now(UTC))
            return
        live_at = await self._reader.end_offsets()
        async with aclosing(self._replay(live_at)) as replayed:
            async for item in replayed:
                yield item
        self._seam = live_at  # Read from Kafka for this stream alone.

    async def _replay(self, until: Mapping[int, int]) -> AsyncGenerator[StreamItem, None]:
        """The holes still to replay, then ``[frontier, until)``; ends with ``CaughtUp``."""
        replayed = 0
        async with aclosing(self._replay_holes()) as items:
            async for item in items:
                replayed += isinstance(item, Delivery)
                yield item
        # aclosing: a stream cancelled mid-replay must close the replay's consumer now, not
        # whenever the garbage collector finalizes the generator.
        async with aclosing(self._reader.replay(dict(self._frontier), until)) as records:
            async for record in records:
                if isinstance(record, Expired):
                    for partition, (_, log_start) in record.lost.items():
                        self._frontier[partition] = max(self._frontier[partition], log_start)
                    yield self._expired(record)
                    continue
                self._frontier[record.partition] = record.offset + 1
                delivery = self._replayed(record)
                if delivery is not None:
                    replayed += 1
                    yield delivery
        for partition, offset in until.items():
            self._frontier[partition] = max(self._frontier.get(partition, 0), offset)
        yield CaughtUp(replayed, self._cursor())

    async def _replay_holes(self) -> AsyncGenerator[StreamItem, None]:
        """Replay the holes one range at a time, in order; each cursor names what is left."""
        while self._holes:
            hole = self._holes[0]
            replay = self._reader.replay({hole.partition: hole.start}, {hole.partition: hole.end})
            async with aclosing(replay) as records:
                async for record in records:
                    if isinstance(record, Expired):
                        _, log_start = record.lost[hole.partition]
                        self._holes_done_below(hole, log_start)
                        yield self._expired(record)
                        continue
                    self._holes_done_below(hole, record.offset + 1)
                    delivery = self._replayed(record)
                    if delivery is not None:
                        yield delivery
            self._holes_done_below(hole, hole.end)  # Compaction can leave the end unread.

    def _holes_done_below(self, hole: OffsetRange, offset: int) -> None:
        """``hole`` (the first) is replayed below ``offset``."""
        if not self._holes or self._holes[0].partition != hole.partition:
            return
        first = self._holes[0]
        if first.end != hole.end:
            return
        if offset >= first.end:
            del self._holes[0]
        elif offset > first.start:
            self._holes[0] = OffsetRange(first.partition, offset, first.end)

    def _replayed(self, record: Any) -> Delivery | None:
        """The delivery of a record read back from Kafka, if the stream wants it."""
        notification = notification_from_record(record)
        if notification is None or not self._selection.wants(
            notification.source_type, notification.source_id, notification.type
        ):
            return None
        event = from_record(record.value, record.headers) if self._fetcher else None
        return Delivery(notification, self._cursor(), replayed=True, event=event)

    def _expired(self, expired: Expired) -> Gap:
        """Retention deleted records before the stream replayed them: nothing can fill that,
        whatever the policy, so the stream says how many (the cursor has moved on past
        them) and goes on from the log start."""
        now = datetime.now(UTC)
        return Gap(GapReason.EXPIRED, expired.count, self._cursor(), now, now)

    async def _live_backlog(self, first: Notification) -> Delivery | Deliveries | None:
        """``first`` and the notifications queued behind it, to be delivered together."""
        queued = self._subscription.take_queued(self._request.max_per_message - 1)
        fetcher = self._fetcher
        if fetcher is None:  # No coroutine per notification: the common fan-out.
            deliveries = [
                delivery
                for notification in (first, *queued)
                if (delivery := self._live_without_data(notification)) is not None
            ]
        else:
            deliveries = [
                delivery
                for notification in (first, *queued)
                if (delivery := await self._live_with_data(fetcher, notification)) is not None
            ]
        if len(deliveries) > 1:
            return Deliveries(tuple(deliveries))
        return deliveries[0] if deliveries else None

    async def _live_with_data(
        self, fetcher: RecordFetcher, notification: Notification
    ) -> Delivery | None:
        if not self._advance(notification):
            return None
        record = await fetcher.fetch(notification.partition, notification.offset)
        event = from_record(record.value, record.headers)
        return Delivery(notification, self._cursor(), False, event)

    def _live_without_data(self, notification: Notification) -> Delivery | None:
        # Not a coroutine: a fan-out makes one of these per stream for every notification.
        if not self._advance(notification):
            return None
        return Delivery(notification, self._cursor(), False)

    def _advance(self, notification: Notification) -> bool:
        """Whether the stream delivers ``notification``; if so, the frontier moves past it."""
        if notification.topic != self._reader.topic:
            return False
        if notification.offset < self._seam.get(notification.partition, 0):
            return False  # Replayed already, or published before the stream's start.
        if not self._selection.wants_type(notification.type):
            return False
        partition = notification.partition
        self._frontier[partition] = max(self._frontier.get(partition, 0), notification.offset + 1)
        return True
