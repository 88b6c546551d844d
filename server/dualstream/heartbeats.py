"""Heartbeats between the processes of one supervised sidecar, so its probes speak for all.

With ``workers`` above 1 or a delivery process, only the first worker serves the admin
listener, and a process whose event loop wedges (a deadlock, a stop signal, a loop stuck in
one callback) neither exits nor answers: the supervisor cannot see it and the probes would
not. So each process writes the time into its own slot of a small shared-memory board once a
second, from its event loop; the admin listener's ``/healthz`` fails, naming the process, when
any slot is older than ``worker_stall_timeout``. A process that dies is the supervisor's to
notice (it stops them all); a process that hangs is the liveness probe's.

The clock is ``time.monotonic()``, which on Linux is one clock for every process.
"""

from __future__ import annotations

import asyncio
import ctypes
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.context import SpawnContext
from typing import Any

from dualstream.lifecycle import Service, cancel_and_wait

BEAT_INTERVAL = 1.0


@dataclass(frozen=True)
class HeartbeatBoard:
    """One slot per process: when its loop last beat, and its pid (0 until it has started).

    Made by the supervisor before it starts the processes, which get it as an argument and
    share its memory (``multiprocessing`` shares it when it starts them, and only then).
    """

    names: tuple[str, ...]
    beats: Any  # A multiprocessing RawArray of doubles: monotonic seconds.
    pids: Any  # A multiprocessing RawArray of ints.

    @classmethod
    def create(cls, context: SpawnContext, names: Sequence[str]) -> HeartbeatBoard:
        beats = context.RawArray(ctypes.c_double, len(names))
        # A process that has not started yet counts from now: starting is not a stall, unless
        # it takes longer than a stall may.
        beats[:] = [time.monotonic()] * len(names)
        return cls(tuple(names), beats, context.RawArray(ctypes.c_int, len(names)))

    def beat(self, slot: int) -> None:
        self.pids[slot] = os.getpid()
        self.beats[slot] = time.monotonic()

    def retire(self, slot: int) -> None:
        """The process stopped on purpose: its silence from now on is no stall (one that
        exits is the supervisor's to see)."""
        self.beats[slot] = math.inf

    def stalled(self, timeout: float, now: float | None = None) -> str | None:
        """What is wrong, in a line, if some process has not beaten for ``timeout`` seconds."""
        now = time.monotonic() if now is None else now
        late = [
            f"{name} ({self._describe_pid(slot)}) has not answered for {now - beat:.0f} s"
            for slot, (name, beat) in enumerate(zip(self.names, self.beats[:], strict=True))
            if now - beat > timeout
        ]
        return "; ".join(late) or None

    def _describe_pid(self, slot: int) -> str:
        pid = self.pids[slot]
        return f"pid {pid}" if pid else "not started"


class Heartbeat(Service):
    """Beats one process's slot of ``board`` every second while started."""

    def __init__(self, board: HeartbeatBoard, slot: int, stall_timeout: float) -> None:
        self.board = board
        self.slot = slot
        self.stall_timeout = stall_timeout
        self._task: asyncio.Task[None] | None = None

    def stalled(self) -> str | None:
        """For ``/healthz``: what is wrong if a process of the sidecar has stopped answering."""
        return self.board.stalled(self.stall_timeout)

    async def _start(self) -> None:
        self._task = asyncio.create_task(self._beat(), name=f"heartbeat-{self.slot}")

    async def _stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        self.board.retire(self.slot)

    async def _beat(self) -> None:
        while True:
            self.board.beat(self.slot)
            await asyncio.sleep(BEAT_INTERVAL)
