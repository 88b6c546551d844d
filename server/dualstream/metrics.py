"""Metrics: a few nanoseconds to record on the hot paths, collected through OpenTelemetry.

Recording through the OpenTelemetry metrics API costs 10-40 µs per measurement on this
machine (the SDK cleans, hashes and sorts the attributes on every call); a publish makes four,
which would be a tenth of its CPU. So the hot paths add to plain series objects bound to their
attribute set once, and OpenTelemetry reads them only when a reader collects: counters and
gauges through observable instruments, histograms (which have no observable form) merged into
the collected data. Prometheus renders the result on request, and an OTLP reader pushes it
periodically, both from the same ``MeterProvider``. Each sidecar has its own; nothing global.

Every metric, its unit and its attributes are listed in docs/observability.md; attributes are
low-cardinality by construction (never a source id, an event id or a channel).
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    ConsoleMetricExporter,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.semconv._incubating.attributes.messaging_attributes import (
    MESSAGING_DESTINATION_NAME,
    MESSAGING_OPERATION_NAME,
    MESSAGING_SYSTEM,
)
from opentelemetry.semconv._incubating.attributes.rpc_attributes import (
    RPC_METHOD,
    RPC_RESPONSE_STATUS_CODE,
    RPC_SYSTEM_NAME,
)
from opentelemetry.semconv._incubating.metrics.messaging_metrics import (
    MESSAGING_CLIENT_CONSUMED_MESSAGES,
    MESSAGING_CLIENT_OPERATION_DURATION,
    MESSAGING_CLIENT_SENT_MESSAGES,
)
from opentelemetry.semconv._incubating.metrics.rpc_metrics import RPC_SERVER_CALL_DURATION
from opentelemetry.semconv.attributes.db_attributes import DB_OPERATION_NAME, DB_SYSTEM_NAME
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.semconv.metrics.db_metrics import DB_CLIENT_OPERATION_DURATION
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from dualstream.lifecycle import Service
from dualstream.settings import TelemetrySettings

if TYPE_CHECKING:
    from dualstream.hub import SubscriptionHub
    from dualstream.publisher import Publisher

INSTRUMENTATION_NAME = "dualstream"
PROMETHEUS_CONTENT_TYPE = CONTENT_TYPE_LATEST
# Seconds. The semantic conventions' advice for durations, with three finer buckets below
# 5 ms, where a publish and a Redis PUBLISH usually end.
DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075,
    0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
RPC_SERVICE = "dualstream.v1.EventService"

Attributes = Mapping[str, str | int | bool]


# ---- series: what the hot paths touch --------------------------------------------------------


class Count:
    """One monotonic counter series, its attributes bound once."""

    __slots__ = ("attributes", "value")

    def __init__(self, attributes: Attributes) -> None:
        self.attributes = dict(attributes)
        self.value = 0

    def add(self, amount: int = 1) -> None:
        self.value += amount


class Durations:
    """One histogram series with explicit buckets, its attributes bound once."""

    __slots__ = ("attributes", "bounds", "bucket_counts", "max", "min", "sum")

    def __init__(self, attributes: Attributes, bounds: Sequence[float]) -> None:
        self.attributes = dict(attributes)
        self.bounds = tuple(bounds)
        self.bucket_counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf

    def record(self, value: float) -> None:
        # bisect_left puts a value equal to a bound in that bound's bucket: (lower, upper].
        self.bucket_counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.min = min(self.min, value)
        self.max = max(self.max, value)


class _CounterFamily:
    def __init__(self, name: str, unit: str, description: str) -> None:
        self.name, self.unit, self.description = name, unit, description
        self.series: list[Count] = []

    def bind(self, attributes: Attributes) -> Count:
        series = Count(attributes)
        self.series.append(series)
        return series

    def observe(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(s.value, s.attributes) for s in list(self.series)]


class _HistogramFamily:
    def __init__(self, name: str, unit: str, description: str) -> None:
        self.name, self.unit, self.description = name, unit, description
        self.series: list[Durations] = []

    def bind(self, attributes: Attributes) -> Durations:
        series = Durations(attributes, DURATION_BUCKETS)
        self.series.append(series)
        return series

    def metric(self, start_ns: int, now_ns: int) -> Metric | None:
        points = []
        for series in list(self.series):
            counts = list(series.bucket_counts)  # One snapshot: count agrees with the buckets.
            count = sum(counts)
            if not count:
                continue
            points.append(
                HistogramDataPoint(
                    attributes=series.attributes,
                    start_time_unix_nano=start_ns,
                    time_unix_nano=now_ns,
                    count=count,
                    sum=series.sum,
                    bucket_counts=counts,
                    explicit_bounds=series.bounds,
                    min=series.min,
                    max=series.max,
                )
            )
        if not points:
            return None
        return Metric(
            name=self.name,
            description=self.description,
            unit=self.unit,
            data=Histogram(
                data_points=points, aggregation_temporality=AggregationTemporality.CUMULATIVE
            ),
        )


# ---- operations: a duration histogram (and a count) by outcome -------------------------------


class Operation:
    """The duration of one kind of operation, and optionally how many messages it carried,
    by outcome: ``error.type`` is added to the bound attributes for failures."""

    def __init__(
        self,
        durations: _HistogramFamily,
        attributes: Attributes,
        messages: _CounterFamily | None = None,
    ) -> None:
        self._durations = durations
        self._messages = messages
        self._attributes = dict(attributes)
        self._ok_duration = durations.bind(attributes)
        self._ok_messages = messages.bind(attributes) if messages is not None else None
        self._failed: dict[str, tuple[Durations, Count | None]] = {}

    def succeeded(self, seconds: float, messages: int = 1) -> None:
        self._ok_duration.record(seconds)
        if self._ok_messages is not None:
            self._ok_messages.value += messages

    def failed(self, error_type: str, seconds: float, messages: int = 1) -> None:
        series = self._failed.get(error_type)
        if series is None:
            attributes = {**self._attributes, ERROR_TYPE: error_type}
            counted = self._messages.bind(attributes) if self._messages is not None else None
            series = self._failed[error_type] = (self._durations.bind(attributes), counted)
        durations, counted = series
        durations.record(seconds)
        if counted is not None:
            counted.value += messages


class RpcCalls:
    """``rpc.server.call.duration`` by method and status code."""

    # gRPC's server-side errors by the semantic conventions; other codes (INVALID_ARGUMENT,
    # RESOURCE_EXHAUSTED, ...) are the caller's problem and not errors of the server.
    SERVER_ERRORS = frozenset(
        {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
    )

    def __init__(self, durations: _HistogramFamily) -> None:
        self._durations = durations
        self._series: dict[tuple[str, str], Durations] = {}

    def record(self, method: str, status_code: str, seconds: float) -> None:
        series = self._series.get((method, status_code))
        if series is None:
            attributes: dict[str, str] = {
                RPC_SYSTEM_NAME: "grpc",
                RPC_METHOD: f"{RPC_SERVICE}/{method}",
                RPC_RESPONSE_STATUS_CODE: status_code,
            }
            if status_code in self.SERVER_ERRORS:
                attributes[ERROR_TYPE] = status_code
            series = self._series[(method, status_code)] = self._durations.bind(attributes)
        series.record(seconds)


# ---- the sidecar's metrics -------------------------------------------------------------------


class PublishAdmission(Protocol):
    """What the metrics read of the transport's admission of publish calls."""

    in_progress: int
    limit: int


class SidecarMetrics(Service):
    """Every metric of one sidecar: the series its parts record into, and the readers.

    Parts take what they record into from here when they are built (``kafka_send``,
    ``redis_publish``, ``rpc``, ...); ``watch`` adds the gauges read from the running parts.
    Started, it serves Prometheus text (``prometheus_text``) and pushes over OTLP as the
    telemetry settings say; disabled, every series still exists but nothing reads them.
    """

    def __init__(self, telemetry: TelemetrySettings | None = None, *, version: str = "") -> None:
        self._telemetry = telemetry or TelemetrySettings()
        self._version = version
        self._start_ns = time.time_ns()
        self._counters: list[_CounterFamily] = []
        self._histograms: list[_HistogramFamily] = []
        self._observed: list[tuple[str, str, str, str, Callable[[], Iterable[Observation]]]] = []
        self._provider: MeterProvider | None = None
        self._registry: CollectorRegistry | None = None

        self.kafka_sent = self._counter(
            MESSAGING_CLIENT_SENT_MESSAGES, "{message}", "Events handed to Kafka, by outcome."
        )
        self.kafka_duration = self._histogram(
            MESSAGING_CLIENT_OPERATION_DURATION,
            "s",
            "How long Kafka took to acknowledge a send (one event, or a batch).",
        )
        self.redis_duration = self._histogram(
            DB_CLIENT_OPERATION_DURATION,
            "s",
            "How long a Redis PUBLISH of notifications took (one pipeline per call).",
        )
        self.rpc_duration = self._histogram(
            RPC_SERVER_CALL_DURATION, "s", "Duration of the sidecar's gRPC calls."
        )
        self.deliveries = self._counter(
            MESSAGING_CLIENT_CONSUMED_MESSAGES,
            "{message}",
            "Notifications delivered to Subscribe streams, live or replayed from Kafka.",
        )
        self.gaps = self._counter(
            "dualstream.stream.gaps", "{gap}", "Gaps reported to Subscribe streams, by reason."
        )
        self.gap_missed = self._counter(
            "dualstream.stream.gap.missed",
            "{notification}",
            "Notifications the reported gaps skipped, where known (slow consumers).",
        )
        self.rpc = RpcCalls(self.rpc_duration)

    # -- families

    def _counter(self, name: str, unit: str, description: str) -> _CounterFamily:
        family = _CounterFamily(name, unit, description)
        self._counters.append(family)
        return family

    def _histogram(self, name: str, unit: str, description: str) -> _HistogramFamily:
        family = _HistogramFamily(name, unit, description)
        self._histograms.append(family)
        return family

    def observe(
        self,
        kind: str,
        name: str,
        unit: str,
        description: str,
        read: Callable[[], Iterable[Observation]],
    ) -> None:
        """Add an observable ``gauge``, ``updown`` or ``counter`` read at collection."""
        if self._provider is not None:
            raise RuntimeError("observe() before start(): the meter is built then")
        self._observed.append((kind, name, unit, description, read))

    # -- what parts bind

    def kafka_send(self, topic: str, server: Attributes) -> Operation:
        """Kafka sends to ``topic``; ``server`` is ``server.address``/``server.port``."""
        attributes = {
            MESSAGING_SYSTEM: "kafka",
            MESSAGING_OPERATION_NAME: "send",
            MESSAGING_DESTINATION_NAME: topic,
            **server,
        }
        return Operation(self.kafka_duration, attributes, self.kafka_sent)

    def redis_publish(self, server: Attributes) -> Operation:
        """Redis PUBLISH pipelines; ``server`` is ``server.address``/``server.port``."""
        attributes = {DB_SYSTEM_NAME: "redis", DB_OPERATION_NAME: "PUBLISH", **server}
        return Operation(self.redis_duration, attributes)

    def delivery_counts(self, topic: str) -> tuple[Count, Count]:
        """The live and the replayed deliveries' counters."""
        base = {MESSAGING_SYSTEM: "kafka", MESSAGING_OPERATION_NAME: "deliver"}
        if topic:
            base[MESSAGING_DESTINATION_NAME] = topic
        return (
            self.deliveries.bind({**base, "dualstream.replayed": False}),
            self.deliveries.bind({**base, "dualstream.replayed": True}),
        )

    def watch(self, publisher: Publisher, hub: SubscriptionHub) -> None:
        """Gauges and counters read from the running sidecar's parts when collected."""
        notifier, buffer = publisher.notifier, publisher.event_log.buffer
        stats = notifier.stats
        outcome = "dualstream.notification.outcome"
        self.observe(
            "counter",
            "dualstream.notifications",
            "{notification}",
            "Notifications of acknowledged events, by what became of them: sent to Redis, "
            "failed (error or timeout), or skipped while the breaker was open.",
            lambda: [
                Observation(stats.sent, {outcome: "sent"}),
                Observation(stats.failed, {outcome: "failed"}),
                Observation(stats.skipped, {outcome: "skipped"}),
            ],
        )
        holes, state = notifier.holes, "dualstream.hole.state"
        self.observe(
            "counter",
            "dualstream.notification.holes",
            "{event}",
            "Events whose notification failed, as the hole reporter handled them: recorded, "
            "kept only as part of an offset range (the record's bound), announced on the holes "
            "channel, or never announced (still recorded when the sidecar stopped).",
            lambda: [
                Observation(holes.record.recorded, {state: "recorded"}),
                Observation(holes.record.coarsened, {state: "coarsened"}),
                Observation(holes.stats.events_announced, {state: "announced"}),
                Observation(holes.stats.events_unannounced_at_stop, {state: "unannounced"}),
            ],
        )
        self.observe(
            "gauge",
            "dualstream.redis.breaker.open",
            "1",
            "1 while the Redis breaker is open (notifications skipped), else 0.",
            lambda: [Observation(int(notifier.breaker_open))],
        )
        self.observe(
            "counter",
            "dualstream.kafka.waves",
            "{wave}",
            "Waves of record batches handed to the Kafka producer, each one produce request per "
            "broker it reaches: records sent over waves is how full the requests are.",
            lambda: [Observation(publisher.event_log.waves)],
        )
        self.observe(
            "updown",
            "dualstream.kafka.buffer.events",
            "{event}",
            "Events handed to Kafka and not acknowledged yet.",
            lambda: [Observation(buffer.events)],
        )
        self.observe(
            "updown",
            "dualstream.kafka.buffer.bytes",
            "By",
            "Bytes of events handed to Kafka and not acknowledged yet.",
            lambda: [Observation(buffer.bytes)],
        )
        self.observe(
            "updown",
            "dualstream.streams.open",
            "{stream}",
            "Subscribe streams open.",
            lambda: [Observation(hub.stream_count)],
        )
        self.observe(
            "updown",
            "dualstream.streams.queued",
            "{notification}",
            "Notifications waiting in the queues of all streams.",
            lambda: [Observation(sum(hub.queue_depths()))],
        )
        self.observe(
            "gauge",
            "dualstream.streams.queue.max",
            "{notification}",
            "Notifications waiting in the fullest stream queue (a stream overflows at "
            "stream_queue_size).",
            lambda: [Observation(max(hub.queue_depths(), default=0))],
        )
        self.observe(
            "counter",
            "dualstream.hub.reconnects",
            "{connection}",
            "Times the shared Redis subscriber connection was made again after it was lost.",
            lambda: [Observation(hub.reconnects)],
        )

    def watch_admission(self, admission: PublishAdmission) -> None:
        """The publish calls in progress, and how many the sidecar takes on at once now."""
        self.observe(
            "updown",
            "dualstream.publish.in_progress",
            "{call}",
            "Publish and PublishBatch calls taken on and not answered yet.",
            lambda: [Observation(admission.in_progress)],
        )
        self.observe(
            "gauge",
            "dualstream.publish.limit",
            "{call}",
            "Publish and PublishBatch calls the sidecar takes on at once now: "
            "max_concurrent_rpcs, or fewer past capacity.",
            lambda: [Observation(admission.limit)],
        )

    # -- lifecycle and readers

    async def _start(self) -> None:
        if not self._telemetry.metrics:
            return
        exporters = self._telemetry.metrics_exporters
        readers: list[MetricReader] = []
        if "prometheus" in exporters:
            self._registry = CollectorRegistry(auto_describe=False)
            readers.append(_PrometheusReader(self._collect_histograms, registry=self._registry))
        for name in ("otlp", "console"):
            if name in exporters:
                pusher = _push_exporter(name, self._telemetry.metrics_protocol)
                readers.append(
                    PeriodicExportingMetricReader(
                        _WithHistograms(pusher, self._collect_histograms),
                        export_interval_millis=self._telemetry.metric_export_interval * 1000,
                    )
                )
        resource = Resource.create(
            {"service.name": self._telemetry.service_name, "service.version": self._version}
        )
        self._provider = MeterProvider(metric_readers=readers, resource=resource)
        meter = self._provider.get_meter(INSTRUMENTATION_NAME, self._version)
        for family in self._counters:
            meter.create_observable_counter(
                family.name, [family.observe], family.unit, family.description
            )
        makers = {
            "gauge": meter.create_observable_gauge,
            "updown": meter.create_observable_up_down_counter,
            "counter": meter.create_observable_counter,
        }
        for kind, name, unit, description, read in self._observed:
            makers[kind](name, [_callback(read)], unit, description)

    async def _stop(self) -> None:
        provider, self._provider = self._provider, None
        self._registry = None
        if provider is not None:
            # Pushes what is left over OTLP (the periodic reader's last export) and unregisters
            # the Prometheus collector.
            provider.shutdown()

    def prometheus_text(self) -> str:
        """Every metric in the Prometheus text format (0.0.4), for ``GET /metrics``."""
        if self._registry is None:
            return ""
        return generate_latest(self._registry).decode()

    def _collect_histograms(self) -> list[Metric]:
        now_ns = time.time_ns()
        collected = (family.metric(self._start_ns, now_ns) for family in self._histograms)
        return [metric for metric in collected if metric is not None]


def _callback(
    read: Callable[[], Iterable[Observation]],
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    return lambda _: read()


def _push_exporter(name: str, protocol: str) -> MetricExporter:
    if name == "console":
        return ConsoleMetricExporter()
    # Imported here so a sidecar that never pushes does not load an OTLP exporter.
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
            OTLPMetricExporter as HttpMetricExporter,
        )

        return HttpMetricExporter()
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    return OTLPMetricExporter()


def _merge(data: MetricsData | None, extra: list[Metric]) -> MetricsData | None:
    """``data`` with ``extra`` added to the sidecar's scope (created if the SDK had none)."""
    if not extra:
        return data
    resources = list(data.resource_metrics) if data is not None else []
    if not resources:
        return data
    first = resources[0]
    scopes = list(first.scope_metrics)
    for index, scope in enumerate(scopes):
        if scope.scope.name == INSTRUMENTATION_NAME:
            scopes[index] = ScopeMetrics(scope.scope, [*scope.metrics, *extra], scope.schema_url)
            break
    else:
        scopes.append(ScopeMetrics(InstrumentationScope(INSTRUMENTATION_NAME), extra, ""))
    resources[0] = ResourceMetrics(first.resource, scopes, first.schema_url)
    return MetricsData(resources)


class _PrometheusReader(PrometheusMetricReader):
    """The Prometheus reader, with the histograms merged into what it collects."""

    def __init__(
        self, histograms: Callable[[], list[Metric]], *, registry: CollectorRegistry
    ) -> None:
        super().__init__(disable_target_info=False, scope_info_enabled=False, registry=registry)
        self._histograms = histograms

    def _receive_metrics(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> None:
        merged = _merge(metrics_data, self._histograms())
        if merged is not None:
            super()._receive_metrics(merged, timeout_millis, **kwargs)


class _WithHistograms(MetricExporter):
    """A push exporter that sends the histograms along with what the SDK collected."""

    def __init__(self, inner: MetricExporter, histograms: Callable[[], list[Metric]]) -> None:
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self._inner = inner
        self._histograms = histograms

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        merged = _merge(metrics_data, self._histograms()) or metrics_data
        return self._inner.export(merged, timeout_millis=timeout_millis, **kwargs)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._inner.shutdown(timeout_millis=timeout_millis, **kwargs)
