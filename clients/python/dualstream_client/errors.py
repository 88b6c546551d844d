"""Client errors: one class per status code a caller is expected to handle."""

from __future__ import annotations

import grpc


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
    """A limit was hit (too many streams, a stream too slow to keep up)."""


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
    return from_status(error.code(), error.details() or "")
