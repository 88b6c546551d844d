"""Holes: events Kafka acknowledged whose notification never reached Redis, and how streams learn
of them.

A live delivery moves its stream's frontier past every earlier offset of its partition, so an
earlier event whose notification failed (``notified=false``: Redis timed out or refused, or the
breaker skipped it) would be claimed by every later cursor and never delivered. So the
publishing sidecar records what it could not notify (``HoleRecord``: the notifications
themselves, or per-partition offset ranges once there are too many) and, as soon as Redis takes
commands again, announces all of it in one notice on one channel, ``{channel_prefix}-holes``
(source channels are ``{prefix}:{type}:{id}`` and a prefix has no ``:``, so it is none of
them), which every hub subscribes to beside its streams' routes (``HoleReporter``). An empty
PUBLISH probes first; once Redis takes it, the notifier's breaker closes and the record is taken
in the same step, so what the breaker would skip meanwhile does not become a second notice.
Each notice is sent again ``REPEAT_AFTER`` seconds later, so a hub that was reconnecting to
Redis when it first went out still hears it; a hub passes each notice on once
(``NoticeFilter``). A stream that had not covered the announced positions by a
replay from Kafka delivers them from Kafka, or sends a gap whose cursor replays exactly them,
or ends (``dualstream.streams``).

Nothing here is on a publish call's path: recording is an append, announcing a task of its
own with its own short-lived Redis connection.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from dualstream.connections import RedisAddress
from dualstream.lifecycle import Service, cancel_and_wait
from dualstream.notifications import Notification
from dualstream.resp import encode_command, read_reply

logger = logging.getLogger(__name__)

# The record keeps up to this many notifications, and this many bytes of their JSON; past
# either bound it keeps one offset range (and a count) per partition instead.
MAX_RECORDED_EVENTS = 4096
MAX_RECORDED_BYTES = 4 * 1024 * 1024
# Hubs ignore anything larger on the holes channel (a notice is bounded by the record).
MAX_NOTICE_BYTES = 2 * MAX_RECORDED_BYTES
MAX_NOTICE_RANGES = 10_000
# A notice is sent again this many seconds after it first went out.
REPEAT_AFTER = (3.0, 15.0)
# Notices kept for their repeats, at most; past it the oldest repeats are given up.
MAX_REPEAT_BYTES = 16 * 1024 * 1024
# How long one attempt to announce may take: connecting, sending, Redis's answers.
SEND_TIMEOUT = 5.0
# Notice ids a hub remembers, to pass each notice on once.
SEEN_NOTICES = 1024


def holes_channel(channel_prefix: str) -> str:
    return f"{channel_prefix}-holes"


@dataclass(frozen=True, slots=True)
class HoleRange:
    """Offsets ``start <= offset < end`` of a partition, of which ``count`` were not notified
    (the others in it may have been)."""

    partition: int
    start: int
    end: int
    count: int


@dataclass(frozen=True, slots=True)
class HoleNotice:
    """Events of ``topic`` whose notifications failed from ``since`` on: the notifications
    themselves (``events``), or, past the record's bound, offset ranges (``ranges``)."""

    id: str
    topic: str
    since: datetime
    events: tuple[Notification, ...] = ()
    ranges: tuple[HoleRange, ...] = ()

    @property
    def count(self) -> int:
        """Events not notified."""
        return len(self.events) + sum(r.count for r in self.ranges)

    def to_json(self) -> bytes:
        head = json.dumps({"id": self.id, "topic": self.topic, "since": self.since.isoformat()})
        events = b",".join(n.to_json() for n in self.events)
        ranges = json.dumps([[r.partition, r.start, r.end, r.count] for r in self.ranges])
        return b'%s,"events":[%s],"ranges":%s}' % (head[:-1].encode(), events, ranges.encode())

    @classmethod
    def from_json(cls, raw: bytes) -> HoleNotice:
        """Parse a notice; raises ``ValueError`` for anything that is not one."""
        if len(raw) > MAX_NOTICE_BYTES:
            raise ValueError(f"a hole notice is at most {MAX_NOTICE_BYTES} bytes")
        body = json.loads(raw)
        if not isinstance(body, dict):
            raise ValueError("a hole notice is a JSON object")
        try:
            notice_id, topic = body["id"], body["topic"]
            since = datetime.fromisoformat(body["since"])
            events = tuple(Notification.from_mapping(n) for n in body["events"])
            ranges = tuple(_range(item) for item in body["ranges"][: MAX_NOTICE_RANGES + 1])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a hole notice: {exc!r}") from exc
        if not isinstance(notice_id, str) or not isinstance(topic, str) or since.tzinfo is None:
            raise ValueError("a hole notice has a string id and topic and a zoned time")
        if any(e.topic != topic for e in events) or len(ranges) > MAX_NOTICE_RANGES:
            raise ValueError("a hole notice names events of its own topic, and few ranges")
        return cls(notice_id, topic, since, events, ranges)


def _range(item: object) -> HoleRange:
    if not isinstance(item, list) or len(item) != 4:
        raise ValueError("a hole range is [partition, start, end, count]")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in item):
        raise ValueError("a hole range holds integers")
    partition, start, end, count = item
    if partition < 0 or not 0 <= start < end or count < 0:
        raise ValueError("a hole range is a non-empty range of a partition")
    return HoleRange(partition, start, end, count)


class HoleRecord:
    """The notifications a sidecar could not send, bounded: past ``max_events`` or
    ``max_bytes`` of their JSON it keeps one offset range and a count per partition instead,
    until the record is taken, and says so in the log."""

    def __init__(
        self, max_events: int = MAX_RECORDED_EVENTS, max_bytes: int = MAX_RECORDED_BYTES
    ) -> None:
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._events: list[Notification] = []
        self._bytes = 0
        self._ranges: dict[tuple[str, int], list[int]] = {}  # (topic, partition): [start, end, n]
        self._since: datetime | None = None
        # Since start: notifications recorded, those kept only as part of a range, and how
        # many times the record was coarsened.
        self.recorded = 0
        self.coarsened = 0
        self.coarsenings = 0

    def __len__(self) -> int:
        """Events waiting to be announced."""
        return len(self._events) + sum(n for _, _, n in self._ranges.values())

    def add(self, notifications: Sequence[Notification], at: datetime) -> None:
        self.recorded += len(notifications)
        self._keep(notifications, at)

    def _keep(self, notifications: Sequence[Notification], since: datetime) -> None:
        if self._since is None or since < self._since:
            self._since = since
        if self._ranges:
            self._coarsen(notifications)
            return
        size = sum(len(n.to_json()) for n in notifications)
        if (
            len(self._events) + len(notifications) <= self._max_events
            and self._bytes + size <= self._max_bytes
        ):
            self._events.extend(notifications)
            self._bytes += size
            return
        self.coarsenings += 1
        logger.warning(
            "over %d notifications could not be sent to Redis; they are recorded as one "
            "offset range per partition until they are announced (streams get gaps without "
            "counts, REPLAY streams may get events of those ranges twice)",
            self._max_events,
        )
        events, self._events, self._bytes = self._events, [], 0
        self._coarsen(events)
        self._coarsen(notifications)

    def _coarsen(self, notifications: Sequence[Notification]) -> None:
        self.coarsened += len(notifications)
        for n in notifications:
            kept = self._ranges.get((n.topic, n.partition))
            if kept is None:
                self._ranges[(n.topic, n.partition)] = [n.offset, n.offset + 1, 1]
            else:
                kept[0] = min(kept[0], n.offset)
                kept[1] = max(kept[1], n.offset + 1)
                kept[2] += 1

    def take(self) -> list[HoleNotice]:
        """Everything recorded, one notice per topic; the record starts over."""
        since = self._since or datetime.now(UTC)
        events, ranges = self._events, self._ranges
        self._events, self._bytes, self._ranges, self._since = [], 0, {}, None
        by_topic: dict[str, tuple[list[Notification], list[HoleRange]]] = collections.defaultdict(
            lambda: ([], [])
        )
        for n in sorted(events, key=lambda n: (n.partition, n.offset)):
            by_topic[n.topic][0].append(n)
        for (topic, partition), (start, end, count) in sorted(ranges.items()):
            by_topic[topic][1].append(HoleRange(partition, start, end, count))
        return [
            HoleNotice(uuid.uuid4().hex, topic, since, tuple(notified), tuple(hole_ranges))
            for topic, (notified, hole_ranges) in by_topic.items()
        ]

    def restore(self, notices: Sequence[HoleNotice]) -> None:
        """Put back what ``take`` returned (it could not be sent), before anything newer."""
        for notice in notices:
            self._keep(notice.events, notice.since)
            for r in notice.ranges:
                kept = self._ranges.setdefault((notice.topic, r.partition), [r.start, r.end, 0])
                kept[0] = min(kept[0], r.start)
                kept[1] = max(kept[1], r.end)
                kept[2] += r.count


@dataclass(slots=True)
class _Repeat:
    payload: bytes
    due: float
    first_sent: float
    sends: int = 1


@dataclass(slots=True)
class ReporterStats:
    """Since start: notices sent (repeats included), events announced (once each), repeats
    given up to stay within memory, and events still unannounced when the sidecar stopped."""

    notices_sent: int = 0
    events_announced: int = 0
    repeats_dropped: int = 0
    events_unannounced_at_stop: int = 0


class HoleReporter(Service):
    """Announces the record on the holes channel as soon as Redis takes commands: at once
    when something is first recorded, then every ``retry_interval`` until it gets through,
    over a connection of its own, so that a publish never waits for it. ``on_redis_works``
    is called when Redis took its probe, before it takes the record."""

    def __init__(
        self,
        address: RedisAddress,
        channel_prefix: str,
        retry_interval: float,
        *,
        on_redis_works: Callable[[], None] | None = None,
        record: HoleRecord | None = None,
        repeat_after: Sequence[float] = REPEAT_AFTER,
    ) -> None:
        self._address = address
        self._channel = holes_channel(channel_prefix).encode()
        self._retry_interval = retry_interval
        self._on_redis_works = on_redis_works
        self._repeat_after = tuple(repeat_after)
        self.record = record or HoleRecord()
        self.stats = ReporterStats()
        self._repeats: list[_Repeat] = []
        self._next_attempt = 0.0
        self._failing = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def add(self, notifications: Sequence[Notification]) -> None:
        """Record notifications that could not be sent; returns at once."""
        if not notifications:
            return
        was_empty = not self.record
        self.record.add(notifications, datetime.now(UTC))
        if was_empty:
            self._wake.set()

    async def _start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="hole-reporter")

    async def _stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        self._repeats.clear()
        if self.record:
            # One last short try: a stopping sidecar takes its record with it.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._announce(asyncio.get_running_loop().time())
        if self.record:
            lost = len(self.record)
            self.stats.events_unannounced_at_stop += lost
            logger.warning(
                "stopping with %d events whose notifications failed and that could not be "
                "announced since: a stream elsewhere that went past them will not be told",
                lost,
            )

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            now = loop.time()
            if self.record and now >= self._next_attempt:
                await self._announce(now)
                continue  # Recorded while sending: look again.
            await self._repeat_due(now)
            wake_at = [r.due for r in self._repeats]
            if self.record:
                wake_at.append(self._next_attempt)
            if not wake_at:
                await self._wake.wait()
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(min(wake_at)):
                    await self._wake.wait()

    async def _announce(self, now: float) -> None:
        try:
            notices = await self._probe_then_publish()
        except Exception as exc:  # Refused, reset, an error reply, too slow: all "not yet".
            self._next_attempt = now + self._retry_interval
            if not self._failing:
                self._failing = True
                logger.warning(
                    "cannot announce %d events whose notifications failed yet (%s); "
                    "retrying every %gs",
                    len(self.record),
                    _reason(exc),
                    self._retry_interval,
                )
            return
        self._failing = False
        count = sum(n.count for n in notices)
        self.stats.events_announced += count
        self.stats.notices_sent += len(notices)
        logger.info(
            "announced %d events whose notifications had failed, on %s",
            count,
            self._channel.decode(),
        )
        if self._repeat_after:
            due = now + self._repeat_after[0]
            self._repeats.extend(_Repeat(n.to_json(), due, now) for n in notices)
            while sum(len(r.payload) for r in self._repeats) > MAX_REPEAT_BYTES:
                del self._repeats[0]
                self.stats.repeats_dropped += 1

    async def _probe_then_publish(self) -> list[HoleNotice]:
        """An empty PUBLISH first (hubs ignore it): once Redis takes one, the notifier's
        breaker closes and the record is taken in the same step, so nothing the breaker would
        skip meanwhile is left for another notice. Then the notices; if they do not get
        through, the caller puts them back (``restore``)."""
        writer: asyncio.StreamWriter | None = None
        notices: list[HoleNotice] = []
        try:
            async with asyncio.timeout(SEND_TIMEOUT):
                reader, writer = await self._address.open()
                writer.write(encode_command(b"PUBLISH", self._channel, b""))
                await read_reply(reader)
                if self._on_redis_works is not None:
                    self._on_redis_works()
                notices = self.record.take()
                writer.write(
                    b"".join(
                        encode_command(b"PUBLISH", self._channel, n.to_json()) for n in notices
                    )
                )
                for _ in notices:
                    await read_reply(reader)
        except BaseException:
            self.record.restore(notices)
            raise
        finally:
            if writer is not None:
                writer.close()
        return notices

    async def _repeat_due(self, now: float) -> None:
        due = [r for r in self._repeats if r.due <= now]
        if not due:
            return
        try:
            await self._send([r.payload for r in due])
        except Exception:  # Sent once already; the next try is soon.
            for r in due:
                r.due = now + self._retry_interval
            return
        self.stats.notices_sent += len(due)
        for r in due:
            r.sends += 1
            if r.sends > len(self._repeat_after):
                self._repeats.remove(r)
            else:
                r.due = r.first_sent + self._repeat_after[r.sends - 1]

    async def _send(self, payloads: list[bytes]) -> None:
        """PUBLISH each payload over a new connection; raises if that fails."""
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(SEND_TIMEOUT):
                reader, writer = await self._address.open()
                writer.write(
                    b"".join(encode_command(b"PUBLISH", self._channel, p) for p in payloads)
                )
                for _ in payloads:
                    await read_reply(reader)
        finally:
            if writer is not None:
                writer.close()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {SEND_TIMEOUT:g}s"
    return f"{type(exc).__name__}: {exc}"


class NoticeFilter:
    """Parses what arrives on the holes channel and passes each notice on once: a reporter
    sends every notice several times."""

    def __init__(self, remembered: int = SEEN_NOTICES) -> None:
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._remembered = remembered

    def fresh(self, payload: bytes) -> HoleNotice | None:
        if not payload:
            return None  # A reporter's probe.
        try:
            notice = HoleNotice.from_json(payload)
        except ValueError as exc:
            logger.warning("ignoring a malformed hole notice: %s", exc)
            return None
        if notice.id in self._seen:
            return None
        self._seen[notice.id] = None
        if len(self._seen) > self._remembered:
            self._seen.popitem(last=False)
        return notice
