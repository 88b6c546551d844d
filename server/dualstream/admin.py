"""The admin HTTP listener: ``/healthz``, ``/readyz`` and ``/metrics`` for probes and scrapers.

It exists because the kubelet probes the pod IP while the API stays on loopback (or a unix
socket), and because Prometheus scrapes HTTP. It serves those three paths and nothing else,
never the EventService, with HTTP/1.1 ``GET`` and ``HEAD`` only and one request per
connection. Everything about a request is bounded: the size of its head, its header count,
the time to read it and to write the answer, and the connections open at once.

- ``/healthz``: 200 while the process's event loop answers (the answer comes from that loop),
  whatever Kafka and Redis do: a liveness probe must not restart a sidecar for an outage. When
  the sidecar runs as several processes, 503 also when the ``liveness`` hook names one whose
  loop has stopped answering (see heartbeats.py).
- ``/readyz``: 200 while the sidecar can publish (SERVING, or DEGRADED: Redis down but Kafka,
  the durable leg, up), 503 when it cannot (NOT_SERVING: Kafka unreachable, or draining).
- ``/metrics``: the Prometheus text exposition returned by the ``metrics`` hook.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import string
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import urlsplit

from dualstream.errors import ListenError
from dualstream.lifecycle import Service
from dualstream.probes import LIVENESS_PATH, METRICS_PATH, READINESS_PATH
from dualstream.settings import split_host_port
from dualstream.status import ServingState, SidecarStatus
from dualstream.text import one_line

logger = logging.getLogger(__name__)

MetricsExposition = Callable[[], str]
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
ALLOWED_METHODS = ("GET", "HEAD")
# RFC 9110 token characters: what a method or a header name may be made of.
_TOKEN_CHARACTERS = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")
# How long a closing connection waits for the client's last bytes (see _linger).
LINGER_SECONDS = 1.0


def no_metrics() -> str:
    """An empty exposition (valid: no samples), for a listener that is given no metrics."""
    return ""


@dataclass(frozen=True, slots=True)
class AdminLimits:
    """Bounds on what one client can make the listener hold. Probes and scrapes are tiny."""

    max_connections: int = 32
    max_head_bytes: int = 8192
    max_headers: int = 64
    read_timeout: float = 5.0
    write_timeout: float = 10.0


class _RefusedError(Exception):
    """A request the listener answers with an error status and then closes."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    path: str


@dataclass(frozen=True, slots=True)
class _Response:
    status: HTTPStatus
    body: str
    content_type: str = TEXT_CONTENT_TYPE
    allow: bool = False


class AdminServer(Service):
    """Serves the admin paths on ``address`` (``host:port``; port 0 picks a free one)."""

    def __init__(
        self,
        address: str,
        status: Callable[[], SidecarStatus],
        metrics: MetricsExposition = no_metrics,
        limits: AdminLimits | None = None,
        liveness: Callable[[], str | None] = lambda: None,
    ) -> None:
        """``liveness`` says what is wrong, if anything, with the sidecar's other processes."""
        self.address = address
        self._host, self._requested_port = split_host_port(address)
        self._status = status
        self._metrics = metrics
        self._liveness = liveness
        self._limits = limits or AdminLimits()
        self._server: asyncio.Server | None = None
        # Each open connection's handler and its writer, to end them on stop().
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self.port: int | None = None

    async def _start(self) -> None:
        try:
            server = await asyncio.start_server(
                self._serve_connection,
                self._host,
                self._requested_port,
                limit=self._limits.max_head_bytes,
            )
        except OSError as exc:
            raise ListenError(
                f"the admin listener cannot listen on {self.address}: {exc.strerror or exc} "
                "(set admin_listen to another address, or to empty to turn it off)"
            ) from exc
        self._server = server
        self.port = server.sockets[0].getsockname()[1]
        logger.info("admin listener on %s (/healthz, /readyz, /metrics)", self.address)

    async def _stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        # Python 3.11's wait_closed() does not wait for accepted connections. Aborting their
        # transports makes each handler see EOF and return by itself (cancelling the handlers
        # instead trips asyncio's stream callback, which cannot take a cancelled task).
        for writer in self._connections.values():
            writer.transport.abort()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        try:
            response, head_only = await self._respond_to(reader)
            if response is not None:
                await self._send(writer, response, head_only=head_only)
                await self._linger(reader, writer)
        except (ConnectionError, TimeoutError):
            pass  # The client went away, or does not read its answer: there is no one to tell.
        finally:
            del self._connections[task]
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _respond_to(self, reader: asyncio.StreamReader) -> tuple[_Response | None, bool]:
        """The answer to the connection's one request and whether it is to a HEAD; no answer
        when the client left before sending a whole request."""
        if len(self._connections) > self._limits.max_connections:
            return _Response(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections\n"), False
        try:
            async with asyncio.timeout(self._limits.read_timeout):
                request = await self._read_request(reader)
        except _RefusedError as refusal:
            return _Response(refusal.status, refusal.message + "\n"), False
        except TimeoutError:
            return _Response(HTTPStatus.REQUEST_TIMEOUT, "request head not received\n"), False
        if request is None:
            return None, False
        return self._answer(request), request.method == "HEAD"

    async def _linger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Half-close, then let what the client still sends arrive before closing: closing with
        bytes unread makes the kernel send a reset, which can destroy the answer in flight
        (e.g. a refused request whose head was never read). Bounded in bytes and time."""
        if writer.can_write_eof():
            writer.write_eof()
        discarded = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LINGER_SECONDS):
                while discarded < self._limits.max_head_bytes * 4:
                    chunk = await reader.read(4096)
                    if not chunk:
                        return
                    discarded += len(chunk)

    async def _read_request(self, reader: asyncio.StreamReader) -> _Request | None:
        limits = self._limits
        head_bytes = 0

        async def next_line(too_long: HTTPStatus) -> bytes:
            nonlocal head_bytes
            try:
                line = await reader.readline()
            except ValueError as exc:  # A line longer than the stream's limit.
                raise _RefusedError(too_long, "the request head is too large") from exc
            head_bytes += len(line)
            if head_bytes > limits.max_head_bytes:
                raise _RefusedError(too_long, "the request head is too large")
            return line

        request_line = await next_line(HTTPStatus.REQUEST_URI_TOO_LONG)
        if request_line in (b"\r\n", b"\n"):  # RFC 9112 2.2: ignore one leading empty line.
            request_line = await next_line(HTTPStatus.REQUEST_URI_TOO_LONG)
        if not request_line.endswith(b"\n"):
            return None
        method, target, version = _parse_request_line(request_line)
        has_host = False
        header_count = 0
        while True:
            line = await next_line(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
            if not line.endswith(b"\n"):
                return None
            if line in (b"\r\n", b"\n"):
                break
            header_count += 1
            if header_count > limits.max_headers:
                raise _RefusedError(
                    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                    f"more than {limits.max_headers} header fields",
                )
            name, value = _parse_header(line)
            if name == "host":
                has_host = True
            elif name == "transfer-encoding" or (name == "content-length" and value != "0"):
                raise _RefusedError(HTTPStatus.BAD_REQUEST, "GET and HEAD requests take no body")
        if version == "HTTP/1.1" and not has_host:
            raise _RefusedError(HTTPStatus.BAD_REQUEST, "an HTTP/1.1 request needs a Host header")
        path = urlsplit(target).path
        if not path.startswith("/"):
            raise _RefusedError(HTTPStatus.BAD_REQUEST, f"request target {target!r} is not a path")
        return _Request(method, path)

    def _answer(self, request: _Request) -> _Response:
        handlers: dict[str, Callable[[], _Response]] = {
            LIVENESS_PATH: self._alive,
            READINESS_PATH: self._readiness,
            METRICS_PATH: self._exposition,
        }
        handler = handlers.get(request.path)
        if handler is None:
            return _Response(
                HTTPStatus.NOT_FOUND, "not found: the admin paths are /healthz, /readyz, /metrics\n"
            )
        if request.method not in ALLOWED_METHODS:
            return _Response(
                HTTPStatus.METHOD_NOT_ALLOWED,
                f"method {request.method} not allowed: use GET or HEAD\n",
                allow=True,
            )
        return handler()

    def _alive(self) -> _Response:
        problem = self._liveness()
        if problem:
            return _Response(HTTPStatus.SERVICE_UNAVAILABLE, f"not alive: {problem}\n")
        return _Response(HTTPStatus.OK, "alive\n")

    def _readiness(self) -> _Response:
        status = self._status()
        if status.state is ServingState.NOT_SERVING:
            return _Response(HTTPStatus.SERVICE_UNAVAILABLE, f"not ready: {describe(status)}\n")
        return _Response(HTTPStatus.OK, f"ready: {describe(status)}\n")

    def _exposition(self) -> _Response:
        try:
            text = self._metrics()
        except Exception:
            # A broken exporter must not take the probes down with it; it is logged each time
            # a scrape fails, which is as often as the scraper asks.
            logger.exception("the metrics hook failed")
            return _Response(HTTPStatus.INTERNAL_SERVER_ERROR, "the metrics hook failed\n")
        return _Response(HTTPStatus.OK, text, content_type=PROMETHEUS_CONTENT_TYPE)

    async def _send(
        self, writer: asyncio.StreamWriter, response: _Response, *, head_only: bool
    ) -> None:
        body = response.body.encode()
        head = [
            f"HTTP/1.1 {response.status.value} {response.status.phrase}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(body)}",
            "Cache-Control: no-store",
            "Connection: close",
        ]
        if response.allow:
            head.append("Allow: " + ", ".join(ALLOWED_METHODS))
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        if not head_only:
            writer.write(body)
        async with asyncio.timeout(self._limits.write_timeout):
            await writer.drain()


def describe(status: SidecarStatus) -> str:
    """One line: the state and, when not SERVING, the leg that is at fault and why."""
    if status.state is ServingState.SERVING:
        return "SERVING"
    if status.state is ServingState.DEGRADED:
        problem = status.redis_last_error or (
            "Redis subscriber not connected"
            if not status.subscriber_connected
            else "Redis not publishing"
        )
        return (
            f"DEGRADED (events are durable, live notifications are not sent: {one_line(problem)})"
        )
    if status.kafka_connected:
        return "NOT_SERVING (draining)"
    reason = one_line(status.kafka_last_error) or "connecting"
    return f"NOT_SERVING (Kafka not connected: {reason})"


def _parse_request_line(line: bytes) -> tuple[str, str, str]:
    try:
        text = line.decode("ascii").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise _RefusedError(HTTPStatus.BAD_REQUEST, "the request line is not ASCII") from exc
    parts = text.split(" ")
    if len(parts) != 3 or not parts[0] or not set(parts[0]) <= _TOKEN_CHARACTERS or not parts[1]:
        raise _RefusedError(HTTPStatus.BAD_REQUEST, "malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        if version.startswith("HTTP/"):
            raise _RefusedError(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, f"{version} is not served")
        raise _RefusedError(HTTPStatus.BAD_REQUEST, "malformed request line")
    return method, target, version


def _parse_header(line: bytes) -> tuple[str, str]:
    name, sep, value = line.decode("latin-1").partition(":")
    if not sep or not name or not set(name) <= _TOKEN_CHARACTERS:
        raise _RefusedError(HTTPStatus.BAD_REQUEST, "malformed header field")
    return name.lower(), value.strip()
