"""The one place dualstream errors become gRPC status codes (and their trailers)."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from dualstream.errors import (
    DeadlineExceededError,
    DualstreamError,
    InvalidArgumentError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)

# Most specific class first: the first isinstance match wins.
_CODES: tuple[tuple[type[DualstreamError], grpc.StatusCode], ...] = (
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (ResourceExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
)


def status_code_for(error: BaseException) -> grpc.StatusCode:
    for error_class, code in _CODES:
        if isinstance(error, error_class):
            return code
    return grpc.StatusCode.INTERNAL


Trailers = tuple[tuple[str, str | bytes], ...]


def retry_trailers(code: grpc.StatusCode, message: str, retry_after: float) -> Trailers:
    """Trailing metadata telling the caller when to retry, in the two forms gRPC clients read:
    ``grpc-retry-pushback-ms``, which the retry policies of gRPC's own clients honour, and a
    ``google.rpc.RetryInfo`` detail of the rich error model (``grpc-status-details-bin``)."""
    delay = duration_pb2.Duration()
    delay.FromMilliseconds(round(retry_after * 1000))
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    return (
        ("grpc-retry-pushback-ms", str(round(retry_after * 1000))),
        ("grpc-status-details-bin", status.SerializeToString()),
    )


def trailers_for(error: BaseException, code: grpc.StatusCode) -> Trailers:
    """The trailers a failed call ends with: a retry hint where the error carries one."""
    if isinstance(error, ResourceExhaustedError) and error.retry_after is not None:
        return retry_trailers(code, str(error), error.retry_after)
    return ()
