"""``/metrics`` on the admin listener, parsed with Prometheus's own text parser, as the sidecar
publishes, serves a stream and loses its (private) Redis."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from collections.abc import Mapping

import pytest
from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer
from prometheus_client.parser import text_string_to_metric_families

from dualstream.logs import JsonFormatter
from dualstream.metrics import Count, Durations, Operation, SidecarMetrics, _WithHistograms
from dualstream.settings import TelemetrySettings
from dualstream.transport.server import Sidecar
from dualstream_client import DualstreamClient, EventInput, Gap, Notification
from stack.localstack import KafkaBroker, RedisServer
from tests.conftest import eventually, make_settings, target_of

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(sidecar: Sidecar) -> Samples:
    return scrape_admin(f"127.0.0.1:{sidecar.admin_port}")


def scrape_admin(address: str) -> Samples:
    """The samples an admin listener's /metrics serves."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 if none)."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


async def scraped(sidecar: Sidecar) -> Samples:
    return await asyncio.to_thread(scrape, sidecar)


@pytest.mark.integration
async def test_metrics_move_as_events_flow_and_redis_dies(
    kafka: KafkaBroker, private_redis: RedisServer, topic: str, tracer: Tracer, source_type: str
) -> None:
    # No probe of the open breaker during the test (it would count as a failure, not a skip).
    settings = make_settings(
        kafka.bootstrap,
        private_redis.url,
        topic,
        redis_breaker_failures=2,
        redis_timeout=1.0,
        redis_probe_interval=600.0,
    )
    event = EventInput("order.placed", source_type, "o1")
    async with (
        Sidecar(settings, tracer) as sidecar,
        DualstreamClient(target_of(sidecar), timeout=30) as client,
    ):
        assert await sidecar.publisher.event_log.wait_ready(30)
        before = await scraped(sidecar)
        assert value(before, "dualstream_streams_open") == 0
        assert value(before, "dualstream_publish_in_progress") == 0
        assert value(before, "dualstream_publish_limit") == settings.max_concurrent_rpcs
        assert value(before, "target_info", service_name="dualstream") == 1

        async with client.subscribe([(source_type, "o1")]) as stream:
            for _ in range(3):
                await client.publish(event)
            for _ in range(3):
                assert isinstance(await asyncio.wait_for(anext(stream), 30), Notification)
            served = await scraped(sidecar)
            kafka_labels = {"messaging_system": "kafka", "messaging_destination_name": topic}
            assert value(served, "dualstream_streams_open") == 1
            assert value(served, "messaging_client_sent_messages_total", **kafka_labels) == 3
            # One after another, each publish is a wave of its own: nothing else was coming.
            assert value(served, "dualstream_kafka_waves_total") == 3
            assert value(served, "messaging_client_operation_duration_seconds_count") == 3
            assert (
                value(
                    served,
                    "messaging_client_operation_duration_seconds_bucket",
                    le="+Inf",
                    server_port=str(kafka.port),
                )
                == 3
            )
            assert value(served, "db_client_operation_duration_seconds_count") == 3
            publishes = {"rpc_method": "dualstream.v1.EventService/Publish"}
            assert value(
                served, "rpc_server_call_duration_seconds_count", rpc_response_status_code="OK",
                **publishes,
            ) == 3  # fmt: skip
            assert (
                value(
                    served, "dualstream_notifications_total", dualstream_notification_outcome="sent"
                )
                == 3
            )
            assert (
                value(
                    served, "messaging_client_consumed_messages_total", dualstream_replayed="false"
                )
                == 3
            )

            # Redis dies: the first publishes fail, then the breaker opens and skips them.
            await asyncio.to_thread(private_redis.kill)
            for _ in range(4):
                assert not (await client.publish(event)).notified
            down = await scraped(sidecar)
            outcomes = {
                outcome: value(
                    down, "dualstream_notifications_total", dualstream_notification_outcome=outcome
                )
                for outcome in ("sent", "failed", "skipped")
            }
            assert outcomes == {"sent": 3, "failed": 2, "skipped": 2}
            holes = {"dualstream_hole_state": "recorded"}
            assert value(down, "dualstream_notification_holes_total", **holes) == 4
            assert value(down, "dualstream_redis_breaker_open") == 1
            failed_publishes = [
                labels
                for (name, labels), count in down.items()
                if name == "db_client_operation_duration_seconds_count" and count
                and dict(labels).get("error_type")
            ]  # fmt: skip
            assert len(failed_publishes) == 1
            # Kafka, the durable leg, did not notice.
            assert value(down, "messaging_client_sent_messages_total", **kafka_labels) == 7

            # Redis comes back: the hub reconnects and the stream is told of the outage's gap.
            await asyncio.to_thread(private_redis.start)
            gap = await asyncio.wait_for(anext(stream), 60)
            assert isinstance(gap, Gap)

            async def recovered() -> bool:
                samples = await scraped(sidecar)
                outage = {"dualstream_gap_reason": "redis_outage"}
                announced = {"dualstream_hole_state": "announced"}
                return (
                    value(samples, "dualstream_hub_reconnects_total") == 1
                    and value(samples, "dualstream_stream_gaps_total", **outage) == 1
                    and value(samples, "dualstream_notification_holes_total", **announced) == 4
                )

            await eventually(recovered, timeout=60)

        async def stream_ended() -> bool:
            # The client's cancel reaches the server's handler in its own time.
            samples = await scraped(sidecar)
            subscribes = {"rpc_method": "dualstream.v1.EventService/Subscribe"}
            return (
                value(samples, "dualstream_streams_open") == 0
                and value(samples, "rpc_server_call_duration_seconds_count", **subscribes) == 1
            )

        await eventually(stream_ended, timeout=60)


def test_durations_fall_in_the_bucket_whose_upper_bound_they_meet() -> None:
    durations = Durations({}, (0.001, 0.01))
    for seconds in (0.0005, 0.001, 0.002, 0.01, 5.0):
        durations.record(seconds)
    assert durations.bucket_counts == [2, 2, 1]
    assert (durations.min, durations.max) == (0.0005, 5.0)
    assert durations.sum == pytest.approx(5.0135)


async def test_failures_get_error_type_and_their_own_series() -> None:
    metrics = SidecarMetrics(TelemetrySettings())
    operation: Operation = metrics.kafka_send("events", {"server.address": "k", "server.port": 1})
    operation.succeeded(0.002, messages=10)
    operation.failed("KafkaTimeoutError", 0.5, messages=3)
    operation.failed("KafkaTimeoutError", 0.7)
    await metrics.start()
    try:
        samples: Samples = {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(metrics.prometheus_text())
            for s in family.samples
        }
    finally:
        await metrics.stop()
    sent = "messaging_client_sent_messages_total"
    assert value(samples, sent) == 14
    assert value(samples, sent, error_type="KafkaTimeoutError") == 4
    durations = "messaging_client_operation_duration_seconds_count"
    assert value(samples, durations, error_type="KafkaTimeoutError") == 2
    assert value(samples, durations) == 3


async def test_no_metrics_when_the_exporters_say_none() -> None:
    metrics = SidecarMetrics(TelemetrySettings.load({"OTEL_METRICS_EXPORTER": "none"}))
    await metrics.start()
    try:
        assert metrics.prometheus_text() == ""
    finally:
        await metrics.stop()


def test_series_are_plain_numbers() -> None:
    count = Count({"a": "b"})
    count.add()
    count.add(2)
    assert (count.value, count.attributes) == (3, {"a": "b"})
    assert isinstance(count.attributes, Mapping)


class _Recording(MetricExporter):
    """Keeps what a periodic reader pushes (standing in for an OTLP collector)."""

    def __init__(self) -> None:
        super().__init__()
        self.pushed: list[MetricsData] = []

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: object
    ) -> MetricExportResult:
        self.pushed.append(metrics_data)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: object) -> None:
        pass


def test_pushed_metrics_carry_the_histograms_too() -> None:
    metrics = SidecarMetrics(TelemetrySettings())
    metrics.redis_publish({"server.address": "r"}).succeeded(0.003)
    metrics.rpc.record("Publish", "OK", 0.004)
    recording = _Recording()
    reader = PeriodicExportingMetricReader(
        _WithHistograms(recording, metrics._collect_histograms), export_interval_millis=3_600_000
    )
    provider = MeterProvider(metric_readers=[reader])
    provider.get_meter("dualstream").create_observable_gauge(
        "dualstream.streams.open", [lambda _: [Observation(2)]]
    )
    provider.force_flush()
    provider.shutdown()
    names = {
        metric.name: metric
        for data in recording.pushed
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    assert {"dualstream.streams.open", "db.client.operation.duration"} <= set(names)
    [point] = names["rpc.server.call.duration"].data.data_points
    assert point.count == 1  # type: ignore[union-attr]


def test_json_logs_carry_the_current_span_ids() -> None:
    provider = TracerProvider()
    formatter = JsonFormatter()
    record = logging.LogRecord("dualstream.x", logging.WARNING, __file__, 1, "hello", None, None)
    outside = json.loads(formatter.format(record))
    with provider.get_tracer("t").start_as_current_span("call") as span:
        inside = json.loads(formatter.format(record))
    context = span.get_span_context()
    assert "trace_id" not in outside
    assert inside["trace_id"] == f"{context.trace_id:032x}"
    assert inside["span_id"] == f"{context.span_id:016x}"
    assert inside["message"] == "hello"
