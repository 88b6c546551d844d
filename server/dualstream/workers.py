"""Running the sidecar: in this process, or as several processes supervised as one.

One Python process serves gRPC on one core at most. With ``workers`` above 1 or a
``subscribe_listen`` address this process becomes a supervisor. It starts ``workers`` sidecar
processes, which all bind the listen port with SO_REUSEPORT so the kernel spreads client
connections across them, and, with ``subscribe_listen``, one more on that address: the
delivery process, at a lower CPU priority (``delivery_cpu_policy``), so that when fan-out and
publishes both want the CPU the publishes get it and the streams fall behind into their gaps.
The supervisor forwards SIGTERM and SIGINT to them (each drains and flushes on its own), and
stops them all if one dies, so that whatever runs the sidecar notices and restarts it whole.
One that hangs instead fails ``/healthz`` on the first worker's admin listener (heartbeats.py).
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
from dataclasses import dataclass, replace
from types import FrameType

from dualstream.heartbeats import Heartbeat, HeartbeatBoard
from dualstream.settings import Settings, TelemetrySettings

YOUNG_GENERATION_THRESHOLD = 10_000


def serve(settings: Settings, telemetry: TelemetrySettings, version: str) -> int:
    """Serve until told to stop; returns the process exit status."""
    if settings.workers == 1 and not settings.subscribe_listen:
        _serve_here(settings, telemetry, version)
        return 0
    return _supervise(settings, telemetry, version)


def _serve_here(
    settings: Settings,
    telemetry: TelemetrySettings,
    version: str,
    heartbeat: Heartbeat | None = None,
    *,
    delivery_process: bool = False,
    idle_refused: str | None = None,
) -> None:
    # Imported here: the supervisor itself never loads gRPC.
    import uvloop

    from dualstream.logs import configure_logging
    from dualstream.metrics import SidecarMetrics
    from dualstream.telemetry import build_tracer_provider, get_tracer
    from dualstream.transport.server import run

    configure_logging(settings.log_level, settings.log_format)
    if idle_refused:
        logging.getLogger(__name__).warning(
            "the delivery process runs at niceness %d without SCHED_IDLE: %s",
            settings.delivery_nice, idle_refused,
        )  # fmt: skip
    provider = build_tracer_provider(telemetry, version)
    # Deliveries in flight to many streams outlive CPython's default 700-allocation young
    # generation, get promoted, and every second or so force a full collection that stalls
    # every stream for 60-75 ms (measured with 1,000 streams). A larger young generation lets
    # them die young; see bench/results/optimisations.md.
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD)
    try:
        uvloop.run(
            run(
                settings,
                get_tracer(provider),
                on_serving=_freeze_startup_heap,
                metrics=SidecarMetrics(telemetry, version=version),
                heartbeat=heartbeat,
                delivery_process=delivery_process,
            )
        )
    finally:
        if provider is not None:
            provider.shutdown()


def _freeze_startup_heap() -> None:
    """Take what exists once serving (modules, descriptors, clients: most of the heap) out of
    the collector's sight, so the full collections that still happen scan only newer objects.
    The price: a reference cycle among those objects is never freed, which costs little as
    they mostly live as long as the process."""
    gc.freeze()


@dataclass(frozen=True)
class _Role:
    """What one process of a supervised sidecar is: a name for people, its settings, its
    niceness, whether it runs under SCHED_IDLE, and whether it is the delivery process (of
    streams: see subscribe_server)."""

    name: str
    settings: Settings
    niceness: int = 0
    idle_policy: bool = False
    delivery_process: bool = False


def _worker_main(
    role: _Role, telemetry: TelemetrySettings, version: str, board: HeartbeatBoard, slot: int
) -> None:
    # Before gRPC starts its threads, which inherit them: Linux keeps a niceness and a
    # scheduling policy per thread.
    os.nice(role.niceness)
    idle_refused = _take_idle_policy() if role.idle_policy else None
    # The supervisor forwards signals itself; a Ctrl-C reaching the whole process group must
    # not make a worker stop twice.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _stop_with_parent()
    heartbeat = Heartbeat(board, slot, role.settings.worker_stall_timeout)
    _serve_here(
        role.settings, telemetry, version, heartbeat, delivery_process=role.delivery_process,
        idle_refused=idle_refused,
    )  # fmt: skip


def _take_idle_policy() -> str | None:
    """Put this thread under SCHED_IDLE, which any process may ask for itself. With only a
    niceness, a delivery process that holds a core finishes its time slice (a few ms on Linux's
    EEVDF scheduler) before the publishing process, woken by a reply from Kafka or a new call,
    gets the core; under SCHED_IDLE the woken process takes it at once. Returns why the policy
    could not be taken (the niceness then stands alone), or None."""
    if not hasattr(os, "SCHED_IDLE"):
        return "this system has no SCHED_IDLE"
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except OSError as exc:  # A seccomp profile may refuse the call.
        return f"sched_setscheduler refused it: {exc}"
    return None


def _stop_with_parent() -> None:
    """Ask Linux for SIGTERM when the supervisor dies (even by SIGKILL), so that no orphaned
    worker keeps the port; elsewhere this does nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() == 1:  # The supervisor died before the request was in place.
        os.kill(os.getpid(), signal.SIGTERM)


def _roles(settings: Settings) -> list[_Role]:
    """The processes a supervised sidecar runs: ``workers`` publishing ones, then the delivery
    process if ``subscribe_listen`` is set."""
    # One admin listener per sidecar, in the first worker: probes and scrapes must not land on
    # a different process each time. The others share its Kafka and Redis, and if one dies the
    # supervisor stops them all, so the first worker's readiness speaks for the sidecar.
    publishing = replace(settings, subscribe_listen="", delivery_admin_listen="")
    roles = [
        _Role(
            f"publishing worker {number}",
            publishing if number == 0 else replace(publishing, admin_listen=""),
        )
        for number in range(settings.workers)
    ]
    if settings.subscribe_listen:
        delivering = replace(
            publishing,
            listen=settings.subscribe_listen,
            admin_listen=settings.delivery_admin_listen,
            workers=1,
        )
        roles.append(
            _Role(
                "the delivery process",
                delivering,
                settings.delivery_nice,  # Also what SCHED_IDLE falls back to.
                idle_policy=settings.delivery_cpu_policy == "idle",
                delivery_process=True,
            )
        )
    return roles


def _supervise(settings: Settings, telemetry: TelemetrySettings, version: str) -> int:
    context = multiprocessing.get_context("spawn")
    roles = _roles(settings)
    board = HeartbeatBoard.create(context, [role.name for role in roles])
    workers = [
        context.Process(
            target=_worker_main,
            args=(role, telemetry, version, board, slot),
            name=f"dualstream-worker-{slot}",
        )
        for slot, role in enumerate(roles)
    ]
    stopping = False

    def stop_workers(signum: int | None = None, frame: FrameType | None = None) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.pid is not None and worker.exitcode is None:
                os.kill(worker.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop_workers)
    signal.signal(signal.SIGINT, stop_workers)
    for worker in workers:
        worker.start()
    print(
        f"dualstream: publishing on {settings.listen}: "
        + ", ".join(str(worker.pid) for worker in workers[: settings.workers])
        + (
            f"; streams on {settings.subscribe_listen}: {workers[-1].pid}"
            if settings.subscribe_listen
            else ""
        ),
        file=sys.stderr,
        flush=True,
    )
    status = 0
    running = list(workers)
    while running:
        multiprocessing.connection.wait([worker.sentinel for worker in running])
        for worker in [w for w in running if w.exitcode is not None]:
            running.remove(worker)
            worker.join()
            if worker.exitcode != 0:
                status = 1
            if not stopping:
                print(
                    f"dualstream: worker {worker.pid} exited with {worker.exitcode}; "
                    "stopping the others",
                    file=sys.stderr,
                    flush=True,
                )
                status = 1
                stop_workers()
    return status
