"""The container image: built from the project's Dockerfile and run as its own user, with a
read-only root filesystem, against the real Kafka and Redis: healthy, one event published,
exit 0 on SIGTERM. Over TCP on loopback and over a unix socket in a mounted directory.

``scripts/image.sh`` builds it (mmdebstrap base, buildah) and runs it (podman with runc) with
all state in the cache directory; a cold build makes the Debian base first, in minutes.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis

from dualstream.health_check import Verdict, check_readyz
from dualstream.settings import Settings
from dualstream.transport.health_check import check_grpc_health
from dualstream_client import DualstreamClient, EventInput
from stack.localstack import REPO_ROOT, KafkaBroker, RedisServer, free_port
from tests.kafka_records import read_all
from tests.test_publish import ChannelListener

IMAGE = "localhost/dualstream:dev"  # scripts/image.sh's default: make test built it already
IMAGE_UID = 10001
BUILD_TIMEOUT = 1500.0
pytestmark = pytest.mark.timeout(BUILD_TIMEOUT + 300)


def image_tool(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "image.sh"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def podman(*args: str, timeout: float = 120.0) -> str:
    result = image_tool("podman", *args, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f"podman {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result.stdout


@pytest.fixture(scope="module")
def image() -> str:
    built = image_tool("build", IMAGE, timeout=BUILD_TIMEOUT)
    print(built.stdout)  # what was made or reused and how long it took, for the CI log
    if built.returncode != 0:
        pytest.fail(f"building the image failed:\n{built.stdout}\n{built.stderr}")
    return IMAGE


@pytest.fixture(scope="module")
def image_config(image: str) -> dict[str, Any]:
    [config] = json.loads(podman("image", "inspect", image))
    assert isinstance(config, dict)
    return config


def environment_of(config: dict[str, Any]) -> dict[str, str]:
    return dict(entry.split("=", 1) for entry in config["Config"]["Env"])


def test_the_image_runs_a_fixed_user_and_keeps_the_api_on_loopback(
    image_config: dict[str, Any],
) -> None:
    config = image_config["Config"]
    assert config["User"] == f"{IMAGE_UID}:{IMAGE_UID}"
    assert config["Entrypoint"] == ["dualstream", "serve"]
    assert config["StopSignal"] == "SIGTERM"
    environment = environment_of(image_config)
    assert environment["PYTHONDONTWRITEBYTECODE"] == "1"
    settings = Settings.load(environment)
    assert settings.listen == "127.0.0.1:50051"  # never every interface
    assert settings.admin_listen == "0.0.0.0:9464"  # the kubelet probes the pod IP
    assert image_config["Healthcheck"]["Test"][:3] == ["CMD", "dualstream", "health"]


async def wait_healthy(
    container: str, target: str, admin: str, timeout: float = 120.0
) -> list[Verdict]:
    """Both checks healthy; a container that exits meanwhile fails at once, with its logs."""
    verdicts: list[Verdict] = []
    async with asyncio.timeout(timeout):
        while not verdicts or not all(v.healthy for v in verdicts):
            await asyncio.sleep(0.5)
            state = await asyncio.to_thread(
                podman, "inspect", "--format", "{{.State.Status}}", container
            )
            if state.strip() != "running":
                logged = await asyncio.to_thread(image_tool, "podman", "logs", container)
                pytest.fail(f"the container is {state.strip()}:\n{logged.stdout}{logged.stderr}")
            verdicts = [await check_grpc_health(target, 5.0), await check_readyz(admin, 5.0)]
    return verdicts


def process_uid(container: str) -> int:
    pid = podman("inspect", "--format", "{{.State.Pid}}", container).strip()
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for pid {pid}")


@pytest.mark.parametrize("transport", ["tcp", "unix"])
async def test_the_image_serves_publishes_and_drains_on_sigterm(
    image: str,
    image_config: dict[str, Any],
    kafka: KafkaBroker,
    shared_redis: RedisServer,
    redis_client: redis.Redis,
    topic: str,
    source_type: str,
    tmp_path: Path,
    transport: str,
) -> None:
    container = f"dualstream-test-{uuid.uuid4().hex[:10]}"
    admin = f"127.0.0.1:{free_port()}"
    mounts: Sequence[str] = ()
    if transport == "tcp":
        listen = target = f"127.0.0.1:{free_port()}"
    else:
        # A directory the container's user can write, as an emptyDir shared in a pod.
        socket_dir = tmp_path / "socket"
        socket_dir.mkdir()
        os.chown(socket_dir, IMAGE_UID, IMAGE_UID)
        listen, target = "unix:/run/dualstream/sock", f"unix:{socket_dir}/sock"
        mounts = ("--volume", f"{socket_dir}:/run/dualstream")
    # The host's network: Kafka and Redis listen on its loopback. So the listeners get free
    # ports (the image's own defaults are checked in its configuration above).
    settings = {
        "DUALSTREAM_LISTEN": listen,
        "DUALSTREAM_ADMIN_LISTEN": admin,
        "DUALSTREAM_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "DUALSTREAM_KAFKA_TOPIC": topic,
        "DUALSTREAM_REDIS_URL": shared_redis.url,
        "DUALSTREAM_SHUTDOWN_GRACE": "5",
    }
    environment = [
        part for name, value in settings.items() for part in ("--env", f"{name}={value}")
    ]
    await asyncio.to_thread(
        podman,
        "run", "--detach", "--name", container, "--network", "host",
        "--read-only", "--read-only-tmpfs=false",  # nothing writable but the mounted socket dir
        *mounts, *environment, image,
    )  # fmt: skip
    try:
        verdicts = await wait_healthy(container, target, admin)
        assert [v.text.split()[-1] for v in verdicts] == ["SERVING", "SERVING"]
        assert process_uid(container) == IMAGE_UID
        # The image's own HEALTHCHECK command, run inside the container.
        healthcheck = image_config["Healthcheck"]["Test"][1:]
        report = await asyncio.to_thread(podman, "exec", container, *healthcheck)
        assert report.startswith("healthy: "), report
        if transport == "unix":
            # Another user in the socket's group (an app container in the pod's fsGroup).
            report = await asyncio.to_thread(
                podman, "exec", "--user", f"20000:{IMAGE_UID}", container,
                "dualstream", "health", "--admin", "",
            )  # fmt: skip
            assert report.startswith("healthy: gRPC unix:/run/dualstream/sock SERVING"), report

        channel = f"events:{source_type}:image"
        async with (
            ChannelListener(redis_client, channel) as listener,
            DualstreamClient(target, timeout=30) as client,
        ):
            result = await client.publish(EventInput("image.checked", source_type, "image", b"42"))
            assert result.notified
            [notification] = await listener.collect(1, timeout=30)
        assert notification["id"] == result.id
        [record] = await read_all(kafka.bootstrap, topic, expected=1, timeout=60)
        assert (record.partition, record.offset, record.value) == (
            result.partition,
            result.offset,
            b"42",
        )

        await asyncio.to_thread(podman, "kill", "--signal", "SIGTERM", container)
        exit_status = await asyncio.to_thread(podman, "wait", container)
        logged = await asyncio.to_thread(image_tool, "podman", "logs", container)
        logs = logged.stdout + logged.stderr  # the sidecar logs to stderr
        assert exit_status.strip() == "0", logs
        records = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
        messages = [record["message"] for record in records]
        assert messages[-1] == "dualstream stopped", logs
        assert "dualstream draining: no new calls, in-flight calls may finish" in messages
        assert not [r for r in records if r["level"] in ("error", "critical")], logs
    finally:
        image_tool("podman", "rm", "--force", "--time", "0", container)
