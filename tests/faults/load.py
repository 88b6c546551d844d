"""A closed-loop publish load with per-call outcomes, shared by the fault tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dualstream_client import DualstreamClient, DualstreamClientError, EventInput


@dataclass
class Outcome:
    event_id: str
    source_id: str
    sequence: int
    seconds: float
    ok: bool
    notified: bool = False
    code: str = ""
    started: float = 0.0


@dataclass
class Load:
    """``total`` publishes over ``sources`` keys from ``concurrency`` workers; each event's data
    is its per-source sequence number, so per-key order can be checked in Kafka."""

    client: DualstreamClient
    source_type: str
    total: int
    concurrency: int = 32
    sources: int = 10
    outcomes: list[Outcome] = field(default_factory=list)
    on_progress: Callable[[int], None] | None = None

    async def run(self) -> list[Outcome]:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for number in range(self.total):
            queue.put_nowait(number)
        # One worker per source keeps each source's publishes sequential, as a real producer
        # of ordered events would; concurrency comes from many sources at once.
        locks = [asyncio.Lock() for _ in range(self.sources)]
        sequences = [0] * self.sources

        async def worker() -> None:
            while not queue.empty():
                number = queue.get_nowait()
                source = number % self.sources
                async with locks[source]:
                    sequences[source] += 1
                    await self._publish(number, source, sequences[source])
                if self.on_progress is not None:
                    self.on_progress(len(self.outcomes))

        await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        return self.outcomes

    async def _publish(self, number: int, source: int, sequence: int) -> None:
        event_id = f"{self.source_type}-{number}"
        source_id = f"s{source}"
        started = time.monotonic()
        try:
            result = await self.client.publish(
                EventInput("load", self.source_type, source_id, str(sequence).encode(), id=event_id)
            )
        except DualstreamClientError as exc:
            self.outcomes.append(
                Outcome(event_id, source_id, sequence, time.monotonic() - started, False,
                        code=exc.code.name, started=started)
            )  # fmt: skip
            return
        self.outcomes.append(
            Outcome(event_id, source_id, sequence, time.monotonic() - started, True,
                    notified=result.notified, started=started)
        )  # fmt: skip
