"""The registry of conformance apps, one per client language (the contract is in
clients/README.md). The parametrized tests of ``tests/clients/`` run every app listed in
``APPS``: registering a language here is all it takes to put it in them."""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Where builds put their output; ``{build}`` in a command stands for this directory.
BUILD = REPO / "build" / "conformance"


@dataclass(frozen=True)
class ConformanceApp:
    """How to build (once per pytest session) and run one language's conformance app."""

    language: str
    # The command that runs the app; the contract's arguments are appended to it.
    run: tuple[str, ...]
    # The command that builds it, run in ``cwd`` before the first use; empty: nothing to build.
    build: tuple[str, ...] = ()
    cwd: Path = REPO
    # A signal that makes a running app write where every thread is to stderr without touching
    # stdout (its JSON lines): sent before a test reports an app that stopped making progress.
    dump_signal: signal.Signals | None = None

    def expand(self, command: tuple[str, ...]) -> list[str]:
        return [part.replace("{build}", str(BUILD)) for part in command]


APPS: dict[str, ConformanceApp] = {}

# Go: cmd/dualstream-conformance of the Go module.
APPS["go"] = ConformanceApp(
    language="go",
    run=("{build}/go/dualstream-conformance",),
    build=(
        "go",
        "build",
        "-o",
        "{build}/go/dualstream-conformance",
        "./cmd/dualstream-conformance",
    ),
    cwd=REPO / "clients" / "go",
    dump_signal=signal.SIGQUIT,  # The Go runtime prints every goroutine's stack, then exits.
)

# Python: a module of the tests, run with the interpreter running pytest (the repo's .venv).
APPS["python"] = ConformanceApp(
    language="python", run=(sys.executable, "-m", "tests.clients.python_app")
)

# TypeScript: compiled by tsc with the tests' config; node resolves the app's packages from
# the nearest node_modules above it, so the build links clients/ts/node_modules beside it.
APPS["ts"] = ConformanceApp(
    language="ts",
    run=("node", "{build}/ts/conformance/app.js"),
    build=(
        "bash",
        "-c",
        "bash scripts/npm-ci.sh && npm run --silent build"
        " && npx tsc -p tsconfig.test.json --outDir {build}/ts"
        ' && ln -sfn "$PWD/node_modules" {build}/ts/node_modules',
    ),
    cwd=REPO / "clients" / "ts",
)

# Java: the app lives in the client's test sources; the build compiles it with Maven once and
# writes a java argument file (classpath and main class), so each run is a plain `java`.
APPS["java"] = ConformanceApp(
    language="java",
    run=("java", "@{build}/java/app.args"),
    build=("bash", "scripts/build-conformance.sh", "{build}/java"),
    cwd=REPO / "clients" / "java",
)
