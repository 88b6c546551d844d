"""Client-side throttling of publishes while the sidecar refuses them as past capacity.

Adaptive throttling as in Google's SRE book ("Handling Overload"): past its capacity the
sidecar refuses publishes cheaply, but not for free, and refusals that queue behind each other
in gRPC wait seconds before they are refused. So a client that sees its calls refused holds
back about as many as the sidecar would refuse anyway, at once and without sending them, and
keeps sending a little more than the sidecar accepts, which tells it when capacity returns.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from dualstream_client.errors import DualstreamClientError, ResourceExhaustedError

# The window is kept as this many buckets: old counts drop out a tenth of a window at a time.
BUCKETS = 10
# The wait a locally refused call suggests before the sidecar ever gave a hint.
DEFAULT_RETRY_AFTER = 0.1


@dataclass(frozen=True, slots=True)
class Throttle:
    """How a client holds publishes back while the sidecar refuses them as past capacity.

    Over the last ``window`` seconds the client counts its Publish and PublishBatch attempts
    (``requests``, those it held back included) and the ones the sidecar answered with
    anything but a capacity refusal or ``DEADLINE_EXCEEDED`` (``accepts``). Attempts count
    when made, so calls left waiting at a sidecar that queues them weigh against it. Once the
    sidecar has answered ``min_requests`` attempts within the window (a burst not yet answered
    is never held back), it refuses each new attempt itself, without sending it,
    with probability ``(requests - ratio * accepts) / (requests + 1)``: while the sidecar
    accepts everything, never; while it refuses most, it gets about ``ratio`` times what it
    accepts. A call held back raises ``ResourceExhaustedError`` with ``throttled`` True and
    the sidecar's last ``retry_after``; ``retry=Retry()`` retries it like a refusal.
    """

    ratio: float = 1.2
    window: float = 5.0
    min_requests: int = 20

    def __post_init__(self) -> None:
        if not self.ratio > 0:
            raise ValueError(f"Throttle.ratio must be above 0, not {self.ratio!r}")
        if not self.window > 0:
            raise ValueError(f"Throttle.window must be above 0 seconds, not {self.window!r}")
        if self.min_requests < 0:
            raise ValueError(f"Throttle.min_requests must be 0 or more, not {self.min_requests}")


class _Bucket:
    """The counts of one tenth of the window; ``slice`` numbers that tenth on the clock."""

    __slots__ = ("accepts", "answered", "refusals", "requests", "slice")

    def __init__(self) -> None:
        self.slice = -1
        self.requests = 0
        self.answered = 0
        self.accepts = 0
        self.refusals = 0


class AdaptiveThrottle:
    """One client's throttle: its counts over the sliding window and the decisions they make.

    Shared by every call of the client; each method takes a lock and never awaits, so calls
    from several tasks, or threads, see consistent counts. ``clock`` (monotonic seconds) and
    ``draw`` (uniform in [0, 1)) are there for tests to give."""

    def __init__(
        self,
        policy: Throttle,
        *,
        clock: Callable[[], float] = time.monotonic,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._draw = draw
        self._slice_length = policy.window / BUCKETS
        self._buckets = [_Bucket() for _ in range(BUCKETS)]
        self._last_retry_after: float | None = None
        self._lock = threading.Lock()

    def admit(self) -> None:
        """Count an attempt about to be made, and refuse it (``ResourceExhaustedError``,
        ``throttled``) when the counts so far say the sidecar would."""
        with self._lock:
            current = self._current_bucket()
            requests, answered, accepts, refusals = self._totals(current.slice)
            current.requests += 1
            probability = self._probability(requests, answered, accepts)
            if probability <= 0 or self._draw() >= probability:
                return
            retry_after = self._last_retry_after
        if retry_after is None:
            retry_after = DEFAULT_RETRY_AFTER
        message = (
            f"not sent: the sidecar refused {refusals} of this client's last {requests} calls "
            "as past capacity, so the client holds calls back (client-side throttling); "
            f"retry in {round(retry_after * 1000)} ms"
        )
        raise ResourceExhaustedError(
            grpc.StatusCode.RESOURCE_EXHAUSTED, message, retry_after=retry_after, throttled=True
        )

    def record(self, error: DualstreamClientError | None) -> None:
        """Count the sidecar's answer to an admitted attempt: ``None`` for success, else the
        error the call ended with (a capacity refusal is one with ``retry_after``)."""
        with self._lock:
            current = self._current_bucket()
            current.answered += 1
            if isinstance(error, ResourceExhaustedError) and error.retry_after is not None:
                current.refusals += 1
                self._last_retry_after = error.retry_after
            # A call past its deadline may have been refused, or never taken at all: it is no
            # sign that the sidecar accepts calls.
            elif error is None or error.code != grpc.StatusCode.DEADLINE_EXCEEDED:
                current.accepts += 1

    def refusal_probability(self) -> float:
        """The probability that the next attempt is held back, from the counts so far."""
        with self._lock:
            requests, answered, accepts, _ = self._totals(self._current_bucket().slice)
            return self._probability(requests, answered, accepts)

    def _probability(self, requests: int, answered: int, accepts: int) -> float:
        if answered < self.policy.min_requests:
            return 0.0
        return max(0.0, (requests - self.policy.ratio * accepts) / (requests + 1))

    def _current_bucket(self) -> _Bucket:
        """The bucket of the clock's current slice, emptied first if it held an older one."""
        current = math.floor(self._clock() / self._slice_length)
        bucket = self._buckets[current % BUCKETS]
        if bucket.slice != current:
            bucket.slice = current
            bucket.requests = bucket.answered = bucket.accepts = bucket.refusals = 0
        return bucket

    def _totals(self, current: int) -> tuple[int, int, int, int]:
        """Requests, answers, accepts and refusals of the window that ends with slice
        ``current``."""
        live = [b for b in self._buckets if current - BUCKETS < b.slice <= current]
        return (
            sum(b.requests for b in live),
            sum(b.answered for b in live),
            sum(b.accepts for b in live),
            sum(b.refusals for b in live),
        )
