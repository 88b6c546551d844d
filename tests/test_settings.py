"""Settings come from flags, then DUALSTREAM_* variables, then defaults; telemetry from OTEL_*."""

from __future__ import annotations

import argparse

import pytest

from dualstream.settings import Settings, TelemetrySettings


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    Settings.add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_match_the_contract() -> None:
    settings = Settings.load({})
    assert settings.listen == "127.0.0.1:50051"
    assert settings.kafka_bootstrap == "127.0.0.1:9092"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.kafka_topic == "events"
    assert settings.max_payload_bytes == 1024 * 1024
    assert (settings.subscribe_listen, settings.delivery_nice) == ("", 19)
    assert settings.delivery_cpu_policy == "idle"
    assert settings.worker_stall_timeout == 30.0


def test_flag_beats_env_beats_default() -> None:
    env = {"DUALSTREAM_KAFKA_TOPIC": "from-env", "DUALSTREAM_REDIS_TIMEOUT": "0.5"}
    settings = Settings.load(env, parse(["--kafka-topic", "from-flag"]))
    assert settings.kafka_topic == "from-flag"
    assert settings.redis_timeout == 0.5


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"DUALSTREAM_MAX_STREAMS": "many"}, "DUALSTREAM_MAX_STREAMS"),
        ({"DUALSTREAM_MAX_STREAMS": "0"}, "max_streams"),
        ({"DUALSTREAM_CHANNEL_PREFIX": "a:b"}, "channel_prefix"),
        ({"DUALSTREAM_SUBSCRIBE_LISTEN": "127.0.0.1:50051"}, "subscribe_listen"),
        (
            {"DUALSTREAM_DELIVERY_ADMIN_LISTEN": "127.0.0.1:9465"},
            "delivery_admin_listen needs subscribe_listen",
        ),
        ({"DUALSTREAM_DELIVERY_NICE": "20"}, "delivery_nice"),
        ({"DUALSTREAM_DELIVERY_CPU_POLICY": "batch"}, "delivery_cpu_policy must be idle or nice"),
        ({"DUALSTREAM_WORKER_STALL_TIMEOUT": "1.5"}, "worker_stall_timeout must be at least 2 s"),
    ],
)
def test_bad_values_are_named(env: dict[str, str], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        Settings.load(env)


def test_settings_are_frozen() -> None:
    settings = Settings.load({})
    with pytest.raises(AttributeError):
        settings.listen = "elsewhere"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "exporter"),
    [
        ({}, "none"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "console"}, "console"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, "none"),
    ],
)
def test_telemetry_follows_otel_variables(env: dict[str, str], exporter: str) -> None:
    assert TelemetrySettings.load(env).exporter == exporter


def test_sampler_and_metrics_follow_otel_variables() -> None:
    default = TelemetrySettings.load({})
    assert (default.sampler, default.sampler_ratio) == ("parentbased_always_on", 1.0)
    assert default.metrics_exporters == {"prometheus"}
    ratio = TelemetrySettings.load(
        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}
    )
    assert (ratio.sampler, ratio.sampler_ratio) == ("parentbased_traceidratio", 0.25)
    pushed = TelemetrySettings.load(
        {
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://c:4317",
            "OTEL_METRIC_EXPORT_INTERVAL": "5000",
        }
    )
    assert pushed.metrics_exporters == {"prometheus", "otlp"}
    assert pushed.metric_export_interval == 5.0
    assert pushed.exporter == "none"  # A metrics endpoint says nothing about traces.
    assert TelemetrySettings.load({"OTEL_METRICS_EXPORTER": "none"}).metrics_exporters == set()
    http = TelemetrySettings.load(
        {
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "grpc",
        }
    )
    assert (http.traces_protocol, http.metrics_protocol) == ("http/protobuf", "grpc")
    disabled = TelemetrySettings.load({"OTEL_SDK_DISABLED": "true"})
    assert (disabled.tracing, disabled.metrics) == (False, False)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_TRACES_SAMPLER": "jaeger_remote"}, "OTEL_TRACES_SAMPLER"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, "SAMPLER_ARG"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "x"}, "SAMPLER_ARG"),
        ({"OTEL_METRICS_EXPORTER": "statsd"}, "OTEL_METRICS_EXPORTER"),
        ({"OTEL_METRIC_EXPORT_INTERVAL": "0"}, "OTEL_METRIC_EXPORT_INTERVAL"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
    ],
)
def test_bad_otel_variables_are_named(env: dict[str, str], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        TelemetrySettings.load(env)
