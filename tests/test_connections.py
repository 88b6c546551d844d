"""Connection settings for secured Kafka and Redis: what the clients get, and the start-up
errors that name the setting at fault. The connections themselves are tested against real
servers in test_secure_kafka.py and test_secure_redis.py."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from dualstream.cli import main
from dualstream.connections import (
    RedisAddress,
    check_connection_settings,
    explained_connect_error,
    kafka_client_options,
)
from dualstream.settings import Settings
from stack.localstack import free_port
from tests.certs import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_plaintext_kafka_gets_no_tls_and_no_sasl() -> None:
    options = kafka_client_options(Settings(kafka_bootstrap="k1:9092,k2:9092"))
    assert options == {
        "bootstrap_servers": "k1:9092,k2:9092",
        "client_id": "dualstream",
        "security_protocol": "PLAINTEXT",
    }


def test_sasl_ssl_reads_the_password_file_and_builds_one_tls_context(
    pki: Pki, tmp_path: Path
) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret with spaces\n")
    settings = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="alice",
        kafka_sasl_password_file=str(secret),
        kafka_ssl_ca_file=str(pki.ca),
        kafka_ssl_cert_file=str(pki.client.cert),
        kafka_ssl_key_file=str(pki.client.key),
    )
    options = kafka_client_options(settings)
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "alice"
    assert options["sasl_plain_password"] == "s3cret with spaces"
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED


def test_hostname_checking_can_be_turned_off_but_verification_stays() -> None:
    settings = Settings.load(
        {"DUALSTREAM_KAFKA_SECURITY_PROTOCOL": "SSL", "DUALSTREAM_KAFKA_SSL_CHECK_HOSTNAME": "no"}
    )
    context = kafka_client_options(settings)["ssl_context"]
    assert not context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED


def test_boolean_settings_parse_words_and_name_bad_ones() -> None:
    assert not Settings.load(
        {"DUALSTREAM_REDIS_SSL_CHECK_HOSTNAME": "false"}
    ).redis_ssl_check_hostname
    with pytest.raises(ValueError, match="DUALSTREAM_REDIS_SSL_CHECK_HOSTNAME"):
        Settings.load({"DUALSTREAM_REDIS_SSL_CHECK_HOSTNAME": "maybe"})


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"kafka_security_protocol": "TLS"}, "kafka_security_protocol"),
        (
            {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "GSSAPI"},
            "kafka_sasl_mechanism",
        ),
        ({"kafka_security_protocol": "SASL_SSL"}, "kafka_sasl_username"),
        (
            {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_username": "a"},
            "kafka_sasl_password or kafka_sasl_password_file",
        ),
        ({"kafka_sasl_username": "a"}, "kafka_sasl_username needs kafka_security_protocol"),
        (
            {
                "kafka_security_protocol": "SASL_PLAINTEXT",
                "kafka_sasl_username": "a",
                "kafka_sasl_password": "b",
                "kafka_ssl_ca_file": "/ca.pem",
            },
            "kafka_ssl_ca_file needs kafka_security_protocol SSL",
        ),
        (
            {"kafka_sasl_password": "a", "kafka_sasl_password_file": "/p"},
            "kafka_sasl_password or kafka_sasl_password_file, not both",
        ),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_cert_file": "/c.pem"},
            "kafka_ssl_cert_file and kafka_ssl_key_file",
        ),
        ({"redis_ssl_key_file": "/k.pem"}, "redis_ssl_cert_file and redis_ssl_key_file"),
        ({"redis_password": "a", "redis_password_file": "/p"}, "redis_password_file"),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_ca_file": "/nowhere/ca.pem"},
            "setting kafka_ssl_ca_file: /nowhere/ca.pem does not exist",
        ),
        (
            {
                "kafka_security_protocol": "SASL_SSL",
                "kafka_sasl_username": "a",
                "kafka_sasl_password_file": "/nowhere/password",
            },
            "setting kafka_sasl_password_file: cannot read /nowhere/password",
        ),
        (
            {"redis_url": "rediss://127.0.0.1:6380", "redis_ssl_ca_file": "/nowhere/ca.pem"},
            "setting redis_ssl_ca_file: /nowhere/ca.pem does not exist",
        ),
        (
            {"redis_ssl_cert_file": "/c.pem", "redis_ssl_key_file": "/k.pem"},
            "setting redis_ssl_cert_file needs a rediss:// redis_url",
        ),
        ({"redis_password_file": "/nowhere/password"}, "setting redis_password_file"),
        ({"redis_url": "http://127.0.0.1:6379"}, "setting redis_url"),
        ({"redis_url": "redis://127.0.0.1:port"}, "setting redis_url"),
        ({"redis_url": "unix://"}, "setting redis_url: a unix:// URL needs the socket's path"),
        (
            {"redis_url": "redis://:x@127.0.0.1", "redis_password": "y"},
            "in redis_url or in redis_password",
        ),
        (
            {"redis_url": "redis://bob@127.0.0.1", "redis_username": "alice"},
            "in redis_url or in redis_username",
        ),
    ],
)
def test_bad_security_settings_fail_at_start_up_naming_the_setting(
    values: dict[str, str], named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        check_connection_settings(Settings(**values))  # type: ignore[arg-type]


def test_a_certificate_with_the_wrong_key_names_both_settings(pki: Pki) -> None:
    settings = Settings(
        kafka_security_protocol="SSL",
        kafka_ssl_cert_file=str(pki.client.cert),
        kafka_ssl_key_file=str(pki.server.key),
    )
    with pytest.raises(ValueError, match="kafka_ssl_cert_file and kafka_ssl_key_file"):
        kafka_client_options(settings)


def test_a_ca_file_without_certificates_is_named(tmp_path: Path) -> None:
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate\n")
    with pytest.raises(ValueError, match="setting kafka_ssl_ca_file"):
        kafka_client_options(
            Settings(kafka_security_protocol="SSL", kafka_ssl_ca_file=str(not_pem))
        )


def test_the_serve_command_refuses_a_missing_ca_file_naming_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--kafka-security-protocol", "SSL", "--kafka-ssl-ca-file", "/no/ca.pem"])
    assert str(exit_info.value.code) == (
        "dualstream: bad setting: setting kafka_ssl_ca_file: /no/ca.pem does not exist or is "
        "not a file"
    )


def test_redis_url_credentials_and_tls() -> None:
    address = RedisAddress.from_settings(Settings(redis_url="rediss://alice:p%40ss@cache:6380/0"))
    assert (address.host, address.port, address.location) == ("cache", 6380, "cache:6380")
    assert (address.username, address.password) == ("alice", "p@ss")
    assert address.ssl_context is not None
    assert address.ssl_context.check_hostname
    plain = RedisAddress.from_settings(Settings(redis_url="redis://127.0.0.1"))
    assert (plain.port, plain.username, plain.password, plain.ssl_context) == (
        6379,
        None,
        None,
        None,
    )


def test_redis_user_from_settings_and_password_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "redis-password"
    secret.write_text("from-the-file\n")
    settings = Settings(
        redis_url="unix:///run/redis/redis.sock",
        redis_username="alice",
        redis_password_file=str(secret),
    )
    address = RedisAddress.from_settings(settings)
    assert address.unix_socket == "/run/redis/redis.sock"
    assert address.location == "unix:/run/redis/redis.sock"
    assert (address.username, address.password) == ("alice", "from-the-file")


def test_redis_tls_settings_build_the_context(pki: Pki) -> None:
    settings = Settings(
        redis_url="rediss://127.0.0.1:6380",
        redis_ssl_ca_file=str(pki.ca),
        redis_ssl_cert_file=str(pki.client.cert),
        redis_ssl_key_file=str(pki.client.key),
        redis_ssl_check_hostname=False,
    )
    context = RedisAddress.from_settings(settings).ssl_context
    assert context is not None
    assert not context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED


def test_every_setting_is_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    missing = [
        name
        for name in Settings.__dataclass_fields__
        if f"`DUALSTREAM_{name.upper()}`" not in readme
    ]
    assert not missing, f"settings missing from the README's table: {missing}"


async def test_a_refused_kafka_connection_is_explained() -> None:
    from aiokafka.errors import KafkaConnectionError

    port = free_port()  # Nothing listens there.
    options = kafka_client_options(Settings(kafka_bootstrap=f"127.0.0.1:{port}"))
    vague = KafkaConnectionError(f"Unable to bootstrap from [('127.0.0.1', {port})]")
    explained = await explained_connect_error(vague, options)
    assert f"127.0.0.1:{port}: ConnectionRefusedError" in str(explained)
    assert explained.__cause__ is vague
    other = KafkaConnectionError("something else")
    assert await explained_connect_error(other, options) is other
