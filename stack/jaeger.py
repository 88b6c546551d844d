"""A real Jaeger v2 on loopback: built once from its Go module, run with a config of its own.

``ensure_jaeger()`` builds ``jaeger`` into ``$DUALSTREAM_CACHE/jaeger-<version>/`` (default
``~/.cache/dualstream``) the first time it is called and returns the binary's path; later calls
are free, and a lock file makes concurrent callers (parallel test workers, ``make`` beside a
test run) build it once. Plain ``go install`` refuses the module (its ``go.mod`` has a
``replace`` directive), so the build goes through a throwaway module that declares Jaeger as a
tool. The Go module and build caches of that build live in a scratch directory next to the
binary and are removed afterwards: only the binary (about 120 MB) stays.

``JaegerServer`` runs it with memory storage, OTLP gRPC on one port and the query HTTP API on
another; a test fixture looks like this::

    @pytest.fixture(scope="session")
    def jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JaegerServer]:
        otlp_port, query_port = free_ports(2)
        with JaegerServer(tmp_path_factory.mktemp("jaeger"), otlp_port, query_port) as server:
            yield server  # server.otlp_endpoint, server.query_url
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stack.localstack import (
    LOOPBACK,
    REPO_ROOT,
    ManagedProcess,
    StackError,
    _require_executable,
    cache_dir,
    port_open,
)

# v1.76.0 of the Go module is the Jaeger v2.13 release.
JAEGER_VERSION = "1.76.0"
JAEGER_MODULE = "github.com/jaegertracing/jaeger"
JAEGER_COMMAND = f"{JAEGER_MODULE}/cmd/jaeger"


def jaeger_home(version: str = JAEGER_VERSION) -> Path:
    return cache_dir() / f"jaeger-{version}"


def ensure_jaeger(version: str = JAEGER_VERSION) -> Path:
    """The path of the ``jaeger`` binary, built from source the first time (minutes); if
    another process is building it, this waits for that build."""
    home = jaeger_home(version)
    binary = home / "jaeger"
    complete_marker = home / "complete"
    if complete_marker.exists():
        return binary
    home.mkdir(parents=True, exist_ok=True)
    with (home / ".lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(
                f"waiting for the Jaeger build another process runs (log: {home / 'build.log'})",
                file=sys.stderr,
                flush=True,
            )
            fcntl.flock(lock, fcntl.LOCK_EX)
        if complete_marker.exists():  # Another process built it while we waited for the lock.
            return binary
        go = _require_executable("go", "Jaeger is built from source with Go 1.24+")
        print(
            f"building Jaeger {version} ({JAEGER_COMMAND}) into {home}: a one-time build "
            "(8 to 25 minutes on 2 cores, idle to busy) ...",
            file=sys.stderr,
            flush=True,
        )
        began = time.monotonic()
        scratch = home / "build"
        _remove_tree(scratch)
        module = scratch / "module"
        module.mkdir(parents=True)
        environment = {
            **os.environ,
            # Private caches, so the build neither depends on nor fills the user's; the module
            # cache is made writable so that it can be deleted afterwards.
            "GOPATH": str(scratch / "gopath"),
            "GOMODCACHE": str(scratch / "gopath" / "pkg" / "mod"),
            "GOCACHE": str(scratch / "gocache"),
            "GOFLAGS": "-modcacherw",
            "GOTOOLCHAIN": "local",
            "CGO_ENABLED": "0",
        }
        partial = home / "jaeger.partial"
        steps = [
            [go, "mod", "init", "dualstream.local/jaegerbuild"],
            [go, "get", "-tool", f"{JAEGER_COMMAND}@v{version}"],
            [go, "build", "-trimpath", "-ldflags=-s -w", "-o", str(partial), JAEGER_COMMAND],
        ]
        try:
            for step in steps:
                result = subprocess.run(
                    step, cwd=module, env=environment, capture_output=True, text=True, check=False
                )
                if result.returncode != 0:
                    raise StackError(
                        f"building Jaeger {version} failed at `{' '.join(step[1:3])}` "
                        f"(exit {result.returncode}):\n{result.stdout}{result.stderr}"
                    )
            partial.rename(binary)
            complete_marker.write_text(f"{version}\n")
        finally:
            _remove_tree(scratch)
            partial.unlink(missing_ok=True)
        print(
            f"built Jaeger {version} in {time.monotonic() - began:.0f}s: {binary}",
            file=sys.stderr,
            flush=True,
        )
    return binary


def start_jaeger_build(version: str = JAEGER_VERSION) -> None:
    """Build Jaeger in a process of its own, in the background, unless it is built; whoever
    needs the binary later (``ensure_jaeger``) waits for that build. ``make test`` starts it
    first, so the build (the longest step on a fresh machine) overlaps the rest of the suite."""
    home = jaeger_home(version)
    if (home / "complete").exists():
        print(f"Jaeger {version}: {home / 'jaeger'}")
        return
    _require_executable("go", "Jaeger is built from source with Go 1.24+")
    home.mkdir(parents=True, exist_ok=True)
    with (home / "build.log").open("ab") as log:
        subprocess.Popen(
            [sys.executable, "-m", "stack.jaeger", "build"],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own session: a Ctrl-C on make does not leave a half-built binary behind it
            # (the build writes the binary under another name and renames it when complete).
            start_new_session=True,
        )
    print(f"building Jaeger {version} in the background (log: {home / 'build.log'})")


def _remove_tree(path: Path) -> None:
    """Remove the build's scratch directory (gigabytes of Go caches, a hundred thousand files):
    ``rm -rf`` does it several times faster than ``shutil.rmtree``. The module cache is written
    with -modcacherw, so nothing in it is read-only."""
    if path.exists():
        subprocess.run(["rm", "-rf", "--", str(path)], check=False)
        shutil.rmtree(path, ignore_errors=True)  # Whatever rm could not remove, if anything.


# ---- the server -----------------------------------------------------------------------------


class JaegerServer(ManagedProcess):
    """Jaeger v2 with in-memory storage: OTLP gRPC on ``otlp_port`` (and OTLP/HTTP on
    ``otlp_http_port`` if given), the query API (HTTP) on ``query_port``. Jaeger's own
    telemetry is off: traced, it exports spans about itself and hangs on SIGTERM; its metrics
    endpoint would take a fixed port."""

    name = "jaeger"
    stop_grace = 10.0

    def __init__(
        self,
        workdir: Path,
        otlp_port: int = 4317,
        query_port: int = 16686,
        *,
        otlp_http_port: int | None = None,
        max_traces: int = 100_000,
        log_dir: Path | None = None,
        detach: bool = False,
    ) -> None:
        super().__init__(workdir, log_dir=log_dir, detach=detach)
        self.otlp_port = otlp_port
        self.otlp_http_port = otlp_http_port
        self.query_port = query_port
        self.max_traces = max_traces

    @property
    def otlp_endpoint(self) -> str:
        """What ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set to for an exporter to reach it."""
        return f"http://{LOOPBACK}:{self.otlp_port}"

    @property
    def otlp_http_endpoint(self) -> str:
        """The same for ``OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`` (needs ``otlp_http_port``)."""
        if self.otlp_http_port is None:
            raise StackError("this Jaeger was started without an OTLP/HTTP port")
        return f"http://{LOOPBACK}:{self.otlp_http_port}"

    @property
    def query_url(self) -> str:
        return f"http://{LOOPBACK}:{self.query_port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "jaeger.yaml"

    def config(self) -> dict[str, Any]:
        """The collector-style configuration (written as JSON, which YAML parsers read)."""
        protocols: dict[str, Any] = {"grpc": {"endpoint": f"{LOOPBACK}:{self.otlp_port}"}}
        if self.otlp_http_port is not None:
            protocols["http"] = {"endpoint": f"{LOOPBACK}:{self.otlp_http_port}"}
        return {
            "service": {
                "extensions": ["jaeger_storage", "jaeger_query"],
                "pipelines": {
                    "traces": {
                        "receivers": ["otlp"],
                        "processors": ["batch"],
                        "exporters": ["jaeger_storage_exporter"],
                    }
                },
                "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "warn"}},
            },
            "extensions": {
                "jaeger_storage": {
                    "backends": {"memory_store": {"memory": {"max_traces": self.max_traces}}}
                },
                "jaeger_query": {
                    "storage": {"traces": "memory_store"},
                    "enable_tracing": False,
                    "http": {"endpoint": f"{LOOPBACK}:{self.query_port}"},
                    # Unused here, but always served: an ephemeral port never collides.
                    "grpc": {"endpoint": f"{LOOPBACK}:0"},
                },
            },
            "receivers": {"otlp": {"protocols": protocols}},
            # A short timeout: spans are visible to the query API about as soon as they arrive.
            "processors": {"batch": {"timeout": "200ms"}},
            "exporters": {"jaeger_storage_exporter": {"trace_storage": "memory_store"}},
        }

    def _ports(self) -> list[int]:
        http = [] if self.otlp_http_port is None else [self.otlp_http_port]
        return [self.otlp_port, self.query_port, *http]

    def _prepare(self) -> None:
        self.config_path.write_text(json.dumps(self.config(), indent=2) + "\n")

    def _command(self) -> list[str]:
        return [str(ensure_jaeger()), "--config", str(self.config_path)]

    def _is_ready(self) -> bool:
        if not port_open(self.otlp_port):
            return False
        with contextlib.suppress(OSError, ValueError):
            return _get_json(f"{self.query_url}/api/v3/services", timeout=1.0) is not None
        return False


# ---- reading traces back --------------------------------------------------------------------

SPAN_KINDS = {
    0: "UNSPECIFIED",
    1: "INTERNAL",
    2: "SERVER",
    3: "CLIENT",
    4: "PRODUCER",
    5: "CONSUMER",
}


@dataclass(frozen=True, slots=True)
class TraceSpan:
    """One span of a trace as Jaeger's query API returns it (ids in lower-case hex)."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    service: str
    start_ns: int
    end_ns: int
    attributes: Mapping[str, Any]
    links: tuple[tuple[str, str], ...]  # (trace id, span id)

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


def _get_json(url: str, timeout: float = 10.0) -> Any:
    """The decoded JSON body of a GET, or None on 404."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def _hex_id(value: str) -> str:
    # OTLP/JSON writes ids in hex; some gateways write protobuf's base64 instead.
    if len(value) in (16, 32) and all(c in "0123456789abcdefABCDEF" for c in value):
        return value.lower()
    return base64.b64decode(value).hex() if value else ""


def _kind_name(kind: int | str) -> str:
    # OTLP/JSON writes the enum as a number; protobuf's JSON mapping writes its name.
    if isinstance(kind, int):
        return SPAN_KINDS.get(kind, str(kind))
    return kind.removeprefix("SPAN_KIND_")


def _attribute_value(value: Mapping[str, Any]) -> Any:
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in value:
            return value[key]
    if "intValue" in value:
        return int(value["intValue"])
    if "arrayValue" in value:
        return [_attribute_value(v) for v in value["arrayValue"].get("values", [])]
    return None


def _attributes(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {item["key"]: _attribute_value(item.get("value", {})) for item in items}


def _spans_of(body: Mapping[str, Any]) -> list[TraceSpan]:
    spans: list[TraceSpan] = []
    for resource_spans in body.get("result", body).get("resourceSpans", []):
        resource = _attributes(resource_spans.get("resource", {}).get("attributes", []))
        service = str(resource.get("service.name", ""))
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                spans.append(
                    TraceSpan(
                        trace_id=_hex_id(span["traceId"]),
                        span_id=_hex_id(span["spanId"]),
                        parent_span_id=_hex_id(span.get("parentSpanId", "")),
                        name=span.get("name", ""),
                        kind=_kind_name(span.get("kind", 0)),
                        service=service,
                        start_ns=int(span.get("startTimeUnixNano", 0)),
                        end_ns=int(span.get("endTimeUnixNano", 0)),
                        attributes=_attributes(span.get("attributes", [])),
                        links=tuple(
                            (_hex_id(link["traceId"]), _hex_id(link["spanId"]))
                            for link in span.get("links", [])
                        ),
                    )
                )
    return spans


def get_trace(query_url: str, trace_id: str) -> list[TraceSpan]:
    """Every span Jaeger holds for ``trace_id`` (32 hex digits); empty if it has none yet."""
    body = _get_json(f"{query_url}/api/v3/traces/{trace_id}")
    return _spans_of(body) if body is not None else []


def find_trace_ids(
    query_url: str, service: str, since_ns: int, *, operation: str = "", limit: int = 20
) -> list[str]:
    """Ids of traces with a span of ``service`` (and ``operation``) started after ``since_ns``,
    newest first."""
    now_ns = time.time_ns() + 60 * 10**9
    query = {
        "query.service_name": service,
        "query.start_time_min": _rfc3339(since_ns),
        "query.start_time_max": _rfc3339(now_ns),
        "query.num_traces": str(limit),
    }
    if operation:
        query["query.operation_name"] = operation
    body = _get_json(f"{query_url}/api/v3/traces?{urllib.parse.urlencode(query)}")
    if body is None:
        return []
    spans = _spans_of(body)
    started: dict[str, int] = {}
    for span in spans:
        started[span.trace_id] = min(started.get(span.trace_id, span.start_ns), span.start_ns)
    return sorted(started, key=started.__getitem__, reverse=True)


def _rfc3339(unix_ns: int) -> str:
    seconds, nanos = divmod(unix_ns, 10**9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


def format_tree(spans: Sequence[TraceSpan]) -> str:
    """The spans as an indented tree, each line: service, span name, kind, duration."""
    by_id = {span.span_id: span for span in spans}
    children: dict[str, list[TraceSpan]] = {}
    roots: list[TraceSpan] = []
    for span in spans:
        if span.parent_span_id and span.parent_span_id in by_id:
            children.setdefault(span.parent_span_id, []).append(span)
        else:
            roots.append(span)
    lines: list[str] = []

    def walk(span: TraceSpan, depth: int) -> None:
        lines.append(
            f"{'  ' * depth}{span.service}: {span.name} [{span.kind}] {span.duration_ms:.2f} ms"
        )
        for child in sorted(children.get(span.span_id, []), key=lambda s: s.start_ns):
            walk(child, depth + 1)

    for root in sorted(roots, key=lambda s: s.start_ns):
        walk(root, 0)
    return "\n".join(lines)


def wait_for_trace(
    query_url: str,
    service: str,
    since_ns: int,
    *,
    operation: str = "",
    min_spans: int = 1,
    timeout: float = 60.0,
) -> list[TraceSpan]:
    """The newest trace of ``service`` since ``since_ns`` once it has ``min_spans`` spans.

    Exporters send spans in batches on their own schedule, so a trace fills up over a few
    seconds; this polls until it is complete enough or ``timeout`` passes (then raises)."""
    deadline = time.monotonic() + timeout
    spans: list[TraceSpan] = []
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            trace_ids = find_trace_ids(query_url, service, since_ns, operation=operation)
            if trace_ids:
                spans = get_trace(query_url, trace_ids[0])
                if len(spans) >= min_spans:
                    return spans
        time.sleep(0.5)
    raise StackError(
        f"no trace of {service} {operation} with {min_spans} spans in Jaeger at {query_url} "
        f"after {timeout:g}s (the newest had {len(spans)})"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m stack.jaeger", description="Build Jaeger, or print a trace it holds."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help=f"build Jaeger {JAEGER_VERSION} into the cache, once")
    build.add_argument(
        "--background",
        action="store_true",
        help="start the build in a process of its own and return (a later build waits for it)",
    )
    show = commands.add_parser("show", help="print the newest trace of a service as a tree")
    show.add_argument("--query-url", default=f"http://{LOOPBACK}:16686")
    show.add_argument("--ui-url", default="", help="a Jaeger UI to link to (default: query-url)")
    show.add_argument("--service", default="dualstream")
    show.add_argument("--operation", default="")
    show.add_argument("--since-ns", type=int, default=0, help="only traces started after this")
    show.add_argument("--min-spans", type=int, default=1)
    show.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    try:
        if args.command == "build" and args.background:
            start_jaeger_build()
            return
        if args.command == "build":
            print(f"Jaeger {JAEGER_VERSION}: {ensure_jaeger()}")
            return
        spans = wait_for_trace(
            args.query_url,
            args.service,
            args.since_ns,
            operation=args.operation,
            min_spans=args.min_spans,
            timeout=args.timeout,
        )
    except StackError as exc:
        sys.exit(f"jaeger: {exc}")
    print(f"trace {spans[0].trace_id} ({len(spans)} spans): service: span [kind] duration")
    print(format_tree(spans))
    ui = args.ui_url or args.query_url
    print(f"in a Jaeger UI: {ui}/trace/{spans[0].trace_id}")
    if not args.ui_url:
        print(
            "  (this Jaeger is built from its Go module, without the UI's assets: run a Jaeger "
            "UI against it, or read the trace as JSON at "
            f"{args.query_url}/api/v3/traces/{spans[0].trace_id})"
        )


if __name__ == "__main__":
    main()
