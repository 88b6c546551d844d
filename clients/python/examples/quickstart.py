"""The Python quickstart of the README: subscribe, publish, see the notification arrive.
Against `make up`: .venv/bin/python clients/python/examples/quickstart.py"""

import asyncio
import os

from dualstream_client import DualstreamClient, EventInput, Notification, Retry


async def main() -> None:
    target = os.environ.get("DUALSTREAM_TARGET", "127.0.0.1:50051")
    async with (
        DualstreamClient(target, retry=Retry()) as client,  # a retry reuses the event's id
        client.subscribe([("user", "octocat")]) as stream,  # live from here; resumes by itself
    ):
        event = EventInput("user.starred", "user", "octocat", b'{"repo":"hello"}')
        result = await client.publish(event)
        print("published", result.id, "to", result.topic, result.partition, result.offset)
        async for message in stream:
            if isinstance(message, Notification):
                print("notified", message.id, message.offset, message.traceparent)
                return


asyncio.run(main())
