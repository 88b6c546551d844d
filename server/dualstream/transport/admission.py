"""Admission of publish calls: past capacity, a fast refusal the caller can retry.

grpc.aio takes a call from gRPC's core only when its event loop gets round to asking for the
next one, one call at a time. Calls that arrive faster than the loop takes them wait in the
core's queue, where the sidecar cannot see them, for as long as the backlog lasts; past
``grpc.server.max_pending_requests`` of them the core cancels calls with a bare CANCELLED. So
the sidecar measures that queue and refuses publishes while it is too long:

- A probe call from the sidecar to itself, over a private socket, waits in the same queue as
  every other call (first in, first out), so its round trip is how long a call arriving now
  waits before the sidecar takes it, and the calls the sidecar took meanwhile are the backlog
  that was ahead of it. A probe still waiting counts with its age and the calls taken so far.
  Probes go every ``PROBE_INTERVAL`` while publishes arrive, not when none do.
- While the wait is over ``max_queue_delay`` with at least ``MIN_BACKLOG`` calls ahead, the
  share of arriving Publish and PublishBatch calls the sidecar takes on falls by a quarter per
  probe; the others are refused on arrival: RESOURCE_EXHAUSTED with a retry hint, no span, no
  work. Once a probe comes back in under half the bound, the share grows back by a twentieth
  per probe. A refusal costs about what an empty gRPC call costs, a fraction of serving the
  call, so refusing enough of them lets the loop take calls as fast as they come: the queue
  stays short and the calls taken on keep their latency. A long wait with few calls ahead is
  the machine being slow, not a backlog, and refusing calls would not shorten it.
- Apart from that, at most ``max_calls`` publish calls are in progress at once.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from dualstream.lifecycle import cancel_and_wait
from dualstream.v1 import event_service_pb2 as pb
from dualstream.v1 import event_service_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

PROBE_INTERVAL = 0.02
# Fewer calls than this ahead of a probe are not a backlog worth refusing calls over.
MIN_BACKLOG = 32
# Retry hints are within these bounds: soon enough to use the capacity as it frees up, late
# enough that clients retrying together do not bring the backlog straight back.
MIN_RETRY_AFTER = 0.05
MAX_RETRY_AFTER = 5.0


class Admission:
    """Whether the next publish call may start."""

    def __init__(self, max_calls: int, max_queue_delay: float) -> None:
        self.max_calls = max_calls
        self.max_queue_delay = max_queue_delay
        self.in_progress = 0
        self.arrivals = 0
        self.refused = 0
        # The share of arriving calls taken on (1: all); the credit spreads refusals evenly.
        self.share = 1.0
        self._credit = 0.0
        # The latest estimates of how long a call waits before the sidecar takes it, and of how
        # many calls wait with it (those ahead of the last probe).
        self.queue_delay = 0.0
        self.backlog = 0

    @property
    def shedding(self) -> bool:
        return self.share < 1.0

    def try_admit(self) -> bool:
        self.arrivals += 1
        if self.in_progress >= self.max_calls:
            self.refused += 1
            return False
        if self.share < 1.0:
            self._credit += self.share
            if self._credit < 1.0:
                self.refused += 1
                return False
            self._credit -= 1.0
        self.in_progress += 1
        return True

    def release(self) -> None:
        self.in_progress -= 1

    @property
    def expected_calls(self) -> int:
        """Publish calls in progress or about to be: those the sidecar took and has not
        answered, and those that last waited in gRPC's queue to be taken."""
        return self.in_progress + self.backlog

    @property
    def retry_after(self) -> float:
        """A retry hint for a refused call: the current wait, doubled, within bounds."""
        return min(MAX_RETRY_AFTER, max(MIN_RETRY_AFTER, 2 * self.queue_delay))

    def observe(self, queue_delay: float, calls_ahead: int, *, finished: bool) -> None:
        """A probe's wait so far (``finished``: its whole wait) and the calls taken meanwhile."""
        self.queue_delay = queue_delay
        if finished:
            self.backlog = calls_ahead
        if queue_delay > self.max_queue_delay and calls_ahead >= MIN_BACKLOG:
            if not self.shedding:
                logger.warning(
                    "calls wait %.0f ms for the sidecar to take them (%d queued ahead): "
                    "refusing part of the publishes until the queue is short again",
                    queue_delay * 1000,
                    calls_ahead,
                )
            self.share *= 0.75
        elif finished and queue_delay < self.max_queue_delay / 2 and self.shedding:
            self.share = min(1.0, self.share + 0.05)
            if not self.shedding:
                self._credit = 0.0
                logger.info("the call queue is short again: taking on every publish")


class QueueProbe:
    """Calls the sidecar's own GetStatus over a private socket, again and again, and tells
    ``admission`` how long each call waited and how many calls were taken meanwhile."""

    def __init__(
        self, admission: Admission, target: str, metadata: tuple[tuple[str, str], ...]
    ) -> None:
        self._admission = admission
        self._target = target
        self._metadata = metadata
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="admission-probe")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _run(self) -> None:
        admission = self._admission
        async with grpc.aio.insecure_channel(self._target) as channel:
            stub = pb_grpc.EventServiceStub(channel)
            arrivals = admission.arrivals
            while True:
                if admission.arrivals == arrivals and not admission.shedding:
                    # No publish since the last probe: nothing to refuse, nothing to measure.
                    await asyncio.sleep(PROBE_INTERVAL)
                    continue
                started, arrivals = time.monotonic(), admission.arrivals
                call = asyncio.ensure_future(
                    stub.GetStatus(pb.GetStatusRequest(), metadata=self._metadata)
                )
                try:
                    while not call.done():
                        await asyncio.wait({call}, timeout=admission.max_queue_delay)
                        if not call.done():
                            waited = time.monotonic() - started
                            admission.observe(waited, admission.arrivals - arrivals, finished=False)
                    call.result()
                except grpc.aio.AioRpcError as exc:
                    logger.debug("the admission probe failed: %s", exc)
                finally:
                    call.cancel()
                waited = time.monotonic() - started
                admission.observe(waited, admission.arrivals - arrivals, finished=True)
                await asyncio.sleep(max(0.0, PROBE_INTERVAL - waited))
