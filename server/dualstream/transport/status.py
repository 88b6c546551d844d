"""The one place dualstream errors become gRPC status codes."""

from __future__ import annotations

import grpc

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
