"""One typed, frozen settings object, parsed once at start-up and passed through constructors.

Every field is a ``--flag`` of ``dualstream serve`` and a ``DUALSTREAM_*`` environment
variable (flag wins over environment, environment over default). Telemetry follows the
standard ``OTEL_*`` variables instead; see ``TelemetrySettings``.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from dualstream.events import EventLimits
from dualstream.heartbeats import BEAT_INTERVAL

ENV_PREFIX = "DUALSTREAM_"
KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
GRPC_SERVERS = ("grpcio", "h2")
DELIVERY_CPU_POLICIES = ("idle", "nice")
KAFKA_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def _setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the sidecar can be told. Durations are in seconds."""

    listen: str = _setting(
        "127.0.0.1:50051", "gRPC listen address: host:port, or unix:/path/to.sock"
    )
    subscribe_listen: str = _setting(
        "",
        "if set, a second address (host:port or unix:/path) where a process of its own serves "
        "Subscribe streams at a lower CPU priority, so that deliveries never take the publishes' "
        "CPU; empty: streams are served on listen, by the same process as publishes",
    )
    delivery_cpu_policy: str = _setting(
        "idle",
        "how the subscribe_listen process yields the CPU to publishes: idle, Linux's SCHED_IDLE "
        "(it runs on CPU nothing else wants, and publishing work that wakes takes the core "
        "from it at once), or nice, a normal process at delivery_nice (a lower share of a busy "
        "CPU, but it may finish its time slice, a few ms, before publishing work that wakes "
        "gets the core); idle falls back to nice where the policy does not exist",
    )
    delivery_nice: int = _setting(
        19,
        "the CPU niceness (0-19) of the subscribe_listen process, with delivery_cpu_policy "
        "nice: higher yields more of the CPU to publishes",
    )
    api_server: str = _setting(
        "h2",
        "what serves gRPC on listen: h2, the sidecar's own HTTP/2 (about two thirds of grpcio's "
        "CPU per publish, and refusals past capacity at a fraction of a call's cost), or grpcio, "
        "gRPC's own server",
    )
    subscribe_server: str = _setting(
        "h2",
        "what serves the subscribe_listen process's gRPC: h2, the sidecar's own HTTP/2 (about "
        "half of grpcio's CPU per delivery; Subscribe, GetStatus and health checks only), or "
        "grpcio, gRPC's own server (every method, and reflection)",
    )
    delivery_admin_listen: str = _setting(
        "",
        "admin HTTP address (host:port) of the subscribe_listen process, whose /metrics carry "
        "its streams' figures; empty: none",
    )
    admin_listen: str = _setting(
        "127.0.0.1:9464",
        "admin HTTP address (host:port) for /healthz, /readyz and /metrics; empty turns it off",
    )
    kafka_bootstrap: str = _setting("127.0.0.1:9092", "Kafka bootstrap servers, comma-separated")
    kafka_topic: str = _setting("events", "Kafka topic every event is written to")
    kafka_client_id: str = _setting("dualstream", "Kafka client id")
    kafka_linger_ms: int = _setting(
        2,
        "the longest a record waits for concurrent calls' records to share its produce request "
        "(only while calls are concurrent: a lone call's record waits for nothing; above 16 "
        "calls in progress, in proportion to them, at most 4 times this)",
    )
    kafka_max_batch_bytes: int = _setting(65536, "producer batch size per partition, in bytes")
    kafka_delivery_timeout: float = _setting(
        10.0, "how long a Kafka write may take before the call answers UNAVAILABLE"
    )
    kafka_compression: str = _setting("none", "producer compression: none, gzip, lz4 or zstd")
    kafka_buffer_events: int = _setting(
        10000, "most events awaiting Kafka's acknowledgement at once"
    )
    kafka_buffer_bytes: int = _setting(
        64 * 1024 * 1024, "most bytes awaiting Kafka's acknowledgement at once"
    )
    kafka_buffer_wait: float = _setting(
        0.5, "how long a publish waits for buffer room before RESOURCE_EXHAUSTED"
    )
    kafka_security_protocol: str = _setting(
        "PLAINTEXT", "how to reach Kafka: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
    )
    kafka_sasl_mechanism: str = _setting(
        "PLAIN", "SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
    )
    kafka_sasl_username: str = _setting("", "SASL user name")
    kafka_sasl_password: str = _setting("", "SASL password")
    kafka_sasl_password_file: str = _setting(
        "", "read the SASL password from this file instead (a mounted secret)"
    )
    kafka_ssl_ca_file: str = _setting(
        "", "PEM CA certificates that sign the brokers' certificates (default: the system's)"
    )
    kafka_ssl_cert_file: str = _setting(
        "", "PEM client certificate (chain) for mutual TLS with Kafka"
    )
    kafka_ssl_key_file: str = _setting("", "PEM private key of kafka_ssl_cert_file")
    kafka_ssl_check_hostname: bool = _setting(
        True, "check that a broker's certificate names the host connected to"
    )
    redis_url: str = _setting(
        "redis://127.0.0.1:6379/0",
        "Redis for notifications: redis://, rediss:// (TLS) or unix:///path/to/redis.sock, "
        "with user:password@ for an ACL user",
    )
    redis_username: str = _setting("", "Redis ACL user name (instead of the one in redis_url)")
    redis_password: str = _setting("", "Redis password (instead of the one in redis_url)")
    redis_password_file: str = _setting(
        "", "read the Redis password from this file instead (a mounted secret)"
    )
    redis_ssl_ca_file: str = _setting(
        "", "PEM CA certificates that sign Redis's certificate (default: the system's)"
    )
    redis_ssl_cert_file: str = _setting("", "PEM client certificate (chain) for Redis over TLS")
    redis_ssl_key_file: str = _setting("", "PEM private key of redis_ssl_cert_file")
    redis_ssl_check_hostname: bool = _setting(
        True, "check that Redis's certificate names the host connected to"
    )
    redis_timeout: float = _setting(
        0.25, "how long the Redis leg may take before the event is reported not notified"
    )
    redis_breaker_failures: int = _setting(
        3,
        "consecutive failed Redis calls (a batch counts once) after which the Redis leg is "
        "skipped until a probe works",
    )
    redis_probe_interval: float = _setting(
        1.0, "how often a skipped Redis leg probes whether Redis is back"
    )
    channel_prefix: str = _setting("events", "Redis channel prefix: {prefix}:{type}:{id}")
    max_payload_bytes: int = _setting(1024 * 1024, "largest Event.data accepted, in bytes")
    max_batch_events: int = _setting(1000, "most events in one PublishBatch call")
    max_sources_per_stream: int = _setting(64, "most sources one Subscribe call may follow")
    max_streams: int = _setting(10000, "most concurrent Subscribe streams")
    stream_queue_size: int = _setting(
        1024, "notifications buffered per stream before it counts as too slow"
    )
    max_streams_per_client: int = _setting(
        100,
        "most concurrent Subscribe streams per client TCP connection (not applied on a unix "
        "socket, where callers cannot be told apart; max_streams bounds them)",
    )
    max_concurrent_rpcs: int = _setting(
        2000,
        "most concurrent Publish and PublishBatch calls, fewer past capacity (see Overload); "
        "more are answered RESOURCE_EXHAUSTED",
    )
    max_queue_delay: float = _setting(
        0.25,
        "how long calls may wait for the sidecar to take them (unread in the sockets, or in "
        "gRPC's queue on grpcio); past it, publishes are refused (RESOURCE_EXHAUSTED with a "
        "retry hint) until the wait is short",
    )
    auth_token: str = _setting(
        "", "if set, every call but health needs metadata `authorization: Bearer <token>`"
    )
    auth_token_file: str = _setting("", "read the auth token from this file instead")
    tls_cert_file: str = _setting("", "PEM certificate chain: serve TLS instead of plaintext")
    tls_key_file: str = _setting("", "PEM private key for tls_cert_file")
    shutdown_grace: float = _setting(10.0, "how long in-flight calls may finish after SIGTERM")
    workers: int = _setting(
        1,
        "sidecar processes sharing the listen port (SO_REUSEPORT), each with its own Kafka "
        "producer and Redis connections: more than one uses more than one core",
    )
    worker_stall_timeout: float = _setting(
        30.0,
        "with several processes (workers above 1 or subscribe_listen): how long one may go "
        "without its event loop answering before /healthz on the admin listener fails, naming it",
    )
    log_level: str = _setting("INFO", "log level: DEBUG, INFO, WARNING or ERROR")
    log_format: str = _setting("text", "log format: text or json")

    def __post_init__(self) -> None:
        positive = (
            "kafka_max_batch_bytes",
            "kafka_buffer_events",
            "kafka_buffer_bytes",
            "kafka_buffer_wait",
            "redis_breaker_failures",
            "redis_probe_interval",
            "max_streams_per_client",
            "max_concurrent_rpcs",
            "max_queue_delay",
            "kafka_delivery_timeout",
            "redis_timeout",
            "max_payload_bytes",
            "max_batch_events",
            "max_sources_per_stream",
            "max_streams",
            "stream_queue_size",
            "workers",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"setting {name} must be positive, got {getattr(self, name)}")
        if self.kafka_linger_ms < 0 or self.shutdown_grace < 0:
            raise ValueError("kafka_linger_ms and shutdown_grace may not be negative")
        if self.kafka_compression not in {"none", "gzip", "lz4", "zstd"}:
            raise ValueError(f"setting kafka_compression: unknown codec {self.kafka_compression!r}")
        if self.log_format not in {"text", "json"}:
            raise ValueError(f"setting log_format must be text or json, not {self.log_format!r}")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("settings tls_cert_file and tls_key_file go together")
        if self.auth_token and self.auth_token_file:
            raise ValueError("set auth_token or auth_token_file, not both")
        if self.workers > 1 and self.listen.startswith("unix:"):
            raise ValueError("setting workers above 1 needs a TCP listen address, not a socket")
        if self.subscribe_listen and self.subscribe_listen in (self.listen, self.admin_listen):
            raise ValueError("setting subscribe_listen must differ from listen and admin_listen")
        if self.delivery_admin_listen and (
            not self.subscribe_listen or self.delivery_admin_listen == self.admin_listen
        ):
            raise ValueError(
                "setting delivery_admin_listen needs subscribe_listen, and must differ from "
                "admin_listen"
            )
        if self.worker_stall_timeout < 2 * BEAT_INTERVAL:
            raise ValueError(
                f"setting worker_stall_timeout must be at least {2 * BEAT_INTERVAL:g} s (each "
                f"process answers once every {BEAT_INTERVAL:g} s), got {self.worker_stall_timeout}"
            )
        for name in ("api_server", "subscribe_server"):
            if getattr(self, name) not in GRPC_SERVERS:
                raise ValueError(
                    f"setting {name} must be grpcio or h2, not {getattr(self, name)!r}"
                )
        if self.delivery_cpu_policy not in DELIVERY_CPU_POLICIES:
            raise ValueError(
                f"setting delivery_cpu_policy must be idle or nice, not "
                f"{self.delivery_cpu_policy!r}"
            )
        if not 0 <= self.delivery_nice <= 19:
            raise ValueError(f"setting delivery_nice must be 0 to 19, got {self.delivery_nice}")
        if self.admin_listen:
            try:
                split_host_port(self.admin_listen)
            except ValueError as exc:
                raise ValueError(f"setting admin_listen: {exc}") from exc
            if self.admin_listen == self.listen and not self.listen.endswith(":0"):
                raise ValueError("settings admin_listen and listen must be different addresses")
        if not self.channel_prefix or any(c in self.channel_prefix for c in ":*?[]\\"):
            raise ValueError("setting channel_prefix must be non-empty, without : * ? [ ] \\")
        self._check_kafka_security()
        for prefix in ("kafka", "redis"):
            if bool(getattr(self, f"{prefix}_ssl_cert_file")) != bool(
                getattr(self, f"{prefix}_ssl_key_file")
            ):
                raise ValueError(
                    f"settings {prefix}_ssl_cert_file and {prefix}_ssl_key_file go together"
                )
        if self.redis_password and self.redis_password_file:
            raise ValueError("set redis_password or redis_password_file, not both")

    def _check_kafka_security(self) -> None:
        protocol, mechanism = self.kafka_security_protocol, self.kafka_sasl_mechanism
        if protocol not in KAFKA_SECURITY_PROTOCOLS:
            raise ValueError(
                f"setting kafka_security_protocol: {protocol!r} is not one of "
                + ", ".join(KAFKA_SECURITY_PROTOCOLS)
            )
        if mechanism not in KAFKA_SASL_MECHANISMS:
            raise ValueError(
                f"setting kafka_sasl_mechanism: {mechanism!r} is not one of "
                + ", ".join(KAFKA_SASL_MECHANISMS)
            )
        if self.kafka_sasl_password and self.kafka_sasl_password_file:
            raise ValueError("set kafka_sasl_password or kafka_sasl_password_file, not both")
        sasl = {
            "kafka_sasl_username": self.kafka_sasl_username,
            "kafka_sasl_password": self.kafka_sasl_password,
            "kafka_sasl_password_file": self.kafka_sasl_password_file,
        }
        if protocol.startswith("SASL_"):
            if not self.kafka_sasl_username:
                raise ValueError(f"setting kafka_sasl_username is required with {protocol}")
            if not (self.kafka_sasl_password or self.kafka_sasl_password_file):
                raise ValueError(
                    f"setting kafka_sasl_password or kafka_sasl_password_file is required "
                    f"with {protocol}"
                )
        elif given := [name for name, value in sasl.items() if value]:
            raise ValueError(
                f"setting {given[0]} needs kafka_security_protocol SASL_SSL or SASL_PLAINTEXT, "
                f"not {protocol}"
            )
        tls = ("kafka_ssl_ca_file", "kafka_ssl_cert_file", "kafka_ssl_key_file")
        if not protocol.endswith("SSL") and (given := [n for n in tls if getattr(self, n)]):
            raise ValueError(
                f"setting {given[0]} needs kafka_security_protocol SSL or SASL_SSL, not {protocol}"
            )

    @property
    def event_limits(self) -> EventLimits:
        return EventLimits(
            max_payload_bytes=self.max_payload_bytes, max_batch_events=self.max_batch_events
        )

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add one ``--flag`` per setting; unset flags stay ``None`` so env and defaults apply."""
        for spec in fields(cls):
            parser.add_argument(
                "--" + spec.name.replace("_", "-"),
                type=_parser_for(spec.type),
                default=None,
                help=f"{spec.metadata['help']} (env {env_name(spec.name)}, default {spec.default})",
            )

    @classmethod
    def load(cls, environ: Mapping[str, str], flags: argparse.Namespace | None = None) -> Settings:
        """Build settings from flags, then ``DUALSTREAM_*`` variables, then defaults."""
        values: dict[str, Any] = {}
        for spec in fields(cls):
            flag_value = getattr(flags, spec.name, None) if flags is not None else None
            if flag_value is not None:
                values[spec.name] = flag_value
                continue
            raw = environ.get(env_name(spec.name))
            if raw is not None:
                try:
                    values[spec.name] = _parser_for(spec.type)(raw)
                except ValueError as exc:
                    raise ValueError(f"{env_name(spec.name)}={raw!r}: {exc}") from exc
            elif spec.default is MISSING:
                raise ValueError(f"setting {spec.name} is required")
        return cls(**values)


def split_host_port(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) as a host and a port number."""
    host, sep, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{address!r} is not host:port (e.g. 127.0.0.1:9464 or [::1]:9464)")
    return host, int(port)


def env_name(setting: str) -> str:
    return ENV_PREFIX + setting.upper()


def _parser_for(annotation: Any) -> Any:
    # Annotations are strings under `from __future__ import annotations`.
    return {"str": str, "int": int, "float": float, "bool": boolean}[str(annotation)]


def boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in {"true", "yes", "on", "1"}:
        return True
    if value in {"false", "no", "off", "0"}:
        return False
    raise ValueError(f"{text!r} is not a boolean: use true or false")


TRACE_SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
METRICS_EXPORTERS = ("otlp", "prometheus", "console", "none")


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    """Traces and metrics, configured by the standard OpenTelemetry environment variables.

    Spans are exported over OTLP when ``OTEL_TRACES_EXPORTER`` is ``otlp`` or an
    ``OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`` is set, printed when it is ``console``, and not
    exported at all otherwise. ``OTEL_TRACES_SAMPLER`` (default ``parentbased_always_on``) and
    ``OTEL_TRACES_SAMPLER_ARG`` choose which traces are recorded.

    Metrics are recorded for Prometheus (``/metrics`` on the admin listener) unless
    ``OTEL_METRICS_EXPORTER`` says otherwise; they are also pushed over OTLP when it names
    ``otlp`` or an ``OTEL_EXPORTER_OTLP_(METRICS_)ENDPOINT`` is set, every
    ``OTEL_METRIC_EXPORT_INTERVAL`` milliseconds (default 60000). ``none`` alone records none.

    ``OTEL_EXPORTER_OTLP_(TRACES_|METRICS_)PROTOCOL`` picks ``grpc`` (the default) or
    ``http/protobuf``. ``OTEL_SDK_DISABLED=true`` turns both off. The OTLP exporters read their
    own endpoint, headers, TLS, compression and timeout variables.
    """

    service_name: str = "dualstream"
    exporter: str = "none"
    sampler: str = "parentbased_always_on"
    sampler_ratio: float = 1.0
    metrics_exporters: frozenset[str] = frozenset({"prometheus"})
    metric_export_interval: float = 60.0
    traces_protocol: str = "grpc"
    metrics_protocol: str = "grpc"

    @property
    def tracing(self) -> bool:
        """Whether spans are built at all (only when something exports them)."""
        return self.exporter != "none"

    @property
    def metrics(self) -> bool:
        """Whether metrics are recorded at all."""
        return bool(self.metrics_exporters)

    @classmethod
    def load(cls, environ: Mapping[str, str]) -> TelemetrySettings:
        service_name = environ.get("OTEL_SERVICE_NAME", "dualstream")
        if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return cls(service_name, "none", metrics_exporters=frozenset())
        sampler, ratio = _trace_sampler(environ)
        return cls(
            service_name,
            _traces_exporter(environ),
            sampler,
            ratio,
            _metrics_exporters(environ),
            _milliseconds(environ, "OTEL_METRIC_EXPORT_INTERVAL", 60000.0),
            _otlp_protocol(environ, "TRACES"),
            _otlp_protocol(environ, "METRICS"),
        )


def _has_otlp_endpoint(environ: Mapping[str, str], signal: str) -> bool:
    return any(
        environ.get(name)
        for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")
    )


def _traces_exporter(environ: Mapping[str, str]) -> str:
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not exporter:
        return "otlp" if _has_otlp_endpoint(environ, "TRACES") else "none"
    if exporter not in {"otlp", "console", "none"}:
        raise ValueError(f"OTEL_TRACES_EXPORTER={exporter!r}: use otlp, console or none")
    return exporter


def _metrics_exporters(environ: Mapping[str, str]) -> frozenset[str]:
    raw = environ.get("OTEL_METRICS_EXPORTER", "").strip().lower()
    if not raw:
        default = (
            {"prometheus", "otlp"} if _has_otlp_endpoint(environ, "METRICS") else {"prometheus"}
        )
        return frozenset(default)
    named = {part.strip() for part in raw.split(",") if part.strip()}
    unknown = named - set(METRICS_EXPORTERS)
    if unknown:
        raise ValueError(
            f"OTEL_METRICS_EXPORTER={raw!r}: {', '.join(sorted(unknown))} unknown; "
            f"use {', '.join(METRICS_EXPORTERS)}"
        )
    return frozenset(named - {"none"})


def _otlp_protocol(environ: Mapping[str, str], signal: str) -> str:
    for name in (f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = environ.get(name, "").strip().lower()
        if protocol:
            if protocol not in {"grpc", "http/protobuf"}:
                raise ValueError(f"{name}={protocol!r}: use grpc or http/protobuf")
            return protocol
    return "grpc"


def _trace_sampler(environ: Mapping[str, str]) -> tuple[str, float]:
    sampler = environ.get("OTEL_TRACES_SAMPLER", "").strip().lower() or "parentbased_always_on"
    if sampler not in TRACE_SAMPLERS:
        raise ValueError(f"OTEL_TRACES_SAMPLER={sampler!r}: use one of {', '.join(TRACE_SAMPLERS)}")
    raw = environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    if not raw or not sampler.endswith("traceidratio"):
        return sampler, 1.0
    try:
        ratio = float(raw)
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"OTEL_TRACES_SAMPLER_ARG={raw!r}: a ratio from 0 to 1")
    return sampler, ratio


def _milliseconds(environ: Mapping[str, str], name: str, default: float) -> float:
    """A positive duration given in milliseconds, in seconds."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default / 1000
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise ValueError(f"{name}={raw!r}: a positive number of milliseconds")
    return value / 1000
