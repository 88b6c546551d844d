"""Fixtures for the clients' conformance tests: the registered apps, built once per session and
run as processes whose JSON lines are read as they come, and a sidecar process of the test's
own that the test may SIGKILL and restart."""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stack.localstack import KafkaBroker, RedisServer, SidecarProcess, free_port
from tests.clients.apps import APPS, BUILD, REPO

# Generous: the machine is shared and loaded, and a cold Go build compiles gRPC.
BUILD_TIMEOUT = 600.0
LINE_TIMEOUT = 120.0

Line = dict[str, Any]


class AppProcess:
    """One run of a conformance app. A thread reads its stdout, one JSON object per line, into
    ``lines`` as they come; stderr goes to a file shown when something fails."""

    def __init__(
        self,
        name: str,
        command: list[str],
        stderr_path: Path,
        dump_signal: signal.Signals | None = None,
    ) -> None:
        self.name = name
        self.command = command
        self.stderr_path = stderr_path
        self.dump_signal = dump_signal
        self.lines: list[Line] = []
        self._arrivals: queue.Queue[Line | None] = queue.Queue()
        self._lock = threading.Lock()
        with stderr_path.open("wb") as stderr:
            self._process = subprocess.Popen(
                command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr
            )
        self._reader = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        with self._process.stdout:
            for raw in self._process.stdout:
                line: Line = json.loads(raw)
                with self._lock:
                    self.lines.append(line)
        self._arrivals.put(None)

    def snapshot(self) -> list[Line]:
        with self._lock:
            return list(self.lines)

    def describe(self) -> str:
        if self.dump_signal is not None and self._process.poll() is None:
            self._process.send_signal(self.dump_signal)  # Where it is stuck, into stderr.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(5)
        stderr = self.stderr_path.read_text(errors="replace")[-12000:]
        return (
            f"{self.name} ({' '.join(self.command)}): exit {self._process.poll()}, "
            f"{len(self.lines)} lines, last {self.snapshot()[-3:]}\nstderr: {stderr}"
        )

    def wait_for(
        self, check: Callable[[list[Line]], bool], what: str, timeout: float = LINE_TIMEOUT
    ) -> list[Line]:
        """The lines so far, once ``check`` holds for them; fails the test after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not check(lines := self.snapshot()):
            if time.monotonic() > deadline:
                pytest.fail(f"waited {timeout:g}s for {what}: {self.describe()}")
            if self._process.poll() is not None and not self._reader.is_alive():
                pytest.fail(f"{self.name} ended before {what}: {self.describe()}")
            time.sleep(0.05)
        return lines

    def wait_exit(self, timeout: float = LINE_TIMEOUT) -> list[Line]:
        """All the lines, once the app has exited 0; fails the test otherwise."""
        try:
            code = self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} still runs after {timeout:g}s: {self.describe()}")
        self._reader.join(timeout)
        if code != 0:
            pytest.fail(f"{self.name} failed: {self.describe()}")
        return self.snapshot()

    def stop(self) -> list[Line]:
        """SIGTERM (the contract's way to end a subscriber without --limit), then its lines."""
        if self._process.poll() is None:
            self._process.terminate()
        return self.wait_exit()

    def kill(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        self._reader.join(10)


class ConformanceApps:
    """Builds each registered app on first use and starts runs of it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._built: set[str] = set()
        self._running: list[AppProcess] = []

    def _build(self, language: str) -> None:
        app = APPS[language]
        if language in self._built or not app.build:
            return
        BUILD.mkdir(parents=True, exist_ok=True)
        command = app.expand(app.build)
        result = subprocess.run(
            command, cwd=app.cwd, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False
        )
        if result.returncode != 0:
            pytest.fail(
                f"building the {language} conformance app failed ({' '.join(command)} in "
                f"{app.cwd}):\n{result.stdout}{result.stderr}"
            )
        self._built.add(language)

    def start(self, language: str, *arguments: str) -> AppProcess:
        self._build(language)
        app = APPS[language]
        name = f"{language}-{arguments[0]}-{len(self._running)}"
        process = AppProcess(
            name,
            app.expand(app.run) + list(arguments),
            self.workdir / f"{name}.stderr",
            app.dump_signal,
        )
        self._running.append(process)
        return process

    def kill_all(self) -> None:
        for process in self._running:
            process.kill()


@pytest.fixture
def apps(tmp_path: Path) -> Iterator[ConformanceApps]:
    """The conformance apps; every run still going when the test ends is killed."""
    started = ConformanceApps(tmp_path)
    try:
        yield started
    finally:
        started.kill_all()


@pytest.fixture
def sidecar_process(
    kafka: KafkaBroker, shared_redis: RedisServer, topic: str, tmp_path: Path
) -> Iterator[SidecarProcess]:
    """A sidecar process of the test's own on a free port, for tests that kill it."""
    sidecar = SidecarProcess(
        tmp_path / "sidecar", free_port(), kafka.bootstrap, shared_redis.url, topic
    )
    sidecar.start()
    try:
        yield sidecar
    finally:
        sidecar.stop()
        # Shown with a failing test's captured output: what the sidecar saw, across restarts.
        print(sidecar.describe_logs())


@pytest.fixture
def one_call_sidecar(
    kafka: KafkaBroker, shared_redis: RedisServer, topic: str, tmp_path: Path
) -> Iterator[SidecarProcess]:
    """A sidecar that takes on one publish call at a time and refuses the rest as past
    capacity, at once, with a retry hint."""
    sidecar = SidecarProcess(
        tmp_path / "sidecar",
        free_port(),
        kafka.bootstrap,
        shared_redis.url,
        topic,
        extra_env={"DUALSTREAM_MAX_CONCURRENT_RPCS": "1"},
    )
    with sidecar:
        yield sidecar
