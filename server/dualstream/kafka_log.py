"""The durable leg: an idempotent, ``acks=all`` aiokafka producer that appends event records.

The producer connects in the background: a sidecar that starts before Kafka is up keeps
retrying (with jittered backoff) and answers UNAVAILABLE until the first connection succeeds.

Once connected, a probe asks Kafka for the topic's metadata every ``PROBE_INTERVAL`` seconds
over a client of its own (aiokafka's producer retries a dead broker for ever and says nothing).
When no broker answers it, and no record was acknowledged meanwhile, Kafka counts as
unreachable: health says NOT_SERVING and publishes answer UNAVAILABLE at once instead of each
waiting out the delivery timeout. The next answered probe makes it reachable again. A broker
of several dying is not "unreachable": the probe asks every known broker in turn.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaClient, AIOKafkaProducer
from aiokafka.errors import (
    KafkaError,
    MessageSizeTooLargeError,
    RecordTooLargeError,
)

from dualstream.budget import Budget
from dualstream.cloudevents import KafkaRecord
from dualstream.connections import explained_connect_error, kafka_client_options
from dualstream.errors import DualstreamError, InvalidArgumentError, UnavailableError
from dualstream.events import RecordPosition
from dualstream.kafka_batches import Batch, BatchWriter
from dualstream.lifecycle import Service, cancel_and_wait, event_set_within, wait_all_done
from dualstream.settings import Settings

logger = logging.getLogger(__name__)

# Room for headers and record framing on top of the largest payload.
RECORD_OVERHEAD_BYTES = 64 * 1024
CONNECT_BACKOFF_INITIAL = 0.2
CONNECT_BACKOFF_MAX = 5.0
# A metadata request per second on one kept-open connection: cheap for the cluster. A broker
# that refuses connections (killed) is noticed within about a second; a silent one (SIGSTOP, a
# black hole) costs the probe PROBE_TIMEOUT each, so one is noticed within about 3 s. The
# timeout is generous because a false alarm fails publishes at once (unless acks are flowing).
PROBE_INTERVAL = 1.0
PROBE_TIMEOUT = 2.0
PROBE_GIVE_UP = 10.0
# The probe's client refreshes metadata only when asked; its own periodic refresh is off.
PROBE_METADATA_MAX_AGE_MS = 24 * 3600 * 1000


class KafkaEventLog(Service):
    """Appends records to one topic and returns where Kafka stored them."""

    def __init__(self, settings: Settings, *, concurrency: Callable[[], int] | None = None) -> None:
        self._settings = settings
        # Publish calls in progress, as the transport counts them: how many records to expect.
        self._concurrency = concurrency or (lambda: 0)
        self._topic = settings.kafka_topic
        self._client_options = kafka_client_options(settings)
        self._producer: AIOKafkaProducer | None = None
        self._connector: asyncio.Task[None] | None = None
        self._prober: asyncio.Task[None] | None = None
        self._probe_client: AIOKafkaClient | None = None
        self._connected = asyncio.Event()
        self._last_connect_error: BaseException | None = None
        self._unreachable: str | None = None
        # Set while connected and reachable: what ``ready`` says, for ``wait_ready``.
        self._ready = asyncio.Event()
        # Acknowledgements seen, as proof of a reachable broker while a probe is out.
        self._acknowledged = 0
        # Records go to Kafka in per-partition batches (kafka_batches.py). A record's room in
        # the buffer is given back when Kafka answers for its batch (or when stop() gives up
        # on it), never when its caller stops waiting.
        self._writer: BatchWriter | None = None
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
    def waves(self) -> int:
        """Waves of batches handed to the producer so far (see kafka_batches.py)."""
        return self._writer.waves if self._writer is not None else 0

    @property
    def ready(self) -> bool:
        """Whether the producer is connected and Kafka answers: records can be written."""
        return self._ready.is_set()

    def _update_ready(self) -> None:
        if self._connected.is_set() and self._unreachable is None:
            self._ready.set()
        else:
            self._ready.clear()

    @property
    def last_connect_error(self) -> str:
        if self._unreachable is not None:
            return self._unreachable
        return str(self._last_connect_error or "")

    async def wait_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the log to be ready; whether it is."""
        await event_set_within(self._ready, timeout)
        return self.ready

    def _new_producer(self) -> AIOKafkaProducer:
        settings = self._settings
        return AIOKafkaProducer(
            **self._client_options,
            acks="all",
            enable_idempotence=True,
            # The sidecar's batches arrive complete, in waves that did any lingering there was
            # to do (kafka_batches.py); the producer sends them as they come.
            linger_ms=0,
            max_batch_size=settings.kafka_max_batch_bytes,
            max_request_size=settings.max_payload_bytes + RECORD_OVERHEAD_BYTES,
            compression_type=None
            if settings.kafka_compression == "none"
            else settings.kafka_compression,
            request_timeout_ms=int(settings.kafka_delivery_timeout * 1000),
        )

    async def _start(self) -> None:
        self._unreachable = None
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
            self._writer = BatchWriter(
                producer,
                self._topic,
                max_hold=self._settings.kafka_linger_ms / 1000,
                on_answer=self._batch_answered,
                concurrency=self._concurrency,
            )
            # The probe's first answer comes before "connected": from then on the sidecar has
            # all it keeps for the Kafka leg (its tasks and connections).
            self._probe_client = AIOKafkaClient(
                **self._client_options,
                request_timeout_ms=int(PROBE_TIMEOUT * 1000),
                metadata_max_age_ms=PROBE_METADATA_MAX_AGE_MS,
            )
            await self._probe(self._probe_client)
            self._connected.set()
            self._update_ready()
            self._prober = asyncio.create_task(self._keep_probing(), name="kafka-probe")
            logger.info("Kafka producer connected to %s", self._settings.kafka_bootstrap)
            return

    async def _keep_probing(self) -> None:
        assert self._probe_client is not None
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            await self._probe(self._probe_client)

    async def _probe(self, client: AIOKafkaClient) -> None:
        """Ask Kafka for the topic's metadata and mark it reachable or not by the answer."""
        acknowledged_before = self._acknowledged
        try:
            if client.cluster.brokers():
                # Asks each known broker in turn, each bounded by PROBE_TIMEOUT.
                answer = client.force_metadata_update()
            else:
                # Bounded inside: each bootstrap server gets PROBE_TIMEOUT per step.
                await client.bootstrap()
                answer = client.set_topics([self._topic])
            # A shielded future: giving up on it here leaves the client consistent.
            async with asyncio.timeout(PROBE_GIVE_UP):
                answered = await answer
            problem = "" if answered else "no broker answered a metadata request"
        except (KafkaError, OSError, TimeoutError) as exc:
            problem = str(exc) or type(exc).__name__
        if not problem:
            self._mark_reachable()
        elif self._acknowledged == acknowledged_before:
            self._mark_unreachable(problem)

    def _mark_reachable(self) -> None:
        if self._unreachable is not None:
            logger.info("Kafka at %s answers again", self._settings.kafka_bootstrap)
            self._unreachable = None
            self._update_ready()

    def _mark_unreachable(self, problem: str) -> None:
        if self._unreachable is None:
            logger.warning(
                "Kafka at %s is unreachable (%s); publishes answer UNAVAILABLE until it answers",
                self._settings.kafka_bootstrap,
                problem,
            )
        self._unreachable = f"no broker answers ({problem})"
        self._update_ready()

    async def _stop(self) -> None:
        await cancel_and_wait(self._connector)
        await cancel_and_wait(self._prober)
        self._connector = self._prober = None
        probe_client, self._probe_client = self._probe_client, None
        if probe_client is not None:
            await probe_client.close()
        self._connected.clear()
        self._update_ready()
        producer, self._producer = self._producer, None
        writer, self._writer = self._writer, None
        if producer is None or writer is None:
            return
        # Records still waiting for a wave go now; stop() flushes the producer. An idempotent
        # producer retries a dead broker for ever, so the wait is bounded. Every acknowledged
        # record is written by then: only records whose callers already got UNAVAILABLE (or
        # went away) can still be pending.
        writer.send_wave()
        stopping = asyncio.create_task(producer.stop(), name="kafka-producer-stop")
        done, _ = await asyncio.wait([stopping], timeout=self._settings.kafka_delivery_timeout)
        if not done:
            logger.error(
                "Kafka did not acknowledge the last %d pending records within %gs; giving "
                "up on them (their callers were not told they succeeded)",
                writer.outstanding,
                self._settings.kafka_delivery_timeout,
            )
            await cancel_and_wait(stopping)
        elif (error := stopping.exception()) is not None:
            logger.warning("the Kafka producer stopped with an error: %s", error)
        # Answer every caller still waiting for Kafka with UNAVAILABLE, and free their room.
        writer.give_up(
            UnavailableError(
                "the sidecar stopped before Kafka acknowledged the event; it may or may not "
                "be written, and retrying with the same id is safe"
            )
        )

    def _batch_answered(self, batch: Batch, error: BaseException | None) -> None:
        self.buffer.release(batch.records, batch.size)
        if error is None:
            self._acknowledged += batch.records

    def _require_writer(self) -> BatchWriter:
        if self._writer is None or not self._connected.is_set():
            reason = f": {self._last_connect_error}" if self._last_connect_error else ""
            raise UnavailableError(
                f"Kafka at {self._settings.kafka_bootstrap} is not connected{reason}"
            )
        if self._unreachable is not None:
            raise UnavailableError(
                f"Kafka at {self._settings.kafka_bootstrap} is unreachable: {self._unreachable}"
            )
        return self._writer

    async def _write(self, records: Sequence[KafkaRecord]) -> list[tuple[Batch, int]]:
        """Append records and wait until Kafka answered for all of them; each one's batch and
        place in it. Raises only if the records could not be written at all."""
        writer = self._require_writer()
        # The whole call reserves its room first, so a full buffer never splits a batch call.
        size = sum([record.size for record in records])
        await self.buffer.acquire(len(records), size, self._settings.kafka_buffer_wait)
        try:
            if not writer.placement.refresh():
                await writer.wait_for_partitions()
            placed = writer.append(records)
        except BaseException:
            self.buffer.release(len(records), size)
            raise
        # Waiting on the answers, not awaiting them: a caller that gives up (its timeout, its
        # cancellation) leaves the batch, shared with other calls, alone.
        await wait_all_done({batch.answer for batch, _ in placed})
        return placed

    async def append(self, record: KafkaRecord) -> RecordPosition:
        """Write one record and wait for the broker's acknowledgement."""
        try:
            async with asyncio.timeout(self._settings.kafka_delivery_timeout):
                ((batch, offset),) = await self._write((record,))
        except TimeoutError as exc:
            raise self._timed_out() from exc
        except KafkaError as exc:
            raise self._translate(exc) from exc
        return self._position(batch, offset)

    async def append_many(self, records: Sequence[KafkaRecord]) -> list[RecordPosition | Exception]:
        """Write records; each entry is the record's position or why it failed."""
        try:
            async with asyncio.timeout(self._settings.kafka_delivery_timeout):
                placed = await self._write(records)
        except TimeoutError as exc:
            raise self._timed_out() from exc
        except KafkaError as exc:
            raise self._translate(exc) from exc
        outcomes: list[RecordPosition | Exception] = []
        for batch, offset in placed:
            try:
                outcomes.append(self._position(batch, offset))
            except DualstreamError as exc:
                outcomes.append(exc)
        return outcomes

    def _position(self, batch: Batch, offset: int) -> RecordPosition:
        """Where a record of an answered batch is; raises why, if the batch was not written."""
        error = batch.answer.exception()
        if error is None:
            return RecordPosition(self._topic, batch.partition, batch.answer.result() + offset)
        if isinstance(error, KafkaError):
            raise self._translate(error) from error
        if isinstance(error, DualstreamError):
            raise error
        raise UnavailableError(f"Kafka did not acknowledge the event: {error}") from error

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
