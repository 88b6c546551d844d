"""Who may call: an optional shared token, checked before any handler runs."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

# Probes must work without credentials, as for grpc_health_probe and kubelet checks.
EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)
TOKEN_REFUSED = "missing or wrong token: send metadata `authorization: Bearer <token>`"


class BearerToken:
    """The one check of a call's ``authorization`` against the sidecar's token, for grpc.aio's
    interceptor and the delivery process's own HTTP/2 server alike."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def admits(self, method: str, presented: str | bytes) -> bool:
        """Whether a call of ``method`` (``/package.Service/Method``) presenting this
        ``authorization`` value may go on: health checks always may."""
        if method.startswith(EXEMPT_PREFIXES):
            return True
        raw = presented.encode() if isinstance(presented, str) else bytes(presented)
        return hmac.compare_digest(raw, self._expected)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Answers UNAUTHENTICATED unless metadata has ``authorization: Bearer <token>``."""

    def __init__(self, token: str) -> None:
        self._token = BearerToken(token)

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        presented = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        if self._token.admits(handler_call_details.method or "", presented):
            return handler
        return _refusal(handler)


def _refusal(handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, TOKEN_REFUSED)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, TOKEN_REFUSED)
        yield  # pragma: no cover - abort raises

    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            refuse_stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return grpc.unary_unary_rpc_method_handler(
        refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
