"""A scripted stand-in for Redis on loopback, for unit tests of dualstream's own RESP code.

Each connection the code under test opens becomes a ``Peer`` the test drives by hand: read
the commands it sent, answer them, or send anything at all (error replies, RESP3 frames,
garbage, silence). Its command parser is written here independently of ``dualstream.resp``,
so that code is not tested against itself. Behaviour that crosses real Redis is tested
against real Redis elsewhere; this is for the failures real Redis will not produce on cue.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Self


def bulk(value: bytes | str) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return b"$%d\r\n%s\r\n" % (len(raw), raw)


def array(*items: bytes) -> bytes:
    """An array of already-encoded items."""
    return b"*%d\r\n" % len(items) + b"".join(items)


class Peer:
    """One accepted connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.subscribed: set[tuple[bool, bytes]] = set()  # (pattern, name)

    async def command(self, timeout: float = 10.0) -> list[bytes]:
        """The next command the client sent, as its parts."""
        async with asyncio.timeout(timeout):
            header = await self.reader.readuntil(b"\r\n")
            assert header.startswith(b"*"), header
            parts = []
            for _ in range(int(header[1:-2])):
                length = await self.reader.readuntil(b"\r\n")
                assert length.startswith(b"$"), length
                parts.append((await self.reader.readexactly(int(length[1:-2]) + 2))[:-2])
            return parts

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def answer(self, parts: list[bytes]) -> None:
        """Answer a command as Redis does in RESP2 (PING, AUTH and the Pub/Sub commands)."""
        name = parts[0].upper()
        if name == b"PING":
            self.send(array(bulk("pong"), bulk("")) if self.subscribed else b"+PONG\r\n")
        elif name == b"AUTH":
            self.send(b"+OK\r\n")
        elif name in (b"SUBSCRIBE", b"PSUBSCRIBE", b"UNSUBSCRIBE", b"PUNSUBSCRIBE"):
            pattern = name.startswith(b"P")
            for channel in parts[1:]:
                if name.endswith(b"UNSUBSCRIBE"):
                    self.subscribed.discard((pattern, channel))
                else:
                    self.subscribed.add((pattern, channel))
                kind = name.lower()
                self.send(array(bulk(kind), bulk(channel), b":%d\r\n" % len(self.subscribed)))
        elif name == b"PUBLISH":
            self.send(b":1\r\n")
        else:
            self.send(b"-ERR unknown command\r\n")

    async def serve(self, count: int = 1_000_000) -> None:
        """Answer the next ``count`` commands like Redis (until the client goes away)."""
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            for _ in range(count):
                self.answer(await self.command(timeout=3600))

    def message(self, channel: str, payload: bytes) -> None:
        """A published message, as Redis delivers it to a subscriber of ``channel``."""
        self.send(array(bulk("message"), bulk(channel), bulk(payload)))

    def close(self) -> None:
        self.writer.close()


class ScriptedRedis:
    """``async with ScriptedRedis() as redis:`` listens on a free loopback port;
    ``await redis.peer()`` is the next connection made to it."""

    def __init__(self) -> None:
        self._peers: asyncio.Queue[Peer] = asyncio.Queue()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.connections = 0

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        await self._peers.put(Peer(reader, writer))

    async def serve_every_peer(self) -> None:
        """Answer every connection made from now on like Redis, until cancelled."""
        async with asyncio.TaskGroup() as serving:
            while True:
                serving.create_task((await self.peer(timeout=3600)).serve())

    async def peer(self, timeout: float = 10.0) -> Peer:
        async with asyncio.timeout(timeout):
            return await self._peers.get()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        await self._server.wait_closed()
