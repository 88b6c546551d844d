"""A typed asyncio client for the dualstream sidecar.

async with DualstreamClient("127.0.0.1:50051", retry=Retry(), throttle=Throttle()) as client:
    result = await client.publish(EventInput("order.created", "user", "octocat", b"{}"))
    async with client.subscribe([("user", "*")]) as stream:  # resumes by itself
        async for message in stream:
            ...
"""

from dualstream_client.client import (
    DEFAULT_MAX_NOTIFICATIONS_PER_MESSAGE,
    BatchItemResult,
    CaughtUp,
    DualstreamClient,
    EventInput,
    Gap,
    Notification,
    PublishResult,
    Retry,
    StreamMessage,
    Subscription,
    new_event_id,
    parse_source,
)
from dualstream_client.errors import (
    DualstreamClientError,
    InvalidArgumentError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from dualstream_client.throttle import Throttle

__all__ = [
    "DEFAULT_MAX_NOTIFICATIONS_PER_MESSAGE",
    "BatchItemResult",
    "CaughtUp",
    "DualstreamClient",
    "DualstreamClientError",
    "EventInput",
    "Gap",
    "InvalidArgumentError",
    "Notification",
    "PublishResult",
    "ResourceExhaustedError",
    "Retry",
    "StreamMessage",
    "Subscription",
    "Throttle",
    "UnauthenticatedError",
    "UnavailableError",
    "new_event_id",
    "parse_source",
]
