"""Real Apache Kafka (KRaft, run with ``java``) and Redis (Debian's ``redis-server``) on loopback.

The same classes serve ``make up/down/status`` (the CLI at the bottom, ``python -m
stack.localstack``) and the pytest fixtures. A session fixture looks like this::

    @pytest.fixture(scope="session")
    def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
        port, controller_port = free_ports(2)
        with KafkaBroker(tmp_path_factory.mktemp("kafka"), port, controller_port) as broker:
            create_topic(broker.bootstrap, "events", partitions=6)
            yield broker  # broker.bootstrap == "127.0.0.1:<port>"

    @pytest.fixture(scope="session")
    def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
        with RedisServer(tmp_path_factory.mktemp("redis"), port=free_port()) as server:
            yield server  # server.url == "redis://127.0.0.1:<port>/0"

``start()`` (and entering the ``with``) returns only once the server answers clients;
leaving it stops the process and reaps it, and servers still running when Python exits are
killed then. Fault-injection tests call ``kill()`` (SIGKILL), ``pause()``/``resume()``
(SIGSTOP/SIGCONT) and ``restart()`` (same ports, same data). ``KafkaCluster(workdir, size=3)``
runs three combined broker+controller nodes for replication tests. Everything here imports
only the standard library; aiokafka is imported lazily by the functions that talk to Kafka.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import contextlib
import fcntl
import os
import random
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self, TypeVar

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_VERSION = "4.1.1"
LOOPBACK = "127.0.0.1"
# Generous: a server that needs this long is slow, not broken, on a loaded 2-core machine
# (a JVM broker has been seen to take 45 s there); a real failure shows as an exit long before.
START_TIMEOUT = 240.0
# How long a process may take to die after SIGKILL before we call it a bug.
KILL_TIMEOUT = 10.0
REDIS_SERVER = "/usr/bin/redis-server"

T = TypeVar("T")


class StackError(RuntimeError):
    """A part of the stack could not be fetched, started or stopped; the message says why."""


# ---- prerequisites --------------------------------------------------------------------------


def cache_dir() -> Path:
    return Path(os.environ.get("DUALSTREAM_CACHE") or Path.home() / ".cache" / "dualstream")


def _require_executable(name: str, install_hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise StackError(f"{name} is not on PATH: {install_hint}")
    return path


def java_executable() -> str:
    """``$JAVA_HOME/bin/java`` when JAVA_HOME is set, else ``java`` from PATH."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    return _require_executable(
        "java", "Kafka needs Java 17+ (apt-get install openjdk-17-jre-headless)"
    )


def ensure_kafka_jars(version: str = KAFKA_VERSION) -> Path:
    """The directory holding Apache Kafka's jars and their dependencies, fetched once.

    Maven resolves ``stack/kafka/pom.xml`` into ``$DUALSTREAM_CACHE/kafka-<version>/libs``
    (default ``~/.cache/dualstream``). A marker file written after a complete copy makes later
    calls free; a lock file keeps concurrent callers (parallel test workers) from fetching twice.
    """
    home = cache_dir() / f"kafka-{version}"
    libs = home / "libs"
    complete_marker = home / "complete"
    java_executable()  # Fail early and clearly: the jars are useless without Java.
    if complete_marker.exists():
        return libs
    home.mkdir(parents=True, exist_ok=True)
    with (home / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if complete_marker.exists():  # Another process fetched while we waited for the lock.
            return libs
        mvn = _require_executable(
            "mvn", "Kafka's jars are fetched with Maven (apt-get install maven)"
        )
        print(
            f"fetching Apache Kafka {version} (server, tools, log4j2) from Maven Central "
            f"into {libs} ...",
            file=sys.stderr,
            flush=True,
        )
        # Copy into a scratch directory and rename it, so `libs` is never half-filled.
        partial = home / "libs.partial"
        shutil.rmtree(partial, ignore_errors=True)
        command = [
            mvn, "-q", "-B", "-f", str(REPO_ROOT / "stack" / "kafka" / "pom.xml"),
            "dependency:copy-dependencies", f"-Dkafka.version={version}",
            f"-DoutputDirectory={partial}", "-DincludeScope=runtime",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not any(partial.glob("kafka_*.jar")):
            raise StackError(
                f"Maven could not fetch Kafka {version} (exit {result.returncode}):\n"
                f"{result.stdout}{result.stderr}"
            )
        shutil.rmtree(libs, ignore_errors=True)
        partial.rename(libs)
        complete_marker.write_text(f"{version}\n")
        jar_count = len(list(libs.glob("*.jar")))
        print(f"fetched {jar_count} jars for Kafka {version}", file=sys.stderr, flush=True)
    return libs


# ---- ports ----------------------------------------------------------------------------------


# Servers get ports below the kernel's ephemeral range: a port the kernel hands out for port 0
# can be handed again to any outgoing connection (a client of the very broker being started)
# between the moment it is chosen and the moment the server binds it, which under load happens.
_FIRST_SERVER_PORT = 15000
_handed_out: set[int] = set()


def _ephemeral_range_start() -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    return 32768


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that nothing listens on right now, chosen at random
    below the ephemeral range and never twice by this process.

    All probe sockets stay open until every port is chosen. Another process of ours may still
    pick the same port before our server binds it: one chance in thousands per pick.
    """
    candidates = list(range(_FIRST_SERVER_PORT, _ephemeral_range_start()))
    random.shuffle(candidates)
    with contextlib.ExitStack() as probes:
        ports: list[int] = []
        for port in candidates:
            if port in _handed_out:
                continue
            probe = probes.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            try:
                probe.bind((LOOPBACK, port))
            except OSError:
                continue
            ports.append(port)
            _handed_out.add(port)
            if len(ports) == count:
                return ports
    raise StackError(f"no {count} free ports between {_FIRST_SERVER_PORT} and the ephemeral range")


def free_port() -> int:
    return free_ports(1)[0]


def port_open(port: int, host: str = LOOPBACK) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


TCP_LISTEN = "0A"
TCP_ESTABLISHED = "01"


def tcp_socket_inodes(port: int, state: str) -> set[str]:
    """Inodes of the TCP sockets whose local port is ``port``, in ``state`` (as
    ``/proc/net/tcp`` writes it: ``TCP_LISTEN``, ``TCP_ESTABLISHED``); gRPC's sockets are
    dual-stack, so both tables are read."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
                inodes.add(fields[9])
    return inodes


def process_socket_inodes(pid: int) -> set[str]:
    """Inodes of the sockets process ``pid`` holds open (empty once it is gone)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def _tail(path: Path, lines: int = 40) -> str:
    try:
        with path.open("rb") as log:
            # Kafka's log can grow to many megabytes; its last lines are all we show.
            log.seek(max(0, log.seek(0, os.SEEK_END) - 64 * 1024))
            text = log.read().decode(errors="replace")
    except OSError:
        return f"  ({path} does not exist)"
    return "\n".join(f"  {line}" for line in text.splitlines()[-lines:]) or f"  ({path} is empty)"


def _run_async(make_coroutine: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from synchronous code, even inside a running event loop.

    ``asyncio.run`` refuses to nest, and fixtures or tests may call the synchronous helpers
    from async code; then the coroutine gets a private loop on a worker thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make_coroutine())
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="localstack") as worker:
        return worker.submit(lambda: asyncio.run(make_coroutine())).result()


# ---- processes ------------------------------------------------------------------------------


class _StartedInWith:
    """``with part:`` starts the part and stops it, whatever happens inside."""

    def start(self, timeout: float = START_TIMEOUT) -> None:
        raise NotImplementedError

    def stop(self, grace: float | None = None) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class ProcessControl:
    """Signals and the stop policy, shared by processes we spawned and ones found by pid file."""

    name: str = "process"
    # How long SIGTERM gets before SIGKILL.
    stop_grace: float = 20.0

    @property
    def pid(self) -> int | None:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        raise NotImplementedError

    def _send_signal(self, signum: signal.Signals) -> None:
        raise NotImplementedError

    def _wait_for_exit(self, timeout: float) -> bool:
        """Wait until the process is gone (and reaped, if it is our child); False on timeout."""
        raise NotImplementedError

    def request_stop(self) -> None:
        """Send SIGTERM without waiting, so that several processes can shut down together."""
        if self.running:
            self._send_signal(signal.SIGTERM)
            # A paused (SIGSTOPped) process would hold SIGTERM pending forever.
            self._send_signal(signal.SIGCONT)

    def wait_stopped(self, grace: float | None = None) -> None:
        """Wait for the exit that ``request_stop`` asked for; SIGKILL after ``grace`` seconds."""
        if self._wait_for_exit(self.stop_grace if grace is None else grace):
            return
        self._send_signal(signal.SIGKILL)
        if not self._wait_for_exit(KILL_TIMEOUT):
            raise StackError(f"{self.name} (pid {self.pid}) survived SIGKILL")

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM, wait up to ``grace`` seconds (default ``stop_grace``), then SIGKILL."""
        self.request_stop()
        self.wait_stopped(grace)

    def kill(self) -> None:
        """SIGKILL and wait until the process is gone: a crash, with no chance to clean up."""
        if self.running:
            self._send_signal(signal.SIGKILL)
        self.wait_stopped(KILL_TIMEOUT)

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets open, so clients connect but get no answer."""
        self._require_running("pause")
        self._send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after ``pause``."""
        self._require_running("resume")
        self._send_signal(signal.SIGCONT)

    def _require_running(self, action: str) -> None:
        if not self.running:
            raise StackError(f"cannot {action} {self.name}: it is not running")


# Servers spawned without ``detach``, until they are reaped. A script or test run that ends
# without stopping them (an exception, a forgotten stop) must not leave them running.
_attached_children: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_attached_children() -> None:
    for child in list(_attached_children):
        with contextlib.suppress(OSError):
            child.kill()
            child.wait()
    _attached_children.clear()


class ManagedProcess(ProcessControl, _StartedInWith):
    """A server process spawned by this module: started, made ready, signalled and reaped.

    Subclasses say how to run the server (``_command``), what to do first (``_prepare``), which
    ports it binds (``_ports``) and when it is ready (``_is_ready``). The process writes
    stdout and stderr to ``output_path``; servers with their own log file also set ``log_path``.
    """

    output_suffix: ClassVar[str] = ".out"

    def __init__(self, workdir: Path, *, log_dir: Path | None = None, detach: bool = False) -> None:
        """``detach``: run in a session of its own, so that a Ctrl-C in the terminal that
        started it does not reach it and it outlives its parent (the dev stack wants that).
        Tests leave it False: a Ctrl-C on pytest then also stops the servers it started."""
        self.workdir = Path(workdir).resolve()
        self.log_dir = Path(log_dir).resolve() if log_dir is not None else self.workdir
        self.detach_on_start = detach
        self._process: subprocess.Popen[bytes] | None = None

    # -- what subclasses define

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Called before every launch: write config files, format storage."""

    def _ports(self) -> list[int]:
        """Ports the server binds; a launch refuses to start if something already listens."""
        return []

    def _is_ready(self) -> bool:
        raise NotImplementedError

    def _environment(self) -> dict[str, str] | None:
        """The process's environment; None inherits ours."""
        return None

    # -- files

    @property
    def output_path(self) -> Path:
        """Where the process's stdout and stderr go."""
        return self.log_dir / f"{self.name}{self.output_suffix}"

    @property
    def log_path(self) -> Path:
        """The server's main log (its stdout, unless the server writes a log file itself)."""
        return self.output_path

    def describe_logs(self) -> str:
        paths = dict.fromkeys([self.log_path, self.output_path])  # Ordered, without duplicates.
        return "\n".join(f"last lines of {path}:\n{_tail(path)}" for path in paths)

    # -- ProcessControl

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        # poll() also reaps a child that died on its own, so it never lingers as a zombie.
        return self._process is not None and self._process.poll() is None

    def _send_signal(self, signum: signal.Signals) -> None:
        if self._process is not None:
            self._process.send_signal(signum)  # A no-op once the child has been reaped.

    def _wait_for_exit(self, timeout: float) -> bool:
        if self._process is None:
            return True
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        _attached_children.discard(self._process)
        return True

    def wait_exit(self, timeout: float) -> int | None:
        """Wait for the process to exit by itself; its exit code, or None if it still runs."""
        if self._process is None or not self._wait_for_exit(timeout):
            return None
        return self._process.returncode

    # -- lifecycle

    def launch(self) -> None:
        """Spawn the process without waiting for it to be ready (a no-op if it runs)."""
        if self.running:
            return
        busy = [port for port in self._ports() if port_open(port)]
        if busy:
            raise StackError(
                f"cannot start {self.name}: something already listens on "
                + ", ".join(f"{LOOPBACK}:{port}" for port in busy)
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._prepare()
        command = self._command()
        with self.output_path.open("ab") as output:
            output.write(
                f"\n=== {time.strftime('%F %T')} starting: {shlex.join(command)}\n".encode()
            )
            output.flush()
            # The child inherits its own copy of the descriptor; ours closes with the `with`.
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=self._environment(),
                start_new_session=self.detach_on_start,
            )
        if not self.detach_on_start:
            _attached_children.add(self._process)

    def wait_until_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Return once the server answers; raise, with its logs, if it exits or times out."""
        process = self._process
        if process is None:
            raise StackError(f"{self.name} was never launched")
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise StackError(
                    f"{self.name} exited with code {process.returncode} while starting\n"
                    + self.describe_logs()
                )
            if self._is_ready():
                return
            if time.monotonic() > deadline:
                raise StackError(
                    f"{self.name} was not ready after {timeout:g}s\n" + self.describe_logs()
                )
            time.sleep(0.1)

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Spawn the process and return once it is ready for clients.

        If it does not get ready (or this is interrupted) it is killed: a failed start leaves
        no process behind.
        """
        self.launch()
        try:
            self.wait_until_ready(timeout)
        except BaseException:
            self.kill()
            raise

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        """Stop (or reap, after a kill) and start again: same ports, same data directory."""
        self.stop()
        self.start(timeout)

    def release(self) -> int:
        """Forget the running process without stopping it, returning its pid (for pid files).

        The process must have been started with ``detach=True`` to outlive this Python process.
        """
        pid = self.pid
        if pid is None or not self.running:
            raise StackError(f"{self.name} is not running")
        self._process = None
        return pid


class _LogWatcher:
    """Finds a line written to a log file after a given moment, reading only the new bytes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = path.stat().st_size if path.exists() else 0
        self._pending = b""

    def seen(self, text: str) -> bool:
        needle = text.encode()
        with contextlib.suppress(FileNotFoundError), self.path.open("rb") as log:
            log.seek(self._offset)
            chunk = log.read()
            self._offset += len(chunk)
            # Keep the unfinished last line so a needle split across two reads is still found.
            lines = (self._pending + chunk).split(b"\n")
            self._pending = lines.pop()
            return any(needle in line for line in lines)
        return False


# ---- Redis ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RedisTls:
    """PEM files for a Redis that speaks only TLS: its certificate and key, the CA that signs
    client certificates (``tls-auth-clients yes``), and a client certificate and key that the
    readiness probe presents."""

    cert_file: Path
    key_file: Path
    ca_file: Path
    client_cert_file: Path
    client_key_file: Path

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        # The probe asks whether the server answers, not whether its certificate names
        # 127.0.0.1: tests of hostname checking serve certificates for other names.
        context.check_hostname = False
        context.load_cert_chain(str(self.client_cert_file), str(self.client_key_file))
        return context


class RedisServer(ManagedProcess):
    """Debian's ``redis-server`` on ``127.0.0.1:port``, without persistence.

    Options for secured set-ups: ``tls`` serves TLS only on ``port`` (``port 0`` for plain
    TCP) and requires client certificates; ``unix_socket`` listens on that socket too (with
    ``port=0``, only there); ``acl_users`` (name: password) adds users allowed every command
    and channel and turns the passwordless ``default`` user off.
    """

    name = "redis"
    stop_grace = 10.0

    def __init__(
        self,
        workdir: Path,
        port: int = 6379,
        *,
        tls: RedisTls | None = None,
        unix_socket: Path | None = None,
        acl_users: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
        detach: bool = False,
    ) -> None:
        super().__init__(workdir, log_dir=log_dir, detach=detach)
        if not port and unix_socket is None:
            raise ValueError("a Redis with port 0 needs a unix socket")
        self.port = port
        self.tls = tls
        self.unix_socket = unix_socket
        self.acl_users = dict(acl_users or {})

    @property
    def url(self) -> str:
        """Where clients connect (TLS if ``tls``, else TCP if ``port``, else the socket),
        without credentials."""
        if not self.port and self.unix_socket is not None:
            return f"unix://{self.unix_socket}"
        return f"{'rediss' if self.tls else 'redis'}://{LOOPBACK}:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.log_dir / "redis.log"

    def _ports(self) -> list[int]:
        return [self.port] if self.port else []

    def _command(self) -> list[str]:
        if not Path(REDIS_SERVER).is_file():
            raise StackError(
                f"{REDIS_SERVER} is missing: install Debian's redis-server "
                "(apt-get install redis-server), or run scripts/install-system-deps.sh"
            )
        listen = ["--port", str(self.port)]
        if self.tls is not None:
            listen = [
                "--port", "0", "--tls-port", str(self.port),
                "--tls-cert-file", str(self.tls.cert_file),
                "--tls-key-file", str(self.tls.key_file),
                "--tls-ca-cert-file", str(self.tls.ca_file), "--tls-auth-clients", "yes",
            ]  # fmt: skip
        if self.unix_socket is not None:
            listen += ["--unixsocket", str(self.unix_socket), "--unixsocketperm", "700"]
        users: list[str] = []
        for name, password in self.acl_users.items():
            users += ["--user", name, "on", f">{password}", "~*", "&*", "+@all"]
        if users:
            users += ["--user", "default", "off"]
        return [
            REDIS_SERVER, *listen, "--bind", LOOPBACK,
            "--save", "", "--appendonly", "no", "--daemonize", "no",
            "--dir", str(self.workdir), "--logfile", str(self.log_path), *users,
        ]  # fmt: skip

    def _is_ready(self) -> bool:
        return redis_ping(
            self.port,
            unix_socket=self.unix_socket,
            tls=self.tls.client_context() if self.tls is not None else None,
            auth=next(iter(self.acl_users.items()), None),
        )


def redis_ping(
    port: int,
    host: str = LOOPBACK,
    *,
    unix_socket: Path | None = None,
    tls: ssl.SSLContext | None = None,
    auth: tuple[str, str] | None = None,
) -> bool:
    """Whether a Redis server answers PING (spoken as raw RESP, to stay stdlib-only): on
    ``host:port``, or on ``unix_socket`` when ``port`` is 0; over TLS with ``tls``, as the
    ACL user ``auth`` (name, password) if given."""
    commands: list[tuple[str, ...]] = [("PING",)]
    if auth is not None:
        commands.insert(0, ("AUTH", *auth))
    request = b"".join(
        b"*%d\r\n" % len(command)
        + b"".join(b"$%d\r\n%s\r\n" % (len(part), part.encode()) for part in command)
        for command in commands
    )
    try:
        with contextlib.ExitStack() as stack:
            if port:
                connection = stack.enter_context(socket.create_connection((host, port), 1.0))
            else:
                connection = stack.enter_context(socket.socket(socket.AF_UNIX))
                connection.settimeout(1.0)
                connection.connect(str(unix_socket))
            if tls is not None:
                connection = stack.enter_context(tls.wrap_socket(connection, server_hostname=host))
            connection.sendall(request)
            replies = b""
            while replies.count(b"\r\n") < len(commands):
                chunk = connection.recv(256)
                if not chunk:
                    return False
                replies += chunk
            return replies.split(b"\r\n")[len(commands) - 1].startswith(b"+PONG")
    except OSError:
        return False


# ---- Kafka ----------------------------------------------------------------------------------

KAFKA_STARTED_LINE = "Kafka Server started"

LOG4J2_PROPERTIES = """\
# Written by stack/localstack.py: everything at INFO into one file.
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log_file}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
"""


def _property_text(value: str | int | bool) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def new_kafka_cluster_id() -> str:
    """A cluster id as ``kafka-storage random-uuid`` makes one, without starting a JVM.

    Kafka's ids are 16 random bytes in URL-safe base64 without padding; it never hands out one
    starting with "-", which would read as a command-line flag.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


@dataclass(frozen=True, slots=True)
class KafkaListener:
    """A client listener besides the PLAINTEXT one, e.g. ``KafkaListener("SECURE", port,
    "SASL_SSL")``. Its own settings go into the broker's ``properties`` under
    ``listener.name.<name in lower case>.``."""

    name: str
    port: int
    security_protocol: str


class KafkaBroker(ManagedProcess):
    """One KRaft node, broker and controller in one JVM, on ``127.0.0.1``.

    Alone it is its own single-voter quorum. In a cluster every node gets ``voters``
    (``{node_id: controller_port}`` of all nodes) and the same ``cluster_id``; see
    ``KafkaCluster``. ``properties`` override or extend the generated server.properties.
    ``listeners`` adds client listeners (TLS, SASL) beside PLAINTEXT, which the broker keeps
    between its nodes and for readiness checks; ``scram_credentials`` (as ``kafka-storage
    format --add-scram`` takes them, ``SCRAM-SHA-256=[name=alice,password=secret]``) are
    written when the storage is formatted.
    """

    name = "kafka"
    stop_grace = 30.0  # A controlled shutdown can wait on a controller that is going away.

    def __init__(
        self,
        workdir: Path,
        port: int = 9092,
        controller_port: int = 9093,
        node_id: int = 1,
        properties: Mapping[str, str | int | bool] | None = None,
        *,
        listeners: Sequence[KafkaListener] = (),
        scram_credentials: Sequence[str] = (),
        voters: Mapping[int, int] | None = None,
        cluster_id: str | None = None,
        heap: str = "512m",
        kafka_version: str = KAFKA_VERSION,
        log_dir: Path | None = None,
        detach: bool = False,
    ) -> None:
        super().__init__(workdir, log_dir=log_dir, detach=detach)
        self.port = port
        self.controller_port = controller_port
        self.node_id = node_id
        self.properties = dict(properties or {})
        self.listeners = list(listeners)
        self.scram_credentials = list(scram_credentials)
        self.voters = dict(voters) if voters is not None else {node_id: controller_port}
        if self.voters.get(node_id) != controller_port:
            raise ValueError(f"voters must map node {node_id} to its controller port")
        self.cluster_id = cluster_id or new_kafka_cluster_id()
        self.heap = heap
        self.kafka_version = kafka_version
        self._started_watch: _LogWatcher | None = None
        self._started_line_seen = False

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def _config_path(self) -> Path:
        return self.workdir / "server.properties"

    def server_properties(self) -> dict[str, str]:
        size = len(self.voters)
        client_listeners = [f"PLAINTEXT://{LOOPBACK}:{self.port}"] + [
            f"{each.name}://{LOOPBACK}:{each.port}" for each in self.listeners
        ]
        config: dict[str, str | int | bool] = {
            "process.roles": "broker,controller",
            "node.id": self.node_id,
            "controller.quorum.voters": ",".join(
                f"{node}@{LOOPBACK}:{port}" for node, port in sorted(self.voters.items())
            ),
            "listeners": ",".join(
                [f"CONTROLLER://{LOOPBACK}:{self.controller_port}", *client_listeners]
            ),
            "advertised.listeners": ",".join(client_listeners),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": ",".join(
                ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
                + [f"{each.name}:{each.security_protocol}" for each in self.listeners]
            ),
            "log.dirs": str(self.data_dir),
            # Internal topics can only be as replicated as the cluster is large.
            "offsets.topic.replication.factor": min(size, 3),
            "transaction.state.log.replication.factor": min(size, 3),
            "transaction.state.log.min.isr": min(size, 2),
            # Fewer __consumer_offsets partitions: the first consumer group joins faster.
            "offsets.topic.num.partitions": 10,
            "group.initial.rebalance.delay.ms": 0,
            # A node restarted after SIGKILL cannot register until the controller has expired
            # its old session (default 9 s); shorter sessions make kill/restart tests and
            # leader failover quicker. Heartbeats stay well inside the session.
            "broker.session.timeout.ms": 4000,
            "broker.heartbeat.interval.ms": 500,
            # Topics are created explicitly (create_topic), as in production; a typo in a topic
            # name must fail rather than quietly create a new topic.
            "auto.create.topics.enable": False,
            # The sidecar accepts 1 MiB payloads; with headers a record exceeds Kafka's 1 MB.
            "message.max.bytes": 2 * 1024 * 1024,
        }
        config.update(self.properties)
        return {key: _property_text(value) for key, value in config.items()}

    def _java(self, jvm_options: list[str], main_class: str, *args: str) -> list[str]:
        libs = ensure_kafka_jars(self.kafka_version)
        return [
            java_executable(), *jvm_options, "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.properties'}",
            "-cp", f"{libs}/*", main_class, *args,
        ]  # fmt: skip

    def _ports(self) -> list[int]:
        return [self.port, self.controller_port, *(each.port for each in self.listeners)]

    def _prepare(self) -> None:
        # Rewritten on every start, so changed ports or properties apply on restart.
        self._config_path.write_text(
            "# Written by stack/localstack.py on every start.\n"
            + "".join(f"{key}={value}\n" for key, value in self.server_properties().items())
        )
        (self.workdir / "log4j2.properties").write_text(
            LOG4J2_PROPERTIES.format(log_file=self.log_path)
        )
        if not (self.data_dir / "meta.properties").exists():
            self._format_storage()
        # Only a "started" line written after this point counts: the log file is appended to.
        self._started_watch = _LogWatcher(self.log_path)
        self._started_line_seen = False

    def _format_storage(self) -> None:
        # A short-lived tool: the C1 compiler alone starts it faster.
        command = self._java(
            ["-Xmx256m", "-XX:TieredStopAtLevel=1"],
            "kafka.tools.StorageTool", "format", "--ignore-formatted",
            "-t", self.cluster_id, "-c", str(self._config_path),
            *(arg for credential in self.scram_credentials for arg in ("--add-scram", credential)),
        )  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise StackError(
                f"formatting Kafka storage in {self.data_dir} failed "
                f"(exit {result.returncode}):\n{result.stdout}{result.stderr}"
            )

    def _command(self) -> list[str]:
        jvm_options = [
            f"-Xmx{self.heap}", "-Xms256m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            # Die at once rather than limp along; the readiness check reports the log.
            "-XX:+ExitOnOutOfMemoryError",
        ]  # fmt: skip
        return self._java(jvm_options, "kafka.Kafka", str(self._config_path))

    def _is_ready(self) -> bool:
        # The log line is cheap to look for; the metadata request proves a client gets answers.
        if not self._started_line_seen:
            watch = self._started_watch
            self._started_line_seen = watch is not None and watch.seen(KAFKA_STARTED_LINE)
        return self._started_line_seen and _run_async(
            lambda: broker_answers(self.bootstrap, self.node_id)
        )


async def broker_answers(bootstrap: str, node_id: int) -> bool:
    """Whether ``bootstrap`` answers a metadata request, and it lists broker ``node_id``."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await admin.start()
        cluster = await admin.describe_cluster()
    except (KafkaError, OSError):
        return False
    finally:
        await admin.close()
    return node_id in {broker["node_id"] for broker in cluster["brokers"]}


class KafkaCluster(_StartedInWith):
    """``size`` combined broker+controller KRaft nodes on loopback, all of them voters.

    Replication defaults suit durability tests: topics get ``size`` replicas (at most 3) and
    need 2 in sync for acks=all writes. ``properties`` override them for every node.
    """

    def __init__(
        self,
        workdir: Path,
        size: int = 3,
        properties: Mapping[str, str | int | bool] | None = None,
        *,
        heap: str = "384m",
    ) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        ports = free_ports(2 * size)
        node_ids = range(1, size + 1)
        client_ports = dict(zip(node_ids, ports[:size], strict=True))
        voters = dict(zip(node_ids, ports[size:], strict=True))
        cluster_properties: dict[str, str | int | bool] = {
            "default.replication.factor": min(size, 3),
            "min.insync.replicas": min(size, 2),
            **(properties or {}),
        }
        cluster_id = new_kafka_cluster_id()
        self.brokers = [
            KafkaBroker(
                Path(workdir) / f"node{node}",
                port=client_ports[node],
                controller_port=voters[node],
                node_id=node,
                properties=cluster_properties,
                voters=voters,
                cluster_id=cluster_id,
                heap=heap,
            )
            for node in node_ids
        ]

    @property
    def bootstrap(self) -> str:
        return ",".join(broker.bootstrap for broker in self.brokers)

    def broker(self, node_id: int) -> KafkaBroker:
        for candidate in self.brokers:
            if candidate.node_id == node_id:
                return candidate
        raise KeyError(node_id)

    def __iter__(self) -> Iterator[KafkaBroker]:
        return iter(self.brokers)

    def start(self, timeout: float = START_TIMEOUT) -> None:
        # No node is ready before a quorum of controllers has elected a leader, so every node
        # must be launched before waiting for any. Formatting storage starts a JVM per node;
        # doing it on threads saves a few seconds.
        deadline = time.monotonic() + timeout
        try:
            with ThreadPoolExecutor(max_workers=len(self.brokers)) as pool:
                for launched in [pool.submit(broker.launch) for broker in self.brokers]:
                    launched.result()
            for broker in self.brokers:
                broker.wait_until_ready(max(1.0, deadline - time.monotonic()))
        except BaseException:
            self.kill()
            raise

    def stop(self, grace: float | None = None) -> None:
        # All at once: stopped one by one, the last nodes would lose their quorum and hang in
        # a controlled shutdown until the grace period ran out.
        for broker in self.brokers:
            broker.request_stop()
        for broker in self.brokers:
            broker.wait_stopped(grace)

    def kill(self) -> None:
        for broker in self.brokers:
            broker.kill()


# ---- topics ---------------------------------------------------------------------------------


def create_topic(
    bootstrap: str,
    name: str,
    partitions: int,
    replication_factor: int = 1,
    *,
    config: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> None:
    """Create ``name`` unless it exists; return once every partition has a leader."""
    _run_async(
        lambda: create_topic_async(
            bootstrap, name, partitions, replication_factor, config=config, timeout=timeout
        )
    )


async def create_topic_async(
    bootstrap: str,
    name: str,
    partitions: int,
    replication_factor: int = 1,
    *,
    config: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> None:
    """``create_topic`` for async callers."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

    deadline = time.monotonic() + timeout
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    try:
        await admin.start()
        topic = NewTopic(name, partitions, replication_factor, topic_configs=dict(config or {}))
        while True:
            response = await admin.create_topics([topic], timeout_ms=10000)
            [result] = response.to_object()["topic_errors"]
            error = for_code(result["error_code"]) if result["error_code"] else None
            if error is None or error is TopicAlreadyExistsError:
                break
            if not error.retriable or time.monotonic() > deadline:
                raise StackError(
                    f"creating topic {name} failed: {error.__name__} "
                    f"{result.get('error_message') or ''}".rstrip()
                )
            await asyncio.sleep(0.2)  # e.g. the controller is still electing itself.
        while True:
            [described] = await admin.describe_topics([name])
            led = [p for p in described["partitions"] if p["leader"] >= 0]
            if described["error_code"] == 0 and len(led) == len(described["partitions"]) > 0:
                if len(led) != partitions:
                    raise StackError(f"topic {name} exists with {len(led)} partitions")
                return
            if time.monotonic() > deadline:
                raise StackError(f"topic {name} has no leader for every partition: {described}")
            await asyncio.sleep(0.1)
    except KafkaError as exc:
        raise StackError(f"creating topic {name} on {bootstrap} failed: {exc!r}") from exc
    finally:
        await admin.close()


# ---- the dev stack: python -m stack.localstack up|down|status|fetch|tail --------------------

STATE_DIR = REPO_ROOT / ".stack"
LOG_DIR = STATE_DIR / "logs"
DEV_TOPIC_PARTITIONS = 6


class SidecarProcess(ManagedProcess):
    """``dualstream serve`` from the repo's virtualenv, wired to the dev Kafka and Redis."""

    name = "sidecar"
    output_suffix = ".log"

    def __init__(
        self,
        workdir: Path,
        port: int,
        kafka_bootstrap: str,
        redis_url: str,
        topic: str,
        *,
        log_dir: Path | None = None,
        detach: bool = False,
        extra_args: Sequence[str] = (),
        name: str = "sidecar",
        admin_port: int | None = None,
        unix_socket: Path | None = None,
        extra_env: Mapping[str, str] | None = None,
        subscribe_port: int | None = None,
    ) -> None:
        """``name`` tells several sidecars' logs apart in one ``log_dir``; with
        ``unix_socket`` the sidecar listens there instead of on ``port``; ``extra_env`` is
        added to the inherited environment (``OTEL_*`` variables, say); with
        ``subscribe_port`` a delivery process of its own serves streams there."""
        super().__init__(workdir, log_dir=log_dir, detach=detach)
        self.name = name
        self.port = port
        # A free port unless told: the default 9464 is the dev stack's, shared by everyone.
        self.admin_port = free_port() if admin_port is None else admin_port
        self.unix_socket = unix_socket
        self.kafka_bootstrap = kafka_bootstrap
        self.redis_url = redis_url
        self.topic = topic
        self.extra_args = list(extra_args)
        self.extra_env = dict(extra_env or {})
        self.subscribe_port = subscribe_port

    def _environment(self) -> dict[str, str] | None:
        return {**os.environ, **self.extra_env} if self.extra_env else None

    @property
    def listen(self) -> str:
        """The address the sidecar listens on, as clients write it."""
        if self.unix_socket is not None:
            return f"unix:{self.unix_socket}"
        return f"{LOOPBACK}:{self.port}"

    @property
    def subscribe_target(self) -> str:
        """Where streams go: the delivery process's address, or else the listen address."""
        if self.subscribe_port is None:
            return self.listen
        return f"{LOOPBACK}:{self.subscribe_port}"

    def _ports(self) -> list[int]:
        return (
            [self.admin_port]
            + ([] if self.unix_socket is not None else [self.port])
            + ([] if self.subscribe_port is None else [self.subscribe_port])
        )

    def worker_pids(self) -> list[int]:
        """With ``--workers N`` or a subscribe port, the worker processes (not
        multiprocessing's resource tracker), the delivery process among them."""
        if self.pid is None:
            return []
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        return [
            int(child)
            for child in children
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
        ]

    def _command(self) -> list[str]:
        executable = REPO_ROOT / ".venv" / "bin" / "dualstream"
        if not executable.is_file():
            raise StackError(f"{executable} is missing: run `make install` first")
        return [
            str(executable), "serve", "--listen", self.listen,
            "--admin-listen", f"{LOOPBACK}:{self.admin_port}",
            "--kafka-bootstrap", self.kafka_bootstrap, "--kafka-topic", self.topic,
            "--redis-url", self.redis_url, *self.extra_args,
            *([] if self.subscribe_port is None
              else ["--subscribe-listen", self.subscribe_target]),
        ]  # fmt: skip

    @property
    def workers(self) -> int:
        """How many worker processes ``--workers`` in ``extra_args`` asks for (1 without)."""
        args = self.extra_args
        for index, arg in enumerate(args):
            if arg == "--workers" and index + 1 < len(args):
                return int(args[index + 1])
            if arg.startswith("--workers="):
                return int(arg.partition("=")[2])
        return 1

    def _every_worker_listens(self) -> bool:
        """With several workers, whether each one listens on the port yet: the port answers
        as soon as the first does, and connections made before the others listen all go to it."""
        if self.workers == 1:
            return True
        listening = tcp_socket_inodes(self.port, TCP_LISTEN)
        return self.workers == sum(
            1 for pid in self.worker_pids() if process_socket_inodes(pid) & listening
        )

    def _is_ready(self) -> bool:
        if self.subscribe_port is not None and not port_open(self.subscribe_port):
            return False
        if self.unix_socket is None:
            return port_open(self.port) and self._every_worker_listens()
        with (
            contextlib.suppress(OSError),
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe,
        ):
            probe.settimeout(0.5)
            probe.connect(str(self.unix_socket))
            return True
        return False


class RecordedProcess(ProcessControl):
    """A process of the dev stack known only by its pid file (``up`` ran in another process)."""

    def __init__(self, name: str, command_marker: str, stop_grace: float) -> None:
        self.name = name
        self.stop_grace = stop_grace
        # Part of /proc/<pid>/cmdline that proves the pid still belongs to this component and
        # was not handed to an unrelated process after a reboot or crash.
        self.command_marker = command_marker
        self.pid_file = STATE_DIR / f"{name}.pid"
        # The port it was started on, so `status` reports it and `up` notices changed flags.
        self.port_file = STATE_DIR / f"{name}.port"

    @property
    def recorded_pid(self) -> int | None:
        return _read_number(self.pid_file)

    @property
    def recorded_port(self) -> int | None:
        return _read_number(self.port_file)

    @property
    def pid(self) -> int | None:
        pid = self.recorded_pid
        return pid if pid is not None and self._is_ours(pid) else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def _is_ours(self, pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            command_line = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except (OSError, IndexError):
            return False
        # A zombie has exited; it only waits for its parent to collect its exit status.
        return state != "Z" and self.command_marker.encode() in command_line

    def record(self, pid: int, port: int) -> None:
        self.pid_file.write_text(f"{pid}\n")
        self.port_file.write_text(f"{port}\n")

    def forget(self) -> None:
        self.pid_file.unlink(missing_ok=True)
        self.port_file.unlink(missing_ok=True)

    def _send_signal(self, signum: signal.Signals) -> None:
        pid = self.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _wait_for_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.running:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True


def _read_number(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class _DevComponent:
    record: RecordedProcess
    launcher: ManagedProcess
    port: int  # The port clients use, as the flags ask for it.


def _dev_components(args: argparse.Namespace) -> list[_DevComponent]:
    """The dev stack in start order: each component's pid-file record and launcher."""
    components = [
        _DevComponent(
            RecordedProcess("redis", "redis-server", RedisServer.stop_grace),
            RedisServer(STATE_DIR / "redis", args.redis_port, log_dir=LOG_DIR, detach=True),
            args.redis_port,
        ),
        _DevComponent(
            RecordedProcess("kafka", "kafka.Kafka", KafkaBroker.stop_grace),
            KafkaBroker(
                STATE_DIR / "kafka",
                args.kafka_port,
                args.kafka_controller_port,
                log_dir=LOG_DIR,
                detach=True,
            ),
            args.kafka_port,
        ),
    ]
    with_jaeger = not getattr(args, "no_jaeger", False)
    if with_jaeger:
        from stack.jaeger import JaegerServer

        jaeger = JaegerServer(
            STATE_DIR / "jaeger",
            args.jaeger_port,
            args.jaeger_query_port,
            otlp_http_port=args.jaeger_http_port,
            log_dir=LOG_DIR,
            detach=True,
        )
        components.append(
            _DevComponent(
                RecordedProcess("jaeger", str(jaeger.config_path), JaegerServer.stop_grace),
                jaeger,
                args.jaeger_port,
            )
        )
    if not getattr(args, "no_sidecar", False):
        sidecar = SidecarProcess(
            STATE_DIR / "sidecar",
            args.port,
            kafka_bootstrap=f"{LOOPBACK}:{args.kafka_port}",
            redis_url=f"redis://{LOOPBACK}:{args.redis_port}/0",
            topic=args.topic,
            log_dir=LOG_DIR,
            detach=True,
            admin_port=args.admin_port,
            # Exported to the stack's Jaeger, in batches sent every second so that a trace
            # shows up there about as soon as its events are delivered.
            extra_env={
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{LOOPBACK}:{args.jaeger_port}",
                "OTEL_BSP_SCHEDULE_DELAY": "1000",
            }
            if with_jaeger
            else None,
        )
        record = RecordedProcess("sidecar", "dualstream serve", SidecarProcess.stop_grace)
        components.append(_DevComponent(record, sidecar, args.port))
    return components


def _relative(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def _say(component: str, message: str) -> None:
    print(f"{component:8} {message}", flush=True)


def up(args: argparse.Namespace) -> None:
    """Start whatever of the dev stack is not running; leave the rest alone."""
    STATE_DIR.mkdir(exist_ok=True)
    LOG_DIR.mkdir(exist_ok=True)
    for component in _dev_components(args):
        record, launcher = component.record, component.launcher
        pid = record.pid
        if pid is not None:
            running_port = record.recorded_port
            if running_port is not None and running_port != component.port:
                raise StackError(
                    f"{record.name} already runs on port {running_port} (pid {pid}), not "
                    f"{component.port}: run `down` first to change ports"
                )
            _say(record.name, f"already running (pid {pid})")
        else:
            record.forget()  # Stale, if present: its process is gone.
            _say(record.name, f"starting on {LOOPBACK}:{component.port} ...")
            began = time.monotonic()
            try:
                launcher.start()
            except StackError as exc:
                raise StackError(f"{record.name} did not start: {exc}") from None
            pid = launcher.release()
            record.record(pid, component.port)
            _say(
                record.name,
                f"ready in {time.monotonic() - began:.1f}s (pid {pid}), "
                f"log {_relative(launcher.log_path)}",
            )
        if isinstance(launcher, KafkaBroker):
            create_topic(launcher.bootstrap, args.topic, DEV_TOPIC_PARTITIONS)
            _say(record.name, f"topic {args.topic} ready ({DEV_TOPIC_PARTITIONS} partitions)")
    if args.no_sidecar:
        _say("sidecar", "skipped (--no-sidecar)")
    print(
        f"stack up: kafka {LOOPBACK}:{args.kafka_port}, "
        f"redis redis://{LOOPBACK}:{args.redis_port}/0"
        + ("" if args.no_jaeger else f", jaeger http://{LOOPBACK}:{args.jaeger_query_port}")
        + (
            ""
            if args.no_sidecar
            else f", sidecar {LOOPBACK}:{args.port} (admin http://{LOOPBACK}:{args.admin_port})"
        )
    )


def down(args: argparse.Namespace) -> None:
    """Stop the dev stack, sidecar first (it needs the others to drain), then Kafka, Redis."""
    for component in reversed(_dev_components(args)):
        record = component.record
        pid = record.pid
        if pid is None:
            stale = " (removed a stale pid file)" if record.pid_file.exists() else ""
            _say(record.name, f"not running{stale}")
        else:
            _say(record.name, f"stopping (pid {pid}) ...")
            began = time.monotonic()
            record.stop()
            _say(record.name, f"stopped in {time.monotonic() - began:.1f}s")
        record.forget()
    if args.purge:
        for data in ("kafka", "redis", "jaeger", "sidecar"):
            shutil.rmtree(STATE_DIR / data, ignore_errors=True)
        print(f"removed the data under {_relative(STATE_DIR)} (logs kept)")


def status(args: argparse.Namespace) -> None:
    for component in _dev_components(args):
        record = component.record
        pid = record.pid
        if pid is None:
            stale = " (stale pid file)" if record.pid_file.exists() else ""
            _say(record.name, f"stopped{stale}")
        else:
            port = record.recorded_port or component.port
            answering = "answering" if port_open(port) else "NOT answering"
            _say(record.name, f"running (pid {pid}), {LOOPBACK}:{port} {answering}")


def fetch(_: argparse.Namespace) -> None:
    print(f"Kafka {KAFKA_VERSION} jars ready in {ensure_kafka_jars()}")


def tail(args: argparse.Namespace) -> None:
    """Print the last records of the topic with their headers (for the demo)."""
    _run_async(lambda: _tail_topic(f"{LOOPBACK}:{args.kafka_port}", args.topic, args.count))


async def _tail_topic(bootstrap: str, topic: str, count: int) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    # A consumer without a subscription does not learn a topic's partitions; the admin does.
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described["error_code"] != 0:
        raise StackError(f"topic {topic} does not exist on {bootstrap}")
    partitions = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        for tp in partitions:
            consumer.seek(tp, max(0, ends[tp] - count))
        records: list[Any] = []
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
    finally:
        await consumer.stop()
    for record in sorted(records, key=lambda r: r.timestamp)[-count:]:
        headers = " ".join(f"{k}={v.decode(errors='replace')}" for k, v in record.headers)
        print(f"{record.topic}/{record.partition}@{record.offset} key={record.key!r}")
        print(f"    value={record.value!r}")
        print(f"    {headers}")


# ---- python -m stack.localstack with-stack -- COMMAND ... -----------------------------------
# The clients' test harness: a throwaway stack on free ports around one command, which finds it
# through DUALSTREAM_TEST_* variables (clients/README.md has the contract).

WITH_STACK_TOPIC = "events"
WITH_STACK_START_TIMEOUT = 300.0


@dataclass(frozen=True)
class TestStack:
    """Where the throwaway stack listens, as exported to the command."""

    target: str
    auth_target: str
    unix_target: str
    streams_target: str
    token: str
    kafka: str
    redis: str
    topic: str

    def environment(self) -> dict[str, str]:
        return {
            "DUALSTREAM_TEST_TARGET": self.target,
            "DUALSTREAM_TEST_AUTH_TARGET": self.auth_target,
            "DUALSTREAM_TEST_UNIX_TARGET": self.unix_target,
            "DUALSTREAM_TEST_STREAMS_TARGET": self.streams_target,
            "DUALSTREAM_TEST_TOKEN": self.token,
            "DUALSTREAM_TEST_KAFKA": self.kafka,
            "DUALSTREAM_TEST_REDIS": self.redis,
            "DUALSTREAM_TEST_TOPIC": self.topic,
        }


@contextlib.contextmanager
def test_stack(workdir: Path) -> Iterator[TestStack]:
    """Kafka (topic ``events``, 6 partitions), Redis and four sidecars: one open and one that
    wants a bearer token on free ports, one open on a unix socket, and one whose streams have
    a delivery process of their own, served by its own HTTP/2 (``--subscribe-server h2``).
    Everything is stopped on leaving, whatever happened."""
    kafka_port, controller_port, redis_port, open_port, auth_port, streams_port, subscribe_port = (
        free_ports(7)
    )
    token = base64.urlsafe_b64encode(os.urandom(18)).decode()
    logs = workdir / "logs"
    redis = RedisServer(workdir / "redis", redis_port, log_dir=logs)
    kafka = KafkaBroker(workdir / "kafka", kafka_port, controller_port, log_dir=logs)
    sidecars = [
        SidecarProcess(
            workdir / name, port, kafka.bootstrap, redis.url, WITH_STACK_TOPIC, log_dir=logs,
            extra_args=extra_args, name=name, unix_socket=unix_socket,
            subscribe_port=subscribe_port if name == "sidecar-streams" else None,
        )
        for name, port, extra_args, unix_socket in (
            ("sidecar", open_port, (), None),
            # `=`: a token may start with "-", which argparse would take for an option.
            ("sidecar-auth", auth_port, (f"--auth-token={token}",), None),
            ("sidecar-unix", 0, (), workdir / "sidecar.sock"),
            # Niceness, not SCHED_IDLE: beside a CPU hog (CI's check under load) the idle
            # policy would leave the delivery process next to no CPU for the clients' tests.
            ("sidecar-streams", streams_port,
             ("--subscribe-server=h2", "--delivery-cpu-policy=nice"), None),
        )
    ]  # fmt: skip
    with contextlib.ExitStack() as running:
        # Launched together and awaited one by one: Redis is ready long before Kafka.
        for server in (redis, kafka):
            running.callback(server.stop)
            server.launch()
        # Patient: on a machine shared by several test runs, Kafka can take minutes to start.
        for server in (redis, kafka):
            server.wait_until_ready(WITH_STACK_START_TIMEOUT)
        create_topic(kafka.bootstrap, WITH_STACK_TOPIC, DEV_TOPIC_PARTITIONS)
        for sidecar in sidecars:
            running.callback(sidecar.stop)
            sidecar.launch()
        for sidecar in sidecars:
            sidecar.wait_until_ready(WITH_STACK_START_TIMEOUT)
        yield TestStack(
            target=sidecars[0].listen,
            auth_target=sidecars[1].listen,
            unix_target=sidecars[2].listen,
            streams_target=sidecars[3].subscribe_target,
            token=token,
            kafka=kafka.bootstrap,
            redis=redis.url,
            topic=WITH_STACK_TOPIC,
        )


def with_stack(command: Sequence[str]) -> int:
    """Run ``command`` against a throwaway stack; its exit status (128+N if killed by signal N).

    The command's output goes straight to this terminal. The stack's data and logs are deleted
    when the command succeeds and kept (the path is printed) when it fails.
    """
    if not command:
        raise StackError("with-stack needs a command: with-stack -- COMMAND [ARG ...]")
    workdir = Path(tempfile.mkdtemp(prefix="dualstream-stack-"))
    status = 1
    try:
        began = time.monotonic()
        with test_stack(workdir) as stack:
            _say(
                "stack",
                f"ready in {time.monotonic() - began:.1f}s: sidecars {stack.target}, "
                f"{stack.auth_target} (token), {stack.unix_target}, streams "
                f"{stack.streams_target}; kafka {stack.kafka}, "
                f"redis {stack.redis}",
            )
            _say("stack", f"running: {shlex.join(command)}")
            # SIGTERM ends this process like Ctrl-C does, so the command and the stack stop too.
            signal.signal(signal.SIGTERM, signal.default_int_handler)
            code = subprocess.run(command, env=os.environ | stack.environment(), check=False)
            status = code.returncode if code.returncode >= 0 else 128 - code.returncode
    finally:
        if status == 0:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            _say("stack", f"logs kept in {workdir / 'logs'}")
    return status


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m stack.localstack",
        description="The local dev stack: Kafka, Redis, Jaeger and the sidecar on 127.0.0.1, "
        f"with pid files and logs under {_relative(STATE_DIR)}/.",
    )
    commands: dict[str, Callable[[argparse.Namespace], None]] = {
        "up": up,
        "down": down,
        "status": status,
        "fetch": fetch,
        "tail": tail,
    }
    parser.add_argument(
        "command",
        choices=[*commands, "with-stack"],
        help="fetch: only download Kafka's jars; with-stack -- COMMAND: run COMMAND against a "
        "throwaway stack on free ports (clients/README.md)",
    )
    parser.add_argument("--kafka-port", type=int, default=9092)
    parser.add_argument("--kafka-controller-port", type=int, default=9093)
    parser.add_argument("--redis-port", type=int, default=6379)
    parser.add_argument("--port", type=int, default=50051, help="the sidecar's gRPC port")
    parser.add_argument(
        "--admin-port", type=int, default=9464, help="the sidecar's admin HTTP port (probes)"
    )
    parser.add_argument("--topic", default="events", help="the topic `up` creates")
    parser.add_argument("--jaeger-port", type=int, default=4317, help="Jaeger's OTLP gRPC port")
    parser.add_argument(
        "--jaeger-http-port", type=int, default=4318, help="Jaeger's OTLP/HTTP port"
    )
    parser.add_argument(
        "--jaeger-query-port", type=int, default=16686, help="Jaeger's query API (HTTP) port"
    )
    parser.add_argument("--no-sidecar", action="store_true", help="up: only Kafka and Redis")
    parser.add_argument(
        "--no-jaeger", action="store_true", help="up: no Jaeger (the sidecar exports no spans)"
    )
    parser.add_argument("--purge", action="store_true", help="down: also delete Kafka's data")
    parser.add_argument("--count", type=int, default=5, help="tail: how many records")
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["with-stack"]:
        command = arguments[1:]
        command = command[1:] if command[:1] == ["--"] else command
        try:
            sys.exit(with_stack(command))
        except StackError as exc:
            sys.exit(f"stack: {exc}")
        except KeyboardInterrupt:
            sys.exit(130)
    args = parser.parse_args(arguments)
    try:
        commands[args.command](args)
    except StackError as exc:
        sys.exit(f"stack: {exc}")
    except KeyboardInterrupt:
        sys.exit("stack: interrupted")


if __name__ == "__main__":
    main()
