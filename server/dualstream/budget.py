"""An explicit, bounded in-memory buffer: how many events and bytes may await Kafka at once.

When Kafka stalls, acknowledgements stop and the buffer fills; a publish then waits at most
``wait`` for room and fails fast with RESOURCE_EXHAUSTED instead of growing memory without end.
"""

from __future__ import annotations

import asyncio
import collections

from dualstream.errors import ResourceExhaustedError


class Budget:
    def __init__(self, max_events: int, max_bytes: int) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.events = 0
        self.bytes = 0
        # Waiters in arrival order, so a large request is not starved by small ones.
        self._waiters: collections.deque[tuple[int, int, asyncio.Future[None]]] = (
            collections.deque()
        )

    def _fits(self, events: int, size: int) -> bool:
        return self.events + events <= self.max_events and self.bytes + size <= self.max_bytes

    async def acquire(self, events: int, size: int, wait: float) -> None:
        """Reserve room for ``events`` records of ``size`` bytes, waiting up to ``wait``."""
        if events > self.max_events or size > self.max_bytes:
            raise ResourceExhaustedError(
                f"{events} events of {size} bytes exceed the Kafka buffer of "
                f"{self.max_events} events / {self.max_bytes} bytes; send smaller batches"
            )
        if not self._waiters and self._fits(events, size):
            self.events += events
            self.bytes += size
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (events, size, waiter)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(wait):
                await waiter
        except (TimeoutError, asyncio.CancelledError) as exc:
            if waiter.done() and not waiter.cancelled():
                self.release(events, size)  # Admitted just as the caller gave up.
            elif entry in self._waiters:
                self._waiters.remove(entry)
                # It may have been the head that kept smaller requests behind it waiting.
                self._admit_waiters()
            if isinstance(exc, TimeoutError):
                raise ResourceExhaustedError(
                    f"Kafka is not keeping up: {self.events} events ({self.bytes} bytes) "
                    "await acknowledgement, the configured bound; retry later"
                ) from exc
            raise

    def release(self, events: int, size: int) -> None:
        """Give room back and admit waiters in order; safe from a future's done-callback."""
        self.events -= events
        self.bytes -= size
        self._admit_waiters()

    def _admit_waiters(self) -> None:
        """Admit waiters from the head of the queue for as long as the head fits."""
        while self._waiters:
            want_events, want_size, waiter = self._waiters[0]
            if waiter.done():
                self._waiters.popleft()
                continue
            if not self._fits(want_events, want_size):
                break
            self._waiters.popleft()
            self.events += want_events
            self.bytes += want_size
            waiter.set_result(None)
