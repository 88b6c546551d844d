"""The sidecar against real redis-servers that demand TLS with client certificates, an ACL
user, or listen on a unix socket only. Both Redis connections go there: the notifier's
PUBLISH and the hub's SUBSCRIBE; Kafka is the session's plain broker."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.trace import Tracer

from dualstream.transport.server import Sidecar
from dualstream_client import DualstreamClient, EventInput
from stack.localstack import KafkaBroker, RedisServer, RedisTls, free_port
from tests.certs import Pki, make_pki
from tests.conftest import make_settings, target_of
from tests.roundtrip import TIMEOUT, assert_publish_replay_and_live

pytestmark = pytest.mark.integration

ACL_USER, ACL_PASSWORD = "notifier", "acl-s3cret"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("redis-pki"))


@pytest.fixture
def tls_redis(tmp_path: Path, pki: Pki) -> Iterator[RedisServer]:
    tls = RedisTls(pki.server.cert, pki.server.key, pki.ca, pki.client.cert, pki.client.key)
    with RedisServer(tmp_path / "redis", free_port(), tls=tls) as server:
        yield server


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis", free_port(), acl_users={ACL_USER: ACL_PASSWORD}) as server:
        yield server


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # A unix socket's path must fit in 108 bytes; pytest's tmp_path may not.
    directory = Path(tempfile.mkdtemp(prefix="ds-redis-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def with_credentials(url: str, user: str, password: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{user}:{password}@{rest}"


async def test_tls_with_a_client_certificate(
    kafka: KafkaBroker,
    tls_redis: RedisServer,
    topic: str,
    pki: Pki,
    source_type: str,
    tracer: Tracer,
) -> None:
    assert tls_redis.url.startswith("rediss://")
    settings = make_settings(
        kafka.bootstrap,
        tls_redis.url,
        topic,
        redis_ssl_ca_file=str(pki.ca),
        redis_ssl_cert_file=str(pki.client.cert),
        redis_ssl_key_file=str(pki.client.key),
    )
    async with Sidecar(settings, tracer) as sidecar:
        await assert_publish_replay_and_live(sidecar, source_type)


async def test_tls_without_a_client_certificate_is_not_notified(
    kafka: KafkaBroker,
    tls_redis: RedisServer,
    topic: str,
    pki: Pki,
    source_type: str,
    tracer: Tracer,
) -> None:
    settings = make_settings(
        kafka.bootstrap, tls_redis.url, topic, redis_ssl_ca_file=str(pki.ca), redis_timeout=5.0
    )
    async with Sidecar(settings, tracer) as sidecar:
        assert await sidecar.publisher.event_log.wait_ready(TIMEOUT)
        async with DualstreamClient(target_of(sidecar), timeout=TIMEOUT) as client:
            result = await client.publish(EventInput("t", source_type, "x"))
        assert not result.notified
        # The server's "certificate required" alert, or the reset that may overtake it.
        assert (
            f"could not connect to Redis at 127.0.0.1:{tls_redis.port}"
            in sidecar.publisher.notifier.stats.last_error
        )


async def test_acl_user_in_the_url(
    kafka: KafkaBroker, acl_redis: RedisServer, topic: str, source_type: str, tracer: Tracer
) -> None:
    url = with_credentials(acl_redis.url, ACL_USER, ACL_PASSWORD)
    async with Sidecar(make_settings(kafka.bootstrap, url, topic), tracer) as sidecar:
        await assert_publish_replay_and_live(sidecar, source_type)


async def test_acl_user_from_settings_with_a_password_file(
    kafka: KafkaBroker,
    acl_redis: RedisServer,
    topic: str,
    source_type: str,
    tracer: Tracer,
    tmp_path: Path,
) -> None:
    secret = tmp_path / "redis-password"
    secret.write_text(ACL_PASSWORD + "\n")
    settings = make_settings(
        kafka.bootstrap,
        acl_redis.url,
        topic,
        redis_username=ACL_USER,
        redis_password_file=str(secret),
    )
    async with Sidecar(settings, tracer) as sidecar:
        await assert_publish_replay_and_live(sidecar, source_type)


async def test_a_wrong_acl_password_is_reported_and_not_notified(
    kafka: KafkaBroker, acl_redis: RedisServer, topic: str, source_type: str, tracer: Tracer
) -> None:
    url = with_credentials(acl_redis.url, ACL_USER, "wrong")
    settings = make_settings(kafka.bootstrap, url, topic, redis_timeout=5.0)
    async with Sidecar(settings, tracer) as sidecar:
        assert await sidecar.publisher.event_log.wait_ready(TIMEOUT)
        async with DualstreamClient(target_of(sidecar), timeout=TIMEOUT) as client:
            result = await client.publish(EventInput("t", source_type, "x"))
        assert not result.notified
        last_error = sidecar.publisher.notifier.stats.last_error
        assert f"refused the connection as {ACL_USER}" in last_error
        assert "WRONGPASS" in last_error


async def test_unix_socket(
    kafka: KafkaBroker,
    topic: str,
    source_type: str,
    tracer: Tracer,
    tmp_path: Path,
    socket_dir: Path,
) -> None:
    with RedisServer(tmp_path / "redis", 0, unix_socket=socket_dir / "redis.sock") as server:
        assert server.url == f"unix://{socket_dir}/redis.sock"
        settings = make_settings(kafka.bootstrap, server.url, topic)
        async with Sidecar(settings, tracer) as sidecar:
            await assert_publish_replay_and_live(sidecar, source_type)


async def test_unix_socket_with_an_acl_user_in_the_url(
    kafka: KafkaBroker,
    topic: str,
    source_type: str,
    tracer: Tracer,
    tmp_path: Path,
    socket_dir: Path,
) -> None:
    with RedisServer(
        tmp_path / "redis",
        0,
        unix_socket=socket_dir / "redis.sock",
        acl_users={ACL_USER: ACL_PASSWORD},
    ) as server:
        url = f"unix://{ACL_USER}:{ACL_PASSWORD}@{socket_dir}/redis.sock"
        async with Sidecar(make_settings(kafka.bootstrap, url, topic), tracer) as sidecar:
            await assert_publish_replay_and_live(sidecar, source_type)
        assert server.running
