"""OpenTelemetry wiring: the tracer provider, W3C trace-context helpers, and the spans of a
Subscribe stream's deliveries.

The core asks for a ``Tracer`` through its constructor, so tests hand it one backed by an
in-memory exporter; only ``dualstream serve`` installs a provider (never a global one).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.semconv._incubating.attributes.messaging_attributes import (
    MESSAGING_DESTINATION_NAME,
    MESSAGING_DESTINATION_PARTITION_ID,
    MESSAGING_KAFKA_OFFSET,
    MESSAGING_MESSAGE_ID,
    MESSAGING_OPERATION_NAME,
    MESSAGING_OPERATION_TYPE,
    MESSAGING_SYSTEM,
)
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.semconv.attributes.server_attributes import SERVER_ADDRESS, SERVER_PORT
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from dualstream.connections import RedisAddress
from dualstream.settings import TelemetrySettings

INSTRUMENTATION_NAME = "dualstream"
# Records and notifications carry exactly the W3C trace context, whatever OTEL_PROPAGATORS says.
_W3C = TraceContextTextMapPropagator()
# A delivery span's attribute saying whether the stream got the event replayed from Kafka.
REPLAYED = "dualstream.replayed"


def _sampler(settings: TelemetrySettings) -> Sampler:
    root: Sampler = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": TraceIdRatioBased(settings.sampler_ratio),
    }[settings.sampler.removeprefix("parentbased_")]
    return ParentBased(root) if settings.sampler.startswith("parentbased_") else root


def build_tracer_provider(settings: TelemetrySettings, version: str) -> TracerProvider | None:
    """A provider exporting as ``settings`` say, or None when nothing would be exported.

    Without an exporter, spans would be built only to be dropped (a tenth of a unary call's
    CPU in the profile); the no-op tracer used instead still passes the caller's
    ``traceparent`` on to Kafka and Redis.
    """
    if not settings.tracing:
        return None
    provider = TracerProvider(
        sampler=_sampler(settings),
        resource=Resource.create(
            {"service.name": settings.service_name, "service.version": version}
        ),
    )
    exporter: SpanExporter
    if settings.exporter == "otlp" and settings.traces_protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpSpanExporter,
        )

        exporter = HttpSpanExporter()
    elif settings.exporter == "otlp":
        # Imported here so a sidecar that never exports does not load the gRPC exporter.
        from dualstream.otlp import OtlpSpanExporter

        exporter = OtlpSpanExporter()
    else:
        exporter = ConsoleSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def trace_headers(span: Span | None = None) -> dict[str, str]:
    """The W3C ``traceparent`` (and ``tracestate``) of ``span``, else of the current span;
    empty when there is none."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, context=trace.set_span_in_context(span) if span is not None else None)
    return carrier


def context_from_metadata(metadata: Mapping[str, str]) -> Context:
    """The caller's trace context from request metadata (gRPC lower-cases the keys)."""
    return propagate.extract(dict(metadata))


def get_tracer(provider: trace.TracerProvider | None) -> trace.Tracer:
    """The tracer of ``provider``; with None, one that records nothing but propagates."""
    return trace.get_tracer(
        INSTRUMENTATION_NAME, tracer_provider=provider or trace.NoOpTracerProvider()
    )


def records_spans(tracer: Tracer) -> bool:
    """Whether ``tracer`` builds spans (the no-op tracer of a sidecar that exports none
    does not, and then nothing needs to prepare any)."""
    return not isinstance(tracer, trace.NoOpTracer)


def error_type(exc: BaseException) -> str:
    """A low-cardinality ``error.type``: the class of what went wrong underneath (a Kafka
    error, say) when ours wraps it, else ours."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    return type(cause).__qualname__


def server_attributes(address: str) -> dict[str, str | int]:
    """``server.address``/``server.port`` of ``host:port`` (the first of a comma-separated
    list, as Kafka's bootstrap servers), or of ``unix:/path`` (the path, no port)."""
    first = address.split(",", maxsplit=1)[0].strip()
    if first.startswith("unix:"):
        return {SERVER_ADDRESS: first.removeprefix("unix:")}
    host, _, port = first.rpartition(":")
    if host and port.isdigit():
        return {SERVER_ADDRESS: host.strip("[]"), SERVER_PORT: int(port)}
    return {SERVER_ADDRESS: first} if first else {}


def redis_server_attributes(address: RedisAddress) -> dict[str, str | int]:
    """``server.address`` (the socket's path for a unix socket) and ``server.port``."""
    if address.unix_socket:
        return {SERVER_ADDRESS: address.unix_socket}
    return {SERVER_ADDRESS: address.host, SERVER_PORT: address.port}


# ---- the spans of deliveries to a stream ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TraceContext:
    """The W3C trace context a delivery carries to the subscriber."""

    traceparent: str
    tracestate: str = ""


def format_traceparent(context: SpanContext) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


class DeliveryTracer:
    """CONSUMER spans for deliveries to Subscribe streams, one per stream and notification.

    Push delivery, one message at a time: by the messaging conventions' opt-in for that case
    each span is a child of the event's creation context (the publish's ``send`` span, whose
    context the Kafka record and the Redis notification carry), so one trace holds the
    publish and every delivery of it; it links to that context and, because it happens in
    the scope of the stream's Subscribe call, to the Subscribe span as well.

    Only deliveries of events published with a trace context get a span: without one there is
    no trace to join, and a new trace per delivery per stream would be noise.
    """

    def __init__(self, tracer: Tracer, topic: str) -> None:
        self._tracer = tracer
        self._name = f"deliver {topic}"
        # A parent-based sampler drops every span under an unsampled parent: for those events
        # no span need be started at all, which matters when one event reaches 1,000 streams.
        self._follows_parent = isinstance(getattr(tracer, "sampler", None), ParentBased)
        self._attributes: dict[str, str] = {
            MESSAGING_SYSTEM: "kafka",
            MESSAGING_OPERATION_NAME: "deliver",
            MESSAGING_OPERATION_TYPE: "process",
            MESSAGING_DESTINATION_NAME: topic,
        }
        # The contexts of the last traceparent seen: every stream on a channel delivers the
        # same notification in turn, so parsing it once serves them all.
        self._last_traceparent = ""
        self._last_context: Context | None = None
        self._last_span_context: SpanContext | None = None

    def _parent(self, traceparent: str) -> tuple[Context, SpanContext] | None:
        if traceparent != self._last_traceparent:
            context = _W3C.extract({"traceparent": traceparent})
            span_context = trace.get_current_span(context).get_span_context()
            self._last_traceparent = traceparent
            self._last_context = context if span_context.is_valid else None
            self._last_span_context = span_context
        if self._last_context is None or self._last_span_context is None:
            return None
        return self._last_context, self._last_span_context

    @contextmanager
    def deliver(
        self,
        traceparent: str,
        *,
        event_id: str,
        partition: int,
        offset: int,
        replayed: bool,
        stream: SpanContext,
    ) -> Iterator[TraceContext | None]:
        """A span around handing one notification to the stream; yields the trace context
        the notification should carry, or None to pass the publisher's on unchanged.

        Not made current: the stream's generator yields inside it, and a context attached
        across a yield cannot be detached."""
        parent = self._parent(traceparent) if traceparent else None
        if parent is None:
            yield None
            return
        parent_context, creation = parent
        if self._follows_parent and not creation.trace_flags.sampled:
            yield None
            return
        links = [Link(creation)]
        if stream.is_valid:
            links.append(Link(stream))
        span = self._tracer.start_span(
            self._name,
            context=parent_context,
            kind=SpanKind.CONSUMER,
            attributes=self._attributes,
            links=links,
        )
        if not span.is_recording():  # Not sampled: the subscriber continues the publisher's.
            span.end()
            yield None
            return
        span.set_attributes(
            {
                MESSAGING_MESSAGE_ID: event_id,
                MESSAGING_DESTINATION_PARTITION_ID: str(partition),
                MESSAGING_KAFKA_OFFSET: offset,
                REPLAYED: replayed,
            }
        )
        span_context = span.get_span_context()
        try:
            yield TraceContext(
                format_traceparent(span_context), span_context.trace_state.to_header()
            )
        except Exception as exc:  # The stream closing under it is no failure of the delivery.
            span.set_attribute(ERROR_TYPE, error_type(exc))
            raise
        finally:
            span.end()


def mark_failed(span: Span, exc: BaseException) -> None:
    """``error.type`` and an ERROR status on ``span`` for ``exc`` (its traceback, if any, is
    in the log: a span event for it would cost every failing call a formatted stack)."""
    if span.is_recording():
        span.set_attribute(ERROR_TYPE, error_type(exc))
        span.set_status(trace.Status(trace.StatusCode.ERROR, str(exc)))
