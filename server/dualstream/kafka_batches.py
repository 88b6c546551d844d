"""Records on their way to Kafka: one batch per partition, handed to the producer in waves.

The sidecar builds the producer's batches itself, with aiokafka's public batch API
(``create_batch()``, ``send_batch()``), instead of calling ``send()`` per record. A record is
appended to its partition's open batch, placed by the producer's own partitioner (murmur2 of
the key, over the topic's partitions as the producer's metadata has them), so placement, and
with it per-source order, is what ``send()`` would give. A record's offset is its batch's base
offset, which Kafka returns, plus its place in the batch.

The batches go to the producer together, as a wave, and the next wave goes once this one is
answered (aiokafka sends one produce request per broker at a time anyway, so nothing is lost by
waiting). What decides when is how full the wave would be. The sidecar knows how many publish
calls are in progress: each will write a record, or has; a wave goes once records wait from at
least half of them, or when the oldest record has waited long enough. A lone call on a quiet
sidecar waits for nothing (its own record is half of one call); under load, calls share fewer,
fuller produce requests, which costs the broker and the sidecar less per event.

How long is long enough grows with the calls in progress: ``max_hold`` for up to
``CALLS_PER_HOLD`` of them, and in proportion above that, up to ``MAX_HOLD_FACTOR`` times
``max_hold``. With N calls in progress at a throughput X each call takes about N / X (Little's
law), so a hold in proportion to N stays the same small share of what every call waits anyway.
At 64 calls in flight the waves then carry several times the records, and the sidecar, spending
less per event, answers sooner (``bench/results/optimisations.md``); at a few calls in flight
nothing changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from dualstream.cloudevents import KafkaRecord

logger = logging.getLogger(__name__)

# The hold grows past max_hold above this many calls in progress, in proportion ...
CALLS_PER_HOLD = 16
# ... up to this many times max_hold.
MAX_HOLD_FACTOR = 4
# Keys placed, remembered: murmur2 is pure Python in aiokafka, and a sidecar sees the same
# sources again and again. Forgotten all at once when full or when the partitions change.
_PLACEMENT_CACHE_SIZE = 65_536


def wave_hold(max_hold: float, calls: int) -> float:
    """The longest the oldest waiting record waits for more, with ``calls`` in progress."""
    return max_hold * min(MAX_HOLD_FACTOR, max(1.0, calls / CALLS_PER_HOLD))


class Placement:
    """A key's partition, exactly as the producer's default partitioner places it."""

    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self._cluster = producer.client.cluster
        self._topic = topic
        self._partitioner = DefaultPartitioner()
        self._partitions: list[int] = []
        self._cache: dict[bytes, int] = {}

    def refresh(self) -> bool:
        """Take the topic's partitions from the producer's metadata; False if it has none."""
        partitions = self._cluster.partitions_for_topic(self._topic)
        if not partitions:
            return False
        if len(partitions) != len(self._partitions):
            # As the producer lists them for its partitioner (sorted: a set of small ints).
            self._partitions = list(partitions)
            self._cache.clear()
        return True

    def partition_of(self, key: bytes) -> int:
        partition = self._cache.get(key)
        if partition is None:
            if len(self._cache) >= _PLACEMENT_CACHE_SIZE:
                self._cache.clear()
            partition = self._cache[key] = self._partitioner(key, self._partitions, [])
        return partition


class Batch:
    """Records of one partition that go to Kafka together; ``answer`` is the base offset
    Kafka gave them, or why it did not take them."""

    __slots__ = ("answer", "builder", "partition", "records", "size")

    def __init__(self, partition: int, builder: Any) -> None:
        self.partition = partition
        self.builder = builder
        self.records = 0
        self.size = 0
        self.answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()


AnswerHook = Callable[[Batch, BaseException | None], None]


class BatchWriter:
    """Appends records to per-partition batches and sends them in waves (see the module).

    ``concurrency`` tells how many publish calls are in progress. ``on_answer`` runs once per
    batch when Kafka answered it (``None``) or it failed, before
    the batch's waiters wake.
    """

    def __init__(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        max_hold: float,
        on_answer: AnswerHook,
        concurrency: Callable[[], int] = lambda: 0,
    ) -> None:
        self._producer = producer
        self._concurrency = concurrency
        self._topic = topic
        self._max_hold = max_hold
        self._on_answer = on_answer
        self._loop = asyncio.get_running_loop()
        self.placement = Placement(producer, topic)
        self._open: dict[int, Batch] = {}
        self._sealed: list[Batch] = []  # Full batches waiting for the next wave.
        self._waiting_records = 0
        self._oldest_waiting = 0.0
        self._unanswered: set[Batch] = set()  # Handed to the producer, not yet answered.
        self._sending: asyncio.Task[None] | None = None
        self._wave_due: asyncio.Handle | None = None
        # Waves handed to the producer: one produce request each per broker they reach.
        self.waves = 0

    @property
    def outstanding(self) -> int:
        """Records appended whose batch Kafka has not answered yet."""
        return self._waiting_records + sum(batch.records for batch in self._unanswered)

    async def wait_for_partitions(self) -> None:
        """Until the producer knows the topic's partitions (the first call needs them)."""
        if not self.placement.refresh():
            await self._producer.partitions_for(self._topic)
            self.placement.refresh()

    def append(self, records: Sequence[KafkaRecord]) -> list[tuple[Batch, int]]:
        """Place and append records; each one's batch and offset within it, in order."""
        placement = self.placement
        placement.refresh()
        placed = []
        for record in records:
            partition = placement.partition_of(record.key)
            batch = self._open.get(partition)
            if batch is None:
                batch = self._open[partition] = self._new_batch(partition)
            metadata = batch.builder.append(
                timestamp=None, key=record.key, value=record.value, headers=record.headers
            )
            if metadata is None:  # Full: it goes in the next wave as it is.
                self._sealed.append(batch)
                batch = self._open[partition] = self._new_batch(partition)
                # An empty batch takes any one record, however large.
                metadata = batch.builder.append(
                    timestamp=None, key=record.key, value=record.value, headers=record.headers
                )
            batch.records += 1
            batch.size += record.size
            placed.append((batch, metadata.offset))
        if not self._waiting_records:
            self._oldest_waiting = self._loop.time()
        self._waiting_records += len(records)
        if self._wave_due is None and self._sending is None and not self._unanswered:
            # At the end of this loop turn, so the calls of one turn share the wave.
            self._wave_due = self._loop.call_soon(self._consider_wave)
        return placed

    def _new_batch(self, partition: int) -> Batch:
        return Batch(partition, self._producer.create_batch())

    def _consider_wave(self) -> None:
        self._wave_due = None
        if self._sending is not None or self._unanswered or not self._waiting_records:
            return
        waited = self._loop.time() - self._oldest_waiting
        calls = self._concurrency()
        hold = wave_hold(self._max_hold, calls)
        if self._waiting_records * 2 >= calls or waited >= hold:
            self.send_wave()
        else:
            self._wave_due = self._loop.call_later(hold - waited, self._consider_wave)

    def send_wave(self) -> None:
        """Hand every waiting batch to the producer now."""
        if self._wave_due is not None:
            self._wave_due.cancel()
            self._wave_due = None
        wave = [*self._sealed, *self._open.values()]
        self._sealed, self._open = [], {}
        self._waiting_records = 0
        if not wave:
            return
        self.waves += 1
        self._unanswered.update(wave)
        self._sending = asyncio.create_task(self._send(wave), name="kafka-wave")

    async def _send(self, wave: list[Batch]) -> None:
        try:
            for batch in wave:
                try:
                    # Returns once the batch is queued: at once, unless this partition's
                    # previous batch (a full one of the same wave) has not left yet.
                    delivery = await self._producer.send_batch(
                        batch.builder, self._topic, partition=batch.partition
                    )
                except asyncio.CancelledError:
                    self._answered(batch, KafkaError("the sidecar stopped sending the batch"))
                    raise
                except Exception as exc:  # Queued nowhere: the batch failed as a whole.
                    self._answered(batch, exc)
                    continue
                delivery.add_done_callback(lambda done, batch=batch: self._delivered(batch, done))
        finally:
            self._sending = None
            self._next_wave_when_answered()

    def _delivered(self, batch: Batch, delivery: asyncio.Future[Any]) -> None:
        if delivery.cancelled():
            self._answered(batch, KafkaError("the producer abandoned the batch"))
            return
        error = delivery.exception()
        self._answered(batch, error)
        if error is None and not batch.answer.done():
            batch.answer.set_result(delivery.result().offset)

    def _answered(self, batch: Batch, error: BaseException | None) -> None:
        if batch not in self._unanswered:
            return  # Given up on already (stop).
        self._unanswered.discard(batch)
        self._on_answer(batch, error)
        if error is not None and not batch.answer.done():
            batch.answer.set_exception(error)
            batch.answer.exception()  # Read: a batch nobody waits for any more is no warning.
        self._next_wave_when_answered()

    def _next_wave_when_answered(self) -> None:
        if (
            not self._unanswered
            and self._sending is None
            and self._waiting_records
            and self._wave_due is None
        ):
            self._wave_due = self._loop.call_soon(self._consider_wave)

    def give_up(self, error: BaseException) -> int:
        """Fail every batch not answered yet, sent or not, with ``error``; how many records."""
        if self._wave_due is not None:
            self._wave_due.cancel()
            self._wave_due = None
        pending = [*self._unanswered, *self._sealed, *self._open.values()]
        self._unanswered.update(pending)
        self._sealed, self._open, self._waiting_records = [], {}, 0
        for batch in pending:
            self._answered(batch, error)
        return sum(batch.records for batch in pending)
