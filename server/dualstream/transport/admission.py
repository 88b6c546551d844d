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
  Probes go every ``PROBE_INTERVAL`` while publishes arrive or the fan-out is held back.
- While the wait is over ``max_queue_delay`` with at least ``MIN_BACKLOG`` calls ahead, the
  share of arriving Publish and PublishBatch calls the sidecar takes on falls by a quarter per
  probe; the others are refused on arrival: RESOURCE_EXHAUSTED with a retry hint, no span, no
  work. Once a probe comes back in under half the bound, the share grows back by a twentieth
  per probe. A refusal costs about what an empty gRPC call costs, a fraction of serving the
  call, so refusing enough of them lets the loop take calls as fast as they come: the queue
  stays short and the calls taken on keep their latency. A long wait with few calls ahead is
  the machine being slow, not a backlog, and refusing calls would not shorten it.
- Apart from that, at most ``max_calls`` publish calls are in progress at once, and fewer
  past capacity: while the loop lags (a probe waits over ``LIMIT_DELAY`` with ``MIN_BACKLOG``
  calls taken meanwhile), calls arrive ``OVERLOAD_RATIO`` times as fast as they complete, and
  no stream is held back by the gate, at most as many as complete in ``TARGET_CALL_TIME``
  (Little's law: the calls in progress over the rate they complete at is how long each
  takes). On the sidecar's own HTTP/2 server the calls taken on wait in the loop itself, turn
  after turn, not in a queue the probe sees: at twice capacity 2,000 of them in progress took
  1.9 s each (p99), and the refusals of the rest waited behind them.
- And a client may have only so many calls open on one connection (HTTP/2's
  SETTINGS_MAX_CONCURRENT_STREAMS: the streams it may keep, plus ``max_calls``, plus a little):
  gRPC clients hold further calls themselves, under their own deadlines, so a burst from one
  connection cannot fill the core's queue to where it cancels calls.

On the sidecar's own HTTP/2 server (``api_server=h2``, ``transport/h2_server.py``) there is no
queue of gRPC's: calls wait unread in the sockets until the event loop gets round to them, and
the probe, on a socket of its own, measures how long that takes. There a publish is admitted or
refused as soon as its request has come, before its handler's task, span or message parsing
exist: a refusal costs its HPACK headers and trailers, about 60 µs, against about 240 µs for an
empty call on grpc.aio, so at twice capacity the loop still keeps up with the refusals.

Publishes come first: the messages to Subscribe streams go through a ``DeliveryGate``, a rate
limit that the same probe tightens as soon as calls wait more than ``FANOUT_DELAY`` (a few
milliseconds, well before publishes would be refused) while publishes keep arriving
(``MIN_CALLS_HELD`` or more during a probe), and loosens again when they do not. A fan-out that
delays the odd publish by a few milliseconds is left alone: holding it back would delay
thousands of deliveries to spare a handful of calls.
Streams held back fall behind and end in a gap, a replay or a close, as their slow-consumer
policy says; publishes are refused only once the fan-out is down to ``MIN_DELIVERY_RATE``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time

import grpc

from dualstream.lifecycle import cancel_and_wait
from dualstream.v1 import event_service_pb2 as pb
from dualstream.v1 import event_service_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

PROBE_INTERVAL = 0.02
# A wait for the loop longer than this, while streams are being written to, slows the fan-out.
FANOUT_DELAY = 0.003
# The fan-out is never held below this many of the gate's units a second (messages of one
# notification; a sixth of a core or so): a fan-out that small costs publishes little, and
# streams that keep up with it stay whole.
MIN_DELIVERY_RATE = 4000.0
# The fan-out is held back only for calls that keep coming: at least this many taken during
# one probe's wait. Without that, the benchmark's 1,000-stream fan-out of 20 events a second
# went at 2,100 deliveries a second instead of 17,500, its last delivery 12 s late instead of
# 0.6 s (p50), to spare 20 publishes a second a wait of tens of milliseconds. Measured both
# ways (bench.ab, 2 rounds): 3 keeps the 1k/s publishes with 100 subscribers whole, 5 failed
# 744 and 4,124 of them. (A rate of calls, counted the same way, does not do: a loop stalled by
# the fan-out takes calls slowly, so the worse the stall, the fewer calls it sees held up; with
# 1,000 subscribers its publish p99 was 27 s.)
MIN_CALLS_HELD = 3
# What one more notification in a batched message costs, in the gate's unit (a message of one
# notification, about 50 us here): its encoding and its bytes, without a write of its own
# (the 1,000-stream bench: 52 us a delivery one per message, about 18 us batched). Unbilled,
# a gate held at its floor of 4,000 messages a second let through up to 64 times as many
# notifications to batched streams, and 100 of them at 1k events/s failed 3,333 publishes.
BATCHED_NOTIFICATION_COST = 0.25
# Fewer calls than this ahead of a probe are not a backlog worth refusing calls over.
MIN_BACKLOG = 32
# While a probe waits longer than this, publish calls in progress are held to ...
LIMIT_DELAY = 0.05
# ... as many as complete in this long, at the rate they complete at ...
TARGET_CALL_TIME = 0.1
# ... and never fewer than this: a slow machine, not a backlog, needs no fewer.
MIN_CALLS_LIMIT = 256
# Calls that come this many times as fast as they complete are past capacity; slower, the lag
# is someone else's (a fan-out at its floor, the machine), and refusing would not shorten it.
OVERLOAD_RATIO = 1.5
# Rates are counted over at least this long: probes under load come back at odd times.
RATE_WINDOW = 0.1
# Retry hints are within these bounds: soon enough to use the capacity as it frees up, late
# enough that clients retrying together do not bring the backlog straight back.
MIN_RETRY_AFTER = 0.05
MAX_RETRY_AFTER = 5.0


class DeliveryGate:
    """A rate limit on messages to Subscribe streams, off (``rate`` infinite) until the
    admission probe says the fan-out is holding up calls.

    Its unit is what one message with one notification costs the loop. A message that carries
    a batch costs more than that, and ``charge`` bills the extra once the stream knows it."""

    def __init__(self) -> None:
        self.rate = math.inf
        self.passed = 0.0  # Units let through, ever.
        self.held = 0  # Times a stream had to wait.
        self._tokens = 0.0
        self._stamp = 0.0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._release: asyncio.TimerHandle | None = None
        self._last_passed = 0.0
        self._last_stamp: float | None = None
        self.achieved = math.inf  # Units a second, as last measured (unknown: any).

    @property
    def limited(self) -> bool:
        return self.rate != math.inf

    def try_pass(self) -> bool:
        """Whether a message may go now (a stream that gets False calls ``wait``)."""
        if self.rate == math.inf:
            self.passed += 1
            return True
        if self._waiters:
            return False  # First come, first served.
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self.passed += 1
            return True
        return False

    async def wait(self) -> None:
        """Until the stream's turn comes; its message then counts as passed."""
        self.held += 1
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._schedule_release()
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._tokens += 1.0  # Its turn came as it left: give the turn back.
            raise

    def charge(self, notifications: int) -> None:
        """A message that passed carries ``notifications`` (more than one: a batch): bill the
        ones past the first, which the next messages to pass make up for."""
        units = (notifications - 1) * BATCHED_NOTIFICATION_COST
        self.passed += units
        if self.rate != math.inf:
            self._tokens -= units

    def _refill(self) -> None:
        now = asyncio.get_running_loop().time()
        # At most a tenth of a second's worth saved up, so a pause is no burst afterwards.
        self._tokens = min(self.rate / 10, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def _schedule_release(self) -> None:
        if self._release is None and self._waiters:
            # Release in steps of at least 2 ms: a timer per message would cost more than it.
            delay = max(0.002, (1.0 - self._tokens) / self.rate)
            self._release = asyncio.get_running_loop().call_later(delay, self._release_waiters)

    def _release_waiters(self) -> None:
        self._release = None
        self._refill()
        while self._waiters and (self._tokens >= 1.0 or self.rate == math.inf):
            waiter = self._waiters.popleft()
            if waiter.done():
                continue
            self._tokens -= 1.0
            self.passed += 1
            waiter.set_result(None)
        self._schedule_release()

    def measure(self, now: float) -> None:
        """Take the rate messages went at since the last measure. After a pause in measuring
        the time is unknown: a fan-out that ran meanwhile counts as busy, until measured."""
        if self._last_stamp is not None:
            elapsed = max(1e-3, now - self._last_stamp)
            self.achieved = (self.passed - self._last_passed) / elapsed
        else:
            self.achieved = math.inf if self.passed != self._last_passed else 0.0
        self._last_passed, self._last_stamp = self.passed, now

    def forget_rate(self) -> None:
        """Measuring pauses: the next measure starts afresh."""
        self._last_stamp, self.achieved = None, math.inf

    @property
    def yielded(self) -> bool:
        """Whether the fan-out gave way as far as it does: held to its floor, or below it."""
        return min(self.rate, self.achieved) <= MIN_DELIVERY_RATE

    def slow_down(self) -> None:
        """The fan-out holds up calls: a lower rate, from what it achieved lately (none below
        ``MIN_DELIVERY_RATE``, and no limit at all on a fan-out that does not reach it)."""
        start = min(self.rate, max(self.achieved, 1.0))
        if start <= MIN_DELIVERY_RATE and self.rate == math.inf:
            return
        self.rate = max(MIN_DELIVERY_RATE, start * 0.7)
        if not self._waiters:
            self._tokens = 0.0
            self._stamp = asyncio.get_running_loop().time()

    def speed_up(self) -> None:
        """Calls are not held up: a higher rate, and none at all once well past the need."""
        if self.rate == math.inf:
            return
        self.rate += max(self.rate / 16, MIN_DELIVERY_RATE / 10)
        if self.rate > 4 * max(self.achieved, MIN_DELIVERY_RATE):
            self.rate = math.inf  # The limit no longer limits anything.
            self._release_waiters()


class Admission:
    """Whether the next publish call may start, and how fast streams may be written to."""

    def __init__(self, max_calls: int, max_queue_delay: float) -> None:
        self.gate = DeliveryGate()
        self.max_calls = max_calls
        self.max_queue_delay = max_queue_delay
        self.in_progress = 0
        # Publish calls in progress at most, now (``max_calls`` unless the loop lags).
        self.limit = max_calls
        self.completed = 0
        # Publish calls a second, arriving (taken on or not) and completing, as last measured.
        self.arrival_rate = 0.0
        self.completion_rate = 0.0
        self._counted = (0, 0)  # Arrivals and completions when last measured ...
        self._rates_stamp: float | None = None  # ... and when.
        self.arrivals = 0
        self.refused = 0
        # The share of arriving calls taken on (1: all); the credit spreads refusals evenly.
        self.share = 1.0
        self._credit = 0.0
        self._share_changed = 0.0
        # The latest estimates of how long a call waits before the sidecar takes it, and of how
        # many calls wait with it (those ahead of the last probe).
        self.queue_delay = 0.0
        self.backlog = 0

    @property
    def shedding(self) -> bool:
        return self.share < 1.0

    @property
    def limited(self) -> bool:
        """Whether calls are refused (or about to be) for a queue: in the loop or before it."""
        return self.shedding or self.limit < self.max_calls

    def try_admit(self) -> bool:
        self.arrivals += 1
        if self.in_progress >= self.limit:
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
        self.completed += 1

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
        gate = self.gate
        now = time.monotonic()
        gate.measure(now)
        holding_up_calls = queue_delay > FANOUT_DELAY and calls_ahead >= MIN_CALLS_HELD
        if holding_up_calls:
            gate.slow_down()
        elif finished and (queue_delay < FANOUT_DELAY / 2 or calls_ahead < MIN_CALLS_HELD):
            gate.speed_up()
        if finished:  # After the gate: a fan-out it holds back now is not this limit's.
            self._limit_calls(queue_delay, calls_ahead, now)
        # Publishes are refused only when holding the fan-out back is not enough.
        overloaded = queue_delay > self.max_queue_delay and calls_ahead >= MIN_BACKLOG
        if overloaded and gate.yielded:
            # A probe still waiting is looked at every PROBE_INTERVAL (for the fan-out's sake);
            # the share falls at most once per bound's worth of waiting all the same.
            if not finished and now - self._share_changed < self.max_queue_delay:
                return
            self._share_changed = now
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

    def _limit_calls(self, queue_delay: float, calls_ahead: int, now: float) -> None:
        """Set the in-progress limit from a finished probe's wait and the calls taken in it."""
        if self._rates_stamp is None:
            self._counted = (self.arrivals, self.completed)
            self._rates_stamp = now
        elif now - self._rates_stamp >= RATE_WINDOW:
            elapsed = now - self._rates_stamp
            self.arrival_rate = (self.arrivals - self._counted[0]) / elapsed
            self.completion_rate = (self.completed - self._counted[1]) / elapsed
            self._counted = (self.arrivals, self.completed)
            self._rates_stamp = now
        if (
            queue_delay > LIMIT_DELAY
            and calls_ahead >= MIN_BACKLOG
            and self.arrival_rate > OVERLOAD_RATIO * self.completion_rate
            # While streams are held back, the gate and the share protect the publishes: a
            # fan-out at its floor lags the loop in bursts (1,000 batched subscribers: 120-158
            # publishes refused in make bench when this limit applied there too).
            and not self.gate.limited
        ):
            limit = max(MIN_CALLS_LIMIT, math.ceil(self.completion_rate * TARGET_CALL_TIME))
            if limit < self.limit:
                if self.limit == self.max_calls:
                    logger.warning(
                        "calls wait %.0f ms for the sidecar's loop: holding publish calls in "
                        "progress to %d (%.0f completed a second)",
                        queue_delay * 1000,
                        limit,
                        self.completion_rate,
                    )
                self.limit = limit
        elif queue_delay < LIMIT_DELAY / 2 and self.limit < self.max_calls:
            # Back up a step at a time: a limit that lets the lag return falls again.
            self.limit = min(self.max_calls, self.limit + max(self.limit // 4, 1))
            if self.limit == self.max_calls:
                logger.info("the loop keeps up again: up to %d publish calls", self.max_calls)


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
                if (
                    admission.arrivals == arrivals
                    and not admission.shedding
                    and not admission.gate.limited
                ):
                    # No publish since the last probe and nothing held back: nothing to
                    # measure for.
                    admission.gate.forget_rate()
                    await asyncio.sleep(PROBE_INTERVAL)
                    continue
                started, arrivals = time.monotonic(), admission.arrivals
                call = asyncio.ensure_future(
                    stub.GetStatus(pb.GetStatusRequest(), metadata=self._metadata)
                )
                try:
                    while not call.done():
                        await asyncio.wait({call}, timeout=PROBE_INTERVAL)
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
