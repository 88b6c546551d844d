"""``dualstream health`` against real sidecars: over TCP and a unix socket, with the addresses
from the environment, and when the sidecar cannot publish or is not there at all."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from opentelemetry.trace import Tracer

from dualstream.health_check import default_streams_target, default_targets, reachable_address
from dualstream.settings import Settings
from dualstream.transport.server import Sidecar
from stack.localstack import REPO_ROOT, KafkaBroker, RedisServer, free_port
from tests.conftest import make_settings


async def health(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``dualstream health`` in a child process (the sidecar under test runs on this loop)."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dualstream.cli", "health", *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    output, _ = await asyncio.wait_for(child.communicate(), 120)
    assert child.returncode is not None
    return child.returncode, output.decode()


async def test_a_serving_sidecar_is_healthy_on_both_checks(sidecar: Sidecar) -> None:
    target, admin = f"127.0.0.1:{sidecar.port}", f"127.0.0.1:{sidecar.admin_port}"
    status, output = await health("--target", target, "--admin", admin)
    assert status == 0, output
    assert output.startswith(f"healthy: gRPC {target} SERVING; admin {admin} ready: ")
    assert output.count("\n") == 1


async def test_the_addresses_come_from_the_same_environment_as_serve(sidecar: Sidecar) -> None:
    environment = {
        "DUALSTREAM_LISTEN": f"0.0.0.0:{sidecar.port}",  # reached on loopback
        "DUALSTREAM_ADMIN_LISTEN": f"127.0.0.1:{sidecar.admin_port}",
    }
    status, output = await health(env=environment)
    assert status == 0, output
    assert output.startswith(f"healthy: gRPC 127.0.0.1:{sidecar.port} SERVING; admin ")


async def test_a_unix_socket_target_is_checked(
    kafka: KafkaBroker, shared_redis: RedisServer, topic: str, tracer: Tracer, tmp_path: Path
) -> None:
    socket_path = tmp_path / "dualstream.sock"
    settings = make_settings(
        kafka.bootstrap, shared_redis.url, topic, listen=f"unix:{socket_path}", admin_listen=""
    )
    async with Sidecar(settings, tracer) as sidecar:
        assert await sidecar.publisher.event_log.wait_ready(30)
        # Group-writable: an app container sharing the pod's fsGroup can connect.
        assert socket_path.stat().st_mode & 0o777 == 0o660
        status, output = await health("--target", f"unix:{socket_path}", "--admin", "")
    assert status == 0, output
    assert output == f"healthy: gRPC unix:{socket_path} SERVING\n"


async def test_a_sidecar_without_kafka_is_unhealthy_and_says_why(
    private_kafka: KafkaBroker, shared_redis: RedisServer, tracer: Tracer
) -> None:
    await asyncio.to_thread(private_kafka.stop)
    settings = make_settings(private_kafka.bootstrap, shared_redis.url, "events")
    async with Sidecar(settings, tracer) as sidecar:
        target, admin = f"127.0.0.1:{sidecar.port}", f"127.0.0.1:{sidecar.admin_port}"
        status, output = await health("--target", target, "--admin", admin)
    assert status == 1, output
    assert output.startswith(
        f"unhealthy: gRPC {target} NOT_SERVING; "
        f"admin {admin} not ready: NOT_SERVING (Kafka not connected"
    )


async def test_nothing_listening_is_unhealthy() -> None:
    target, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    status, output = await health("--target", target, "--admin", admin, "--timeout", "10")
    assert status == 1, output
    assert output.startswith(f"unhealthy: gRPC {target} unreachable: ")
    assert f"; admin {admin} unreachable: " in output


async def test_no_check_at_all_is_a_usage_error() -> None:
    status, output = await health("--target", "", "--admin", "")
    assert status == 1
    assert "nothing to check" in output


@pytest.mark.parametrize(
    ("listen", "reached"),
    [
        ("0.0.0.0:9464", "127.0.0.1:9464"),
        ("[::]:9464", "[::1]:9464"),
        ("10.0.0.7:50051", "10.0.0.7:50051"),
        ("unix:/run/dualstream/sock", "unix:/run/dualstream/sock"),
    ],
)
def test_a_wildcard_listener_is_reached_on_loopback(listen: str, reached: str) -> None:
    assert reachable_address(listen) == reached


def test_with_tls_on_the_api_only_the_admin_check_is_default() -> None:
    settings = Settings(tls_cert_file="cert.pem", tls_key_file="key.pem")
    assert default_targets(settings) == ("", "127.0.0.1:9464")
    assert default_targets(Settings(admin_listen="")) == ("127.0.0.1:50051", "")


def test_the_delivery_process_is_checked_when_the_settings_start_one() -> None:
    assert default_streams_target(Settings()) == ""
    assert default_streams_target(Settings(subscribe_listen="0.0.0.0:50052")) == "127.0.0.1:50052"
    with_tls = Settings(subscribe_listen="0.0.0.0:50052", tls_cert_file="c", tls_key_file="k")
    assert default_streams_target(with_tls) == ""
