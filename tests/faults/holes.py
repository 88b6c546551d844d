"""Helpers for tests where chosen notifications fail while the hub keeps hearing Redis.

The sidecar connects as an ACL user of its own; taking ``publish`` away from that user makes
every PUBLISH of its notifier (and of its hole reporter) answer ``NOPERM`` at once, while its
hub's SUBSCRIBE connection, which never publishes, stays live: exactly a publishing sidecar
whose Redis leg fails while streams go on receiving other notifications.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import redis.asyncio as redis

from dualstream.cursor import Cursor
from dualstream_client import DualstreamClient, EventInput, PublishResult


@dataclass(frozen=True, slots=True)
class PublishingUser:
    """An ACL user of a Redis whose right to PUBLISH the test switches."""

    admin: redis.Redis
    name: str
    url: str

    async def deny_publish(self) -> None:
        await acl(self.admin, "SETUSER", self.name, "-publish")

    async def allow_publish(self) -> None:
        await acl(self.admin, "SETUSER", self.name, "+publish")


async def acl(admin: redis.Redis, *arguments: str) -> None:
    await admin.execute_command("ACL", *arguments)  # type: ignore[no-untyped-call]


@asynccontextmanager
async def publishing_user(redis_url: str) -> AsyncIterator[PublishingUser]:
    """A fresh ACL user with every right, on the Redis at ``redis_url``; removed afterwards."""
    admin = redis.Redis.from_url(redis_url)
    name, password = f"u{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    await acl(admin, "SETUSER", name, "on", f">{password}", "~*", "&*", "+@all")
    host_port = redis_url.split("://", 1)[1]
    try:
        yield PublishingUser(admin, name, f"redis://{name}:{password}@{host_port}")
    finally:
        await acl(admin, "DELUSER", name)
        await admin.aclose()


async def publish_until_notified(
    client: DualstreamClient, source_type: str, source_id: str, prefix: str, attempts: int = 200
) -> list[PublishResult]:
    """Publish until one event is notified (a breaker that opened probes once a second);
    every event published on the way is returned too."""
    results = []
    for i in range(attempts):
        result = await client.publish(EventInput("t", source_type, source_id, id=f"{prefix}{i}"))
        results.append(result)
        if result.notified:
            return results
        await asyncio.sleep(0.05)
    raise AssertionError(f"no notification got through in {attempts} publishes")


def cursor_replays(cursor: str, topic: str, partition: int, offset: int) -> bool:
    """Whether resuming from ``cursor`` replays the event at ``partition``/``offset``."""
    decoded = Cursor.decode(cursor, topic)
    if offset >= decoded.offsets.get(partition, 0):
        return True
    return any(h.partition == partition and h.start <= offset < h.end for h in decoded.holes)


def cursor_in(message: str) -> str:
    """The cursor a stream ended with names, from its status message."""
    found = re.search(r"resume from cursor (\S+)", message)
    assert found is not None, f"no cursor in {message!r}"
    return found.group(1)
