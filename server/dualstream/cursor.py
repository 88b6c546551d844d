"""Opaque stream cursors: for each partition of the topic, the offset to continue from, and the
ranges below it that a resume must still replay.

A cursor is ``v1.`` followed by unpadded base64url of ``topic\\0p:o,p:o,...``. A stream that was
told of events it never delivered (a publishing sidecar could not notify them, see
``dualstream.holes``) hands out ``v2.`` cursors, which add ``\\0p:start-end,...``: half-open
offset ranges below the frontier to replay before it. Cursors are opaque to clients: they store
the last one they received and send it back as ``resume_cursor``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from dualstream.errors import InvalidArgumentError

PREFIX = "v1."
PREFIX_WITH_HOLES = "v2."
MAX_CURSOR_LENGTH = 16 * 1024
MAX_PARTITIONS = 10_000
# The most ranges a cursor carries; beyond it the closest ranges of a partition are merged, so
# a resume may replay a few events twice but never skips one.
MAX_HOLE_RANGES = 128


@dataclass(frozen=True, slots=True, order=True)
class OffsetRange:
    """The offsets ``start <= offset < end`` of one partition."""

    partition: int
    start: int
    end: int


class Cursor(NamedTuple):
    """Where a stream is (a named tuple: one is made for every delivery)."""

    topic: str
    offsets: Mapping[int, int]
    # Ranges below the frontier still to replay, sorted, disjoint, at most MAX_HOLE_RANGES.
    holes: tuple[OffsetRange, ...] = ()

    def encode(self) -> str:
        # Streams on the same sources move through the same frontiers, so a live event's
        # cursor is often the same for all of them: each is encoded once.
        return _encode(self.topic, tuple(sorted(self.offsets.items())), self.holes)

    @classmethod
    def decode(cls, text: str, topic: str, field: str = "resume_cursor") -> Cursor:
        """Parse a cursor a client sent back; it must belong to ``topic``."""
        invalid = InvalidArgumentError(field, "is not a cursor this sidecar issued")
        if len(text) > MAX_CURSOR_LENGTH:
            raise invalid
        if text.startswith(PREFIX):
            parts_expected = 2
        elif text.startswith(PREFIX_WITH_HOLES):
            parts_expected = 3
        else:
            raise invalid
        encoded = text[len(PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
            cursor_topic, offsets, holes = _parse(raw.split("\0"), parts_expected)
        except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
            raise invalid from exc
        if len(offsets) > MAX_PARTITIONS or any(p < 0 or o < 0 for p, o in offsets.items()):
            raise invalid
        if not _valid_holes(holes, offsets):
            raise invalid
        if cursor_topic != topic:
            raise InvalidArgumentError(
                field, f"belongs to topic {cursor_topic!r}, not this sidecar's {topic!r}"
            )
        return cls(cursor_topic, offsets, holes)


def _parse(
    parts: list[str], parts_expected: int
) -> tuple[str, dict[int, int], tuple[OffsetRange, ...]]:
    if len(parts) != parts_expected:
        raise ValueError("wrong number of parts")
    offsets: dict[int, int] = {}
    for item in parts[1].split(",") if parts[1] else ():
        partition, offset = item.split(":")
        offsets[int(partition)] = int(offset)
    holes = _decode_ranges(parts[2]) if parts_expected == 3 else ()
    return parts[0], offsets, holes


def _decode_ranges(body: str) -> tuple[OffsetRange, ...]:
    ranges = []
    for item in body.split(",") if body else ():
        partition, span = item.split(":")
        start, end = span.split("-")
        ranges.append(OffsetRange(int(partition), int(start), int(end)))
    return tuple(ranges)


def _valid_holes(holes: tuple[OffsetRange, ...], offsets: Mapping[int, int]) -> bool:
    # normalize_holes keeps MAX_HOLE_RANGES, or one range per partition if there are more.
    if len(holes) > max(MAX_HOLE_RANGES, len(offsets)) or list(holes) != sorted(holes):
        return False
    if not all(0 <= h.start < h.end <= offsets.get(h.partition, -1) for h in holes):
        return False
    return not any(
        a.partition == b.partition and b.start < a.end for a, b in itertools.pairwise(holes)
    )


def normalize_holes(ranges: Iterable[OffsetRange]) -> tuple[OffsetRange, ...]:
    """Sorted, disjoint ranges (touching or overlapping ones joined), at most MAX_HOLE_RANGES:
    past the bound, the two closest ranges of one partition are merged until it holds."""
    merged: list[OffsetRange] = []
    for hole in sorted(r for r in ranges if r.start < r.end):
        last = merged[-1] if merged else None
        if last is not None and last.partition == hole.partition and hole.start <= last.end:
            merged[-1] = OffsetRange(last.partition, last.start, max(last.end, hole.end))
        else:
            merged.append(hole)
    while len(merged) > MAX_HOLE_RANGES:
        pairs = [
            (merged[i + 1].start - merged[i].end, i)
            for i in range(len(merged) - 1)
            if merged[i].partition == merged[i + 1].partition
        ]
        if not pairs:
            break  # One range per partition: bounded by the partition count.
        _, i = min(pairs)
        merged[i : i + 2] = [OffsetRange(merged[i].partition, merged[i].start, merged[i + 1].end)]
    return tuple(merged)


@functools.lru_cache(maxsize=4096)
def _encode(
    topic: str, offsets: tuple[tuple[int, int], ...], holes: tuple[OffsetRange, ...]
) -> str:
    body = ",".join(f"{p}:{o}" for p, o in offsets)
    if not holes:
        return PREFIX + _base64(f"{topic}\0{body}")
    ranges = ",".join(f"{h.partition}:{h.start}-{h.end}" for h in holes)
    return PREFIX_WITH_HOLES + _base64(f"{topic}\0{body}\0{ranges}")


def _base64(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode()
