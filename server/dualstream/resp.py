"""Just enough of RESP2 for a Pub/Sub connection the hub fully controls.

The hub owns its subscriber connection instead of using a client library's, because it must
know exactly when the connection was lost and when every subscription is live again: that
moment bounds what a subscriber may have missed.
"""

from __future__ import annotations

import asyncio

Reply = bytes | int | str | list["Reply"] | None


class RespError(Exception):
    """Redis answered a command with an error reply."""


def encode_command(*parts: str | bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        raw = part.encode() if isinstance(part, str) else part
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


async def read_reply(reader: asyncio.StreamReader) -> Reply:
    line = await reader.readuntil(b"\r\n")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body.decode()
    if kind == b"-":
        raise RespError(body.decode())
    if kind == b":":
        return int(body)
    if kind == b"$":
        length = int(body)
        if length < 0:
            return None
        return (await reader.readexactly(length + 2))[:-2]
    if kind == b"*":
        count = int(body)
        if count < 0:
            return None
        return [await read_reply(reader) for _ in range(count)]
    raise RespError(f"unexpected reply type {kind!r}")
