"""A typed asyncio client for the dualstream sidecar.

async with DualstreamClient("127.0.0.1:50051") as client:
    result = await client.publish(EventInput("order.created", "user", "octocat", b"{}"))
    async for notification in client.subscribe([("user", "octocat")]):
        ...
"""

from dualstream_client.client import (
    BatchItemResult,
    CaughtUp,
    DualstreamClient,
    EventInput,
    Gap,
    Notification,
    PublishResult,
    StreamMessage,
    Subscription,
)
from dualstream_client.errors import (
    DualstreamClientError,
    InvalidArgumentError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)

__all__ = [
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
    "StreamMessage",
    "Subscription",
    "UnauthenticatedError",
    "UnavailableError",
]
