"""The real-time leg: best-effort ``PUBLISH`` of notifications, bounded in time.

Nothing here raises to the publish path. A failure or a timeout is logged (once when the
leg starts failing, once when it recovers, not per event), counted, and reported as
"not notified". After ``breaker_failures`` failures in a row a breaker opens: the leg is
skipped outright, so publishes do not each wait for a timeout while Redis is down, and one call
per ``probe_interval`` probes whether Redis is back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as redis
from redis.exceptions import RedisError

from dualstream.lifecycle import Service
from dualstream.notifications import Notification, channel_for

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class NotifierStats:
    """Counts since start: notifications sent, and those that failed or timed out."""

    sent: int = 0
    failed: int = 0
    skipped: int = 0
    consecutive_failures: int = 0
    last_error: str = ""


class RedisNotifier(Service):
    def __init__(
        self,
        redis_url: str,
        timeout: float,
        channel_prefix: str,
        breaker_failures: int = 3,
        probe_interval: float = 1.0,
    ) -> None:
        self._redis_url = redis_url
        self._timeout = timeout
        self._channel_prefix = channel_prefix
        self._breaker_failures = breaker_failures
        self._probe_interval = probe_interval
        self._next_probe = 0.0
        self._client: redis.Redis | None = None
        self.stats = NotifierStats()

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
        # Connections are made lazily, so the sidecar starts (and publishes) without Redis.
        self._client = redis.Redis.from_url(
            self._redis_url,
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
            retry_on_timeout=False,
        )

    async def _stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def channel(self, notification: Notification) -> str:
        return channel_for(notification.source, self._channel_prefix)

    async def notify(self, notification: Notification) -> bool:
        """Publish one notification; True if Redis accepted it within the time bound."""
        return (await self.notify_many([notification]))[0]

    async def notify_many(self, notifications: Sequence[Notification]) -> list[bool]:
        """Publish notifications in one pipeline; all succeed or all count as failed."""
        if not notifications:
            return []
        if self._client is None:
            return self._failed(len(notifications), "the notifier is not started")
        if self._skip():
            self.stats.skipped += len(notifications)
            return [False] * len(notifications)
        try:
            async with asyncio.timeout(self._timeout):
                if len(notifications) == 1:
                    await self._client.publish(
                        self.channel(notifications[0]), notifications[0].to_json()
                    )
                else:
                    async with self._client.pipeline(transaction=False) as pipe:
                        for notification in notifications:
                            pipe.publish(self.channel(notification), notification.to_json())
                        await pipe.execute()
        except TimeoutError:
            return self._failed(len(notifications), f"no answer within {self._timeout:g}s")
        except (RedisError, OSError) as exc:
            return self._failed(len(notifications), f"{type(exc).__name__}: {exc}")
        self._succeeded(len(notifications))
        return [True] * len(notifications)

    def _failed(self, count: int, reason: str) -> list[bool]:
        stats = self.stats
        if stats.consecutive_failures == 0:
            logger.warning(
                "Redis notifications are failing (%s); events stay durable in Kafka", reason
            )
        stats.failed += count
        stats.consecutive_failures += count
        stats.last_error = reason
        if self.breaker_open:
            self._next_probe = asyncio.get_running_loop().time() + self._probe_interval
        return [False] * count

    def _succeeded(self, count: int) -> None:
        stats = self.stats
        if stats.consecutive_failures:
            logger.info("Redis notifications recovered after %d failed", stats.consecutive_failures)
        stats.sent += count
        stats.consecutive_failures = 0
