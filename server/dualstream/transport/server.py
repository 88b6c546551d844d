"""The running sidecar: publisher, hub, and the gRPC server with health and reflection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.trace import Tracer

from dualstream.hub import HubSettings, SubscriptionHub
from dualstream.kafka_log import KafkaEventLog
from dualstream.kafka_reader import KafkaReader
from dualstream.lifecycle import Service
from dualstream.publisher import Publisher
from dualstream.redis_notifier import RedisNotifier
from dualstream.settings import Settings
from dualstream.streams import StreamService
from dualstream.transport.servicer import SERVICE_NAME, EventServicer
from dualstream.v1 import event_service_pb2 as pb
from dualstream.v1 import event_service_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)
HEALTH_POLL_SECONDS = 0.5
# Sized for the 1 MiB default payload limit with room for framing and batches.
MESSAGE_SIZE_HEADROOM = 1024 * 1024


def build_publisher(settings: Settings, tracer: Tracer) -> Publisher:
    return Publisher(
        KafkaEventLog(settings),
        RedisNotifier(settings.redis_url, settings.redis_timeout, settings.channel_prefix),
        settings.event_limits,
        tracer,
    )


def build_hub(settings: Settings) -> SubscriptionHub:
    return SubscriptionHub(
        HubSettings(
            redis_url=settings.redis_url,
            channel_prefix=settings.channel_prefix,
            max_streams=settings.max_streams,
            max_sources_per_stream=settings.max_sources_per_stream,
            stream_queue_size=settings.stream_queue_size,
            limits=settings.event_limits,
        )
    )


class Sidecar(Service):
    """Starts the parts in dependency order and stops them in reverse, draining calls first."""

    def __init__(self, settings: Settings, tracer: Tracer) -> None:
        self.settings = settings
        self.publisher = build_publisher(settings, tracer)
        self.hub = build_hub(settings)
        self.reader = KafkaReader(settings.kafka_bootstrap, settings.kafka_topic)
        self._servicer = EventServicer(self.publisher, StreamService(self.hub, self.reader), tracer)
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self._server: grpc.aio.Server | None = None
        self._health_watch: asyncio.Task[None] | None = None
        self.port: int | None = None

    async def _start(self) -> None:
        await self.publisher.start()
        await self.reader.start()
        await self.hub.start()
        max_message = (
            self.settings.max_payload_bytes * min(self.settings.max_batch_events, 16)
            + MESSAGE_SIZE_HEADROOM
        )
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", max_message),
                ("grpc.so_reuseport", 0),
            ]
        )
        pb_grpc.add_EventServiceServicer_to_server(self._servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (
                pb.DESCRIPTOR.services_by_name["EventService"].full_name,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        self.port = server.add_insecure_port(self.settings.listen)
        await server.start()
        self._server = server
        await self._report_health()
        self._health_watch = asyncio.create_task(self._watch_health(), name="health-watch")
        logger.info("dualstream listening on %s", self.settings.listen)

    async def _report_health(self) -> None:
        # SERVING only while the Kafka leg can work; Redis trouble is degraded, not down.
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if self.publisher.event_log.ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self._health.set("", status)
        await self._health.set(SERVICE_NAME, status)

    async def _watch_health(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_POLL_SECONDS)
            await self._report_health()

    async def _stop(self) -> None:
        logger.info("dualstream draining: no new calls, in-flight calls may finish")
        if self._health_watch is not None:
            self._health_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_watch
        await self._health.enter_graceful_shutdown()
        # Streams end first (clients reconnect elsewhere); publishes get the grace period.
        await self.hub.stop()
        if self._server is not None:
            await self._server.stop(self.settings.shutdown_grace)
            self._server = None
        await self.reader.stop()
        await self.publisher.stop()
        logger.info("dualstream stopped; the producer is flushed")


async def run(settings: Settings, tracer: Tracer) -> None:
    """Serve until SIGTERM or SIGINT, then drain and stop."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with Sidecar(settings, tracer):
            await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
