"""Client errors: one class per status code a caller is expected to handle."""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

# Where a sidecar refusing a call past capacity says when to retry: the rich error model's
# status (a ``google.rpc.RetryInfo`` among its details) and gRPC's own retry pushback.
STATUS_DETAILS_KEY = "grpc-status-details-bin"
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"


class DualstreamClientError(Exception):
    """A call failed; ``code`` is the gRPC status and ``details`` the sidecar's explanation."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class InvalidArgumentError(DualstreamClientError):
    """The request was malformed; ``field`` is the path of the field at fault, as ``details``
    names it first (``event.type``, ``events[3].source_type``). Do not retry unchanged."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, details)
        path, separator, _ = details.partition(": ")
        self.field = path if separator and path and not any(c.isspace() for c in path) else ""


class UnavailableError(DualstreamClientError):
    """Kafka or the sidecar could not be reached; retrying with the same event id is safe."""


class ResourceExhaustedError(DualstreamClientError):
    """A limit was hit (too many streams, a stream too slow to keep up, a request too large),
    or the sidecar is past capacity.

    ``retry_after`` (seconds) is set on a *capacity refusal*: the sidecar turned the publish
    away before writing anything and said when to try again, so retrying with the same ids
    is safe (``retry=Retry()`` does it, waiting at least that long). ``throttled`` means the
    call was never sent: the client's own ``Throttle`` held it back, because the sidecar had
    been refusing this client's calls; ``retry_after`` is then the sidecar's last hint.
    Other limits carry no hint (``retry_after`` None): retrying would fail the same way.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        *,
        retry_after: float | None = None,
        throttled: bool = False,
    ) -> None:
        super().__init__(code, details)
        self.retry_after = retry_after
        self.throttled = throttled


class UnauthenticatedError(DualstreamClientError):
    """The sidecar wants a valid token."""


_BY_CODE: dict[grpc.StatusCode, type[DualstreamClientError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
}


def from_status(code: grpc.StatusCode, details: str) -> DualstreamClientError:
    """The error class for ``code``, carrying ``details``."""
    return _BY_CODE.get(code, DualstreamClientError)(code, details)


def from_rpc_error(error: grpc.aio.AioRpcError) -> DualstreamClientError:
    code, details = error.code(), error.details() or ""
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        # grpc.aio's errors carry a grpc.aio.Metadata, which grpc-stubs types as the sync API's.
        trailers = cast(grpc.aio.Metadata | None, error.trailing_metadata())
        hint = retry_hint(trailers or ())
        return ResourceExhaustedError(code, details, retry_after=hint)
    return from_status(code, details)


def retry_hint(trailers: Iterable[tuple[str, str | bytes]]) -> float | None:
    """The retry hint (seconds) of a call's trailing metadata: the ``RetryInfo`` detail's
    ``retry_delay``, else ``grpc-retry-pushback-ms``; None when there is neither, or neither
    can be read (a hint that cannot be read is no reason to retry)."""
    details: str | bytes | None = None
    pushback: str | bytes | None = None
    for key, value in trailers:
        if key == STATUS_DETAILS_KEY:
            details = value
        elif key == RETRY_PUSHBACK_KEY:
            pushback = value
    if isinstance(details, bytes):
        delay = _retry_info_delay(details)
        if delay is not None:
            return delay
    if pushback is not None:
        text = pushback.decode("ascii", "replace") if isinstance(pushback, bytes) else pushback
        text = text.strip()
        # gRPC's pushback is a non-negative integer; a negative one means "do not retry".
        if text.isascii() and text.isdigit():
            return int(text) / 1000
    return None


def _retry_info_delay(serialized: bytes) -> float | None:
    try:
        status = status_pb2.Status.FromString(serialized)
    except DecodeError:
        return None
    info = error_details_pb2.RetryInfo()
    for detail in status.details:
        if detail.Is(info.DESCRIPTOR) and detail.Unpack(info) and info.HasField("retry_delay"):
            seconds = info.retry_delay.ToNanoseconds() / 1e9
            return seconds if seconds >= 0 else None
    return None
