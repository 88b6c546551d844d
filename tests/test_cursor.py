"""Cursors: v1 (frontier only) as before, v2 with ranges still to replay below the frontier."""

from __future__ import annotations

import base64

import pytest

from dualstream.cursor import MAX_HOLE_RANGES, Cursor, OffsetRange, normalize_holes
from dualstream.errors import InvalidArgumentError


def raw_cursor(prefix: str, body: str) -> str:
    return prefix + base64.urlsafe_b64encode(body.encode()).rstrip(b"=").decode()


def test_a_cursor_without_holes_is_still_v1_and_round_trips() -> None:
    cursor = Cursor("events", {0: 5, 1: 0})
    text = cursor.encode()
    assert text == raw_cursor("v1.", "events\x000:5,1:0")
    assert Cursor.decode(text, "events") == cursor


def test_a_cursor_with_holes_is_v2_and_round_trips() -> None:
    holes = (OffsetRange(0, 1, 3), OffsetRange(0, 4, 5), OffsetRange(1, 0, 2))
    cursor = Cursor("events", {0: 9, 1: 7}, holes)
    text = cursor.encode()
    assert text.startswith("v2.")
    assert Cursor.decode(text, "events") == cursor


@pytest.mark.parametrize(
    "ranges",
    [
        "0:3-3",  # empty
        "0:5-11",  # reaches above the frontier
        "2:0-1",  # a partition the cursor does not have
        "0:4-6,0:1-2",  # unsorted
        "0:1-4,0:3-6",  # overlapping
        "0:-1-2",
        "0:1",
        "x:1-2",
    ],
)
def test_malformed_holes_are_refused(ranges: str) -> None:
    with pytest.raises(InvalidArgumentError, match="resume_cursor"):
        Cursor.decode(raw_cursor("v2.", f"events\x000:10,1:3\x00{ranges}"), "events")


def test_a_v1_cursor_with_a_third_part_is_refused() -> None:
    with pytest.raises(InvalidArgumentError):
        Cursor.decode(raw_cursor("v1.", "events\x000:10\x000:1-2"), "events")


def test_normalize_joins_touching_ranges_and_keeps_partitions_apart() -> None:
    assert normalize_holes(
        [OffsetRange(1, 5, 6), OffsetRange(0, 3, 4), OffsetRange(0, 1, 3), OffsetRange(0, 7, 7)]
    ) == (OffsetRange(0, 1, 4), OffsetRange(1, 5, 6))


def test_normalize_merges_the_closest_ranges_past_the_bound_and_never_loses_one() -> None:
    ranges = [OffsetRange(0, 10 * i, 10 * i + 1) for i in range(MAX_HOLE_RANGES)]
    ranges.append(OffsetRange(0, 10 * MAX_HOLE_RANGES - 8, 10 * MAX_HOLE_RANGES - 7))
    merged = normalize_holes(ranges)
    assert len(merged) == MAX_HOLE_RANGES
    covered = {o for r in merged for o in range(r.start, r.end)}
    assert all(o in covered for r in ranges for o in range(r.start, r.end))
    assert OffsetRange(0, 10 * (MAX_HOLE_RANGES - 1), 10 * MAX_HOLE_RANGES - 7) in merged
