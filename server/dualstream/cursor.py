"""Opaque stream cursors: for each partition of the topic, the offset to continue from.

A cursor is ``v1.`` followed by unpadded base64url of ``topic\\0p:o,p:o,...``. It is opaque to
clients: they store the last one they received and send it back as ``resume_cursor``.
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Mapping
from dataclasses import dataclass

from dualstream.errors import InvalidArgumentError

PREFIX = "v1."
MAX_CURSOR_LENGTH = 16 * 1024
MAX_PARTITIONS = 10_000


@dataclass(frozen=True, slots=True)
class Cursor:
    topic: str
    offsets: Mapping[int, int]

    def encode(self) -> str:
        # Streams on the same sources move through the same frontiers, so a live event's
        # cursor is often the same for all of them: each is encoded once.
        return _encode(self.topic, tuple(sorted(self.offsets.items())))

    @classmethod
    def decode(cls, text: str, topic: str, field: str = "resume_cursor") -> Cursor:
        """Parse a cursor a client sent back; it must belong to ``topic``."""
        if len(text) > MAX_CURSOR_LENGTH or not text.startswith(PREFIX):
            raise InvalidArgumentError(field, "is not a cursor this sidecar issued")
        encoded = text[len(PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
            cursor_topic, body = raw.split("\0", 1)
            offsets: dict[int, int] = {}
            for item in body.split(",") if body else ():
                partition, offset = item.split(":")
                offsets[int(partition)] = int(offset)
        except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
            raise InvalidArgumentError(field, "is not a cursor this sidecar issued") from exc
        if len(offsets) > MAX_PARTITIONS or any(p < 0 or o < 0 for p, o in offsets.items()):
            raise InvalidArgumentError(field, "is not a cursor this sidecar issued")
        if cursor_topic != topic:
            raise InvalidArgumentError(
                field, f"belongs to topic {cursor_topic!r}, not this sidecar's {topic!r}"
            )
        return cls(cursor_topic, offsets)


@functools.lru_cache(maxsize=4096)
def _encode(topic: str, offsets: tuple[tuple[int, int], ...]) -> str:
    body = ",".join(f"{p}:{o}" for p, o in offsets)
    raw = f"{topic}\0{body}".encode()
    return PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
