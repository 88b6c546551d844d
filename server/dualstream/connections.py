"""How the sidecar reaches Kafka and Redis: addresses, TLS and credentials, from ``Settings``.

This is the one place that turns the connection settings into clients' options. Every Kafka
client the sidecar makes (the producer, the reader's consumers and admin client) is built with
``kafka_client_options``; every Redis connection (the notifier's and the hub's) is opened by a
``RedisAddress``. Both read their files (CA bundle, client certificate and key, password files)
when they are built, at start-up, so a bad setting stops the sidecar with an error that names
the setting instead of surfacing later as a connection that never works.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError, KafkaError

from dualstream.resp import RespError, encode_command, read_reply
from dualstream.settings import Settings

REDIS_DEFAULT_PORT = 6379
REDIS_TLS_FILES = ("redis_ssl_ca_file", "redis_ssl_cert_file", "redis_ssl_key_file")


def check_connection_settings(settings: Settings) -> None:
    """Build what the connections need once, so that a missing file or a malformed URL fails
    at start-up, naming the setting (a ``ValueError``)."""
    kafka_client_options(settings)
    RedisAddress.from_settings(settings)


def kafka_client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments that every aiokafka client (producer, consumer, admin) takes alike:
    where Kafka is, who we are, and how we prove it."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "client_id": settings.kafka_client_id,
        "security_protocol": protocol,
    }
    if protocol in {"SSL", "SASL_SSL"}:
        options["ssl_context"] = tls_context(
            "kafka",
            ca_file=settings.kafka_ssl_ca_file,
            cert_file=settings.kafka_ssl_cert_file,
            key_file=settings.kafka_ssl_key_file,
            check_hostname=settings.kafka_ssl_check_hostname,
        )
    if protocol in {"SASL_PLAINTEXT", "SASL_SSL"}:
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password or read_secret(
            "kafka_sasl_password_file", settings.kafka_sasl_password_file
        )
    return options


async def explained_connect_error(
    error: BaseException, options: Mapping[str, Any], timeout: float = 5.0
) -> BaseException:
    """``error`` with its cause when it is aiokafka's "Unable to bootstrap", which names only
    the hosts: aiokafka logs why each one failed (refused, a certificate, SASL credentials)
    but does not raise it. Each bootstrap server is tried once more as the clients would
    connect, and what failed is put into the error that callers and the status see."""
    vague = isinstance(error, KafkaConnectionError) and "bootstrap" in str(error)
    if not vague:
        return error
    connection_options = {k: v for k, v in options.items() if k != "bootstrap_servers"}
    reasons = []
    for server in str(options["bootstrap_servers"]).split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            async with asyncio.timeout(timeout):
                connection = await create_conn(host.strip("[]"), int(port), **connection_options)
        except (KafkaError, OSError, TimeoutError, ValueError) as exc:
            reasons.append(f"{server.strip()}: {type(exc).__name__}: {exc}")
        else:
            connection.close()
    if not reasons:
        return error
    explained: BaseException = KafkaConnectionError("; ".join(reasons))
    explained.__cause__ = error
    return explained


def tls_context(
    prefix: str, *, ca_file: str, cert_file: str, key_file: str, check_hostname: bool
) -> ssl.SSLContext:
    """A client TLS context that verifies the server against ``ca_file`` (or the system's
    CAs) and, for mutual TLS, presents ``cert_file``/``key_file``. ``prefix`` names the
    settings (``kafka`` or ``redis``) in errors."""
    try:
        context = ssl.create_default_context(
            cafile=_existing(f"{prefix}_ssl_ca_file", ca_file) if ca_file else None
        )
    except ssl.SSLError as exc:
        raise ValueError(
            f"setting {prefix}_ssl_ca_file: {ca_file} holds no usable PEM certificate ({exc})"
        ) from exc
    context.check_hostname = check_hostname
    if cert_file:
        certificate = _existing(f"{prefix}_ssl_cert_file", cert_file)
        key = _existing(f"{prefix}_ssl_key_file", key_file)
        try:
            context.load_cert_chain(certificate, key)
        except ssl.SSLError as exc:
            raise ValueError(
                f"settings {prefix}_ssl_cert_file and {prefix}_ssl_key_file: {cert_file} and "
                f"{key_file} are not a PEM certificate and its matching unencrypted key ({exc})"
            ) from exc
    return context


def read_secret(setting: str, path: str) -> str:
    """The content of a secret file (a mounted Kubernetes secret, say), without the line
    break editors and ``echo`` leave at its end."""
    try:
        return Path(path).read_text().rstrip("\r\n")
    except OSError as exc:
        raise ValueError(f"setting {setting}: cannot read {path}: {exc.strerror}") from exc


def _existing(setting: str, path: str) -> str:
    if not Path(path).is_file():
        raise ValueError(f"setting {setting}: {path} does not exist or is not a file")
    return path


class RedisAuthenticationError(ConnectionError):
    """Redis refused the credentials (or wants some): the connection could not be made, and
    every caller treats it like any failed connection (reported, retried with backoff)."""


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """Where Redis is (TCP, or a unix socket) and how to connect: TLS, ACL user, password.

    From a URL: ``redis://[user:password@]host[:port][/db]``, ``rediss://`` for TLS, or
    ``unix://[user:password@]/path/to/redis.sock``.
    """

    host: str
    port: int
    unix_socket: str | None = None
    username: str | None = None
    password: str | None = None
    ssl_context: ssl.SSLContext | None = None

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> RedisAddress:
        """``username``/``password`` stand in for ones the URL lacks (a URL and a setting both
        giving one is an error); ``ssl_context`` defaults to the system's CAs for rediss://."""
        parts = urlsplit(url)
        if parts.scheme not in {"redis", "rediss", "unix"}:
            raise ValueError(
                f"setting redis_url: {_without_password(url)!r} must start with redis://, "
                "rediss:// or unix://"
            )
        url_username = unquote(parts.username) if parts.username else None
        url_password = unquote(parts.password) if parts.password else None
        if username and url_username:
            raise ValueError("set the Redis user in redis_url or in redis_username, not both")
        if password and url_password:
            raise ValueError(
                "set the Redis password in redis_url or in redis_password(_file), not both"
            )
        if parts.scheme == "unix" and not parts.path:
            raise ValueError("setting redis_url: a unix:// URL needs the socket's path")
        tls = parts.scheme == "rediss"
        if ssl_context is not None and not tls:
            raise ValueError(f"a TLS context needs a rediss:// URL, not {parts.scheme}://")
        try:
            port = parts.port or REDIS_DEFAULT_PORT
        except ValueError as exc:
            raise ValueError(f"setting redis_url: {exc}") from exc
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=port,
            unix_socket=parts.path if parts.scheme == "unix" else None,
            username=username or url_username,
            password=password or url_password,
            ssl_context=(ssl_context or ssl.create_default_context()) if tls else None,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisAddress:
        context = None
        if urlsplit(settings.redis_url).scheme == "rediss":
            context = tls_context(
                "redis",
                ca_file=settings.redis_ssl_ca_file,
                cert_file=settings.redis_ssl_cert_file,
                key_file=settings.redis_ssl_key_file,
                check_hostname=settings.redis_ssl_check_hostname,
            )
        elif given := [name for name in REDIS_TLS_FILES if getattr(settings, name)]:
            raise ValueError(f"setting {given[0]} needs a rediss:// redis_url")
        password = settings.redis_password
        if settings.redis_password_file:
            password = read_secret("redis_password_file", settings.redis_password_file)
        return cls.from_url(
            settings.redis_url,
            username=settings.redis_username or None,
            password=password or None,
            ssl_context=context,
        )

    @property
    def location(self) -> str:
        """Where Redis is, for messages (never the password)."""
        if self.unix_socket is not None:
            return f"unix:{self.unix_socket}"
        return f"{self.host}:{self.port}"

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect, authenticate, and see Redis answer; the caller bounds the time this may
        take. Whatever goes wrong raises a ``ConnectionError`` (an ``OSError``).

        Redis answers AUTH, or PING without a password, before the connection is handed
        out: a TLS server refuses a missing client certificate only after the handshake,
        and a server that wants a password says so only on the first command, and both
        should fail here, as a failed connection, not later as a lost one."""
        if self.unix_socket is not None:
            reader, writer = await asyncio.open_unix_connection(self.unix_socket)
        else:
            reader, writer = await asyncio.open_connection(
                self.host, self.port, ssl=self.ssl_context
            )
        user = self.username or "default"
        try:
            if self.password is not None:
                login = (self.username,) if self.username else ()
                writer.write(encode_command("AUTH", *login, self.password))
            else:
                writer.write(encode_command("PING"))
            await read_reply(reader)
        except RespError as exc:
            writer.close()
            raise RedisAuthenticationError(
                f"Redis at {self.location} refused the connection as {user}: {exc}"
            ) from exc
        except asyncio.IncompleteReadError as exc:
            writer.close()
            raise ConnectionError(
                f"Redis at {self.location} closed the connection while it was being set up"
            ) from exc
        except BaseException:
            writer.close()
            raise
        return reader, writer


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()
