"""The hand-written OTLP encoding means exactly what the exporter's own encoder means."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)
from opentelemetry.util.types import Attributes

from dualstream.otlp import SpanEncoder

scalars = (
    st.text(max_size=20)
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
)
attribute_values = scalars | st.lists(st.text(max_size=5), max_size=3).map(tuple)
attributes = st.dictionaries(st.text(min_size=1, max_size=12), attribute_values, max_size=6)


@pytest.fixture
def recorded() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "encoder", "n": 1}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def both(spans: list[ReadableSpan]) -> tuple[ExportTraceServiceRequest, ExportTraceServiceRequest]:
    return encode_spans(spans), ExportTraceServiceRequest.FromString(SpanEncoder().request(spans))


def test_every_part_of_a_span_as_the_exporter_encodes_it(
    recorded: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = recorded
    remote = SpanContext(
        0xABC,
        0xDEF,
        is_remote=True,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("k", "v")]),
    )
    first = provider.get_tracer("first", "1.2", schema_url="https://example.com/schema")
    other = provider.get_tracer("other")
    with first.start_as_current_span(
        "outer", context=set_span_in_context(NonRecordingSpan(remote)), kind=SpanKind.SERVER
    ) as outer:
        outer.set_attributes({"s": "x", "b": False, "i": -5, "f": 0.5, "empty": "", "t": ("a",)})
        outer.add_event("happened", {"n": 0}, timestamp=7)
        outer.set_status(Status(StatusCode.ERROR, "broke"))
        with other.start_as_current_span(
            "inner", kind=SpanKind.CONSUMER, links=[Link(remote, {"l": True}), Link(remote)]
        ):
            pass
    for kind in SpanKind:
        with first.start_as_current_span(f"kind {kind.name}", kind=kind) as span:
            span.set_status(Status(StatusCode.OK))
    official, ours = both(list(exporter.get_finished_spans()))
    assert ours == official


@settings(max_examples=60, deadline=None)
@given(values=st.lists(attributes, min_size=1, max_size=4))
def test_any_attributes_as_the_exporter_encodes_them(values: list[Attributes]) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "encoder"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    for number, attribute_set in enumerate(values):
        with tracer.start_as_current_span(f"s{number}", attributes=attribute_set):
            pass
    provider.shutdown()
    official, ours = both(list(exporter.get_finished_spans()))
    assert ours == official


def test_the_repeated_attributes_are_encoded_once(
    recorded: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = recorded
    tracer = provider.get_tracer("t")
    bound: Attributes = {"messaging.system": "kafka", "server.port": 9092}
    for offset in range(3):
        with tracer.start_as_current_span("send", attributes=bound) as span:
            span.set_attribute("messaging.kafka.offset", offset)
    encoder = SpanEncoder()
    spans = list(exporter.get_finished_spans())
    first, second = encoder.request(spans), encoder.request(spans)
    assert first == second
    # Two bound attributes and three offsets, each encoded once however often it recurs.
    ours = {"messaging.system", "server.port", "messaging.kafka.offset"}
    assert len([key for key in encoder._attributes if key[0] in ours]) == 5
