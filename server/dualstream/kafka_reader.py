"""Reading the event log back: end offsets, positions by time, replays and single records.

Replays and hydration use consumers without a group (manual assignment, no commits): the
sidecar never joins a consumer group, so streams cannot trigger rebalances of anyone else's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError, OffsetOutOfRangeError

from dualstream.errors import UnavailableError
from dualstream.lifecycle import Service

FETCH_MAX_BYTES = 4 * 1024 * 1024
PARTITION_FETCH_MAX_BYTES = 1024 * 1024
REPLAY_BATCH_RECORDS = 500


@dataclass(frozen=True, slots=True)
class Expired:
    """Retention deleted records a replay was to read: per partition, ``(first, log_start)``,
    the offsets ``first <= offset < log_start`` are gone. The replay goes on from the log start."""

    lost: Mapping[int, tuple[int, int]]

    @property
    def count(self) -> int:
        return sum(log_start - first for first, log_start in self.lost.values())


class KafkaReader(Service):
    """One shared consumer for offset look-ups, and a small pool of consumers for replays and
    record fetches. Pooled consumers are reused, not started and stopped per replay: that is
    faster, and an aiokafka client stopped while its metadata task connects leaks a socket."""

    def __init__(
        self,
        client_options: Mapping[str, Any],
        topic: str,
        max_concurrent_replays: int = 16,
    ) -> None:
        """``client_options``: ``connections.kafka_client_options`` (bootstrap, TLS, SASL)."""
        self._client_options = dict(client_options)
        self._topic = topic
        self._lookups: AIOKafkaConsumer | None = None
        self._lookup_lock = asyncio.Lock()
        self._replay_slots = asyncio.Semaphore(max_concurrent_replays)
        self._idle: list[AIOKafkaConsumer] = []
        self._partitions: list[TopicPartition] = []

    @property
    def topic(self) -> str:
        return self._topic

    def new_consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            **self._client_options,
            group_id=None,
            enable_auto_commit=False,
            # Every read seeks first. A position retention has deleted must not jump silently
            # to the log start ("earliest" would): replay() reports it as Expired.
            auto_offset_reset="none",
            fetch_max_bytes=FETCH_MAX_BYTES,
            max_partition_fetch_bytes=PARTITION_FETCH_MAX_BYTES,
            request_timeout_ms=10_000,
        )

    async def _start(self) -> None:
        pass  # Connected lazily: the sidecar must start, and publish, while Kafka is away.

    async def _stop(self) -> None:
        consumers, self._idle = self._idle, []
        consumer, self._lookups = self._lookups, None
        if consumer is not None:
            consumers.append(consumer)
        for each in consumers:
            await each.stop()

    @contextlib.asynccontextmanager
    async def borrow(self) -> AsyncIterator[AIOKafkaConsumer]:
        """A started consumer with no assignment, returned to the pool afterwards."""
        async with self._replay_slots:
            if self._idle:
                consumer = self._idle.pop()
            else:
                consumer = self.new_consumer()
                try:
                    await consumer.start()
                except BaseException as exc:
                    await consumer.stop()
                    if isinstance(exc, KafkaError):
                        raise UnavailableError(f"Kafka could not be read: {exc!r}") from exc
                    raise
            reusable = False
            try:
                yield consumer
                reusable = True
            except (GeneratorExit, asyncio.CancelledError):
                reusable = True  # The borrower went away; the consumer itself is fine.
                raise
            finally:
                if reusable and self.started:
                    consumer.unsubscribe()
                    self._idle.append(consumer)
                else:
                    await consumer.stop()

    async def _lookup_consumer(self) -> AIOKafkaConsumer:
        if self._lookups is None:
            partitions = await self._describe_partitions()
            consumer = self.new_consumer()
            try:
                await consumer.start()
            except BaseException:
                await consumer.stop()
                raise
            self._partitions = [TopicPartition(self._topic, p) for p in partitions]
            self._lookups = consumer
        return self._lookups

    async def _describe_partitions(self) -> list[int]:
        admin = AIOKafkaAdminClient(**self._client_options, request_timeout_ms=10_000)
        try:
            await admin.start()
            [topic] = await admin.describe_topics([self._topic])
        finally:
            await admin.close()
        partitions = sorted(p["partition"] for p in topic.get("partitions", ()))
        if topic.get("error_code", 0) or not partitions:
            raise UnavailableError(f"Kafka topic {self._topic!r} does not exist")
        return partitions

    async def _lookup(self, what: str, call: Any) -> Any:
        async with self._lookup_lock:
            try:
                async with asyncio.timeout(10):
                    consumer = await self._lookup_consumer()
                    return await call(consumer)
            except (KafkaError, TimeoutError, OSError) as exc:
                # Drop the consumer: the next look-up reconnects from scratch.
                broken, self._lookups = self._lookups, None
                if broken is not None:
                    await broken.stop()
                raise UnavailableError(f"Kafka could not tell {what}: {exc!r}") from exc

    async def _per_partition(self, what: str, method: str) -> dict[int, int]:
        async def call(consumer: AIOKafkaConsumer) -> dict[int, int]:
            offsets = await getattr(consumer, method)(self._partitions)
            return {tp.partition: offset for tp, offset in offsets.items()}

        result: dict[int, int] = await self._lookup(what, call)
        return result

    async def end_offsets(self) -> dict[int, int]:
        """The offset the next record of each partition will get."""
        return await self._per_partition("the end offsets", "end_offsets")

    async def beginning_offsets(self) -> dict[int, int]:
        """The oldest offset each partition still holds."""
        return await self._per_partition("the beginning offsets", "beginning_offsets")

    async def offsets_for_time(self, timestamp_ms: int) -> dict[int, int]:
        """Per partition, the first offset stored at or after ``timestamp_ms``."""

        async def call(consumer: AIOKafkaConsumer) -> dict[int, int]:
            found = await consumer.offsets_for_times({tp: timestamp_ms for tp in self._partitions})
            ends = await consumer.end_offsets(self._partitions)
            return {
                tp.partition: (found[tp].offset if found.get(tp) is not None else ends[tp])
                for tp in self._partitions
            }

        result: dict[int, int] = await self._lookup("offsets by time", call)
        return result

    async def replay(
        self, start: Mapping[int, int], stop: Mapping[int, int]
    ) -> AsyncGenerator[Any, None]:
        """Yield every record with ``start[p] <= offset < stop[p]``, in offset order per
        partition, and an ``Expired`` item where retention deleted some of them before they
        were read. Reads in bounded batches, no faster than the caller consumes."""
        pending = {p: s for p, s in start.items() if s < stop.get(p, 0)}
        if not pending:
            return
        async with self.borrow() as consumer:
            try:
                partitions = [TopicPartition(self._topic, p) for p in pending]
                consumer.assign(partitions)
                for tp in partitions:
                    consumer.seek(tp, pending[tp.partition])
                while pending:
                    try:
                        batches = await consumer.getmany(
                            *[TopicPartition(self._topic, p) for p in pending],
                            timeout_ms=1000,
                            max_records=REPLAY_BATCH_RECORDS,
                        )
                    except OffsetOutOfRangeError as exc:
                        expired = await self._skip_expired(consumer, pending, stop)
                        if not expired.lost:
                            raise UnavailableError(
                                f"replay from Kafka failed: {exc!r} above the log start"
                            ) from exc
                        yield expired
                        continue
                    for tp, records in batches.items():
                        for record in records:
                            if record.offset >= stop[tp.partition]:
                                pending.pop(tp.partition, None)
                                break
                            yield record
                            if record.offset + 1 >= stop[tp.partition]:
                                pending.pop(tp.partition, None)
                                break
                    for partition in list(pending):
                        # Compaction or deletion can leave the stop offset unreachable.
                        position = await consumer.position(TopicPartition(self._topic, partition))
                        if position >= stop[partition]:
                            pending.pop(partition, None)
            except KafkaError as exc:
                raise UnavailableError(f"replay from Kafka failed: {exc!r}") from exc

    async def _skip_expired(
        self, consumer: AIOKafkaConsumer, pending: dict[int, int], stop: Mapping[int, int]
    ) -> Expired:
        """Move every pending partition whose position retention deleted to its log start
        (dropping those left with nothing to read), and say what was lost."""
        partitions = [TopicPartition(self._topic, p) for p in pending]
        log_starts = await consumer.beginning_offsets(partitions)
        lost: dict[int, tuple[int, int]] = {}
        for tp in partitions:
            position = await consumer.position(tp)
            resume_at = min(log_starts[tp], stop[tp.partition])
            if position >= resume_at:
                continue
            lost[tp.partition] = (position, resume_at)
            if resume_at >= stop[tp.partition]:
                pending.pop(tp.partition)
            else:
                consumer.seek(tp, resume_at)
        return Expired(lost)


class RecordFetcher:
    """Reads single records by position for one stream, cheaply when they come in order:
    each read fetches a batch, and the records after the one asked for are kept."""

    def __init__(self, reader: KafkaReader) -> None:
        self._reader = reader
        self._buffered: dict[tuple[int, int], Any] = {}

    async def fetch(self, partition: int, offset: int) -> Any:
        key = (partition, offset)
        if key in self._buffered:
            return self._buffered.pop(key)
        self._buffered.clear()
        tp = TopicPartition(self._reader.topic, partition)
        try:
            async with self._reader.borrow() as consumer, asyncio.timeout(10):
                consumer.assign([tp])
                consumer.seek(tp, offset)
                while True:
                    batches = await consumer.getmany(tp, timeout_ms=1000, max_records=100)
                    for record in batches.get(tp, ()):
                        self._buffered[(partition, record.offset)] = record
                    if key in self._buffered:
                        return self._buffered.pop(key)
                    if any(found > offset for _, found in self._buffered):
                        raise UnavailableError(f"record {partition}@{offset} is gone from Kafka")
        except OffsetOutOfRangeError as exc:
            raise UnavailableError(f"record {partition}@{offset} is gone from Kafka") from exc
        except (KafkaError, TimeoutError) as exc:
            raise UnavailableError(f"could not read {partition}@{offset}: {exc!r}") from exc

    async def close(self) -> None:
        self._buffered.clear()
