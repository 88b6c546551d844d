"""Just enough of RESP2 for a Pub/Sub connection the hub fully controls.

The hub owns its subscriber connection instead of using a client library's, because it must
know exactly when the connection was lost and when every subscription is live again: that
moment bounds what a subscriber may have missed.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

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


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """Where and how to reach Redis, from a ``redis://`` or ``rediss://`` URL."""

    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool

    @classmethod
    def from_url(cls, url: str) -> RedisAddress:
        parts = urlsplit(url)
        if parts.scheme not in {"redis", "rediss"}:
            raise ValueError(f"Redis URL {url!r}: the scheme must be redis:// or rediss://")
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=parts.scheme == "rediss",
        )

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect and authenticate; the caller bounds the time this may take."""
        reader, writer = await asyncio.open_connection(
            self.host, self.port, ssl=ssl.create_default_context() if self.tls else None
        )
        try:
            if self.password is not None:
                auth = (
                    ("AUTH", self.username, self.password)
                    if self.username
                    else (
                        "AUTH",
                        self.password,
                    )
                )
                writer.write(encode_command(*auth))
                await read_reply(reader)
        except BaseException:
            writer.close()
            raise
        return reader, writer
