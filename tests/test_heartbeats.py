"""The heartbeat board: which process is late, named, and since when (a scripted clock)."""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os

from dualstream.heartbeats import BEAT_INTERVAL, Heartbeat, HeartbeatBoard


def a_board() -> HeartbeatBoard:
    return HeartbeatBoard.create(
        multiprocessing.get_context("spawn"), ["publishing worker 0", "the delivery process"]
    )


def test_a_process_not_started_counts_from_the_board_and_then_from_its_last_beat() -> None:
    board = a_board()
    start = board.beats[0]
    assert board.stalled(10, now=start + 9) is None
    assert board.stalled(10, now=start + 11) == (
        "publishing worker 0 (not started) has not answered for 11 s; "
        "the delivery process (not started) has not answered for 11 s"
    )
    board.beat(1)
    last = board.beats[1]
    assert board.stalled(10, now=last + 10.5) == (
        f"publishing worker 0 (not started) has not answered for {last + 10.5 - start:.0f} s; "
        f"the delivery process (pid {os.getpid()}) has not answered for 10 s"
    )


async def test_a_started_heartbeat_beats_its_slot_until_stopped() -> None:
    board = a_board()
    before = board.beats[1]
    async with Heartbeat(board, 1, stall_timeout=10) as heartbeat:
        await asyncio.sleep(0)  # The beat task's first turn.
        assert board.beats[1] > before
        assert heartbeat.stalled() is None
    # Stopped on purpose, it is never late: a sidecar draining its processes one after the
    # other is not hung.
    await asyncio.sleep(BEAT_INTERVAL * 1.5)
    assert board.beats[1] == math.inf
    assert board.stalled(10, now=board.beats[0] + 3600) == (
        "publishing worker 0 (not started) has not answered for 3600 s"
    )
