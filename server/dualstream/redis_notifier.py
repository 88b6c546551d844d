"""The real-time leg: best-effort ``PUBLISH`` of notifications, bounded in time.

Every notification goes over one connection on which the ``PUBLISH`` commands of all concurrent
calls are pipelined: what the calls of one event-loop turn queue is written in one go, and the
replies come back in order. That costs one write per turn instead of a pool checkout, a round
trip and a parse per call, and it sends a source's notifications in the order Kafka acknowledged
them.

Nothing here raises to the publish path. A failure or a timeout is logged (once when the leg
starts failing, once when it recovers, not per event), counted, and reported as "not notified".
After ``breaker_failures`` failures in a row a breaker opens: the leg is skipped outright, so
publishes do not each wait for a timeout while Redis is down, and one call per
``probe_interval`` probes whether Redis is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from dualstream.connections import RedisAddress
from dualstream.events import Source
from dualstream.holes import HoleReporter
from dualstream.lifecycle import Service, cancel_and_wait
from dualstream.notifications import Notification, channel_for
from dualstream.resp import (
    ReplyLines,
    RespError,
    RespProtocolError,
    encode_publish,
    one_line_reply,
)

logger = logging.getLogger(__name__)

# Failed notifications are announced again at least this often until Redis takes them.
HOLES_RETRY_INTERVAL = 1.0
# Commands Redis has not read yet, beyond which the connection counts as stalled.
MAX_UNSENT_BYTES = 8 * 1024 * 1024
# Replies are read in chunks of up to this many bytes (a PUBLISH reply is a few).
_READ_SIZE = 64 * 1024


@functools.lru_cache(maxsize=4096)
def _channel_name(prefix: str, source_type: str, source_id: str) -> bytes:
    # Cached: a busy sidecar notifies the same few channels over and over.
    return channel_for(Source(source_type, source_id), prefix).encode()


class RedisLinkLostError(ConnectionError):
    """The notification connection closed before Redis answered."""


@dataclass(slots=True)
class NotifierStats:
    """Counts since start: notifications sent, and those that failed or timed out."""

    sent: int = 0
    failed: int = 0
    skipped: int = 0
    consecutive_failures: int = 0
    last_error: str = ""
    # The last failure's kind, low-cardinality (``timeout``, an exception class), for telemetry.
    last_error_type: str = ""


class _Link:
    """One Redis connection that pipelines the commands of concurrent calls.

    Each call queues its commands and a future; the commands queued during one event-loop turn
    are written together at the end of it, and a task resolves the futures in order as the
    replies arrive. The link exists from the moment it starts connecting: what is queued
    before the connection is made is written first once it is, so calls reach Redis in the
    order they were made (the order of their Kafka acks) however early they come.
    """

    def __init__(self, address: RedisAddress, connect_timeout: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._writer: asyncio.StreamWriter | None = None
        self._waiting: deque[tuple[asyncio.Future[None], int]] = deque()
        self._unsent: list[bytes] = []
        self._lost: str | None = None
        self._task = asyncio.create_task(
            self._run(address, connect_timeout), name="redis-notifier-link"
        )

    @property
    def open(self) -> bool:
        return self._lost is None

    def submit(self, future: asyncio.Future[None], commands: bytes, count: int) -> None:
        """Queue ``count`` commands; ``future`` is done when Redis has answered them all."""
        if self._lost is not None:
            future.set_exception(RedisLinkLostError(self._lost))
            return
        if not self._unsent and self._writer is not None:
            self._loop.call_soon(self._write_unsent)
        self._unsent.append(commands)
        self._waiting.append((future, count))

    def _write_unsent(self) -> None:
        unsent, self._unsent = self._unsent, []
        if self._lost is not None or self._writer is None:
            return
        self._writer.write(b"".join(unsent))
        if self._writer.transport.get_write_buffer_size() > MAX_UNSENT_BYTES:
            self.lose("Redis is not reading the commands sent to it")

    async def _run(self, address: RedisAddress, connect_timeout: float) -> None:
        try:
            async with asyncio.timeout(connect_timeout):
                reader, self._writer = await address.open()
        except Exception as exc:  # Refused, timed out, TLS, AUTH, an error reply: all alike.
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else "timed out"
            self.lose(f"could not connect to Redis at {address.location}: {detail}")
            return
        self._write_unsent()
        lines = ReplyLines()
        try:
            while True:
                chunk = await reader.read(_READ_SIZE)
                if not chunk:
                    self.lose("the connection to Redis was lost (Redis closed it)")
                    return
                answered = 0
                for line in lines.feed(chunk):
                    if line[:1] != b":":  # Not PUBLISH's integer: an error, or no reply at all.
                        self._answer(answered)
                        answered = 0
                        one_line_reply(line)
                    answered += 1
                self._answer(answered)
        except RespError as exc:
            # An error reply (NOAUTH, say) would answer every command alike.
            self.lose(f"Redis refused PUBLISH: {exc}")
        except OSError as exc:
            self.lose(f"the connection to Redis was lost ({type(exc).__name__}: {exc})")
        except IndexError:
            self.lose("Redis sent a reply nobody asked for")
        except RespProtocolError as exc:
            self.lose(f"Redis sent something that is not a RESP2 reply: {exc}")
        except Exception as exc:
            # A bug, not Redis: say so with its traceback, and still only lose the link.
            logger.exception("the Redis notification link failed unexpectedly")
            self.lose(f"unexpected {exc!r}")

    def _answer(self, replies: int) -> None:
        """Resolve the calls that ``replies`` more replies answer, in the order they came."""
        waiting = self._waiting
        while replies:
            future, count = waiting[0]  # IndexError: a reply nobody asked for.
            if count > replies:
                waiting[0] = (future, count - replies)
                return
            replies -= count
            waiting.popleft()
            if not future.done():
                future.set_result(None)

    def lose(self, reason: str) -> None:
        """Close the connection (or stop making it) and fail every call still waiting on it."""
        if self._lost is not None:
            return
        self._lost = reason
        if self._writer is not None:
            self._writer.close()
        if asyncio.current_task() is not self._task:
            self._task.cancel()
        self._unsent.clear()
        while self._waiting:
            future, _ = self._waiting.popleft()
            if not future.done():
                future.set_exception(RedisLinkLostError(reason))

    async def close(self) -> None:
        self.lose("the notifier stopped")
        await cancel_and_wait(self._task)
        if self._writer is not None:
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()


class RedisNotifier(Service):
    def __init__(
        self,
        address: RedisAddress,
        timeout: float,
        channel_prefix: str,
        breaker_failures: int = 3,
        probe_interval: float = 1.0,
    ) -> None:
        self._address = address
        self._timeout = timeout
        self._channel_prefix = channel_prefix
        self._breaker_failures = breaker_failures
        self._probe_interval = probe_interval
        self._next_probe = 0.0
        self._link: _Link | None = None
        self.stats = NotifierStats()
        # What could not be sent is announced once Redis works again (see dualstream.holes).
        self.holes = HoleReporter(
            address,
            channel_prefix,
            min(probe_interval, HOLES_RETRY_INTERVAL),
            on_redis_works=self._redis_answered,
        )

    @property
    def address(self) -> RedisAddress:
        return self._address

    @property
    def healthy(self) -> bool:
        """False while the most recent notification attempt failed."""
        return self.stats.consecutive_failures == 0

    @property
    def breaker_open(self) -> bool:
        return self.stats.consecutive_failures >= self._breaker_failures

    def _skip(self) -> bool:
        """Whether to skip this attempt; lets one probe through per probe interval."""
        if not self.breaker_open:
            return False
        now = asyncio.get_running_loop().time()
        if now < self._next_probe:
            return True
        self._next_probe = now + self._probe_interval
        return False

    async def _start(self) -> None:
        """The connection is made on first use, so the sidecar starts (and publishes) without
        Redis."""
        await self.holes.start()

    async def _stop(self) -> None:
        await self.holes.stop()
        link, self._link = self._link, None
        if link is not None:
            await link.close()

    def _submit(self, commands: bytes, count: int) -> asyncio.Future[None]:
        if self._link is None or not self._link.open:
            self._link = _Link(self._address, self._timeout)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._link.submit(future, commands, count)
        return future

    def _encode(self, notifications: Sequence[Notification]) -> bytes:
        prefix = self._channel_prefix
        return b"".join(
            [
                encode_publish(_channel_name(prefix, n.source_type, n.source_id), n.to_json())
                for n in notifications
            ]
        )

    async def notify(self, notification: Notification) -> bool:
        """Publish one notification; True if Redis accepted it within the time bound."""
        return (await self.notify_many([notification]))[0]

    async def notify_many(self, notifications: Sequence[Notification]) -> list[bool]:
        """Publish notifications in one pipeline; all succeed or all count as failed, and
        failed ones are recorded to be announced later (``holes``)."""
        outcomes = await self._publish_many(notifications)
        if notifications and not outcomes[0]:
            self.holes.add(notifications)
        return outcomes

    async def _publish_many(self, notifications: Sequence[Notification]) -> list[bool]:
        if not notifications:
            return []
        if not self.started:
            return self._failed(len(notifications), "the notifier is not started", "not_started")
        if self._skip():
            self.stats.skipped += len(notifications)
            return [False] * len(notifications)
        commands = self._encode(notifications)
        try:
            async with asyncio.timeout(self._timeout):
                await self._submit(commands, len(notifications))
        except TimeoutError:
            reason = f"no answer within {self._timeout:g}s"
            if self._link is not None:
                # Replies come in order: one that is late leaves the others waiting behind it.
                self._link.lose(reason)
            return self._failed(len(notifications), reason, "timeout")
        except (OSError, RespError) as exc:
            return self._failed(
                len(notifications), f"{type(exc).__name__}: {exc}", type(exc).__qualname__
            )
        self._succeeded(len(notifications))
        return [True] * len(notifications)

    def _failed(self, count: int, reason: str, error_type: str) -> list[bool]:
        stats = self.stats
        if stats.consecutive_failures == 0:
            logger.warning(
                "Redis notifications are failing (%s); events stay durable in Kafka", reason
            )
        stats.failed += count
        # Calls, not notifications: one failed batch is one failure of the Redis leg.
        stats.consecutive_failures += 1
        stats.last_error = reason
        stats.last_error_type = error_type
        if self.breaker_open:
            self._next_probe = asyncio.get_running_loop().time() + self._probe_interval
        return [False] * count

    def _redis_answered(self) -> None:
        """Redis took the hole reporter's probe: the breaker closes now rather than at its
        next probe, so that what it would skip meanwhile is not one more notice."""
        if self.stats.consecutive_failures:
            logger.info("Redis answers again (the hole reporter's PUBLISH got through)")
            self.stats.consecutive_failures = 0

    def _succeeded(self, count: int) -> None:
        stats = self.stats
        if stats.consecutive_failures:
            logger.info("Redis notifications recovered after %d failed", stats.consecutive_failures)
        stats.sent += count
        stats.consecutive_failures = 0
