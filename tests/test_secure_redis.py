"""The sidecar against real redis-servers that demand TLS with client certificates, an ACL
user, or listen on a unix socket only. Both Redis connections go there: the notifier's
PUBLISH and the hub's SUBSCRIBE; Kafka is the session's plain broker."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from opentelemetry.trace import Tracer

from dualstream.settings import Settings
from dualstream.status import ServingState
from dualstream.transport.server import Sidecar
from dualstream_client import DualstreamClient, EventInput
from stack.localstack import KafkaBroker, RedisServer, RedisTls, free_port
from tests.certs import Pki, make_pki
from tests.conftest import make_settings, target_of
from tests.roundtrip import TIMEOUT, assert_round_trip

pytestmark = pytest.mark.integration

ACL_USER, ACL_PASSWORD = "notifier", "acl-s3cret"

SettingsFor = Callable[..., Settings]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("redis-pki"))


@pytest.fixture
def settings_for(kafka: KafkaBroker, topic: str) -> SettingsFor:
    def build(redis_url: str, **overrides: object) -> Settings:
        # These tests are about connecting, not latency: the default 0.25 s bound on the Redis
        # leg once timed a PUBLISH out under load and reported a working connection as failed.
        return make_settings(
            kafka.bootstrap, redis_url, topic, **{"redis_timeout": 5.0, **overrides}
        )

    return build


def tls_server(workdir: Path, pki: Pki) -> RedisServer:
    tls = RedisTls(pki.server.cert, pki.server.key, pki.ca, pki.client.cert, pki.client.key)
    return RedisServer(workdir, free_port(), tls=tls)


def client_certificate(pki: Pki, **overrides: object) -> dict[str, object]:
    return {
        "redis_ssl_ca_file": str(pki.ca),
        "redis_ssl_cert_file": str(pki.client.cert),
        "redis_ssl_key_file": str(pki.client.key),
        **overrides,
    }


@pytest.fixture
def tls_redis(tmp_path: Path, pki: Pki) -> Iterator[RedisServer]:
    with tls_server(tmp_path / "redis", pki) as server:
        yield server


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[RedisServer]:
    users = {ACL_USER: ACL_PASSWORD}
    with RedisServer(tmp_path / "redis", free_port(), acl_users=users) as server:
        yield server


@pytest.fixture
def socket_path() -> Iterator[Path]:
    # A unix socket's path must fit in 108 bytes; pytest's tmp_path may not.
    directory = Path(tempfile.mkdtemp(prefix="ds-redis-"))
    yield directory / "redis.sock"
    shutil.rmtree(directory, ignore_errors=True)


def with_credentials(url: str, user: str, password: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{user}:{password}@{rest}"


async def publish_not_notified(settings: Settings, tracer: Tracer, source_type: str) -> str:
    """Publish once through a sidecar whose Redis refuses it: the event is written to Kafka
    but not notified, and the sidecar is DEGRADED; the status's last Redis error."""
    async with Sidecar(settings, tracer) as sidecar:
        assert await sidecar.publisher.event_log.wait_ready(TIMEOUT)
        async with DualstreamClient(target_of(sidecar), timeout=TIMEOUT) as client:
            result = await client.publish(EventInput("t", source_type, "x"))
        status = sidecar.status()
    assert not result.notified
    assert status.state is ServingState.DEGRADED
    return status.redis_last_error


async def test_tls_with_a_client_certificate(
    settings_for: SettingsFor, tls_redis: RedisServer, pki: Pki, source_type: str, tracer: Tracer
) -> None:
    assert tls_redis.url.startswith("rediss://")
    await assert_round_trip(
        settings_for(tls_redis.url, **client_certificate(pki)), tracer, source_type
    )


async def test_hostname_checking(
    settings_for: SettingsFor, source_type: str, tracer: Tracer, tmp_path: Path
) -> None:
    """A certificate that names another host is refused unless hostname checking is off."""
    pki = make_pki(tmp_path / "pki", server_names=["redis.internal"])
    with tls_server(tmp_path / "redis", pki) as server:
        checked = settings_for(server.url, **client_certificate(pki))
        last_error = await publish_not_notified(checked, tracer, source_type)
        assert "mismatch" in last_error
        unchecked = settings_for(
            server.url, **client_certificate(pki, redis_ssl_check_hostname=False)
        )
        # Another source: the first half's event must not show in this one's replay.
        await assert_round_trip(unchecked, tracer, source_type + "b")


async def test_tls_without_a_client_certificate_is_not_notified(
    settings_for: SettingsFor, tls_redis: RedisServer, pki: Pki, source_type: str, tracer: Tracer
) -> None:
    settings = settings_for(tls_redis.url, redis_ssl_ca_file=str(pki.ca))
    last_error = await publish_not_notified(settings, tracer, source_type)
    # The server's "certificate required" alert, or the reset that may overtake it.
    assert f"could not connect to Redis at 127.0.0.1:{tls_redis.port}" in last_error


async def test_acl_user_in_the_url(
    settings_for: SettingsFor, acl_redis: RedisServer, source_type: str, tracer: Tracer
) -> None:
    url = with_credentials(acl_redis.url, ACL_USER, ACL_PASSWORD)
    await assert_round_trip(settings_for(url), tracer, source_type)


async def test_acl_user_from_settings_with_a_password_file(
    settings_for: SettingsFor,
    acl_redis: RedisServer,
    source_type: str,
    tracer: Tracer,
    tmp_path: Path,
) -> None:
    secret = tmp_path / "redis-password"
    secret.write_text(ACL_PASSWORD + "\n")
    settings = settings_for(acl_redis.url, redis_username=ACL_USER, redis_password_file=str(secret))
    await assert_round_trip(settings, tracer, source_type)


async def test_a_wrong_acl_password_is_reported_and_not_notified(
    settings_for: SettingsFor, acl_redis: RedisServer, source_type: str, tracer: Tracer
) -> None:
    url = with_credentials(acl_redis.url, ACL_USER, "wrong")
    last_error = await publish_not_notified(settings_for(url), tracer, source_type)
    assert f"refused the connection as {ACL_USER}: WRONGPASS" in last_error


async def test_unix_socket(
    settings_for: SettingsFor, source_type: str, tracer: Tracer, tmp_path: Path, socket_path: Path
) -> None:
    with RedisServer(tmp_path / "redis", 0, unix_socket=socket_path) as server:
        assert server.url == f"unix://{socket_path}"
        await assert_round_trip(settings_for(server.url), tracer, source_type)


async def test_unix_socket_with_an_acl_user_in_the_url(
    settings_for: SettingsFor, source_type: str, tracer: Tracer, tmp_path: Path, socket_path: Path
) -> None:
    users = {ACL_USER: ACL_PASSWORD}
    with RedisServer(tmp_path / "redis", 0, unix_socket=socket_path, acl_users=users):
        url = f"unix://{ACL_USER}:{ACL_PASSWORD}@{socket_path}"
        await assert_round_trip(settings_for(url), tracer, source_type)
