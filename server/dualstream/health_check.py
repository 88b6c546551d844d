"""``dualstream health``: ask a running sidecar whether it can publish, and say so in one line.

Independent checks, each optional: gRPC health on the API target (``grpc.health.v1``, TCP
or a unix socket), on the delivery process's target if there is one, and the admin
listener's ``/readyz``. The sidecar is healthy when every
check that ran says so. The gRPC check lives in ``transport.health_check``; this module holds
the verdicts and the HTTP check, so the core stays free of gRPC.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from dualstream.probes import READINESS_PATH
from dualstream.settings import Settings, split_host_port
from dualstream.text import one_line

# An address a server listens on everywhere is reached from inside the host on loopback.
_WILDCARD_HOSTS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}
_MAX_ANSWER_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Verdict:
    """One check's outcome: healthy or not, and a short phrase saying what was seen."""

    healthy: bool
    text: str


def summary(verdicts: Sequence[Verdict]) -> str:
    state = "healthy" if all(v.healthy for v in verdicts) else "unhealthy"
    return f"{state}: " + "; ".join(v.text for v in verdicts)


def reachable_address(listen: str) -> str:
    """Where a client on this host reaches a sidecar listening on ``listen``."""
    if listen.startswith("unix:"):
        return listen
    host, port = split_host_port(listen)
    host = _WILDCARD_HOSTS.get(host, host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def default_targets(settings: Settings) -> tuple[str, str]:
    """The API target and admin address the health command checks when not told otherwise:
    those of the sidecar the same settings configure. With TLS on the API the gRPC check is
    left out, as the command has no trust configuration for it; the admin check remains."""
    admin = reachable_address(settings.admin_listen) if settings.admin_listen else ""
    return _grpc_target(settings, settings.listen), admin


def default_streams_target(settings: Settings) -> str:
    """The delivery process's address (``subscribe_listen``) that the health command checks
    too, when the settings start one; as with the API, not over TLS."""
    return _grpc_target(settings, settings.subscribe_listen)


def _grpc_target(settings: Settings, listen: str) -> str:
    return "" if settings.tls_cert_file or not listen else reachable_address(listen)


async def check_readyz(address: str, timeout: float) -> Verdict:
    """GET /readyz on the admin listener: healthy on 200, with the sidecar's own line."""
    label = f"admin {address}"
    try:
        host, port = split_host_port(address)
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                request = f"GET {READINESS_PATH} HTTP/1.1\r\nHost: {address}\r\n\r\n"
                writer.write(request.encode())
                await writer.drain()
                # The listener closes after its one answer, so EOF ends it.
                answer = b""
                while len(answer) < _MAX_ANSWER_BYTES and (chunk := await reader.read(4096)):
                    answer += chunk
            finally:
                writer.close()
    except TimeoutError:
        return Verdict(False, f"{label} did not answer within {timeout:g}s")
    except (OSError, ValueError) as exc:
        return Verdict(False, f"{label} unreachable: {one_line(str(exc))}")
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        return Verdict(False, f"{label} answered something that is not HTTP")
    text = one_line(body.decode(errors="replace")) or status_line
    return Verdict(parts[1] == "200", f"{label} {text}")
