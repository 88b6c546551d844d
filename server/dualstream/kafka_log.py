"""The durable leg: an idempotent, ``acks=all`` aiokafka producer that appends event records.

The producer connects in the background: a sidecar that starts before Kafka is up keeps
retrying (with jittered backoff) and answers UNAVAILABLE until the first connection succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordTooLargeError,
)

from dualstream.budget import Budget
from dualstream.cloudevents import KafkaRecord
from dualstream.connections import explained_connect_error, kafka_client_options
from dualstream.errors import InvalidArgumentError, UnavailableError
from dualstream.events import RecordPosition
from dualstream.lifecycle import Service
from dualstream.settings import Settings

logger = logging.getLogger(__name__)

# Room for headers and record framing on top of the largest payload.
RECORD_OVERHEAD_BYTES = 64 * 1024
CONNECT_BACKOFF_INITIAL = 0.2
CONNECT_BACKOFF_MAX = 5.0


class KafkaEventLog(Service):
    """Appends records to one topic and returns where Kafka stored them."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._topic = settings.kafka_topic
        self._client_options = kafka_client_options(settings)
        self._producer: AIOKafkaProducer | None = None
        self._connector: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._last_connect_error: BaseException | None = None
        self.buffer = Budget(settings.kafka_buffer_events, settings.kafka_buffer_bytes)

    @property
    def topic(self) -> str:
        return self._topic

    @property
    def bootstrap(self) -> str:
        return self._settings.kafka_bootstrap

    @property
    def client_id(self) -> str:
        return self._settings.kafka_client_id

    @property
    def ready(self) -> bool:
        """Whether the producer is connected and can take records."""
        return self._connected.is_set()

    @property
    def last_connect_error(self) -> str:
        return str(self._last_connect_error or "")

    async def wait_ready(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._connected.wait()
        return self.ready

    def _new_producer(self) -> AIOKafkaProducer:
        settings = self._settings
        return AIOKafkaProducer(
            **self._client_options,
            acks="all",
            enable_idempotence=True,
            linger_ms=settings.kafka_linger_ms,
            max_batch_size=settings.kafka_max_batch_bytes,
            max_request_size=settings.max_payload_bytes + RECORD_OVERHEAD_BYTES,
            compression_type=None
            if settings.kafka_compression == "none"
            else settings.kafka_compression,
            request_timeout_ms=int(settings.kafka_delivery_timeout * 1000),
        )

    async def _start(self) -> None:
        self._connector = asyncio.create_task(self._connect(), name="kafka-connect")
        # Give a reachable broker a moment so a fresh sidecar is ready when start() returns.
        await self.wait_ready(timeout=min(2.0, self._settings.kafka_delivery_timeout))

    async def _connect(self) -> None:
        backoff = CONNECT_BACKOFF_INITIAL
        while True:
            producer = self._new_producer()
            try:
                await producer.start()
            except KafkaError as bootstrap_error:
                await producer.stop()
                exc = await explained_connect_error(bootstrap_error, self._client_options)
                if self._last_connect_error is None or str(exc) != str(self._last_connect_error):
                    logger.warning(
                        "Kafka at %s is not reachable yet (%s); retrying",
                        self._settings.kafka_bootstrap,
                        exc,
                    )
                self._last_connect_error = exc
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, CONNECT_BACKOFF_MAX)
                continue
            except BaseException:
                # Stopped while connecting (a slow TLS or SASL handshake): close it all the same.
                await producer.stop()
                raise
            self._producer = producer
            self._connected.set()
            logger.info("Kafka producer connected to %s", self._settings.kafka_bootstrap)
            return

    async def _stop(self) -> None:
        if self._connector is not None:
            self._connector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connector
            self._connector = None
        self._connected.clear()
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            async with asyncio.timeout(self._settings.kafka_delivery_timeout):
                await producer.flush()
        except TimeoutError:
            # Only records whose callers already got UNAVAILABLE (or went away) can still be
            # pending here: every acknowledged record is written. aiokafka's stop() would wait
            # for them forever while the broker is down, so they are failed first.
            logger.error(  # noqa: TRY400 - a timeout, not an error with a useful traceback
                "Kafka did not acknowledge the last pending records within %gs; dropping "
                "them (their callers were not told they succeeded)",
                self._settings.kafka_delivery_timeout,
            )
            await _abandon_pending_records(producer)
        await producer.stop()

    def _require_producer(self) -> AIOKafkaProducer:
        if self._producer is None or not self._connected.is_set():
            reason = f": {self._last_connect_error}" if self._last_connect_error else ""
            raise UnavailableError(
                f"Kafka at {self._settings.kafka_bootstrap} is not connected{reason}"
            )
        return self._producer

    async def _send_reserved(self, producer: AIOKafkaProducer, record: KafkaRecord) -> Any:
        """Hand a record, whose buffer room is reserved, to the producer. The room is given
        back when Kafka answers for the record (not when the caller gives up), so a stalled
        broker cannot grow memory without bound."""
        size = record.size
        try:
            delivery = await producer.send(
                self._topic, value=record.value, key=record.key, headers=record.headers
            )
        except BaseException:
            self.buffer.release(1, size)
            raise
        delivery.add_done_callback(lambda _: self.buffer.release(1, size))
        return delivery

    async def append(self, record: KafkaRecord) -> RecordPosition:
        """Write one record and wait for the broker's acknowledgement."""
        producer = self._require_producer()
        try:
            async with asyncio.timeout(self._settings.kafka_delivery_timeout):
                await self.buffer.acquire(1, record.size, self._settings.kafka_buffer_wait)
                delivery = await self._send_reserved(producer, record)
                metadata = await delivery
        except TimeoutError as exc:
            raise self._timed_out() from exc
        except KafkaError as exc:
            raise self._translate(exc) from exc
        return RecordPosition(metadata.topic, metadata.partition, metadata.offset)

    async def append_many(self, records: Sequence[KafkaRecord]) -> list[RecordPosition | Exception]:
        """Write records pipelined; each entry is the record's position or why it failed."""
        producer = self._require_producer()
        outcomes: list[RecordPosition | Exception] = []
        try:
            async with asyncio.timeout(self._settings.kafka_delivery_timeout):
                # The whole batch reserves its room first, so a full buffer never splits it.
                sizes = [record.size for record in records]
                await self.buffer.acquire(
                    len(records), sum(sizes), self._settings.kafka_buffer_wait
                )
                deliveries = []
                for index, record in enumerate(records):
                    try:
                        deliveries.append(await self._send_reserved(producer, record))
                    except BaseException:
                        # _send_reserved gave back this record's room; give back the rest.
                        self.buffer.release(len(records) - index - 1, sum(sizes[index + 1 :]))
                        raise
                results = await asyncio.gather(*deliveries, return_exceptions=True)
        except TimeoutError as exc:
            raise self._timed_out() from exc
        except KafkaError as exc:
            raise self._translate(exc) from exc
        for result in results:
            if isinstance(result, KafkaError):
                outcomes.append(self._translate(result))
            elif isinstance(result, BaseException):
                raise result
            else:
                outcomes.append(RecordPosition(result.topic, result.partition, result.offset))
        return outcomes

    def _timed_out(self) -> UnavailableError:
        return UnavailableError(
            f"Kafka did not acknowledge within {self._settings.kafka_delivery_timeout:g}s; "
            "the event may not be written, and retrying with the same id is safe"
        )

    def _translate(self, exc: KafkaError) -> Exception:
        if isinstance(exc, MessageSizeTooLargeError | RecordTooLargeError):
            return InvalidArgumentError(
                "event.data", f"Kafka rejected the record as too large: {exc}"
            )
        return UnavailableError(f"Kafka did not acknowledge the event: {exc}")


async def _abandon_pending_records(producer: AIOKafkaProducer) -> None:
    """Fail every record still waiting for Kafka, so that ``stop()`` returns.

    aiokafka has no public way to do this (its ``stop()`` flushes without a bound), so this
    reaches into its sender and accumulator; the aiokafka version is pinned in pyproject.toml
    and the shutdown tests run against a stopped broker to catch a change.
    """
    await producer._sender.close()
    accumulator = producer._message_accumulator
    batches = [b for queued in accumulator._batches.values() for b in queued]
    batches += list(accumulator._pending_batches)
    futures = [b.future for b in batches] + [f for b in batches for f, _ in b._msg_futures]
    futures += [b._drain_waiter for b in batches]
    accumulator.fail_all(KafkaTimeoutError("the sidecar stopped before Kafka acknowledged"))
    for future in futures:
        # Nobody awaits these any more; reading the exception keeps asyncio from reporting it.
        if future.done() and not future.cancelled():
            future.exception()
