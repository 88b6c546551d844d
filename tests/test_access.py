"""Hostile and careless callers: tokens, TLS, caps, malformed bytes, and a fuzzed boundary."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dualstream.transport.server import Sidecar
from dualstream.v1 import event_service_pb2 as pb
from dualstream_client import (
    DualstreamClient,
    EventInput,
    ResourceExhaustedError,
    UnauthenticatedError,
)
from stack.localstack import KafkaBroker, RedisServer
from tests.conftest import make_settings, target_of

DOCUMENTED_CODES = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNAUTHENTICATED,
}


@pytest.fixture
def sidecar_settings(kafka: KafkaBroker, shared_redis: RedisServer, topic: str) -> Any:
    def build(**overrides: object) -> Any:
        return make_settings(kafka.bootstrap, shared_redis.url, topic, **overrides)

    return build


async def test_token_is_required_except_for_health(
    sidecar_settings: Any, tracer: Any, source_type: str
) -> None:
    async with Sidecar(sidecar_settings(auth_token="s3cret"), tracer) as sidecar:
        target = target_of(sidecar)
        async with DualstreamClient(target) as anonymous:
            with pytest.raises(UnauthenticatedError, match="Bearer"):
                await anonymous.publish(EventInput("t", source_type, "x"))
            with pytest.raises(UnauthenticatedError):
                await anonymous.subscribe([(source_type, "x")]).wait_live()
        async with DualstreamClient(target, token="wrong") as wrong:
            with pytest.raises(UnauthenticatedError):
                await wrong.publish(EventInput("t", source_type, "x"))
        async with DualstreamClient(target, token="s3cret") as allowed:
            assert (await allowed.publish(EventInput("t", source_type, "x"))).id
            async with allowed.subscribe([(source_type, "x")]):
                pass
        async with grpc.aio.insecure_channel(target) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, and its key."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    command = [
        *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
        *("-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
        *("-keyout", str(key), "-out", str(cert)),
    ]
    subprocess.run(command, check=True, capture_output=True)
    return key, cert


async def test_tls(
    sidecar_settings: Any, tracer: Any, tls_files: tuple[Path, Path], source_type: str
) -> None:
    key, cert = tls_files
    config = sidecar_settings(tls_cert_file=str(cert), tls_key_file=str(key))
    async with Sidecar(config, tracer) as sidecar:
        target = f"localhost:{sidecar.port}"
        async with DualstreamClient(target, tls_root_certificates=cert.read_bytes()) as client:
            assert (await client.publish(EventInput("t", source_type, "x"))).id
        async with DualstreamClient(target, timeout=3) as plaintext:
            with pytest.raises(Exception, match="UNAVAILABLE"):
                await plaintext.publish(EventInput("t", source_type, "x"))


async def test_streams_per_client_are_capped(
    sidecar_settings: Any, tracer: Any, source_type: str
) -> None:
    async with (
        Sidecar(sidecar_settings(max_streams_per_client=2), tracer) as sidecar,
        DualstreamClient(target_of(sidecar)) as client,
        # Its own subchannel pool: a second TCP connection, as another process would have.
        grpc.aio.insecure_channel(
            target_of(sidecar), options=[("grpc.use_local_subchannel_pool", 1)]
        ) as other_channel,
    ):
        first = client.subscribe([(source_type, "a")])
        second = client.subscribe([(source_type, "b")])
        await first.wait_live()
        await second.wait_live()
        with pytest.raises(ResourceExhaustedError, match="this client"):
            await client.subscribe([(source_type, "c")]).wait_live()
        # Another connection is another client.
        other = other_channel.unary_stream(
            "/dualstream.v1.EventService/Subscribe",
            request_serializer=pb.SubscribeRequest.SerializeToString,
            response_deserializer=pb.SubscribeResponse.FromString,
        )
        call = other(
            pb.SubscribeRequest(sources=[pb.Source(source_type=source_type, source_id="c")])
        )
        reply = await call.read()
        assert isinstance(reply, pb.SubscribeResponse)
        assert reply.HasField("subscribed")
        call.cancel()
        first.close()
        second.close()


async def test_non_utf8_strings_are_invalid_argument_naming_the_field(sidecar: Sidecar) -> None:
    raw = (
        pb.PublishRequest(event=pb.Event(type="t", source_type="u", source_id="XX"))
        .SerializeToString()
        .replace(b"XX", b"\xff\xfe")
    )
    async with grpc.aio.insecure_channel(target_of(sidecar)) as channel:
        call = channel.unary_unary(
            "/dualstream.v1.EventService/Publish",
            request_serializer=None,
            response_deserializer=None,
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(raw)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith("event.source_id")


async def test_client_deadlines_mid_call_leave_nothing_behind(
    sidecar: Sidecar, client: DualstreamClient, source_type: str
) -> None:
    async with grpc.aio.insecure_channel(target_of(sidecar)) as channel:
        subscribe = channel.unary_stream(
            "/dualstream.v1.EventService/Subscribe",
            request_serializer=pb.SubscribeRequest.SerializeToString,
            response_deserializer=pb.SubscribeResponse.FromString,
        )
        request = pb.SubscribeRequest(sources=[pb.Source(source_type=source_type, source_id="x")])
        for _ in range(20):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in subscribe(request, timeout=0.2):
                    pass
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    for _ in range(50):
        if sidecar.hub.stream_count == 0 and sidecar.hub.route_count == 0:
            break
        await asyncio.sleep(0.02)
    assert (sidecar.hub.stream_count, sidecar.hub.route_count) == (0, 0)


printable = st.text(max_size=40)
events = st.builds(
    pb.Event,
    id=printable,
    type=printable,
    source_type=printable,
    source_id=printable,
    data=st.binary(max_size=64),
    content_type=printable,
    attributes=st.dictionaries(printable, printable, max_size=3),
)
requests = st.one_of(
    st.builds(pb.PublishRequest, event=events).map(lambda r: ("Publish", r.SerializeToString())),
    st.builds(pb.PublishBatchRequest, events=st.lists(events, max_size=3)).map(
        lambda r: ("PublishBatch", r.SerializeToString())
    ),
    st.binary(max_size=200).map(lambda raw: ("Publish", raw)),
    st.binary(max_size=200).map(lambda raw: ("PublishBatch", raw)),
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(call=requests)
def test_fuzzed_requests_get_documented_statuses(fuzz_target: str, call: tuple[str, bytes]) -> None:
    method, raw = call

    async def send() -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(fuzz_target) as channel:
            stub = channel.unary_unary(
                f"/dualstream.v1.EventService/{method}",
                request_serializer=None,
                response_deserializer=None,
            )
            try:
                await stub(raw, timeout=10)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

    code = asyncio.run(send())
    assert code in DOCUMENTED_CODES, f"{method} answered {code.name} for {raw!r}"


@pytest.fixture(scope="module")
def fuzz_target(
    kafka: KafkaBroker, shared_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Any:
    """A sidecar in its own process, so the fuzzer's event loops stay apart from it."""
    from stack.localstack import SidecarProcess, create_topic, free_port

    create_topic(kafka.bootstrap, "fuzz", 3)
    port = free_port()
    process = SidecarProcess(
        tmp_path_factory.mktemp("fuzz"), port, kafka.bootstrap, shared_redis.url, "fuzz"
    )
    process.start()
    yield f"127.0.0.1:{port}"
    process.stop()


def test_oversize_message_is_refused(fuzz_target: str) -> None:
    async def send() -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(fuzz_target) as channel:
            stub = channel.unary_unary(
                "/dualstream.v1.EventService/Publish",
                request_serializer=None,
                response_deserializer=None,
            )
            try:
                await stub(b"\x0a" + b"\xff" * (40 * 1024 * 1024), timeout=30)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

    assert asyncio.run(send()) == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_concurrent_calls_are_capped(
    sidecar_settings: Any, tracer: Any, source_type: str
) -> None:
    async with (
        Sidecar(sidecar_settings(max_concurrent_rpcs=2), tracer) as sidecar,
        DualstreamClient(target_of(sidecar)) as client,
    ):
        outcomes = await asyncio.gather(
            *(client.publish(EventInput("t", source_type, f"k{i}")) for i in range(50)),
            return_exceptions=True,
        )
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert refused, "50 concurrent calls never hit a limit of 2"
    assert all(isinstance(o, ResourceExhaustedError) for o in refused), refused[:3]


async def test_on_a_unix_socket_callers_do_not_share_one_per_client_cap(
    kafka: KafkaBroker, shared_redis: RedisServer, topic: str, tracer: Any, source_type: str
) -> None:
    """gRPC names every caller on a unix socket ``unix:``: keyed on that, two processes of a
    pod shared one cap. There the per-client cap does not apply; max_streams still does."""
    directory = Path(tempfile.mkdtemp(prefix="ds-grpc-"))  # A socket path fits 108 bytes.
    target = f"unix:{directory / 'dualstream.sock'}"
    settings = make_settings(
        kafka.bootstrap, shared_redis.url, topic,
        listen=target, max_streams_per_client=1, max_streams=4,
    )  # fmt: skip
    try:
        async with (
            Sidecar(settings, tracer),
            DualstreamClient(target) as one,
            DualstreamClient(target) as another,
        ):
            streams = [
                client.subscribe([(source_type, f"s{i}")])
                for i, client in enumerate([one, one, another, another])
            ]
            for stream in streams:
                await stream.wait_live()
            with pytest.raises(ResourceExhaustedError, match="streams, its limit"):
                await one.subscribe([(source_type, "more")]).wait_live()
            for stream in streams:
                stream.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def test_tls_and_the_per_client_cap_on_the_delivery_process_own_http2(
    sidecar_settings: Any, tracer: Any, tls_files: tuple[Path, Path], source_type: str
) -> None:
    key, cert = tls_files
    config = sidecar_settings(
        tls_cert_file=str(cert), tls_key_file=str(key), max_streams_per_client=1
    )
    async with Sidecar(config, tracer, delivery_process=True) as sidecar:
        target = f"localhost:{sidecar.port}"
        async with DualstreamClient(target, tls_root_certificates=cert.read_bytes()) as client:
            stream = client.subscribe([(source_type, "a")])
            await stream.wait_live()
            with pytest.raises(ResourceExhaustedError, match="this client"):
                await client.subscribe([(source_type, "b")]).wait_live()
            assert (await client.status()).streams == 1
            stream.close()
        async with DualstreamClient(target, timeout=3) as plaintext:
            with pytest.raises(Exception, match="UNAVAILABLE"):
                await plaintext.status()
