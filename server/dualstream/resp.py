"""Just enough of RESP2 for the connections dualstream controls itself.

The hub owns its subscriber connection instead of using a client library's, because it must
know exactly when the connection was lost and when each subscription is live again: that
moment bounds what a subscriber may have missed. (redis-py's asyncio PubSub re-subscribes by
itself inside its reconnect, so neither moment is visible, and its health check sends PING
without ever timing out the answer, so a stopped Redis goes unnoticed.) The notifier pipelines
the PUBLISH commands of concurrent calls on one connection, in the order their Kafka acks came.

Every reply is bounded (size, count, nesting), and anything that is not a RESP2 reply raises
``RespProtocolError``: a RESP3 frame (this connection never says HELLO 3, so one is a
confused peer), a malformed length, a frame that does not end where it says. An error reply
raises ``RespError``. Callers treat both as a connection that cannot be trusted any more.
"""

from __future__ import annotations

import asyncio

Reply = bytes | int | str | list["Reply"] | None

# A notification is a few hundred bytes; these leave room for anything Redis legitimately
# sends on these connections while keeping a confused or hostile peer from exhausting memory.
MAX_BULK_BYTES = 16 * 1024 * 1024
MAX_ARRAY_LENGTH = 1024 * 1024
MAX_NESTING = 8
# asyncio's StreamReader limit, which bounds a line read by read_reply.
MAX_LINE_BYTES = 64 * 1024
RESP3_TYPES = {
    b">": "push",
    b"%": "map",
    b"~": "set",
    b"|": "attribute",
    b"_": "null",
    b",": "double",
    b"#": "boolean",
    b"(": "big number",
    b"!": "blob error",
    b"=": "verbatim string",
}


class RespError(Exception):
    """Redis answered a command with an error reply."""


class RespProtocolError(ValueError):
    """The peer sent something that is not a RESP2 reply this connection can expect."""


def encode_command(*parts: str | bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        raw = part.encode() if isinstance(part, str) else part
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


def encode_publish(channel: bytes, message: bytes) -> bytes:
    """``encode_command(b"PUBLISH", channel, message)`` in one step: the publish path sends one
    per event."""
    return b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
        len(channel),
        channel,
        len(message),
        message,
    )


async def read_reply(reader: asyncio.StreamReader) -> Reply:
    """Read one reply. Raises ``RespError`` for an error reply, ``RespProtocolError`` for
    anything malformed or unexpected, ``asyncio.IncompleteReadError`` when the stream ends
    inside a reply."""
    return await _read(reader, 0)


async def _read(reader: asyncio.StreamReader, depth: int) -> Reply:
    try:
        line = await reader.readuntil(b"\r\n")
    except asyncio.LimitOverrunError as exc:
        raise RespProtocolError("a reply line longer than the reader's limit") from exc
    kind, body = line[:1], line[1:-2]
    if kind == b"$":
        length = _length(body, MAX_BULK_BYTES, "bulk string")
        if length < 0:
            return None
        data = await reader.readexactly(length + 2)
        if data[-2:] != b"\r\n":
            raise RespProtocolError("a bulk string longer than its declared length")
        return data[:-2]
    if kind == b"*":
        count = _length(body, MAX_ARRAY_LENGTH, "array")
        if count < 0:
            return None
        if depth >= MAX_NESTING:
            raise RespProtocolError(f"arrays nested deeper than {MAX_NESTING}")
        return [await _read(reader, depth + 1) for _ in range(count)]
    return one_line_reply(line[:-2])


def one_line_reply(line: bytes) -> Reply:
    """The reply that ``line`` (without its CRLF) is by itself: a simple string or an integer.
    Raises ``RespError`` for an error reply and ``RespProtocolError`` for anything else,
    including the first line of a longer reply."""
    kind, body = line[:1], line[1:]
    if kind == b"+":
        return _text(body)
    if kind == b"-":
        raise RespError(_text(body))
    if kind == b":":
        return _integer(body)
    if kind in (b"$", b"*"):
        raise RespProtocolError("a reply of several lines where one line was expected")
    if kind in RESP3_TYPES:
        raise RespProtocolError(
            f"a RESP3 {RESP3_TYPES[kind]} reply on a connection that speaks RESP2"
        )
    raise RespProtocolError(f"unknown reply type {kind!r}")


class ReplyLines:
    """The complete lines of what a connection sent, chunk by chunk, for a connection whose
    every reply is one line (PUBLISH answers with an integer). A chunk of a hundred replies is
    split in one step, where ``read_reply`` would take them one at a time; each line is a
    reply for ``one_line_reply``."""

    def __init__(self) -> None:
        self._partial = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """The lines ``chunk`` completes, without their CRLF; the rest waits for the next."""
        *lines, self._partial = (self._partial + chunk).split(b"\r\n")
        if len(self._partial) > MAX_LINE_BYTES:
            raise RespProtocolError(f"a reply line longer than {MAX_LINE_BYTES} bytes")
        return lines


def _text(body: bytes) -> str:
    return body.decode(errors="replace")


def _integer(body: bytes) -> int:
    try:
        return int(body)
    except ValueError as exc:
        raise RespProtocolError(f"{body[:32]!r} is not an integer") from exc


def _length(body: bytes, limit: int, what: str) -> int:
    length = _integer(body)
    if length < -1 or length > limit:
        raise RespProtocolError(f"a {what} of length {length} (the limit is {limit})")
    return length
