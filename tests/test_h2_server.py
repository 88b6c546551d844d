"""The delivery process's own HTTP/2 server (``transport/h2_server.py``), against gRPC's client."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import pytest

from dualstream.transport.access import TOKEN_REFUSED
from dualstream.transport.h2_server import (
    CONNECTION_WINDOW,
    CallContext,
    H2Server,
    Method,
    _malformed,
    _ServerConnection,
)
from dualstream.transport.status import retry_trailers

_STREAM = "/test.Service/Stream"
_UNARY = "/test.Service/Unary"
_HEALTH = "/grpc.health.v1.Health/Check"
_BIDI = "/test.Service/Bidi"


def _stream(channel: grpc.aio.Channel) -> grpc.aio.UnaryStreamMultiCallable[bytes, bytes]:
    return channel.unary_stream(_STREAM, None, None)


def _unary(
    channel: grpc.aio.Channel, path: str = _UNARY
) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    return channel.unary_unary(path, None, None)


class _Handlers:
    """Handlers that record what they saw and when they ended."""

    def __init__(self) -> None:
        self.ended = asyncio.Event()
        self.cancelled = False
        self.metadata: dict[str, str | bytes] = {}
        self.peer = ""
        self.remaining: float | None = None

    async def stream(self, request: bytes, context: CallContext) -> AsyncIterator[bytes]:
        self.metadata = dict(context.invocation_metadata())
        self.peer = context.peer()
        self.remaining = context.time_remaining()
        count, _, size = request.decode().partition(":")
        try:
            for number in range(int(count)):
                yield str(number).encode().ljust(int(size or 0), b".")
            await asyncio.Event().wait()  # Until the client goes or the deadline passes.
        except asyncio.CancelledError:
            self.cancelled = context.cancelled()
            raise
        finally:
            self.ended.set()

    async def unary(self, request: bytes, context: CallContext) -> bytes:
        if request == b"refuse":
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "full: 100 % — retry",
                retry_trailers(grpc.StatusCode.RESOURCE_EXHAUSTED, "full", 0.25),
            )
        if request == b"fail":
            raise RuntimeError("a bug")
        if request == b"set":
            context.set_code(grpc.StatusCode.RESOURCE_EXHAUSTED)
            context.set_details("set, not raised")
            context.set_trailing_metadata((("grpc-retry-pushback-ms", "10"),))
            return b"dropped"
        return request[::-1]

    async def bidi(
        self, requests: AsyncIterator[bytes], context: CallContext
    ) -> AsyncIterator[bytes]:
        async for request in requests:
            yield request.upper()


@pytest.fixture
async def handlers() -> _Handlers:
    return _Handlers()


@pytest.fixture
async def server(handlers: _Handlers) -> AsyncIterator[H2Server]:
    methods = {
        _STREAM: Method(stream=handlers.stream),
        _UNARY: Method(unary=handlers.unary),
        _HEALTH: Method(unary=handlers.unary),
        _BIDI: Method(bidi=handlers.bidi),
    }
    async with H2Server(
        "127.0.0.1:0", methods, max_calls_per_connection=100, max_request_bytes=1000
    ) as running:
        yield running


@pytest.fixture
async def channel(server: H2Server) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as opened:
        yield opened


async def test_a_stream_gets_its_messages_metadata_and_peer(
    channel: grpc.aio.Channel, handlers: _Handlers
) -> None:
    call = _stream(channel)(b"3", metadata=(("traceparent", "00-ab-cd-01"),))
    assert [await call.read() for _ in range(3)] == [b"0", b"1", b"2"]
    assert handlers.metadata["traceparent"] == "00-ab-cd-01"
    assert handlers.peer.startswith("ipv4:127.0.0.1:")
    assert handlers.remaining is None
    call.cancel()
    # The client's RST_STREAM cancels the handler.
    await asyncio.wait_for(handlers.ended.wait(), 30)
    assert handlers.cancelled


async def test_messages_larger_than_a_frame_and_the_flow_control_window(
    channel: grpc.aio.Channel,
) -> None:
    # 40 messages of 100 KiB: past HTTP/2's 16 KiB frames and its 64 KiB initial window, so
    # the writer waits for the client's WINDOW_UPDATEs.
    call = _stream(channel)(b"40:102400")
    for number in range(40):
        message = await call.read()
        assert isinstance(message, bytes)
        assert len(message) == 102400
        assert message.startswith(str(number).encode())
    call.cancel()


async def test_small_messages_past_the_windows_beside_large_ones(
    channel: grpc.aio.Channel,
) -> None:
    # Small messages go out in frames the server builds itself, charged to h2's windows; large
    # ones through h2. Together on one connection, far past the 64 KiB windows: each stream
    # gets all its messages in order, and h2's accounting of the client's WINDOW_UPDATEs holds.
    async def read(request: bytes, count: int, size: int) -> None:
        call = _stream(channel)(request)
        for number in range(count):
            message = await call.read()
            assert isinstance(message, bytes)
            assert len(message) == size
            assert message.startswith(str(number).encode() + b".")
        call.cancel()

    await asyncio.wait_for(
        asyncio.gather(
            read(b"3000:200", 3000, 200),
            read(b"2000:300", 2000, 300),
            read(b"30:50000", 30, 50000),
        ),
        60,
    )


async def test_a_deadline_ends_the_stream_deadline_exceeded(
    channel: grpc.aio.Channel, handlers: _Handlers
) -> None:
    call = _stream(channel)(b"1", timeout=30)
    assert await call.read() == b"0"
    assert handlers.remaining is not None
    # gRPC's client rounds the grpc-timeout it sends up, to a coarser unit when it must.
    assert 0 < handlers.remaining <= 31
    short = _stream(channel)(b"0", timeout=0.5)
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await short.read()
    assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    call.cancel()


async def test_unary_calls_and_an_abort_with_its_trailers(channel: grpc.aio.Channel) -> None:
    assert await _unary(channel)(b"abc") == b"cba"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _unary(channel)(b"refuse")
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.value.details() == "full: 100 % — retry"  # Percent-encoded on the wire.
    trailers: dict[str, str | bytes] = dict(refused.value.trailing_metadata() or ())  # type: ignore[arg-type]
    assert trailers["grpc-retry-pushback-ms"] == "250"
    assert isinstance(trailers["grpc-status-details-bin"], bytes)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await _unary(channel)(b"fail")
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert "see the sidecar log" in (failed.value.details() or "")


async def test_an_unknown_method_is_unimplemented(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _unary(channel, "/test.Service/Publish")(b"")
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "/test.Service/Publish is not served on this address" in (refused.value.details() or "")


async def test_gzip_requests_and_the_request_size_limit(channel: grpc.aio.Channel) -> None:
    request = b"ab" * 400
    assert await _unary(channel)(request, compression=grpc.Compression.Gzip) == request[::-1]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _unary(channel)(b"x" * 1001)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limit of 1000 bytes" in (refused.value.details() or "")


async def test_a_status_set_instead_of_raised_drops_the_response(
    channel: grpc.aio.Channel,
) -> None:
    call = _unary(channel)(b"set")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.value.details() == "set, not raised"
    assert ("grpc-retry-pushback-ms", "10") in tuple(await call.trailing_metadata() or ())


async def test_a_bidirectional_call_answers_each_message_as_it_comes(
    channel: grpc.aio.Channel,
) -> None:
    call = channel.stream_stream(_BIDI, None, None)(None)
    for word in (b"one", b"two"):
        await call.write(word)
        assert await call.read() == word.upper()
    await call.done_writing()
    assert await call.code() == grpc.StatusCode.OK


class _RawClient:
    """An HTTP/2 connection driven by hand, to send what gRPC's client would not (or not yet)."""

    _REQUEST = ((":method", "POST"), (":scheme", "http"), (":authority", "test"))

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        # It may send malformed headers: the server is what checks them.
        config = h2.config.H2Configuration(
            client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False
        )
        self.h2 = h2.connection.H2Connection(config)
        self.h2.initiate_connection()
        self.statuses: dict[int, bytes] = {}
        self.resets: dict[int, h2.errors.ErrorCodes | int | None] = {}
        self.headers: dict[int, list[tuple[bytes, bytes]]] = {}  # Headers, then trailers.

    @classmethod
    @contextlib.asynccontextmanager
    async def connected(cls, port: int | None) -> AsyncIterator[_RawClient]:
        assert port is not None, "the server is not listening"
        client = cls(*await asyncio.open_connection("127.0.0.1", port))
        try:
            client.flush()
            yield client
        finally:
            client.writer.close()
            await client.writer.wait_closed()

    def call(self, stream_id: int, path: str, message: bytes, *headers: tuple[str, str]) -> None:
        self.send(
            stream_id,
            [*self._REQUEST, (":path", path), ("content-type", "application/grpc"), *headers],
            message,
        )

    def send(self, stream_id: int, headers: list[tuple[str, str]], message: bytes) -> None:
        self.h2.send_headers(stream_id, headers)
        self.h2.send_data(stream_id, message, end_stream=True)

    def flush(self) -> None:
        self.writer.write(self.h2.data_to_send())

    async def read_until(self, done: Callable[[], bool]) -> None:
        """Read frames (answering as h2 does) until ``done``; the server must get there."""
        async with asyncio.timeout(30):
            while not done():
                data = await self.reader.read(65536)
                assert data, "the connection closed first"
                for event in self.h2.receive_data(data):
                    if isinstance(event, h2.events.StreamReset):
                        self.resets[event.stream_id] = event.error_code
                    if isinstance(event, h2.events.DataReceived):
                        length = event.flow_controlled_length or 0
                        self.h2.acknowledge_received_data(length, event.stream_id)
                    if isinstance(event, h2.events.TrailersReceived | h2.events.ResponseReceived):
                        self.headers.setdefault(event.stream_id, []).extend(event.headers or [])
                        status = dict(event.headers or []).get(b"grpc-status")
                        if status is not None:
                            self.statuses[event.stream_id] = status
                self.flush()


def _message(payload: bytes) -> bytes:
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


async def test_a_bidirectional_message_that_does_not_decompress_ends_its_call(
    server: H2Server, handlers: _Handlers
) -> None:
    # Read as they come, outside any handler: its status must still be the call's end.
    async with _RawClient.connected(server.port) as client:
        client.call(1, _BIDI, b"\x01" + (4).to_bytes(4, "big") + b"junk", ("grpc-encoding", "gzip"))
        client.flush()
        await client.read_until(lambda: 1 in client.statuses)
    assert client.statuses[1] == str(grpc.StatusCode.INTERNAL.value[0]).encode()


async def test_a_client_sends_calls_past_the_default_windows_without_waiting(
    server: H2Server,
) -> None:
    # With HTTP/2's default windows (65,535 bytes) a client sends a few hundred small calls a
    # round trip, and queues the rest where the server cannot see (nor refuse) them. h2's
    # send_data raises FlowControlError rather than send past the windows the server gave.
    async with _RawClient.connected(server.port) as client:
        await client.read_until(lambda: client.h2.outbound_flow_control_window >= CONNECTION_WINDOW)
        # The largest request the server takes, with gRPC's prefix, fits one call's window.
        assert client.h2.remote_settings.initial_window_size == server.max_request_bytes + 5
        calls = range(1, 180, 2)  # 90 calls of about 1 KB: more than 65,535 bytes.
        for stream_id in calls:
            client.call(stream_id, _UNARY, _message(b"x" * (server.max_request_bytes - 5)))
        client.flush()
        await client.read_until(lambda: len(client.statuses) == len(calls))
    assert set(client.statuses.values()) == {b"0"}


async def test_a_token_is_required_except_for_health_checks(handlers: _Handlers) -> None:
    methods = {_UNARY: Method(unary=handlers.unary), _HEALTH: Method(unary=handlers.unary)}
    async with (
        H2Server("127.0.0.1:0", methods, max_calls_per_connection=10, token="s3cret") as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _unary(channel)(b"ab", metadata=(("authorization", "Bearer no"),))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert refused.value.details() == TOKEN_REFUSED
        allowed = (("authorization", "Bearer s3cret"),)
        assert await _unary(channel)(b"ab", metadata=allowed) == b"ba"
        assert await _unary(channel, _HEALTH)(b"ab") == b"ba"


async def test_stopping_ends_the_streams_unavailable(handlers: _Handlers) -> None:
    methods = {_STREAM: Method(stream=handlers.stream)}
    server = H2Server("127.0.0.1:0", methods, max_calls_per_connection=10, shutdown_grace=0.1)
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = _stream(channel)(b"1")
        assert await call.read() == b"0"
        await server.stop()
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await call.read()
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        assert handlers.ended.is_set()
    await server.stop()  # Idempotent.


@pytest.mark.parametrize("turns", range(6))
async def test_a_connection_accepted_as_the_server_stops_is_closed_too(
    handlers: _Handlers, turns: int
) -> None:
    """A connection the kernel or the loop has just accepted when ``stop`` begins (``turns``
    loop turns after connecting: not yet polled, its accept queued, its transport made, or
    served) ends: reset or closed, never left open to the garbage collector."""
    methods = {_UNARY: Method(unary=handlers.unary)}
    server = H2Server("127.0.0.1:0", methods, max_calls_per_connection=10)
    await server.start()
    loop = asyncio.get_running_loop()
    with socket.create_connection(("127.0.0.1", server.port)) as client:
        client.setblocking(False)
        for _ in range(turns):
            await asyncio.sleep(0)
        await server.stop()
        gc.collect()  # A connection left behind would warn here (filterwarnings = error).
        with contextlib.suppress(ConnectionResetError):
            async with asyncio.timeout(10):
                while await loop.sock_recv(client, 65536):
                    pass
    assert not server.connections


async def test_a_unix_socket_and_a_private_abstract_one(
    tmp_path: Path, handlers: _Handlers
) -> None:
    path = f"{tmp_path}/h2.sock"
    private = f"unix-abstract:dualstream-test-{id(handlers)}"
    methods = {_UNARY: Method(unary=handlers.unary)}
    async with (
        H2Server(f"unix:{path}", methods, max_calls_per_connection=10, private_listen=[private]),
        grpc.aio.insecure_channel(f"unix:{path}") as channel,
        grpc.aio.insecure_channel(private) as private_channel,
    ):
        assert await _unary(channel)(b"ab") == b"ba"
        assert await _unary(private_channel)(b"cd") == b"dc"


async def test_a_refusal_before_the_handler_and_a_release_for_each_admitted_call(
    handlers: _Handlers,
) -> None:
    admitted: list[bool] = []
    released: list[int] = []

    def admit() -> tuple[str, list[tuple[str, str | bytes]]] | None:
        if len(admitted) % 2:
            admitted.append(False)
            return "no room; retry in 10 ms", [("grpc-retry-pushback-ms", "10")]
        admitted.append(True)
        return None

    methods = {
        _UNARY: Method(unary=handlers.unary, admit=admit, release=lambda: released.append(1))
    }
    async with (
        H2Server("127.0.0.1:0", methods, max_calls_per_connection=10) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        assert await _unary(channel)(b"ab") == b"ba"
        call = _unary(channel)(b"fail")  # Refused before its handler could fail.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused.value.details() == "no room; retry in 10 ms"
        assert ("grpc-retry-pushback-ms", "10") in tuple(await call.trailing_metadata() or ())
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await _unary(channel)(b"fail")  # Admitted: its handler's failure is its status.
        assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert admitted == [True, False, True]
    assert len(released) == 2


async def test_headers_and_trailers_decode_before_and_after_a_table_size_change(
    server: H2Server,
) -> None:
    # The server writes its header blocks itself, as literals that leave HPACK's tables alone,
    # except while h2's encoder owes the client a table size update: then h2 writes them.
    long_path = "/test.Long/" + "x" * 300  # Its UNIMPLEMENTED message needs a 2-byte length.
    async with _RawClient.connected(server.port) as client:
        client.call(1, _UNARY, _message(b"abc"))
        client.call(3, long_path, _message(b""))
        client.call(5, _UNARY, _message(b"refuse"))
        client.flush()
        await client.read_until(lambda: len(client.statuses) == 3)
        client.h2.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 256})
        client.flush()
        await client.read_until(lambda: client.h2.local_settings.header_table_size == 256)
        client.call(7, _UNARY, _message(b"abc"))
        client.call(9, long_path, _message(b""))
        client.flush()
        await client.read_until(lambda: len(client.statuses) == 5)
    for ok in (1, 7):
        assert client.headers[ok] == [
            (b":status", b"200"), (b"content-type", b"application/grpc"), (b"grpc-status", b"0")
        ]  # fmt: skip
    for unimplemented in (3, 9):
        headers = dict(client.headers[unimplemented])
        assert headers[b"grpc-status"] == str(grpc.StatusCode.UNIMPLEMENTED.value[0]).encode()
        assert long_path.encode() in headers[b"grpc-message"]
    refused = dict(client.headers[5])
    assert refused[b"grpc-message"] == b"full: 100 %25 %E2%80%94 retry"
    assert b"grpc-retry-pushback-ms" in refused


_GOOD_REQUEST = [
    (":method", "POST"), (":scheme", "http"), (":path", _UNARY), (":authority", "test"),
    ("content-type", "application/grpc"), ("te", "trailers"), ("grpc-timeout", "5S"),
]  # fmt: skip
_MALFORMED_REQUESTS = {
    "an upper-case name": [*_GOOD_REQUEST, ("X-Trace", "1")],
    "a name with a space": [*_GOOD_REQUEST, ("x trace", "1")],
    "a name with a colon": [*_GOOD_REQUEST, ("x:trace", "1")],
    "a name with a non-ASCII byte": [*_GOOD_REQUEST, ("x-tr\u00e4ce", "1")],
    "a value with a line feed": [*_GOOD_REQUEST, ("x-trace", "1\r\nx-admin: yes")],
    "a value with a NUL": [*_GOOD_REQUEST, ("x-trace", "1\x00")],
    "a value with a leading space": [*_GOOD_REQUEST, ("x-trace", " 1")],
    "a value with a trailing tab": [*_GOOD_REQUEST, ("x-trace", "1\t")],
    "a connection header": [*_GOOD_REQUEST, ("connection", "close")],
    "te other than trailers": [*_GOOD_REQUEST[:5], ("te", "gzip")],
    "a pseudo-header after a regular one": [*_GOOD_REQUEST, (":path", _UNARY)],
    "an unknown pseudo-header": [(":protocol", "grpc"), *_GOOD_REQUEST],
    "a repeated pseudo-header": [(":method", "POST"), *_GOOD_REQUEST],
    "no :path": [field for field in _GOOD_REQUEST if field[0] != ":path"],
    "no :method": _GOOD_REQUEST[1:],
    "an empty :path": [(":path", ""), *_GOOD_REQUEST[:2], *_GOOD_REQUEST[3:]],
}


def _fields(fields: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(name.encode(), value.encode()) for name, value in fields]


def test_well_formed_request_fields_pass() -> None:
    assert _malformed(_fields(_GOOD_REQUEST)) is None
    assert _malformed(_fields([*_GOOD_REQUEST, ("x-empty", ""), ("x-inner", "a b\tc")])) is None


@pytest.mark.parametrize("fields", _MALFORMED_REQUESTS.values(), ids=_MALFORMED_REQUESTS.keys())
def test_malformed_request_fields_are_named(fields: list[tuple[str, str]]) -> None:
    assert _malformed(_fields(fields)) is not None


async def test_a_malformed_request_resets_its_stream_and_the_connection_goes_on(
    server: H2Server,
) -> None:
    # RFC 9113 8.1.1: a malformed request is a stream error; the connection's other calls go on.
    async with _RawClient.connected(server.port) as client:
        stream_ids = range(1, 2 * len(_MALFORMED_REQUESTS), 2)
        for stream_id, fields in zip(stream_ids, _MALFORMED_REQUESTS.values(), strict=True):
            client.send(stream_id, fields, _message(b"abc"))
        good = 2 * len(_MALFORMED_REQUESTS) + 1
        client.send(good, _GOOD_REQUEST, _message(b"abc"))
        client.flush()
        await client.read_until(
            lambda: len(client.resets) == len(_MALFORMED_REQUESTS) and good in client.statuses
        )
    assert set(client.resets) == set(stream_ids)
    assert set(client.resets.values()) == {h2.errors.ErrorCodes.PROTOCOL_ERROR}
    assert client.statuses == {good: b"0"}


def test_the_streams_a_connection_holds_stay_within_its_limit() -> None:
    # h2 would go through every stream it holds for each stream opened; the server counts
    # them only at the limit, and still refuses a stream past it.
    limit = 10
    server = _ServerConnection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    server.local_settings = h2.settings.Settings(
        client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limit}
    )
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    request = [
        (":method", "POST"),
        (":path", _UNARY),
        (":scheme", "http"),
        (":authority", "test"),
        ("content-type", "application/grpc"),
    ]
    for stream_id in range(1, 200, 2):  # 100 calls, one after another, each answered.
        client.send_headers(stream_id, request, end_stream=True)
        server.receive_data(client.data_to_send())
        server.send_headers(stream_id, [(":status", "200"), ("grpc-status", "0")], True)
        client.receive_data(server.data_to_send())
        assert len(server.streams) <= limit
    # A client that does not keep to the limit.
    client.remote_settings = h2.settings.Settings(
        client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000}
    )
    for stream_id in range(201, 201 + 2 * limit, 2):  # As many open at once as allowed.
        client.send_headers(stream_id, request)
    events = server.receive_data(client.data_to_send())
    assert sum(isinstance(event, h2.events.RequestReceived) for event in events) == limit
    client.send_headers(201 + 2 * limit, request)
    with pytest.raises(h2.exceptions.TooManyStreamsError):
        server.receive_data(client.data_to_send())
