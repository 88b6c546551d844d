"""The running sidecar: publisher, hub, and the gRPC server with health and reflection."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.trace import Tracer

from dualstream.admin import AdminServer
from dualstream.connections import RedisAddress, kafka_client_options
from dualstream.errors import ListenError
from dualstream.heartbeats import Heartbeat
from dualstream.hub import HubSettings, SubscriptionHub
from dualstream.kafka_log import KafkaEventLog
from dualstream.kafka_reader import KafkaReader
from dualstream.lifecycle import Service, cancel_and_wait
from dualstream.metrics import SidecarMetrics
from dualstream.publisher import Publisher
from dualstream.redis_notifier import RedisNotifier
from dualstream.settings import Settings
from dualstream.status import SidecarStatus, sidecar_status
from dualstream.streams import StreamService
from dualstream.transport.access import TokenAuthInterceptor
from dualstream.transport.admission import Admission, QueueProbe
from dualstream.transport.h2_methods import REFLECTED_SERVICES, api_methods, streams_methods
from dualstream.transport.h2_server import H2Server, tls_context
from dualstream.transport.servicer import SERVICE_NAME, EventServicer, tolerant_parser
from dualstream.v1 import event_service_pb2 as pb

logger = logging.getLogger(__name__)
HEALTH_POLL_SECONDS = 0.5
# Sized for the 1 MiB default payload limit with room for framing and batches.
MESSAGE_SIZE_HEADROOM = 1024 * 1024
# Calls gRPC holds for the sidecar to take before it cancels them: room for bursts of
# thousands, bounded all the same.
MAX_PENDING_CALLS = 10_000
# Room on a connection beyond its streams and publishes, for health checks, status and the like.
CALLS_PER_CONNECTION_HEADROOM = 64
UNIX_SOCKET_MODE = 0o660


def build_publisher(
    settings: Settings,
    tracer: Tracer,
    metrics: SidecarMetrics | None = None,
    concurrency: Callable[[], int] | None = None,
) -> Publisher:
    return Publisher(
        KafkaEventLog(settings, concurrency=concurrency),
        RedisNotifier(
            RedisAddress.from_settings(settings),
            settings.redis_timeout,
            settings.channel_prefix,
            breaker_failures=settings.redis_breaker_failures,
            probe_interval=settings.redis_probe_interval,
        ),
        settings.event_limits,
        tracer,
        metrics=metrics,
    )


def build_hub(settings: Settings) -> SubscriptionHub:
    return SubscriptionHub(
        HubSettings(
            redis=RedisAddress.from_settings(settings),
            channel_prefix=settings.channel_prefix,
            max_streams=settings.max_streams,
            max_sources_per_stream=settings.max_sources_per_stream,
            stream_queue_size=settings.stream_queue_size,
            limits=settings.event_limits,
        )
    )


class Sidecar(Service):
    """Starts the parts in dependency order and stops them in reverse, draining calls first."""

    def __init__(
        self,
        settings: Settings,
        tracer: Tracer,
        metrics: SidecarMetrics | None = None,
        heartbeat: Heartbeat | None = None,
        *,
        delivery_process: bool = False,
    ) -> None:
        """``metrics`` defaults to ones served for Prometheus only; the sidecar starts and
        stops them with itself, and the admin listener serves them on /metrics.

        ``heartbeat``, for a process of several: beaten while this one runs, and read by its
        admin listener's /healthz, which thereby speaks for them all.

        ``delivery_process``: this is the process of ``subscribe_listen``, whose streams are
        served by ``subscribe_server``."""
        self.settings = settings
        self.delivery_process = delivery_process
        # Which server speaks gRPC here: grpc.aio, or the sidecar's own HTTP/2.
        self.own_http2 = (
            settings.subscribe_server if delivery_process else settings.api_server
        ) == "h2"
        self.metrics = metrics or SidecarMetrics()
        self.admission = Admission(settings.max_concurrent_rpcs, settings.max_queue_delay)
        self.publisher = build_publisher(
            settings, tracer, self.metrics, concurrency=lambda: self.admission.expected_calls
        )
        self.hub = build_hub(settings)
        self.reader = KafkaReader(kafka_client_options(settings), settings.kafka_topic)
        self.draining = False
        self._probe: QueueProbe | None = None
        self._servicer = EventServicer(
            self.publisher,
            StreamService(self.hub, self.reader),
            tracer,
            status=self.status,
            max_streams_per_client=settings.max_streams_per_client,
            admission=self.admission,
            metrics=self.metrics,
            listen=settings.listen,
        )
        self.metrics.watch(self.publisher, self.hub)
        self.metrics.watch_admission(self.admission)
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self._server: grpc.aio.Server | None = None
        self._h2_server: H2Server | None = None
        self._health_watch: asyncio.Task[None] | None = None
        self.port: int | None = None
        self.heartbeat = heartbeat
        self.admin = (
            AdminServer(
                settings.admin_listen,
                self.status,
                self.metrics.prometheus_text,
                liveness=heartbeat.stalled if heartbeat is not None else lambda: None,
            )
            if settings.admin_listen
            else None
        )

    @property
    def running_streams(self) -> int:
        """Subscribe handlers still running (a stopped sidecar has none)."""
        return self._servicer.running_streams.count

    @property
    def admin_port(self) -> int | None:
        return self.admin.port if self.admin is not None else None

    async def _start(self) -> None:
        # The admin listener binds first: a taken port fails before anything else started,
        # and probes get answers (not ready yet) while Kafka connects.
        self.draining = False
        try:
            if self.heartbeat is not None:
                # From the first: a process waiting for Kafka is not a process that hangs.
                await self.heartbeat.start()
            if self.admin is not None:
                await self.admin.start()
            await self._start_serving()
        except BaseException:
            await self._stop_parts()
            raise
        logger.info("dualstream listening on %s", self.settings.listen)

    async def _start_serving(self) -> None:
        await self.metrics.start()
        await self.publisher.start()
        await self.reader.start()
        await self.hub.start()
        if self.own_http2:
            await self._serve_http2()
            return
        max_message = self._max_message()
        token = self._auth_token()
        server = grpc.aio.server(
            interceptors=[TokenAuthInterceptor(token)] if token else [],
            options=[
                ("grpc.max_receive_message_length", max_message),
                # Off unless several workers share the port on purpose: a second sidecar
                # started on a taken port by mistake must fail, not split the traffic.
                ("grpc.so_reuseport", int(self.settings.workers > 1)),
                # gRPC cancels calls (a bare CANCELLED) once this many wait to be taken; the
                # sidecar refuses publishes itself long before (see transport/admission.py).
                ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
                ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_CALLS),
                ("grpc.max_concurrent_streams", self._calls_per_connection()),
                # Else, while the loop lags, gRPC counts calls that have ended but that the
                # loop has not yet let go of against that bound and resets new ones
                # (REFUSED_STREAM: UNAVAILABLE, no retry hint), though the client kept to it.
                # Overload is the sidecar's own to answer (transport/admission.py).
                ("grpc.http.overload_protection", 0),
            ],
        )
        server.add_generic_rpc_handlers((self._event_service_handler(),))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(REFLECTED_SERVICES, server)
        self.port = self._bind(server)
        probe_target = _probe_target()
        server.add_insecure_port(probe_target)
        await server.start()
        self._server = server
        self._start_probe(probe_target)
        if self.settings.listen.startswith("unix:"):
            # In a pod, the app container connects as another user that shares the pod's
            # fsGroup (the group of the socket's emptyDir): connecting takes write permission.
            os.chmod(self.settings.listen.removeprefix("unix:"), UNIX_SOCKET_MODE)
        await self._report_health()
        self._health_watch = asyncio.create_task(self._watch_health(), name="health-watch")

    async def _serve_http2(self) -> None:
        """The sidecar's own HTTP/2 server (``transport/h2_server.py``). In the delivery
        process: Subscribe, GetStatus and health checks. On the publishing address: every
        method, with the admission's probe on a private socket as with grpc.aio."""
        settings = self.settings
        publishes = not self.delivery_process
        probe_target = _probe_target()
        server = H2Server(
            settings.listen,
            (
                api_methods(self._servicer, self._serving, HEALTH_POLL_SECONDS)
                if publishes
                else streams_methods(self._servicer, self._serving)
            ),
            max_calls_per_connection=self._calls_per_connection(),
            max_request_bytes=self._max_message(),
            shutdown_grace=settings.shutdown_grace,
            token=self._auth_token(),
            ssl_context=(
                tls_context(settings.tls_cert_file, settings.tls_key_file)
                if settings.tls_cert_file
                else None
            ),
            private_listen=(probe_target,) if publishes else (),
            reuse_port=settings.workers > 1,
            unserved=(
                ""
                if publishes
                else ", which serves Subscribe; publish on the sidecar's main address"
            ),
        )
        try:
            await server.start()
        except OSError as exc:
            raise ListenError(
                f"the gRPC API cannot listen on {settings.listen} (taken, or not an address of "
                f"this host?): {exc}"
            ) from exc
        self._h2_server = server
        self.port = server.port
        if publishes:
            self._start_probe(probe_target)
        if settings.listen.startswith("unix:"):
            os.chmod(settings.listen.removeprefix("unix:"), UNIX_SOCKET_MODE)

    def _start_probe(self, target: str) -> None:
        token = self._auth_token()
        self._probe = QueueProbe(
            self.admission, target, (("authorization", f"Bearer {token}"),) if token else ()
        )
        self._probe.start()

    def _max_message(self) -> int:
        """The largest request taken: a batch of the largest events, and some."""
        settings = self.settings
        return (
            settings.max_payload_bytes * min(settings.max_batch_events, 16) + MESSAGE_SIZE_HEADROOM
        )

    def _serving(self) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
        # SERVING only while the Kafka leg can work; Redis trouble is degraded, not down.
        if self.publisher.event_log.ready and not self.draining:
            return health_pb2.HealthCheckResponse.SERVING
        return health_pb2.HealthCheckResponse.NOT_SERVING

    def _calls_per_connection(self) -> int:
        """HTTP/2's bound on the calls one connection has open at once, told to the client,
        which holds further calls until one ends: past it, a client's surplus waits under its
        own deadline instead of in gRPC's queue here. It admits as many streams as a client may
        keep and publishes as the sidecar may serve, so nothing the limits allow waits."""
        settings = self.settings
        streams = (
            settings.max_streams
            if settings.listen.startswith("unix:")
            else settings.max_streams_per_client
        )
        return streams + settings.max_concurrent_rpcs + CALLS_PER_CONNECTION_HEADROOM

    def _auth_token(self) -> str:
        if self.settings.auth_token_file:
            return Path(self.settings.auth_token_file).read_text().strip()
        return self.settings.auth_token

    def _bind(self, server: grpc.aio.Server) -> int:
        try:
            if not self.settings.tls_cert_file:
                return server.add_insecure_port(self.settings.listen)
            credentials = grpc.ssl_server_credentials(
                [
                    (
                        Path(self.settings.tls_key_file).read_bytes(),
                        Path(self.settings.tls_cert_file).read_bytes(),
                    )
                ]
            )
            return server.add_secure_port(self.settings.listen, credentials)
        except RuntimeError as exc:  # gRPC's only word for a failed bind.
            raise ListenError(
                f"the gRPC API cannot listen on {self.settings.listen} (taken, or not an "
                "address of this host?)"
            ) from exc

    def _event_service_handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        """EventService's handlers, with request parsing that names a malformed field."""
        servicer = self._servicer
        unary = grpc.unary_unary_rpc_method_handler
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            "Publish": unary(
                servicer.Publish,
                request_deserializer=tolerant_parser(pb.PublishRequest),
                response_serializer=pb.PublishResponse.SerializeToString,
            ),
            "PublishBatch": unary(
                servicer.PublishBatch,
                request_deserializer=tolerant_parser(pb.PublishBatchRequest),
                response_serializer=pb.PublishBatchResponse.SerializeToString,
            ),
            # Responses arrive encoded (see transport/deliveries.py): no serializer.
            "Subscribe": grpc.unary_stream_rpc_method_handler(
                servicer.Subscribe,
                request_deserializer=tolerant_parser(pb.SubscribeRequest),
            ),
            "GetStatus": unary(
                servicer.GetStatus,
                request_deserializer=tolerant_parser(pb.GetStatusRequest),
                response_serializer=pb.GetStatusResponse.SerializeToString,
            ),
        }
        return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)

    def status(self) -> SidecarStatus:
        return sidecar_status(self.publisher, self.hub, self.draining)

    async def _report_health(self) -> None:
        status = self._serving()
        await self._health.set("", status)
        await self._health.set(SERVICE_NAME, status)

    async def _watch_health(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_POLL_SECONDS)
            await self._report_health()

    async def _stop(self) -> None:
        logger.info("dualstream draining: no new calls, in-flight calls may finish")
        await self._stop_parts()
        logger.info("dualstream stopped")

    async def _stop_parts(self) -> None:
        """Stop whatever started, in reverse order; also undoes a start that failed half-way."""
        self.draining = True  # /readyz and GetStatus say NOT_SERVING from here on.
        await cancel_and_wait(self._health_watch)
        self._health_watch = None
        await self._health.enter_graceful_shutdown()
        if self._probe is not None:
            await self._probe.stop()
            self._probe = None
        # Streams end first (clients reconnect elsewhere); publishes get the grace period.
        await self.hub.stop()
        if self._server is not None:
            await self._server.stop(self.settings.shutdown_grace)
            self._server = None
        running = self._servicer.running_streams
        if not await running.none_within(self.settings.shutdown_grace):
            logger.warning(
                "%d Subscribe streams were still closing %g s after the server stopped",
                running.count,
                self.settings.shutdown_grace,
            )
        if self._h2_server is not None:
            await self._h2_server.stop()
            self._h2_server = None
        await self.reader.stop()
        await self.publisher.stop()
        await self.metrics.stop()
        # Last: until the producer is flushed, probes still get an answer (not ready).
        if self.admin is not None:
            await self.admin.stop()
        if self.heartbeat is not None:
            await self.heartbeat.stop()


def _probe_target() -> str:
    """The admission probe's own way in: a socket only this process listens on, so it reaches
    this process even when several workers share the public port. An abstract one (Linux): it
    writes no file, so a read-only root filesystem is no obstacle."""
    return f"unix-abstract:dualstream-probe-{os.getpid()}-{uuid.uuid4().hex}"


async def run(
    settings: Settings,
    tracer: Tracer,
    on_serving: Callable[[], None] = lambda: None,
    metrics: SidecarMetrics | None = None,
    heartbeat: Heartbeat | None = None,
    *,
    delivery_process: bool = False,
) -> None:
    """Serve until SIGTERM or SIGINT, then drain and stop; ``on_serving`` runs once started.

    ``metrics`` are the sidecar's metrics (by default served for Prometheus only); ``heartbeat``
    is this process's, when it is one of several, and ``delivery_process`` says whether it is
    the one of streams (see ``Sidecar``).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with Sidecar(settings, tracer, metrics, heartbeat, delivery_process=delivery_process):
            on_serving()
            await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
