"""A plain Redis subscriber on a source's channel, in a process of its own: it times the hop
before the sidecar's fan-out.

``python -m bench.redis_watcher --redis-url URL --source-id ID --events M --ready FILE --out FILE``
touches FILE once subscribed and records when each notification arrives (``time.monotonic``,
the CLOCK_MONOTONIC every process on the machine shares) until M have, the timeout passes or
SIGTERM arrives. It writes the same JSON as the Go subscriber (``bench/gopeer/subscriber``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import signal
import time
from pathlib import Path
from typing import Any

import uvloop
from redis.asyncio import Redis as RedisClient


async def watch(args: argparse.Namespace) -> list[tuple[str, float]]:
    receipts: list[tuple[str, float]] = []
    client = RedisClient.from_url(args.redis_url)
    pubsub = client.pubsub()
    await pubsub.subscribe(f"events:{args.source_type}:{args.source_id}")
    await asyncio.to_thread(Path(args.ready).touch)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(args.timeout) as timeout:
            # SIGTERM ends the watch early, like the timeout: what arrived so far is reported.
            loop.add_signal_handler(signal.SIGTERM, lambda: timeout.reschedule(loop.time()))
            async for message in pubsub.listen():
                if message["type"] == "message":
                    receipts.append((json.loads(message["data"])["id"], time.monotonic()))
                    if len(receipts) == args.events:
                        break
    except TimeoutError:
        pass
    finally:
        with contextlib.suppress(Exception):
            await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()
    return receipts


async def main(args: argparse.Namespace) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.monotonic()
    receipts = await watch(args)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result: dict[str, Any] = {
        "receipts": receipts,
        "cpu_percent": round(100 * cpu / (time.monotonic() - wall), 1),
    }
    await asyncio.to_thread(Path(args.out).write_text, json.dumps(result))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--source-type", default="bench")
    parser.add_argument("--source-id", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--ready", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--timeout", type=float, default=120)
    uvloop.run(main(parser.parse_args()))
