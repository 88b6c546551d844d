"""One trace per event, from the caller to every stream that delivers it.

The end-to-end test runs ``dualstream serve`` as a process exporting over OTLP (configured by
the standard variables only) to a real Jaeger, and reads the trace back from Jaeger's query
API. The others check the same spans in memory, where failures and sampling are easy to make.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from opentelemetry import propagate
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from dualstream.settings import Settings
from dualstream.telemetry import get_tracer
from dualstream.transport.server import Sidecar
from dualstream.v1 import event_service_pb2 as pb
from dualstream.v1 import event_service_pb2_grpc as pb_grpc
from stack.jaeger import JaegerServer, TraceSpan, get_trace
from stack.localstack import KafkaBroker, RedisServer, SidecarProcess, free_port
from tests.conftest import make_settings, target_of

pytestmark = pytest.mark.integration
W3C = TraceContextTextMapPropagator()
JAEGER_TIMEOUT = 120.0  # The exporters flush on their own schedule; the machine is shared.


@contextlib.contextmanager
def otlp_tracer(jaeger: JaegerServer, service: str) -> Iterator[Tracer]:
    """A tracer of an application of its own (its own SDK), exporting to ``jaeger``."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    exporter = OTLPSpanExporter(endpoint=jaeger.otlp_endpoint, insecure=True)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        yield provider.get_tracer(service)
    finally:
        provider.shutdown()


@dataclass(frozen=True)
class Services:
    """What a sidecar process of these tests is wired to."""

    kafka: KafkaBroker
    redis: RedisServer
    jaeger: JaegerServer
    topic: str


@pytest.fixture
def services(
    kafka: KafkaBroker, shared_redis: RedisServer, jaeger: JaegerServer, topic: str
) -> Services:
    return Services(kafka, shared_redis, jaeger, topic)


@contextlib.asynccontextmanager
async def sidecar_process(
    tmp_path: Path, services: Services, **environment: str
) -> AsyncIterator[str]:
    """``dualstream serve`` exporting spans to the Jaeger (over OTLP/gRPC unless
    ``environment`` says otherwise); yields its address."""
    process = SidecarProcess(
        tmp_path / "sidecar",
        free_port(),
        services.kafka.bootstrap,
        services.redis.url,
        services.topic,
        extra_env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": services.jaeger.otlp_endpoint,
            "OTEL_SERVICE_NAME": "dualstream",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            **environment,
        },
    )
    await asyncio.to_thread(process.start)
    try:
        yield process.listen
    finally:
        await asyncio.to_thread(process.stop)


async def first_of(
    stream: grpc.aio.UnaryStreamCall[pb.SubscribeRequest, pb.SubscribeResponse], kind: str
) -> pb.SubscribeResponse:
    """The stream's next response of ``kind`` (subscribed, notification, ...)."""
    async with asyncio.timeout(60):
        while True:
            response = await stream.read()
            assert isinstance(response, pb.SubscribeResponse), f"the stream ended before a {kind}"
            if response.WhichOneof("message") == kind:
                return response


@contextlib.asynccontextmanager
async def serving(
    settings: Settings, tracer: Tracer
) -> AsyncIterator[pb_grpc.EventServiceAsyncStub]:
    """An in-process sidecar, ready to publish, and a raw stub to it."""
    async with (
        Sidecar(settings, tracer) as sidecar,
        grpc.aio.insecure_channel(target_of(sidecar)) as channel,
    ):
        assert await sidecar.publisher.event_log.wait_ready(30)
        yield pb_grpc.EventServiceStub(channel)


def span_id_of(traceparent: str) -> str:
    return traceparent.split("-")[2]


async def wait_for_spans(jaeger: JaegerServer, trace_id: str, count: int) -> list[TraceSpan]:
    deadline = time.monotonic() + JAEGER_TIMEOUT
    spans: list[TraceSpan] = []
    while time.monotonic() < deadline:
        spans = await asyncio.to_thread(get_trace, jaeger.query_url, trace_id)
        if len(spans) >= count:
            return spans
        await asyncio.sleep(0.5)
    raise AssertionError(f"Jaeger holds {len(spans)} of {count} spans: {spans}")


async def test_one_trace_in_jaeger_from_the_caller_to_a_live_and_a_resumed_stream(
    tmp_path: Path, services: Services, source_type: str
) -> None:
    kafka, jaeger, topic = services.kafka, services.jaeger, services.topic
    source = pb.Source(source_type=source_type, source_id="order-7")
    async with (
        sidecar_process(tmp_path, services) as target,
        grpc.aio.insecure_channel(target) as channel,
    ):
        stub = pb_grpc.EventServiceStub(channel)
        # Stream "resumed" takes a cursor before the event and comes back for it afterwards.
        before = stub.Subscribe(pb.SubscribeRequest(sources=[source]))
        cursor = (await first_of(before, "subscribed")).subscribed.cursor
        before.cancel()
        live = stub.Subscribe(pb.SubscribeRequest(sources=[source]))
        await first_of(live, "subscribed")

        with otlp_tracer(jaeger, "checkout") as caller:
            with caller.start_as_current_span("place order", kind=SpanKind.INTERNAL) as checkout:
                metadata: dict[str, str] = {}
                propagate.inject(metadata)
                published = await stub.Publish(
                    pb.PublishRequest(
                        event=pb.Event(
                            type="order.placed", source_type=source_type, source_id="order-7"
                        )
                    ),
                    metadata=tuple(metadata.items()),
                )
            trace_id = f"{checkout.get_span_context().trace_id:032x}"

        live_notification = (await first_of(live, "notification")).notification
        live.cancel()
        resumed = stub.Subscribe(pb.SubscribeRequest(sources=[source], resume_cursor=cursor))
        replayed_notification = (await first_of(resumed, "notification")).notification
        resumed.cancel()

        # The subscribing application's own work joins the trace through the notification.
        with otlp_tracer(jaeger, "fulfilment") as application:
            for notification in (live_notification, replayed_notification):
                parent = W3C.extract({"traceparent": notification.traceparent})
                with application.start_as_current_span("ship order", context=parent):
                    pass

        # caller + Publish, send, PUBLISH + two deliveries + two application spans.
        spans = await wait_for_spans(jaeger, trace_id, 8)

    assert live_notification.id == replayed_notification.id == published.id
    assert not live_notification.replayed
    assert replayed_notification.replayed
    check_the_tree(spans, trace_id, topic, (live_notification, replayed_notification))
    check_the_attributes(spans, topic, published, kafka, services.redis)


def check_the_tree(
    spans: list[TraceSpan], trace_id: str, topic: str, notifications: tuple[pb.Notification, ...]
) -> None:
    by_name: dict[str, list[TraceSpan]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    [caller_span] = by_name["place order"]
    [server] = by_name["dualstream.v1.EventService/Publish"]
    [producer] = by_name[f"send {topic}"]
    [redis_publish] = by_name["PUBLISH"]
    deliveries = by_name[f"deliver {topic}"]
    applications = by_name["ship order"]
    assert {span.trace_id for span in spans} == {trace_id}
    assert len(spans) == 8, [span.name for span in spans]

    # Kinds, services and parentage.
    assert (caller_span.service, caller_span.parent_span_id) == ("checkout", "")
    assert (server.kind, server.service) == ("SERVER", "dualstream")
    assert server.parent_span_id == caller_span.span_id
    assert producer.kind == "PRODUCER"
    assert producer.parent_span_id == server.span_id
    assert redis_publish.kind == "CLIENT"
    assert redis_publish.parent_span_id == server.span_id
    assert [d.kind for d in deliveries] == ["CONSUMER", "CONSUMER"]
    assert {d.attributes["dualstream.replayed"] for d in deliveries} == {True, False}
    for delivery in deliveries:
        # A child of the event's creation context (the send span), which it also links to,
        # with a second link to the Subscribe call it happened in.
        assert delivery.parent_span_id == producer.span_id
        assert (trace_id, producer.span_id) in delivery.links
        assert len(delivery.links) == 2
        [(stream_trace, _)] = [link for link in delivery.links if link[0] != trace_id]
        assert stream_trace != trace_id
    delivered_by = {span_id_of(n.traceparent) for n in notifications}
    assert delivered_by == {d.span_id for d in deliveries}
    assert {a.parent_span_id for a in applications} == delivered_by
    assert {a.service for a in applications} == {"fulfilment"}


def check_the_attributes(
    spans: list[TraceSpan],
    topic: str,
    published: pb.PublishResponse,
    kafka: KafkaBroker,
    redis_server: RedisServer,
) -> None:
    """By the semantic conventions, and never a source id in a span's name."""
    by_name = {span.name: span for span in spans}
    server = by_name["dualstream.v1.EventService/Publish"]
    producer = by_name[f"send {topic}"]
    redis_publish = by_name["PUBLISH"]
    deliveries = [span for span in spans if span.name == f"deliver {topic}"]
    assert server.attributes["rpc.system.name"] == "grpc"
    assert server.attributes["rpc.method"] == "dualstream.v1.EventService/Publish"
    assert server.attributes["rpc.response.status_code"] == "OK"
    assert server.attributes["server.address"] == "127.0.0.1"
    assert producer.attributes["messaging.system"] == "kafka"
    assert producer.attributes["messaging.operation.type"] == "send"
    assert producer.attributes["messaging.destination.name"] == topic
    assert producer.attributes["messaging.client.id"] == "dualstream"
    assert producer.attributes["messaging.message.id"] == published.id
    assert producer.attributes["messaging.destination.partition.id"] == str(published.partition)
    assert producer.attributes["messaging.kafka.offset"] == published.offset
    assert producer.attributes["server.port"] == kafka.port
    assert redis_publish.attributes["db.system.name"] == "redis"
    assert redis_publish.attributes["db.operation.name"] == "PUBLISH"
    assert redis_publish.attributes["server.port"] == redis_server.port
    for delivery in deliveries:
        assert delivery.attributes["messaging.operation.type"] == "process"
        assert delivery.attributes["messaging.message.id"] == published.id
        assert delivery.attributes["messaging.kafka.offset"] == published.offset
    assert not any("order-7" in span.name for span in spans)


async def test_spans_go_over_otlp_http_when_the_protocol_variable_says_so(
    tmp_path: Path, services: Services, source_type: str
) -> None:
    trace_id = "5e" * 16
    async with (
        sidecar_process(
            tmp_path,
            services,
            OTEL_EXPORTER_OTLP_ENDPOINT=services.jaeger.otlp_http_endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        ) as target,
        grpc.aio.insecure_channel(target) as channel,
    ):
        await pb_grpc.EventServiceStub(channel).Publish(
            pb.PublishRequest(event=pb.Event(type="t", source_type=source_type, source_id="h")),
            metadata=(("traceparent", f"00-{trace_id}-{'77' * 8}-01"),),
        )
        spans = await wait_for_spans(services.jaeger, trace_id, 3)
    assert sorted(span.kind for span in spans) == ["CLIENT", "PRODUCER", "SERVER"]


# ---- in memory ---------------------------------------------------------------------------------


def caller_traceparent(sampled: bool) -> str:
    return f"00-{'ab' * 16}-{'cd' * 8}-{'01' if sampled else '00'}"


async def test_a_delivery_carries_its_span_and_an_unsampled_event_the_publishers_context(
    settings: Settings, tracer: Tracer, span_exporter: InMemorySpanExporter, source_type: str
) -> None:
    source = pb.Source(source_type=source_type, source_id="a")
    async with serving(settings, tracer) as stub:
        stream = stub.Subscribe(pb.SubscribeRequest(sources=[source]))
        await first_of(stream, "subscribed")
        event = pb.Event(type="t", source_type=source_type, source_id="a")
        for sampled in (True, False):
            await stub.Publish(
                pb.PublishRequest(event=event),
                metadata=(("traceparent", caller_traceparent(sampled)),),
            )
        traced = (await first_of(stream, "notification")).notification
        untraced = (await first_of(stream, "notification")).notification
        stream.cancel()

    deliveries = [s for s in span_exporter.get_finished_spans() if s.kind == SpanKind.CONSUMER]
    [delivery] = deliveries  # None for the unsampled event (parent-based sampling).
    assert traced.traceparent == (
        f"00-{delivery.context.trace_id:032x}-{delivery.context.span_id:016x}-01"
    )
    assert traced.tracestate == ""
    # Not sampled: no span, and the subscriber continues the publisher's (unsampled) context.
    assert untraced.traceparent.split("-")[1] == "ab" * 16
    assert untraced.traceparent.endswith("-00")


async def test_failures_carry_error_type(
    kafka: KafkaBroker,
    private_redis: RedisServer,
    topic: str,
    tracer: Tracer,
    span_exporter: InMemorySpanExporter,
    source_type: str,
) -> None:
    settings = make_settings(
        kafka.bootstrap,
        private_redis.url,
        topic,
        redis_breaker_failures=1,
        redis_probe_interval=600.0,  # The second publish is skipped, never a probe.
    )
    event = pb.Event(type="t", source_type=source_type, source_id="a")
    async with serving(settings, tracer) as stub:
        await asyncio.to_thread(private_redis.kill)
        failed = await stub.Publish(pb.PublishRequest(event=event))
        skipped = await stub.Publish(pb.PublishRequest(event=event))
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Publish(pb.PublishRequest(event=pb.Event(type="t")))
    assert not failed.notified
    assert not skipped.notified
    publishes = [s for s in span_exporter.get_finished_spans() if s.name == "PUBLISH"]
    assert [s.status.status_code for s in publishes] == [StatusCode.ERROR, StatusCode.ERROR]
    error_types = [(s.attributes or {})["error.type"] for s in publishes]
    assert error_types[1] == "breaker_open"
    assert error_types[0] in {"ConnectionRefusedError", "RedisLinkLostError", "timeout"}
    [invalid] = [
        s
        for s in span_exporter.get_finished_spans()
        if s.kind == SpanKind.SERVER
        and (s.attributes or {}).get("rpc.response.status_code") == "INVALID_ARGUMENT"
    ]
    # A caller's mistake is not the server's error, by the gRPC conventions.
    assert "error.type" not in (invalid.attributes or {})
    assert invalid.status.status_code == StatusCode.UNSET


async def test_each_notification_of_a_batch_carries_its_own_delivery_span(
    settings: Settings, tracer: Tracer, span_exporter: InMemorySpanExporter, source_type: str
) -> None:
    source = pb.Source(source_type=source_type, source_id="b")
    event = pb.Event(type="t", source_type=source_type, source_id="b")
    async with serving(settings, tracer) as stub:
        stream = stub.Subscribe(
            pb.SubscribeRequest(sources=[source], max_notifications_per_message=8)
        )
        await first_of(stream, "subscribed")
        # One batch call: its notifications reach Redis in one pipeline and queue together.
        published = await stub.PublishBatch(
            pb.PublishBatchRequest(events=[event] * 5),
            metadata=(("traceparent", caller_traceparent(sampled=True)),),
        )
        received: list[pb.Notification] = []
        batches = 0
        async with asyncio.timeout(60):
            while len(received) < len(published.results):
                response = await stream.read()
                assert isinstance(response, pb.SubscribeResponse)
                if response.HasField("notification"):
                    received.append(response.notification)
                elif response.HasField("notifications"):
                    batches += 1
                    received.extend(response.notifications.notifications)
        stream.cancel()
    deliveries = {
        f"{s.context.span_id:016x}": s
        for s in span_exporter.get_finished_spans()
        if s.kind == SpanKind.CONSUMER
    }
    assert batches >= 1
    assert [n.id for n in received] == [r.id for r in published.results]
    assert {span_id_of(n.traceparent) for n in received} == set(deliveries)


async def test_without_an_exporter_no_span_is_built_and_the_callers_context_travels(
    settings: Settings, source_type: str
) -> None:
    source = pb.Source(source_type=source_type, source_id="c")
    caller = caller_traceparent(sampled=True)
    async with serving(settings, get_tracer(None)) as stub:
        live = stub.Subscribe(pb.SubscribeRequest(sources=[source]))
        await first_of(live, "subscribed")
        await stub.Publish(
            pb.PublishRequest(event=pb.Event(type="t", source_type=source_type, source_id="c")),
            metadata=(("traceparent", caller),),
        )
        notification = (await first_of(live, "notification")).notification
        live.cancel()
    # The record and the notification carry the caller's own context, unchanged.
    assert notification.traceparent == caller
