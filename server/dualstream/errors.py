"""The one error hierarchy of dualstream.

Core code raises these; the gRPC adapter maps each class to exactly one status code in
``dualstream.transport.status``. Every error says what went wrong in words a caller can act on.
"""

from __future__ import annotations


class DualstreamError(Exception):
    """Base of every error dualstream raises on purpose."""


class InvalidArgumentError(DualstreamError):
    """The request is malformed; ``field`` names the offending field by its request path."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class UnavailableError(DualstreamError):
    """A dependency the call needs (Kafka) cannot be reached; retrying later may succeed."""


class ResourceExhaustedError(DualstreamError):
    """A bound was reached: a full buffer, too many streams, a subscriber too slow to keep up,
    the sidecar past capacity. ``retry_after``, when set, is how many seconds a caller should
    wait before it retries."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceededError(DualstreamError):
    """The work did not finish within its time bound; its outcome is unknown to the caller."""


class UnauthenticatedError(DualstreamError):
    """The caller did not present valid credentials."""


class ShuttingDownError(UnavailableError):
    """The sidecar is draining and takes no new work."""


class ListenError(DualstreamError):
    """A listener (the gRPC API or the admin HTTP one) cannot take its address at start-up."""
