"""A/B runs: two versions of the sidecar measured in turn, in one sitting, on one broker.

``python -m bench.ab unary --rev before=main --rev after=. --rounds 3`` starts its own Kafka and
Redis on free ports, then for each round starts a fresh sidecar of each version in turn (``.``
is the working tree, anything else a git revision, exported with ``git archive``), warms it up,
and runs the scenario against it. On a shared machine the noise moves both versions alike
when they alternate, which separate sittings cannot promise; the medians per version and every
round's figures are printed as Markdown for ``bench/results/optimisations.md``.

With ``--profile DIR`` each version is also run once more with ``py-spy record`` attached (not
counted in the figures), writing ``DIR/<scenario>-<version>.folded`` (collapsed stacks, for any
flame-graph tool) and ``.txt``, the functions with the most samples.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.run import (
    REPO,
    UNARY_CONCURRENCY,
    Broker,
    Sampler,
    SubscriberPriority,
    SubscriberProcesses,
    build_go_tools,
    fan_out_in_child,
    go_loadgen,
    overload,
    parse_priority,
    rss_kib,
    start_sidecar,
    with_subscribers,
)
from stack.localstack import KafkaBroker, RedisServer, create_topic, free_port

Scenario = Callable[["Run"], dict[str, Any]]


class Run:
    """One measured run: a sidecar of one version, and where the stack is."""

    def __init__(
        self,
        target: str,
        pids: list[int],
        broker: Broker,
        redis_url: str,
        workdir: Path,
        subscribe_target: str,
    ) -> None:
        self.target = target
        self.pids = pids
        self.broker = broker
        self.redis_url = redis_url
        self.workdir = workdir
        self.seconds = 8.0
        self.subscribe_target = subscribe_target  # The listen address, or a delivery process's.
        self.subscriber_priority: SubscriberPriority = 0

    def sampled(self, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        with Sampler(self.pids, self.broker) as sampler:
            figures = measure()
        return {**figures, **sampler.figures(figures.get("events"))}


def _unary(run: Run) -> dict[str, Any]:
    concurrency = ("--concurrency", str(UNARY_CONCURRENCY))
    return run.sampled(lambda: go_loadgen(run.target, "closed", run.seconds, *concurrency))


def _batch(run: Run) -> dict[str, Any]:
    arguments = ("--batch", "100", "--concurrency", "8")
    return run.sampled(lambda: go_loadgen(run.target, "closed", run.seconds, *arguments))


def _open_1k(run: Run) -> dict[str, Any]:
    return run.sampled(lambda: go_loadgen(run.target, "open", run.seconds, "--rate", "1000"))


def _fan_out(run: Run) -> dict[str, Any]:
    return fan_out_in_child(
        run.workdir / "fan", run.target, run.pids, smoke=False,
        subscribe_target=run.subscribe_target,
    )  # fmt: skip


def _isolation(run: Run, max_per_message: int = 0) -> dict[str, Any]:
    return {
        f"subscribers_{n}": with_subscribers(
            run.workdir,
            run.target,
            run.redis_url,
            run.pids,
            n,
            1000,
            5,
            max_per_message,
            subscribe_target=run.subscribe_target,
            subscriber_priority=run.subscriber_priority,
        )
        for n in (0, 10, 100, 1000)
    }


def _isolation_batched(run: Run) -> dict[str, Any]:
    """As ``isolation``, with streams that take up to 64 notifications per message."""
    return _isolation(run, max_per_message=64)


def _overload(run: Run) -> dict[str, Any]:
    capacity = _unary(run)["calls_per_s"]
    return {"capacity_calls_per_s": capacity, **overload(run.target, capacity, 5, run.pids)}


def _aged_unary(run: Run) -> dict[str, Any]:
    """Unary publishes on the fresh sidecar, then again after it has served what `make bench`
    puts before its unary run (1,000 subscribers, one notification per message and batched,
    and the fan-out): whether a sidecar that has served streams publishes at the same cost."""
    fresh = _unary(run)
    for max_per_message in (0, 64):
        with_subscribers(
            run.workdir, run.target, run.redis_url, run.pids, 1000, 1000, 5, max_per_message,
            subscribe_target=run.subscribe_target,
        )  # fmt: skip
    _fan_out(run)
    return {"fresh": fresh, "aged": _unary(run)}


def _idle_streams(run: Run) -> dict[str, Any]:
    """RSS per idle stream, as ``make bench`` measures it but on the round's warmed sidecar:
    2,000 streams, more than the heap's slack after the warm-up can hide."""
    streams = 2000
    time.sleep(1)
    before = rss_kib(run.pids)
    processes = SubscriberProcesses(run.workdir / "idle", "idle-streams", 1)
    processes.subscribers(run.subscribe_target, "idle-streams", streams, 120)
    processes.wait_ready()
    time.sleep(1)
    after = rss_kib(run.pids)
    processes.results(stop_after=0)
    return {"streams": streams, "rss_per_idle_stream_kib": round((after - before) / streams, 2)}


SCENARIOS: dict[str, Scenario] = {
    "unary": _unary,
    "batch": _batch,
    "open1k": _open_1k,
    "fanout": _fan_out,
    "isolation": _isolation,
    "isolation_batched": _isolation_batched,
    "overload": _overload,
    "idle": _idle_streams,
    "aged_unary": _aged_unary,
}
ISOLATION_FIGURES = [
    "subscribers_0.publish.p99_ms", "subscribers_10.publish.p99_ms",
    "subscribers_10.failed_publishes", "subscribers_10.p99_ms", "subscribers_10.gaps",
    "subscribers_100.publish.p99_ms",
    "subscribers_100.failed_publishes", "subscribers_1000.publish.p99_ms",
    "subscribers_1000.failed_publishes", "subscribers_1000.received",
    "subscribers_10.p50_ms", "subscribers_10.received", "subscribers_100.p50_ms",
    "subscribers_100.received", "subscribers_100.gaps",
]  # fmt: skip
# The figures each scenario's summary shows, as paths into its result.
SUMMARY: dict[str, list[str]] = {
    "unary": [
        "calls_per_s", "p50_ms", "p99_ms", "sidecar_cpu_s_per_10k_events",
        "broker_cpu_s_per_10k_events",
    ],
    "batch": [
        "events_per_s", "p99_ms", "sidecar_cpu_s_per_10k_events", "broker_cpu_s_per_10k_events",
    ],
    "open1k": ["p50_ms", "p99_ms", "sidecar_cpu_s_per_10k_events"],
    "fanout": [
        "fan_out.paced_cpu_s_per_10k_deliveries", "fan_out.last_delivery.p50_ms",
        "fan_out.last_delivery.p99_ms", "fan_out.deliveries_per_s",
        "fan_out.burst_cpu_s_per_10k_deliveries",
        "fan_out_batched.paced_cpu_s_per_10k_deliveries",
        "fan_out_batched.last_delivery.p99_ms", "fan_out_batched.deliveries_per_s",
        "fan_out_batched.burst_cpu_s_per_10k_deliveries", "fan_out_batched.messages",
    ],
    "isolation": ISOLATION_FIGURES,
    "isolation_batched": ISOLATION_FIGURES,
    "idle": ["rss_per_idle_stream_kib"],
    "aged_unary": [
        f"{age}.{figure}" for age in ("fresh", "aged") for figure in (
            "calls_per_s", "p99_ms", "sidecar_cpu_s_per_10k_events", "broker_cpu_s_per_10k_events"
        )
    ],
    "overload": [
        "capacity_calls_per_s", "overload_open_loop_2x.errors",
        "overload_open_loop_2x.error_messages", "overload_open_loop_2x.p99_ms",
        "overload_open_loop_2x.calls_per_s", "overload_open_loop_2x.refusal.p50_ms",
        "overload_open_loop_2x_client_throttle.errors",
        "overload_open_loop_2x_client_throttle.throttled",
        "overload_open_loop_2x_client_throttle.p99_ms",
        "overload_open_loop_2x_client_throttle.refusal.p50_ms",
        "overload_open_loop_2x_client_throttle.throttled_refusal.p99_ms",
        "overload_open_loop_2x_client_throttle.calls_per_s", "overload_burst_3000.errors",
        "overload_burst_3000.p99_ms", "overload_burst_3000.refusal.p99_ms",
    ],
}  # fmt: skip


def _pick(figures: dict[str, Any], path: str) -> Any:
    value: Any = figures
    for key in path.split("."):
        value = value.get(key, "") if isinstance(value, dict) else ""
    return value


def source_tree(revision: str, workdir: Path) -> Path:
    """The ``server`` directory of a version: the working tree's, or one exported from git."""
    if revision == ".":
        return REPO / "server"
    destination = workdir / f"src-{revision.replace('/', '_')}"
    destination.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "archive", revision, "server"], cwd=REPO, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(destination)], input=archive, check=True)
    return destination / "server"


def _warm_up(target: str) -> None:
    go_loadgen(target, "closed", 2, "--concurrency", "8")


def _profile(scenario: Scenario, run: Run, out: Path, *, native: bool, pid: int) -> None:
    """Run the scenario once with py-spy sampling the sidecar process ``pid``: by default,
    without stopping it, the Python stacks of whichever thread holds the GIL (where the
    sidecar's own CPU goes); with ``native``, every thread's native frames as well, pausing the
    process per sample."""
    mode = ["--native", "--rate", "100"] if native else ["--nonblocking", "--gil", "--rate", "250"]
    spy = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid),
            *mode, "--format", "raw", "--output", f"{out}.folded",
        ],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        scenario(run)
    finally:
        spy.send_signal(2)  # SIGINT: py-spy writes what it sampled and exits.
        spy.wait(60)
    Path(f"{out}.txt").write_text(top_functions(Path(f"{out}.folded")))


def top_functions(folded: Path, count: int = 40) -> str:
    """The functions with the most samples, on the stack (inclusive) and on top (self)."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        frames = stack.split(";")
        number = int(samples)
        total += number
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + number
        own[frames[-1]] = own.get(frames[-1], 0) + number
    lines = [f"{total} samples", "", "self %  function"]
    for frame, number in sorted(own.items(), key=lambda item: -item[1])[:count]:
        lines.append(f"{100 * number / total:5.1f}  {frame}")
    lines += ["", "total %  function"]
    for frame, number in sorted(inclusive.items(), key=lambda item: -item[1])[:count]:
        lines.append(f"{100 * number / total:5.1f}  {frame}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument(
        "--rev", action="append", required=True, metavar="NAME=REVISION",
        help="a version to measure: '.' is the working tree, else a git revision",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--profile", type=Path, help="also profile each version with py-spy")
    parser.add_argument("--native", action="store_true", help="profile native frames too")
    parser.add_argument(
        "--profile-delivery", action="store_true",
        help="with --delivery-process, --profile samples the delivery process instead",
    )  # fmt: skip
    parser.add_argument(
        "--sidecar-arg", action="append", default=[], help="an extra argument for every sidecar"
    )
    parser.add_argument(
        "--rev-arg", action="append", default=[], metavar="NAME=ARG",
        help="an extra argument for one version's sidecar (the same tree with other settings)",
    )  # fmt: skip
    parser.add_argument(
        "--delivery-process", action="store_true",
        help="streams go to a delivery process of their own (--subscribe-listen); CPU counts "
        "both processes, --profile samples the publishing one (see --profile-delivery)",
    )  # fmt: skip
    parser.add_argument(
        "--subscriber-nice", action="append", default=[], metavar="NAME=NICENESS",
        help="one version's Go subscriber niceness in isolation runs, or 'idle' for "
        "SCHED_IDLE (standing in for subscribers on other machines)",
    )  # fmt: skip
    args = parser.parse_args()
    versions = dict(item.split("=", 1) for item in args.rev)

    def per_version(flag: str, items: list[str]) -> list[tuple[str, str]]:
        """``NAME=VALUE`` items of a per-version flag, each naming a ``--rev``."""
        pairs = []
        for item in items:
            name, _, value = item.partition("=")
            if name not in versions:
                parser.error(f"{flag} {item!r}: no --rev is named {name!r}")
            pairs.append((name, value))
        return pairs

    version_args: dict[str, list[str]] = {name: [] for name in versions}
    for name, arg in per_version("--rev-arg", args.rev_arg):
        version_args[name].append(arg)
    subscriber_priority: dict[str, SubscriberPriority] = {name: 0 for name in versions}
    for name, niceness in per_version("--subscriber-nice", args.subscriber_nice):
        try:
            subscriber_priority[name] = parse_priority(niceness)
        except ValueError:
            parser.error(f"--subscriber-nice {name}={niceness}: a niceness, or 'idle'")
    scenario = SCENARIOS[args.scenario]
    workdir = Path(tempfile.mkdtemp(prefix="dualstream-ab-"))
    build_go_tools()  # Go's build cache makes this quick, and a stale tool misleads.
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in versions}
    with (
        KafkaBroker(workdir / "kafka", port=free_port(), controller_port=free_port()) as kafka,
        RedisServer(workdir / "redis", port=free_port()) as redis,
    ):
        create_topic(kafka.bootstrap, "events", 6)
        assert kafka.pid is not None
        broker = Broker(kafka.pid, 2)
        trees = {name: source_tree(rev, workdir) for name, rev in versions.items()}
        rounds = [*range(args.rounds)] + (["profile"] if args.profile else [])
        for number in rounds:
            for name, tree in trees.items():
                sidecar, target = _start(
                    workdir / f"{name}-{number}", kafka, redis, tree, args, version_args[name]
                )
                try:
                    assert sidecar.pid is not None
                    pids = sidecar.worker_pids() if args.delivery_process else [sidecar.pid]
                    run = Run(
                        target, pids, broker, redis.url, workdir / f"{name}-{number}",
                        sidecar.subscribe_target,
                    )  # fmt: skip
                    run.seconds = args.seconds
                    run.subscriber_priority = subscriber_priority[name]
                    _warm_up(target)
                    if number == "profile":
                        args.profile.mkdir(parents=True, exist_ok=True)
                        out = args.profile / f"{args.scenario}-{name}"
                        pid = run.pids[-1] if args.profile_delivery else run.pids[0]
                        _profile(scenario, run, out, native=args.native, pid=pid)
                        continue
                    figures = scenario(run)
                    rows[name].append(figures)
                    summary = {path: _pick(figures, path) for path in SUMMARY[args.scenario]}
                    print(f"round {number} {name}: {summary}", file=sys.stderr, flush=True)
                finally:
                    sidecar.stop()
    print(report(args.scenario, versions, rows))
    # The broker's log alone is hundreds of MB a sitting; a sitting that fails keeps it.
    shutil.rmtree(workdir, ignore_errors=True)


def _start(
    workdir: Path,
    kafka: KafkaBroker,
    redis: RedisServer,
    tree: Path,
    args: argparse.Namespace,
    own_args: list[str],
) -> tuple[Any, str]:
    os.environ["PYTHONPATH"] = str(tree)  # The sidecar process imports this version.
    try:
        return start_sidecar(
            workdir, kafka.bootstrap, redis.url, *args.sidecar_arg, *own_args,
            subscribe_port=free_port() if args.delivery_process else None,
        )  # fmt: skip
    finally:
        del os.environ["PYTHONPATH"]


def report(scenario: str, versions: dict[str, str], rows: dict[str, list[dict[str, Any]]]) -> str:
    paths = SUMMARY[scenario]
    lines = [
        f"A/B `{scenario}` ({time.strftime('%F %H:%M')}), rounds alternating "
        + ", ".join(f"{name} = `{rev}`" for name, rev in versions.items()),
        "",
        "| figure | " + " | ".join(f"{name} (median; rounds)" for name in versions) + " |",
        "| --- | " + " | ".join("---" for _ in versions) + " |",
    ]
    for path in paths:
        if not any(rows[name] for name in versions):
            break  # Only profiled: no rounds to report.
        cells = []
        for name in versions:
            values = [_pick(figures, path) for figures in rows[name]]
            numbers = [v for v in values if isinstance(v, int | float)]
            median = f"**{statistics.median(numbers):g}**; " if len(numbers) == len(values) else ""
            cells.append(median + " / ".join(str(v) for v in values))
        lines.append(f"| {path} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
