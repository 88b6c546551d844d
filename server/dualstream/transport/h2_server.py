"""gRPC over the sidecar's own HTTP/2 connections: the publishing address (``api_server``)
and the delivery process's streams (``subscribe_server``).

Why not grpc.aio: every message grpc.aio reads or writes goes from the event loop to gRPC's
core and back through its completion queue, about 40 µs of CPU per message on this machine even
for an empty server (``make bench``'s floor), so a notification to 1,000 streams costs 40 ms of
CPU in gRPC alone, and an empty unary call about 240 µs. Here a message is a gRPC length prefix
in an HTTP/2 DATA frame (built here when it fits in one, charged to h2's flow-control windows:
1.1 µs, against 5.6 µs through h2's ``send_data``), and a connection's frames leave in one write
per loop turn. The protocol's state (settings, flow control, pings, resets, HPACK decoding) is
``h2``'s, a mature implementation; this module maps its events to calls. Response headers and
trailers go out as HPACK literals in HEADERS frames built here (``_Connection.send_headers``).

Unary, server-streaming and bidirectional methods; handlers take the request's bytes and return
or yield the response's bytes. A method may be admitted or refused when its request has come,
before its handler's task exists (``Method.admit``): past capacity a refusal costs its trailers
and little else. Requests may be compressed with gzip or deflate; responses are not.
``CallContext`` offers what the handlers use of grpc.aio's servicer context.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import logging
import re
import ssl
import struct
import time
import urllib.parse
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn, cast

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.stream
import hyperframe.frame

from dualstream.lifecycle import Service, cancel_and_wait, event_set_within
from dualstream.transport.access import TOKEN_REFUSED, BearerToken

logger = logging.getLogger(__name__)

Metadatum = tuple[str, str | bytes]
UnaryHandler = Callable[[bytes, "CallContext"], Awaitable[bytes]]
StreamHandler = Callable[[bytes, "CallContext"], AsyncIterator[bytes]]
BidiHandler = Callable[[AsyncIterator[bytes], "CallContext"], AsyncIterator[bytes]]
# A refusal before the handler: the status's details and its trailers.
Refusal = tuple[str, Sequence[Metadatum]]

# A request's message is at most this large unless the server is told otherwise: the
# delivery process takes only small requests.
MAX_REQUEST_BYTES = 1024 * 1024
# Bytes a connection may have queued for its socket before its streams wait (asyncio pauses
# the protocol past it): a notification to 1,000 streams on one connection is ~150 KiB.
WRITE_BUFFER_HIGH = 4 * 1024 * 1024
# How many request bytes a client may have sent before it waits for the server's WINDOW_UPDATE,
# on a connection and on each call. HTTP/2's default of 65,535 for both held a client to ~250
# small publishes per round trip, and a round trip is a loop turn: past capacity, with turns
# of 100 ms, a client could send only a few thousand calls a second and queued the rest for
# seconds before the sidecar saw them (and could refuse them); a batch of 1,000 events took
# several round trips. Bytes are acknowledged as they are read, so a window bounds only what is
# in flight, not what the server holds: that is ``max_request_bytes`` per call.
CONNECTION_WINDOW = 16 * 1024 * 1024
# How long a stopping server waits for its connections to close before it cuts them.
CLOSE_TIMEOUT = 5.0
_RESPONSE_HEADERS = ((b":status", b"200"), (b"content-type", b"application/grpc"))
# A HEADERS frame's header: 24-bit length, type 1, flags, stream id.
_HEADERS_FRAME_HEADER = struct.Struct(">BHBBL")
_END_STREAM, _END_HEADERS = 0x1, 0x4
# An uncompressed response message in a DATA frame of its own: the frame's header (24-bit
# length, type 0, no flags, stream id), then gRPC's prefix (not compressed, 32-bit length).
_MESSAGE_FRAME_HEADER = struct.Struct(">BHBBLBL")
_STREAM_STATES_SENDING = (h2.stream.StreamState.OPEN, h2.stream.StreamState.HALF_CLOSED_REMOTE)
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
# A request's header fields are checked here (``_malformed``, 6 µs) rather than by h2, whose
# checks are a chain of generators per field: h2 read a request's HEADERS and DATA in 190 µs
# with them and 140 µs without (a micro-benchmark on the 12-01 machine).
# RFC 9113 8.2.1: no controls, space, upper case, colon (but a pseudo-field's first) or non-ASCII.
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x40\x5b-\x7e]+")
_FIELD_VALUE = re.compile(rb"(?:[^\x00\r\n\t ](?:[^\x00\r\n]*[^\x00\r\n\t ])?)?")
_REQUEST_PSEUDO_FIELDS = frozenset((b":method", b":scheme", b":path", b":authority"))
_REQUIRED_PSEUDO_FIELDS = frozenset((b":method", b":scheme", b":path"))
_CONNECTION_FIELDS = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)


@dataclass(frozen=True, slots=True)
class Method:
    """A method's handler: ``unary`` returns one response message, ``stream`` yields them;
    ``bidi`` takes the request messages as they come and yields responses."""

    unary: UnaryHandler | None = None
    stream: StreamHandler | None = None
    bidi: BidiHandler | None = None
    # Asked once the request has come, before its handler's task exists: a refusal ends the
    # call there, at the cost of its trailers alone. A call admitted is released when its task
    # is done, however it ended (a task cancelled before it ran never runs its handler).
    admit: Callable[[], Refusal | None] | None = None
    release: Callable[[], None] | None = None


class _AbortedError(Exception):
    """Raised by ``CallContext.abort``: the call ends with this status."""

    def __init__(self, code: grpc.StatusCode, details: str, trailers: Sequence[Metadatum]) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.trailers = trailers


class CallContext:
    """A call's metadata, peer and deadline, and the way to end it with a status."""

    def __init__(self, metadata: list[Metadatum], peer: str, deadline: float | None) -> None:
        self._metadata = metadata
        self._peer = peer
        self._deadline = deadline
        self._cancelled = False
        # A unary handler may set a status instead of aborting; its response is then dropped.
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.trailers: Sequence[Metadatum] = ()

    def invocation_metadata(self) -> list[Metadatum]:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()

    def cancelled(self) -> bool:
        return self._cancelled

    def mark_cancelled(self) -> None:
        """The client went away (or the deadline passed): the handler is being cancelled."""
        self._cancelled = True

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Sequence[Metadatum] = ()
    ) -> NoReturn:
        raise _AbortedError(code, details, trailing_metadata)

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def set_trailing_metadata(self, trailing_metadata: Sequence[Metadatum]) -> None:
        self.trailers = trailing_metadata


def _percent_encoded(message: str) -> bytes:
    """``grpc-message``'s encoding: UTF-8, bytes outside printable ASCII (and ``%``) as %XX."""
    return urllib.parse.quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode()


def _trailers(
    code: grpc.StatusCode, details: str, extra: Iterable[Metadatum]
) -> list[tuple[bytes, bytes]]:
    headers = [(b"grpc-status", str(code.value[0]).encode())]
    if details:
        headers.append((b"grpc-message", _percent_encoded(details)))
    for key, value in extra:
        if key.endswith("-bin"):
            raw = value if isinstance(value, bytes) else value.encode()
            headers.append((key.encode(), base64.b64encode(raw)))
        else:
            headers.append((key.encode(), value.encode() if isinstance(value, str) else value))
    return headers


def _hpack_length(value: int) -> bytes:
    """An HPACK integer with a 7-bit prefix (RFC 7541 5.1), as a string's length: no Huffman."""
    if value < 0x7F:
        return bytes((value,))
    encoded = bytearray((0x7F,))
    value -= 0x7F
    while value >= 0x80:
        encoded.append(value & 0x7F | 0x80)
        value >>= 7
    encoded.append(value)
    return bytes(encoded)


def _header_block(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """``headers`` as an HPACK block of literals without indexing (RFC 7541 6.2.2): neither
    side's dynamic table changes, so blocks made here and h2's own may go in any order."""
    return b"".join(
        [b"\x00" + _hpack_length(len(n)) + n + _hpack_length(len(v)) + v for n, v in headers]
    )


def _malformed(fields: Iterable[tuple[bytes, bytes]]) -> str | None:
    """Why these request header fields make a malformed request (RFC 9113 8.2 and 8.3), or
    None: names with characters RFC 9113 forbids, values with NUL, CR or LF or surrounding white
    space, connection-specific fields, pseudo-header fields unknown, repeated, after the
    regular ones or missing, and an empty ``:path``. (h2 checked the same, and Host against
    ``:authority``, which a gRPC server does not read.)"""
    pseudo: set[bytes] = set()
    regular = False
    for name, value in fields:
        if name[:1] == b":":
            if regular:
                return f"{name!r} after the regular fields"
            if name not in _REQUEST_PSEUDO_FIELDS or name in pseudo:
                return f"{name!r} unknown or repeated"
            if name == b":path" and not value:
                return "an empty :path"
            pseudo.add(name)
        else:
            regular = True
            if _FIELD_NAME.fullmatch(name) is None:
                return f"the field name {name!r}"
            if name in _CONNECTION_FIELDS or (name == b"te" and value != b"trailers"):
                return f"the connection-specific field {name!r}"
        if _FIELD_VALUE.fullmatch(value) is None:
            return f"the value of {name!r}"
    missing = _REQUIRED_PSEUDO_FIELDS - pseudo
    if missing:
        return "missing " + ", ".join(sorted(map(repr, missing)))
    return None


def _deadline(timeout: bytes | None) -> float | None:
    """The call's deadline on the monotonic clock, from ``grpc-timeout`` (``100m``: 100 ms)."""
    if not timeout:
        return None
    text = timeout.decode("ascii", "replace")
    unit = _TIMEOUT_UNITS.get(text[-1:])
    if unit is None or not text[:-1].isdigit():
        return None
    return time.monotonic() + int(text[:-1]) * unit


def _peer_name(transport: asyncio.BaseTransport) -> str:
    """The peer as gRPC names it (``ipv4:127.0.0.1:5000``); a unix socket's callers: ``unix:``."""
    address = transport.get_extra_info("peername")
    if isinstance(address, tuple) and len(address) == 2:
        return f"ipv4:{address[0]}:{address[1]}"
    if isinstance(address, tuple) and len(address) == 4:
        return f"ipv6:[{address[0]}]:{address[1]}"
    return "unix:"


class _Call:
    """One HTTP/2 stream: its request, its handler's task, and the writing of its responses."""

    def __init__(
        self,
        connection: _Connection,
        stream_id: int,
        method: Method,
        context: CallContext,
        encoding: bytes = b"identity",
    ) -> None:
        self.connection = connection
        self.stream_id = stream_id
        self.method = method
        self.context = context
        self.request = bytearray()
        self.encoding = encoding  # The request's grpc-encoding.
        # A bidirectional call's request messages as they arrive; None: the last has come.
        self.requests: asyncio.Queue[bytes | None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.headers_sent = False
        self.ended = False
        self._deadline_timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        method = self.method
        if method.admit is not None:
            refusal = method.admit()
            if refusal is not None:
                self.end(grpc.StatusCode.RESOURCE_EXHAUSTED, *refusal)
                self.connection.forget(self)
                return
        self.task = asyncio.get_running_loop().create_task(self._run())
        if method.release is not None:
            release = method.release
            self.task.add_done_callback(lambda _: release())
        remaining = self.context.time_remaining()
        if remaining is not None:
            self._deadline_timer = asyncio.get_running_loop().call_later(
                max(remaining, 0.0), self._deadline_passed
            )

    def _deadline_passed(self) -> None:
        self.end(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        self.cancel()

    def cancel(self) -> None:
        """The client is gone (reset, or the connection closed): the handler is cancelled."""
        self.context.mark_cancelled()
        if self.task is not None:
            self.task.cancel()

    async def _run(self) -> None:
        try:
            method = self.method
            context = self.context
            if method.bidi is not None:
                async for response in method.bidi(self._request_messages(), context):
                    await self.send(response)
            elif method.stream is not None:
                async for response in method.stream(self._request_message(), context):
                    await self.send(response)
            elif method.unary is not None:
                response = await method.unary(self._request_message(), context)
                if context.code not in (None, grpc.StatusCode.OK):
                    # Set, not aborted: the status the handler chose, without its response.
                    self.end(context.code or grpc.StatusCode.OK, context.details, context.trailers)
                    return
                await self.send(response)
            self.end(grpc.StatusCode.OK, "")
        except _AbortedError as aborted:
            self.end(aborted.code, aborted.details, aborted.trailers)
        except Exception:
            logger.exception("a call on stream %d failed unexpectedly", self.stream_id)
            self.end(grpc.StatusCode.INTERNAL, "internal error; see the sidecar log")
        finally:
            if self._deadline_timer is not None:
                self._deadline_timer.cancel()
            self.connection.forget(self)

    def _request_message(self) -> bytes:
        """The one request message of a unary or server-streaming call."""
        request = self.request
        if len(request) < 5 or int.from_bytes(request[1:5], "big") != len(request) - 5:
            raise _AbortedError(
                grpc.StatusCode.INTERNAL, "the request is not exactly one gRPC message", ()
            )
        return self._decoded(request[0], bytes(request[5:]))

    def _decoded(self, compressed: int, message: bytes) -> bytes:
        if not compressed:
            return message
        try:
            if self.encoding == b"gzip":
                return gzip.decompress(message)
            if self.encoding == b"deflate":
                return zlib.decompress(message)
        except (OSError, zlib.error, EOFError) as exc:
            raise _AbortedError(
                grpc.StatusCode.INTERNAL, f"the request does not decompress ({exc})", ()
            ) from exc
        raise _AbortedError(
            grpc.StatusCode.UNIMPLEMENTED,
            f"request compression {self.encoding.decode(errors='replace')!r} is not supported; "
            "use gzip, deflate or none",
            (),
        )

    def take_data(self, data: bytes, limit: int) -> bool:
        """Add request bytes; a bidirectional call's complete messages go to its handler.
        False if a message is over ``limit`` bytes."""
        self.request += data
        request = self.request
        while len(request) >= 5:
            length = int.from_bytes(request[1:5], "big")
            if length > limit:
                return False
            if self.requests is None:
                return len(request) <= limit + 5
            if len(request) < 5 + length:
                return True
            self.requests.put_nowait(self._decoded(request[0], bytes(request[5 : 5 + length])))
            del request[: 5 + length]
        return True

    async def _request_messages(self) -> AsyncIterator[bytes]:
        assert self.requests is not None
        while (message := await self.requests.get()) is not None:
            yield message

    async def send(self, message: bytes) -> None:
        """Queue one response message; waits only while HTTP/2's flow control (or the socket)
        has no room for it."""
        connection = self.connection
        h2_connection = connection.h2
        stream_id = self.stream_id
        if not self.headers_sent:
            connection.send_headers(stream_id, _RESPONSE_HEADERS)
            self.headers_sent = True
        if connection.send_in_one_frame(stream_id, message):
            return
        data = b"\x00" + len(message).to_bytes(4, "big") + message
        while data:
            room = min(
                h2_connection.local_flow_control_window(stream_id),
                h2_connection.max_outbound_frame_size,
            )
            if room <= 0 or connection.paused:
                await connection.writable()
                continue
            h2_connection.send_data(stream_id, data[:room])
            data = data[room:]
            connection.flush_soon()

    def end(self, code: grpc.StatusCode, details: str, trailers: Iterable[Metadatum] = ()) -> None:
        """End the stream with this status (once; later calls do nothing)."""
        if self.ended:
            return
        self.ended = True
        if self.context.cancelled() or self.connection.closed:
            return
        headers = _trailers(code, details, trailers)
        if not self.headers_sent:
            headers = [*_RESPONSE_HEADERS, *headers]  # Trailers-only.
        try:
            self.connection.send_headers(self.stream_id, headers, end_stream=True)
        except h2.exceptions.StreamClosedError:
            return
        self.connection.flush_soon()


class _ServerConnection(h2.connection.H2Connection):
    """h2's connection, with its count of open streams made cheap."""

    @property
    def open_inbound_streams(self) -> int:
        """h2 counts open streams for every stream a client opens, by going through all the
        streams it holds (forgetting the closed ones as it goes). With thousands of calls on a
        connection that costs more than the call: under overload a refusal cost half a
        millisecond, and the sidecar refused about 1,000 calls a second while clients queued
        the rest for tens of seconds. The streams held are never fewer than the open ones, so
        while they are below the limit that count is enough; h2's own goes through them only
        when they reach it, which also keeps the streams held within it."""
        held = len(self.streams)
        if held < self.local_settings.max_concurrent_streams:
            return held
        return super().open_inbound_streams


class _Connection(asyncio.Protocol):
    def __init__(self, server: H2Server) -> None:
        self.server = server
        self.h2 = _ServerConnection(
            h2.config.H2Configuration(
                client_side=False,
                header_encoding=None,
                validate_inbound_headers=False,  # ``_malformed`` checks them, for less.
                normalize_inbound_headers=False,  # It joins cookies, which gRPC has none of.
            )
        )
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: server.max_calls_per_connection,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 16 * 1024,
                # A request of the largest size (with gRPC's prefix) needs no round trip.
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: min(
                    server.max_request_bytes + 5, CONNECTION_WINDOW
                ),
            },
        )
        self.calls: dict[int, _Call] = {}
        self.transport: asyncio.Transport | None = None
        self.peer = "unix:"
        self.paused = False
        self.closed = False
        self.going_away = False
        self._flush_pending = False
        self._room: asyncio.Future[None] | None = None
        # Frames built here (``send_in_one_frame``) behind all h2 had queued before them.
        self._frames = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, though they are one.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        self.peer = _peer_name(transport)
        self.server.connections.add(self)
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(
            CONNECTION_WINDOW - self.h2.inbound_flow_control_window
        )
        self.flush()
        if self.server.stopping:
            self.goaway()
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for call in list(self.calls.values()):
            call.cancel()
        self._wake()
        self.server.connection_lost(self)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            logger.info("closing an HTTP/2 connection from %s: %s", self.peer, exc)
            self.flush()
            self.close()
            return
        for event in events:
            self._handle(event)
        self.flush()

    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._request(event.stream_id, event.headers or [])
        elif isinstance(event, h2.events.DataReceived):
            self._data(event)
        elif isinstance(event, h2.events.StreamEnded):
            call = self.calls.get(event.stream_id)
            if call is not None and call.requests is not None:
                call.requests.put_nowait(None)
            elif call is not None and call.task is None:
                call.start()
        elif isinstance(event, h2.events.StreamReset):
            call = self.calls.pop(event.stream_id, None)
            if call is not None:
                call.ended = True
                call.cancel()
            self._wake()
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self._wake()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.close()

    def _data(self, event: h2.events.DataReceived) -> None:
        self.h2.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id)
        call = self.calls.get(event.stream_id)
        if call is None or (call.task is not None and call.requests is None):
            return
        limit = self.server.max_request_bytes
        try:
            if not call.take_data(event.data or b"", limit):
                call.end(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the request message is larger than this server's limit of {limit} bytes",
                )
        except _AbortedError as aborted:  # A bidirectional call's message did not decode.
            call.end(aborted.code, aborted.details, aborted.trailers)
        if call.ended:
            call.cancel()
            self.calls.pop(event.stream_id, None)

    def _request(self, stream_id: int, raw_headers: Sequence[tuple[bytes, bytes]]) -> None:
        if self.going_away:  # A call sent before the client read the GOAWAY: retry elsewhere.
            self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        malformed = _malformed(raw_headers)
        if malformed is not None:  # A stream error, as RFC 9113 8.1.1 has it.
            logger.info("resetting a malformed request from %s: %s", self.peer, malformed)
            self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.PROTOCOL_ERROR)
            return
        headers: dict[bytes, bytes] = {}
        metadata: list[Metadatum] = []
        for name, value in raw_headers:
            headers[name] = value
            if not name.startswith(b":") and name not in (b"content-type", b"te"):
                key = name.decode("ascii", "replace")
                if not key.endswith("-bin"):  # The handlers read text metadata only.
                    metadata.append((key, value.decode("latin-1")))
        context = CallContext(metadata, self.peer, _deadline(headers.get(b"grpc-timeout")))
        path = headers.get(b":path", b"").decode("ascii", "replace")
        method = self.server.methods.get(path)
        encoding = headers.get(b"grpc-encoding", b"identity")
        call = _Call(self, stream_id, method or Method(), context, encoding)
        self.calls[stream_id] = call
        refusal = self._refusal(path, method, headers)
        if refusal is not None:
            call.end(*refusal)
            self.calls.pop(stream_id, None)
        elif call.method.bidi is not None:
            call.requests = asyncio.Queue()
            call.start()

    def _refusal(
        self, path: str, method: Method | None, headers: Mapping[bytes, bytes]
    ) -> tuple[grpc.StatusCode, str] | None:
        if not headers.get(b"content-type", b"").startswith(b"application/grpc"):
            return grpc.StatusCode.UNKNOWN, "not a gRPC request (content-type)"
        if method is None:
            return (
                grpc.StatusCode.UNIMPLEMENTED,
                f"{path or 'this method'} is not served on this address{self.server.unserved}",
            )
        token = self.server.token
        if token is not None and not token.admits(path, headers.get(b"authorization", b"")):
            return grpc.StatusCode.UNAUTHENTICATED, TOKEN_REFUSED
        return None

    def forget(self, call: _Call) -> None:
        if self.calls.get(call.stream_id) is call:
            del self.calls[call.stream_id]
        self.server.call_done()

    async def writable(self) -> None:
        """Until flow control or the socket may have room again (or the connection closed)."""
        if self.closed:
            raise asyncio.CancelledError
        if self._room is None:
            self._room = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._room)

    def _wake(self) -> None:
        room, self._room = self._room, None
        if room is not None and not room.done():
            room.set_result(None)

    def flush_soon(self) -> None:
        """Write what h2 has queued once the streams woken in this loop turn have queued theirs:
        one write for all of them."""
        if not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self.flush)

    def send_in_one_frame(self, stream_id: int, message: bytes) -> bool:
        """Queue ``message`` in one DATA frame built here, if it fits in a frame and in both
        flow-control windows and the stream may send; False leaves it to h2 (which waits or
        refuses as the protocol says).

        Why not h2's ``send_data`` for these: its checks, state machines, logging calls and
        frame objects cost several µs a frame, the largest cost of a fan-out to 1,000 streams.
        The windows are h2's own, charged here as ``send_data`` would charge them, so its
        accounting of the client's WINDOW_UPDATEs stays right."""
        h2_connection = self.h2
        stream = h2_connection.streams.get(stream_id)
        size = len(message) + 5
        if (
            self.paused
            or stream is None
            or stream.state_machine.state not in _STREAM_STATES_SENDING
            or h2_connection.state_machine.state is h2.connection.ConnectionState.CLOSED
            or size > h2_connection.outbound_flow_control_window
            or size > stream.outbound_flow_control_window
            or size > h2_connection.max_outbound_frame_size
        ):
            return False
        h2_connection.outbound_flow_control_window -= size
        stream.outbound_flow_control_window -= size
        frames = self._frames
        frames += h2_connection.data_to_send()  # What h2 queued first goes first.
        frames += _MESSAGE_FRAME_HEADER.pack(
            size >> 16, size & 0xFFFF, 0, 0, stream_id, 0, len(message)
        )
        frames += message
        self.flush_soon()
        return True

    def send_headers(
        self,
        stream_id: int,
        headers: Sequence[tuple[bytes, bytes]],
        *,
        end_stream: bool = False,
    ) -> None:
        """Send a response's headers or trailers: encoded by ``_header_block`` in a HEADERS
        frame built here when the stream may send it, else through h2 (which refuses, or splits
        the block, as the protocol says).

        Why not h2 for every one: every call sends two blocks (a refusal, one), and h2's checks
        and HPACK encoder made a refusal's trailers cost 75-90 µs, against 27 µs here, building
        the trailers included (a micro-benchmark on the 12-01 machine). The stream's state
        machine is h2's own, stepped here as ``send_headers`` steps it, so h2 knows the stream
        is closed once its trailers are sent. h2's encoder has to send a pending change of its
        table's size first, in its next block: while one is pending, h2 sends."""
        h2_connection = self.h2
        stream = h2_connection.streams.get(stream_id)
        block = _header_block(headers)
        if (
            stream is None
            or stream.state_machine.state not in _STREAM_STATES_SENDING
            or h2_connection.state_machine.state is not h2.connection.ConnectionState.SERVER_OPEN
            or h2_connection.encoder.table_size_changes
            or len(block) > h2_connection.max_outbound_frame_size
        ):
            h2_connection.send_headers(stream_id, headers, end_stream=end_stream)
            return
        h2_connection.state_machine.process_input(h2.connection.ConnectionInputs.SEND_HEADERS)
        stream.state_machine.process_input(h2.stream.StreamInputs.SEND_HEADERS)
        flags = _END_HEADERS
        if end_stream:
            stream.state_machine.process_input(h2.stream.StreamInputs.SEND_END_STREAM)
            flags |= _END_STREAM
        frames = self._frames
        frames += h2_connection.data_to_send()  # What h2 queued first goes first.
        size = len(block)
        frames += _HEADERS_FRAME_HEADER.pack(size >> 16, size & 0xFFFF, 1, flags, stream_id)
        frames += block

    def flush(self) -> None:
        self._flush_pending = False
        data = self._frames
        data += self.h2.data_to_send()
        self._frames = bytearray()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def goaway(self) -> None:
        """Tell the client no new calls will be taken; the ones under way go on.

        Written by hand: h2's ``close_connection`` closes its side at once, so the calls under
        way could no longer end with a status."""
        if self.closed or self.transport is None:
            return
        self.going_away = True
        self.flush()
        frame = hyperframe.frame.GoAwayFrame(
            0, last_stream_id=self.h2.highest_inbound_stream_id, error_code=0
        )
        self.transport.write(frame.serialize())

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()


class H2Server(Service):
    """Serves ``methods`` (by path: ``/package.Service/Method``) on ``listen``: ``host:port``
    or ``unix:/path``, with TLS if given a context; and, always in plaintext, on each of
    ``private_listen`` (``unix-abstract:NAME`` too). ``port`` is the TCP port bound (for
    ``host:0``). ``reuse_port``: several processes may listen on the same port."""

    def __init__(
        self,
        listen: str,
        methods: Mapping[str, Method],
        *,
        max_calls_per_connection: int,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        shutdown_grace: float = 0.0,
        token: str = "",
        ssl_context: ssl.SSLContext | None = None,
        private_listen: Sequence[str] = (),
        reuse_port: bool = False,
        unserved: str = "",
    ) -> None:
        """``unserved`` follows "…is not served on this address" in the refusal of a method
        not in ``methods`` (say, where it is served)."""
        self.listen = listen
        self.private_listen = tuple(private_listen)
        self.reuse_port = reuse_port
        self.unserved = unserved
        self.max_request_bytes = max_request_bytes
        self.shutdown_grace = shutdown_grace
        self.methods = dict(methods)
        self.max_calls_per_connection = max_calls_per_connection
        self.token = BearerToken(token) if token else None
        self.ssl_context = ssl_context
        self.connections: set[_Connection] = set()
        # Set while stopping and after: a connection made then goes away at once.
        self.stopping = False
        self.port: int | None = None
        self._servers: list[asyncio.Server] = []
        self._idle: asyncio.Event | None = None
        self._no_connections: asyncio.Event | None = None

    async def _start(self) -> None:
        self.stopping = False
        try:
            self._servers.append(await self._listen(self.listen, self.ssl_context))
            for address in self.private_listen:
                self._servers.append(await self._listen(address, None))
        except BaseException:
            for server in self._servers:
                server.close()
            self._servers = []
            raise
        if not self.listen.startswith("unix:"):
            self.port = self._servers[0].sockets[0].getsockname()[1]

    async def _listen(self, address: str, context: ssl.SSLContext | None) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        if address.startswith("unix-abstract:"):
            name = "\0" + address.removeprefix("unix-abstract:")
            return await loop.create_unix_server(lambda: _Connection(self), name, ssl=context)
        if address.startswith("unix:"):
            path = address.removeprefix("unix:")
            return await loop.create_unix_server(lambda: _Connection(self), path, ssl=context)
        host, _, port = address.rpartition(":")
        return await loop.create_server(
            lambda: _Connection(self),
            host.strip("[]") or None,
            int(port),
            ssl=context,
            reuse_port=self.reuse_port or None,
        )

    def call_done(self) -> None:
        if self._idle is not None and not any(c.calls for c in self.connections):
            self._idle.set()

    async def _stop(self) -> None:
        """Stop taking connections and calls, let the calls under way finish for up to
        ``shutdown_grace`` seconds, end the rest UNAVAILABLE, then close every connection."""
        grace = self.shutdown_grace
        self.stopping = True
        servers, self._servers = self._servers, []
        # Accept no more, then let the connections just accepted arrive before closing the
        # listeners: asyncio (3.11) makes an accepted connection's transport in a task of its
        # own, and one that runs after ``close()`` fails an assertion and leaves the socket and
        # a half-made transport to the garbage collector. Two loop turns: the accept's task,
        # then the transport's connection_made. (uvloop makes the transport at once and never
        # registered the listener as a reader, so remove_reader does nothing there.) One made
        # later still (a TLS handshake under way) closes itself, seeing ``stopping``.
        loop = asyncio.get_running_loop()
        for server in servers:
            for listener in server.sockets:
                loop.remove_reader(listener.fileno())
        for _ in range(2):
            await asyncio.sleep(0)
        for server in servers:
            server.close()
        for connection in list(self.connections):
            connection.goaway()
        if grace > 0 and any(c.calls for c in self.connections):
            self._idle = asyncio.Event()
            await event_set_within(self._idle, grace)
        calls = [call for connection in self.connections for call in connection.calls.values()]
        for call in calls:
            call.end(grpc.StatusCode.UNAVAILABLE, "the sidecar is stopping")
            await cancel_and_wait(call.task)
        for connection in list(self.connections):
            connection.flush()
            connection.close()
        # Until each is closed (TLS says goodbye first): a transport left to the garbage
        # collector is a ResourceWarning and a socket held open meanwhile.
        if self.connections:
            self._no_connections = asyncio.Event()
            await event_set_within(self._no_connections, CLOSE_TIMEOUT)
            for connection in list(self.connections):
                connection.abort()
        for server in servers:
            await server.wait_closed()

    def connection_lost(self, connection: _Connection) -> None:
        self.connections.discard(connection)
        if not self.connections and self._no_connections is not None:
            self._no_connections.set()


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server TLS context offering HTTP/2 only, as gRPC clients expect (ALPN ``h2``)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols(["h2"])
    return context
