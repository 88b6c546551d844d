"""``make bench``: the sidecar against the limits of this machine, measured in one sitting.

Brings up its own Kafka and Redis on free ports, then measures the baselines (Kafka's own
ProducerPerformance, a raw aiokafka producer, redis-benchmark PUBLISH, an empty grpc.aio
handler) and the sidecar with the same producer settings, and writes
``bench/results/<date>.json``, ``<date>.md`` and PNG plots. ``--smoke`` runs everything briefly
so CI keeps the harness working; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from aiokafka import AIOKafkaProducer

from bench.loadgen import CDF_QUANTILES, percentiles
from dualstream_client import DualstreamClient, EventInput
from stack.localstack import (
    KafkaBroker,
    RedisServer,
    SidecarProcess,
    create_topic,
    ensure_kafka_jars,
    free_port,
    free_ports,
    port_open,
)

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
GO_BUILD = REPO / "build" / "go"
PAYLOAD = b"x" * 200
# One set of producer settings for every Kafka client measured.
LINGER_MS = 2
BATCH_BYTES = 65536
# Calls in flight in the unary closed loops, and callers of the raw producer compared with them.
UNARY_CONCURRENCY = 64


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time of processes, all their threads included."""
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


@dataclass
class Broker:
    """The benchmark's Kafka broker: its pid, and the CPU it burns per second when idle (its
    controller's heartbeats, housekeeping, its JIT and GC catching up after the run before),
    which CPU-per-event figures leave out. Measured again right before each run, because it
    changes as the broker warms up."""

    pid: int
    idle_seconds: float
    idle_cpu_per_s: float = 0.0

    def measure_idle(self) -> Broker:
        before, started = cpu_seconds([self.pid]), time.monotonic()
        time.sleep(self.idle_seconds)
        self.idle_cpu_per_s = (cpu_seconds([self.pid]) - before) / (time.monotonic() - started)
        return self


class Sampler:
    """While a measurement runs: the peak RSS of the sidecar's processes (sampled in a
    thread), and the CPU time the sidecar's processes and the broker used."""

    def __init__(self, pids: int | list[int], broker: Broker | None = None) -> None:
        self.pids = [pids] if isinstance(pids, int) else pids
        self.broker = broker
        self.peak_rss_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss_kib(self) -> int:
        return rss_kib(self.pids)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_rss_kib = max(self.peak_rss_kib, self.rss_kib())
            self._stop.wait(0.1)

    def _broker_cpu(self) -> float:
        return cpu_seconds([self.broker.pid]) if self.broker else 0.0

    def __enter__(self) -> Sampler:
        if self.broker is not None:
            self.broker.measure_idle()
        self._cpu_start, self._wall_start = cpu_seconds(self.pids), time.monotonic()
        self._broker_start = self._broker_cpu()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        wall = time.monotonic() - self._wall_start
        self.cpu_s = cpu_seconds(self.pids) - self._cpu_start
        self.cpu_percent = round(100 * self.cpu_s / wall, 1)
        self.broker_cpu_s = 0.0
        if self.broker is not None:
            # Net of what the broker burns when idle, so a slower client is not charged for
            # the broker's housekeeping during its longer run.
            used = self._broker_cpu() - self._broker_start
            self.broker_cpu_s = max(0.0, used - self.broker.idle_cpu_per_s * wall)

    def figures(self, events: int | None = None) -> dict[str, Any]:
        """CPU and memory figures; with ``events``, CPU-seconds per 10,000 events as well."""
        figures: dict[str, Any] = {
            "sidecar_cpu_percent": self.cpu_percent,
            "sidecar_peak_rss_kib": self.peak_rss_kib,
        }
        if events:
            figures["sidecar_cpu_s_per_10k_events"] = per_10k(self.cpu_s, events)
            if self.broker is not None:
                figures["broker_cpu_s_per_10k_events"] = per_10k(self.broker_cpu_s, events)
        return figures


def per_10k(cpu_s: float, count: int) -> float:
    return round(cpu_s * 10_000 / count, 3) if count else 0.0


def kafka_producer_performance(bootstrap: str, topic: str, records: int) -> dict[str, Any]:
    libs = ensure_kafka_jars()
    command = [
        "java", "-Xmx512m", "-cp", f"{libs}/*", "org.apache.kafka.tools.ProducerPerformance",
        "--topic", topic, "--num-records", str(records), "--record-size", str(len(PAYLOAD)),
        "--throughput", "-1", "--producer-props", f"bootstrap.servers={bootstrap}", "acks=all",
        "enable.idempotence=true", f"linger.ms={LINGER_MS}", f"batch.size={BATCH_BYTES}",
    ]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    last = [line for line in output.splitlines() if "records sent" in line][-1]
    rate = float(re.search(r"([\d.]+) records/sec", last).group(1))  # type: ignore[union-attr]
    avg = float(re.search(r"([\d.]+) ms avg latency", last).group(1))  # type: ignore[union-attr]
    return {"events_per_s": rate, "avg_latency_ms": avg, "summary": last.strip()}


async def aiokafka_raw(
    bootstrap: str, topic: str, records: int, seconds: float, broker: Broker, concurrency: int
) -> dict[str, Any]:
    """The raw aiokafka producer: ``send_and_wait`` at 1k/s (the latency floor for one
    acknowledged event), ``concurrency`` callers each awaiting ``send_and_wait`` in a loop
    (the broker's CPU per event at the unary runs' concurrency), and pipelined ``send()``
    (the per-message throughput ceiling)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=LINGER_MS,
        max_batch_size=BATCH_BYTES,
    )
    await producer.start()
    try:
        latencies: list[float] = []
        loop = asyncio.get_running_loop()
        start = loop.time()

        async def one(number: int, scheduled: float) -> None:
            await producer.send_and_wait(topic, PAYLOAD, key=f"s{number % 64}".encode())
            latencies.append(loop.time() - scheduled)

        tasks = []
        for number in range(int(seconds * 1000)):
            scheduled = start + number / 1000
            await asyncio.sleep(max(0.0, scheduled - loop.time()))
            tasks.append(asyncio.create_task(one(number, scheduled)))
        await asyncio.gather(*tasks)

        acknowledged = 0
        deadline = time.monotonic() + seconds

        async def caller(number: int) -> None:
            nonlocal acknowledged
            key = f"s{number % 64}".encode()
            while time.monotonic() < deadline:
                await producer.send_and_wait(topic, PAYLOAD, key=key)
                acknowledged += 1

        client_cpu = time.process_time()
        with Sampler([os.getpid()], broker) as sampler:
            await asyncio.gather(*(caller(number) for number in range(concurrency)))
        closed_loop = {
            "concurrency": concurrency,
            "events_per_s": round(acknowledged / seconds, 1),
            "client_cpu_s_per_10k_events": per_10k(time.process_time() - client_cpu, acknowledged),
            "broker_cpu_s_per_10k_events": per_10k(sampler.broker_cpu_s, acknowledged),
        }

        started = time.monotonic()
        pending = []
        with Sampler([os.getpid()], broker) as sampler:
            for number in range(records):
                pending.append(await producer.send(topic, PAYLOAD, key=f"s{number % 64}".encode()))
            await asyncio.gather(*pending)
        throughput = records / (time.monotonic() - started)
    finally:
        await producer.stop()
    return {
        "events_per_s": round(throughput, 1),
        "client_cpu_s_per_10k_events": per_10k(sampler.cpu_s, records),
        "broker_cpu_s_per_10k_events": per_10k(sampler.broker_cpu_s, records),
        "send_and_wait_1k": percentiles(latencies),
        "closed_loop": closed_loop,
    }


def confluent_kafka_raw(bootstrap: str, topic: str, records: int) -> dict[str, Any]:
    """librdkafka through confluent-kafka, same settings: what another Python Kafka client
    could reach on this machine."""
    from confluent_kafka import KafkaException, Producer

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": LINGER_MS,
            "batch.size": BATCH_BYTES,
        }
    )
    failures: list[str] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(str(error))

    started = time.monotonic()
    for number in range(records):
        while True:
            try:
                producer.produce(
                    topic, PAYLOAD, key=f"s{number % 64}".encode(), on_delivery=delivered
                )
                break
            except BufferError:
                producer.poll(0.005)
        if number % 1000 == 0:
            producer.poll(0)
    if producer.flush(60) or failures:
        raise KafkaException(f"confluent-kafka: {len(failures)} records failed")
    return {"events_per_s": round(records / (time.monotonic() - started), 1)}


def redis_benchmark(port: int, requests: int) -> dict[str, Any]:
    output = subprocess.run(
        [
            "redis-benchmark",
            "-p",
            str(port),
            "-n",
            str(requests),
            "-c",
            "50",
            "-q",
            "PUBLISH",
            "events:bench:x",
            '{"id":"0192","type":"bench"}',
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = float(re.findall(r"([\d.]+) requests per second", output)[-1])
    return {"publish_per_s": rate}


def build_go_tools() -> None:
    """The Go peer, the Go subscriber and the Go load client, from ``bench/gopeer``."""
    for output, package in (
        ("gopeer", "."),
        ("subscriber", "./subscriber"),
        ("loadgen", "./loadgen"),
    ):
        subprocess.run(
            ["go", "build", "-o", str(GO_BUILD / output), package],
            cwd=REPO / "bench" / "gopeer",
            check=True,
        )


def go_peer(bootstrap: str, redis_port: int, seconds: float) -> dict[str, Any]:
    """The design note's dual publisher in Go (kafka-go + go-redis), in process, no RPC."""
    figures: dict[str, Any] = {}
    for batch, concurrency in ((1, 64), (10, 8), (100, 8), (1000, 8)):
        name = "publish" if batch == 1 else f"publish_batch_{batch}"
        figures[name] = run_go_tool(
            "gopeer", "-brokers", bootstrap, "-redis", f"127.0.0.1:{redis_port}",
            "-topic", "gopeer", "-batch", str(batch), "-concurrency", str(concurrency),
            "-seconds", str(seconds), "-batch-timeout", f"{LINGER_MS}ms",
            "-batch-bytes", str(BATCH_BYTES), "-payload", str(len(PAYLOAD)),
        )  # fmt: skip
    return figures


def run_go_tool(name: str, *args: str) -> dict[str, Any]:
    """Run one of the Go tools built by ``build_go_tools``; its JSON output, rounded."""
    output = subprocess.run(
        [str(GO_BUILD / name), *args], capture_output=True, text=True, check=True
    ).stdout
    result: dict[str, Any] = json.loads(output)
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}


def loadgen(target: str, *args: str) -> dict[str, Any]:
    output = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", *args, "--target", target],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return result


def go_loadgen(target: str, mode: str, seconds: float, *args: str) -> dict[str, Any]:
    """The Go load client (``closed``, ``open`` or ``burst``): it costs the two cores less than
    the Python one, and it tells refusals with a retry hint from other errors."""
    return run_go_tool(
        "loadgen", "--target", target, "--mode", mode, "--seconds", str(seconds), *args
    )


def empty_grpc(workdir: Path, seconds: float, *, smoke: bool) -> dict[str, dict[str, Any]]:
    """The empty handler under the Python load client and under the Go one, and the fan-out
    runs against the empty server's streams: what grpc.aio alone costs per call and per
    delivered message."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "bench.empty_server", str(port)], cwd=REPO)
    target = f"127.0.0.1:{port}"
    try:
        for _ in range(100):
            if port_open(port):
                python_client = loadgen(target, "closed", "--seconds", str(seconds))
                # Its CPU per call is the floor of the sidecar's per unary event.
                with Sampler(server.pid) as sampler:
                    go_client = go_loadgen(
                        target, "closed", seconds, "--concurrency", str(UNARY_CONCURRENCY)
                    )
                return {
                    "grpc_empty_handler": python_client,
                    "grpc_empty_handler_go_client": go_client | sampler.figures(go_client["calls"]),
                    **fan_out_in_child(
                        workdir / "fan-empty", target, [server.pid], smoke=smoke,
                        prefix="grpc_empty_",
                    ),
                }  # fmt: skip
            time.sleep(0.1)
        raise RuntimeError("the empty gRPC server did not start")
    finally:
        server.terminate()
        server.wait()


@dataclass
class Receipts:
    """What one subscribing process received: ``(event id, monotonic time)`` per notification,
    and its CPU use; the Go subscriber also counts messages, gaps and streams the sidecar ended."""

    receipts: list[tuple[str, float]]
    cpu_percent: float
    messages: int = 0
    gaps: int = 0
    missed: int = 0
    streams_failed: int = 0


SubscriberPriority = int | Literal["idle"]
"""A niceness (0: as the benchmark itself), or ``"idle"`` for SCHED_IDLE."""


def parse_priority(text: str) -> SubscriberPriority:
    """``"idle"`` or a niceness, as given on a command line; ValueError otherwise."""
    return "idle" if text == "idle" else int(text)


def priority_prefix(priority: SubscriberPriority) -> list[str]:
    """The command that starts a process at ``priority``: under SCHED_IDLE a process runs
    only on CPU nobody else wants, while a niceness of 19 still gets a share of it."""
    if priority == "idle":
        return ["chrt", "--idle", "0"]
    return ["nice", "-n", str(priority)] if priority else []


class SubscriberProcesses:
    """Subscribing processes: the Go subscriber and the Redis watcher."""

    def __init__(self, workdir: Path, name: str, events: int) -> None:
        self.workdir = workdir / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.events = events
        self.processes: list[tuple[subprocess.Popen[bytes], Path, Path]] = []

    def start(self, *command: str) -> None:
        """Start ``command`` with ``--events``, ``--ready`` and ``--out`` added."""
        number = len(self.processes)
        ready, out = self.workdir / f"{number}.ready", self.workdir / f"{number}.json"
        arguments = ["--events", str(self.events), "--ready", str(ready), "--out", str(out)]
        self.processes.append((subprocess.Popen([*command, *arguments], cwd=REPO), ready, out))

    def subscribers(
        self,
        target: str,
        source_id: str,
        streams: int,
        timeout: float,
        connections: int = 1,
        max_per_message: int = 0,
        priority: SubscriberPriority = 0,
    ) -> None:
        """Streams from the Go subscriber: a Python client would use as much CPU per message
        as the sidecar, and on two cores it, not the sidecar, would be measured. ``priority``
        above 0 runs it at that niceness, ``"idle"`` under SCHED_IDLE (it runs only when
        nothing else wants the CPU), standing in for subscribers on other machines."""
        self.start(
            *priority_prefix(priority),
            str(GO_BUILD / "subscriber"), "--target", target, "--source-id", source_id,
            "--streams", str(streams), "--connections", str(connections),
            "--timeout", str(timeout), "--max-per-message", str(max_per_message),
        )  # fmt: skip

    def redis_watcher(self, redis_url: str, source_id: str, timeout: float) -> None:
        self.start(
            sys.executable, "-m", "bench.redis_watcher", "--redis-url", redis_url,
            "--source-id", source_id, "--timeout", str(timeout),
        )  # fmt: skip

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not all(ready.exists() for _, ready, _ in self.processes):
            if time.monotonic() > deadline:
                raise RuntimeError("the subscriber processes did not get ready")
            time.sleep(0.05)

    def results(self, timeout: float = 150, stop_after: float | None = None) -> list[Receipts]:
        """Per process, in start order, what it received. With ``stop_after``, processes still
        waiting for notifications then are told to stop (SIGTERM) and report what they got:
        streams that fell behind and skipped notifications in a gap never receive them all."""
        deadline = time.monotonic() + (timeout if stop_after is None else stop_after)
        for process, _, _ in self.processes:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                if stop_after is None:
                    raise
                process.terminate()
        results = []
        for process, _, out in self.processes:
            process.wait(timeout)
            result = json.loads(out.read_text())
            results.append(
                Receipts(
                    receipts=[(event_id, at) for event_id, at in result["receipts"]],
                    cpu_percent=float(result["cpu_percent"]),
                    messages=int(result.get("messages", 0)),
                    gaps=int(result.get("gaps", 0)),
                    missed=int(result.get("missed", 0)),
                    streams_failed=int(result.get("streams_failed", 0)),
                )
            )
        return results


def with_subscribers(
    workdir: Path,
    target: str,
    redis_url: str,
    pids: list[int],
    subscribers: int,
    rate: float,
    seconds: float,
    max_per_message: int = 0,
    subscribe_target: str = "",
    subscriber_priority: SubscriberPriority = 0,
) -> dict[str, Any]:
    """Publish at ``rate`` (open loop, the Go load client) while ``subscribers`` streams follow
    the source: whether publishes keep their latency and all succeed whatever the subscriber
    load (isolation), and how long each notification takes to reach every subscriber.
    ``max_per_message`` above 1 lets the streams take several notifications per message;
    ``subscribe_target``, if set, is where the streams go (a delivery listener);
    ``subscriber_priority`` the subscribing process's niceness, or ``"idle"``.

    The subscribers run in a process of their own. A plain Redis subscriber on the same channel
    splits the notification's time in two: publish to Redis (which includes Kafka's
    acknowledgement, as notifications follow it) and Redis to the gRPC subscriber (the sidecar's
    fan-out leg). Streams that cannot keep up skip notifications in gaps, as their policy says;
    what they received is counted.
    """
    expected = int(rate * seconds)
    source_id = f"subs{subscribers}" + (f"x{max_per_message}" if max_per_message else "")
    processes = SubscriberProcesses(workdir, source_id, expected)
    if subscribers:
        processes.subscribers(
            subscribe_target or target,
            source_id,
            subscribers,
            seconds + 60,
            max_per_message=max_per_message,
            priority=subscriber_priority,
        )
        processes.redis_watcher(redis_url, source_id, seconds + 60)
        processes.wait_ready()
    sent_path = workdir / f"{source_id}-sent.json"
    with Sampler(pids) as sampler:
        publishing = go_loadgen(
            target, "open", seconds, "--rate", str(rate), "--source-id", source_id,
            "--sent-out", str(sent_path),
        )  # fmt: skip
        # Give the streams time to drain what they queued, then stop those still waiting.
        received = processes.results(stop_after=5.0) if subscribers else []
    failed = sum(publishing["errors"].values())
    figures: dict[str, Any] = {
        "subscribers": subscribers,
        "rate": rate,
        "failed_publishes": failed,
        "errors": publishing["errors"],
        "publish": {k: publishing[k] for k in ("p50_ms", "p99_ms", "p999_ms", "max_ms")},
    }
    if subscribers:
        sent = {event_id: at for event_id, at in json.loads(sent_path.read_text())}
        *via_sidecar, via_redis = received
        at_redis = dict(via_redis.receipts)
        latencies: list[float] = []
        fan_out_legs: list[float] = []
        for process in via_sidecar:
            for event_id, at in process.receipts:
                latencies.append(at - sent[event_id])
                if event_id in at_redis:
                    fan_out_legs.append(at - at_redis[event_id])
        to_redis = [at_redis[i] - sent[i] for i in sent if i in at_redis]
        figures.update(
            {
                "received": len(latencies),
                "expected": (expected - failed) * subscribers,
                "gaps": sum(p.gaps for p in via_sidecar),
                "streams_ended_by_sidecar": sum(p.streams_failed for p in via_sidecar),
                **percentiles(latencies),
                "publish_to_redis": percentiles(to_redis),
                "redis_to_subscriber": percentiles(fan_out_legs),
                "subscriber_processes_cpu_percent": [p.cpu_percent for p in via_sidecar],
            }
        )
    return {**figures, **sampler.figures()}


@dataclass(frozen=True)
class FanOut:
    """A fan-out run's shape: ``streams`` streams on one source (over ``connections``), one
    first event, ``paced`` events at ``rate`` per second, then ``burst`` events back to back;
    ``max_per_message`` above 1 lets the streams take several notifications per message."""

    streams: int
    paced: int
    rate: float
    burst: int
    connections: int = 1
    max_per_message: int = 0


async def fan_out(
    workdir: Path,
    target: str,
    pids: list[int],
    shape: FanOut,
    name: str,
    subscribe_target: str = "",
) -> dict[str, Any]:
    """``shape.streams`` local streams on one source, their client in a process of its own.

    First one event on the fresh streams, reported on its own: its deliveries are each
    stream's first, a one-off cost. Then the paced events, each started at its time on the clock
    (``start + n / rate``, not after the previous one returned, so the run offers the rate it
    names however slow a publish is): the latency of each event's last delivery, and the
    sidecar's CPU per 10,000 deliveries at that steady rate. Then the burst, published back to
    back: how many deliveries per second the sidecar sustains, and their CPU cost.
    ``subscribe_target``, if set, is where the streams go (a delivery process).
    """
    streams = shape.streams
    rss_before = rss_kib(pids)
    processes = SubscriberProcesses(workdir, name, 1 + shape.paced + shape.burst)
    processes.subscribers(
        subscribe_target or target, name, streams, 120, shape.connections,
        max_per_message=shape.max_per_message,
    )  # fmt: skip
    await asyncio.to_thread(processes.wait_ready)
    await asyncio.sleep(1)
    rss_idle = rss_kib(pids)
    sent: dict[str, float] = {}
    loop = asyncio.get_running_loop()
    async with DualstreamClient(target) as client:

        async def publish(event_id: str) -> None:
            sent[event_id] = time.monotonic()
            await client.publish(EventInput("bench", "bench", name, id=event_id))

        await publish("first")
        await asyncio.sleep(0.5)
        paced_cpu = cpu_seconds(pids)
        start = loop.time()
        publishes = []
        for number in range(shape.paced):
            await asyncio.sleep(max(0.0, start + number / shape.rate - loop.time()))
            publishes.append(asyncio.create_task(publish(f"paced-{number}")))
        await asyncio.gather(*publishes)
        offered_rate = (shape.paced - 1) / (sent[f"paced-{shape.paced - 1}"] - sent["paced-0"])
        # The last paced event's deliveries take tens of milliseconds; wait them out.
        await asyncio.sleep(0.5)
        paced_cpu = cpu_seconds(pids) - paced_cpu
        burst_cpu = cpu_seconds(pids)
        burst_started = time.monotonic()
        for number in range(shape.burst):
            await publish(f"burst-{number}")
    results = await asyncio.to_thread(processes.results)
    burst_cpu = cpu_seconds(pids) - burst_cpu
    last_delivery: dict[str, float] = {}
    received = 0
    for result in results:
        received += len(result.receipts)
        for event_id, at in result.receipts:
            last_delivery[event_id] = max(at, last_delivery.get(event_id, at))
    expected = streams * (1 + shape.paced + shape.burst)
    if received != expected:
        # A refused or broken stream would make every figure below flatter than the truth.
        raise RuntimeError(f"fan-out: {received} of {expected} deliveries arrived")
    paced_last = [last_delivery[i] - sent[i] for i in sent if i.startswith("paced-")]
    burst_end = max(at for i, at in last_delivery.items() if i.startswith("burst-"))
    return {
        "streams": streams,
        "connections": shape.connections,
        "max_per_message": shape.max_per_message,
        "received": received,
        "expected": expected,
        "messages": sum(r.messages for r in results),
        "paced_rate_offered": round(offered_rate, 2),
        "first_event_last_delivery_ms": round((last_delivery["first"] - sent["first"]) * 1000, 3),
        "last_delivery": percentiles(paced_last),
        "paced_cpu_s_per_10k_deliveries": per_10k(paced_cpu, streams * shape.paced),
        "deliveries_per_s": round(streams * shape.burst / (burst_end - burst_started), 1),
        "burst_cpu_s_per_10k_deliveries": per_10k(burst_cpu, streams * shape.burst),
        "rss_per_idle_stream_kib": round((rss_idle - rss_before) / streams, 2),
        "subscriber_processes_cpu_percent": [r.cpu_percent for r in results],
    }


def fan_out_shapes(*, smoke: bool, connections: int = 1) -> dict[str, FanOut]:
    """The fan-out runs: streams that take one notification per message (what every client
    gets unless it asks), and streams that opted in to up to 64 per message."""
    streams, paced, burst = (100, 10, 10) if smoke else (1000, 200, 100)
    single = FanOut(streams, paced, 20.0, burst, connections)
    return {"": single, "_batched": replace(single, max_per_message=64)}


async def sampled_fan_outs(
    workdir: Path,
    target: str,
    pids: list[int],
    *,
    smoke: bool,
    connections: int,
    prefix: str = "",
    suffix: str = "",
    subscribe_target: str = "",
) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for variant, shape in fan_out_shapes(smoke=smoke, connections=connections).items():
        name = f"{prefix}fan_out{suffix}{variant}"
        with Sampler(pids) as sampler:
            result = await fan_out(
                workdir, target, pids, shape, name.replace("_", "-"), subscribe_target
            )
        figures[name] = {**result, **sampler.figures()}
    return figures


def fan_out_in_child(
    workdir: Path,
    target: str,
    pids: list[int],
    *,
    smoke: bool,
    prefix: str = "",
    suffix: str = "",
    subscribe_target: str = "",
    connections: int = 1,
) -> dict[str, Any]:
    """The fan-out runs from a fresh process: grpc.aio serves only the first event loop of a
    process, and this one's is used by the runs against the single-worker sidecar."""
    command = [
        sys.executable, "-m", "bench.run", "--fan-out-against", target,
        "--pids", ",".join(map(str, pids)), "--workdir", str(workdir),
        "--prefix", prefix, "--suffix", suffix, "--connections", str(connections),
        "--subscribe-against", subscribe_target, *(["--smoke"] if smoke else []),
    ]  # fmt: skip
    finished = subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(finished.stdout.strip().splitlines()[-1])
    return result


def overload(target: str, capacity: float, seconds: float, pids: list[int]) -> dict[str, Any]:
    """Past capacity: an open loop at twice the closed loop's calls/s, then a burst of 3,000
    calls started at once. Calls beyond what the sidecar can serve should be refused at once
    with RESOURCE_EXHAUSTED and a retry hint; none should end CANCELLED; the accepted ones'
    latency is reported. The open loop runs twice: the sidecar alone, and with the calls
    going through the Go client's throttle, which holds back unsent the calls the sidecar
    would refuse anyway."""
    figures: dict[str, Any] = {}
    twice = ("open", "--rate", str(round(2 * capacity)))
    runs = {
        "overload_open_loop_2x": twice,
        "overload_open_loop_2x_client_throttle": (*twice, "--throttle"),
        "overload_burst_3000": ("burst", "--calls", "3000"),
    }
    for name, (mode, *args) in runs.items():
        time.sleep(2)  # Let the previous run's calls drain.
        with Sampler(pids) as sampler:
            result = go_loadgen(target, mode, seconds, *args)
        figures[name] = {**result, **sampler.figures()}
    return figures


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    smoke = args.smoke
    seconds = 2.0 if smoke else 10.0
    records = 20_000 if smoke else 500_000
    build_go_tools()
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "smoke": smoke,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": {
            "acks": "all",
            "idempotence": True,
            "linger_ms": LINGER_MS,
            "batch_bytes": BATCH_BYTES,
            "payload_bytes": len(PAYLOAD),
            "unary_concurrency": UNARY_CONCURRENCY,
        },
    }
    with (
        KafkaBroker(workdir / "kafka", port=free_port(), controller_port=free_port()) as kafka,
        RedisServer(workdir / "redis", port=free_port()) as redis,
    ):
        for topic in ("perf", "raw", "confluent", "gopeer", "events"):
            create_topic(kafka.bootstrap, topic, 6)
        assert kafka.pid is not None
        broker = Broker(kafka.pid, 0.5 if smoke else 2).measure_idle()
        base: dict[str, Any] = {"broker_idle_cpu_percent": round(100 * broker.idle_cpu_per_s, 2)}
        base["kafka_producer_performance"] = kafka_producer_performance(
            kafka.bootstrap, "perf", records
        )
        base["aiokafka_raw"] = asyncio.run(
            aiokafka_raw(kafka.bootstrap, "raw", records, seconds, broker, UNARY_CONCURRENCY)
        )
        base["confluent_kafka_raw"] = confluent_kafka_raw(kafka.bootstrap, "confluent", records)
        base["redis_benchmark_publish"] = redis_benchmark(redis.port, records)
        base.update(empty_grpc(workdir, seconds, smoke=smoke))
        for name, figures in go_peer(kafka.bootstrap, redis.port, seconds).items():
            base[f"go_peer_{name}"] = figures
        results["baselines"] = base

        sidecar, target = start_sidecar(workdir / "sidecar", kafka.bootstrap, redis.url)
        ours: dict[str, Any] = {}
        try:
            assert sidecar.pid is not None
            pids = [sidecar.pid]

            def sampled(run: Any) -> dict[str, Any]:
                with Sampler(pids, broker) as sampler:
                    figures: dict[str, Any] = run()
                return {**figures, **sampler.figures(figures.get("events"))}

            # Latency first, after a pause that lets the broker settle from the baselines'
            # floods; the baselines' latency floor is also measured before their throughput.
            time.sleep(0 if smoke else 10)
            ours["publish_open_loop_1000"] = sampled(
                lambda: loadgen(target, "open", "--seconds", str(seconds), "--rate", "1000")
            )
            # Isolation: the same 1k publishes/s under ever more subscribers.
            for subscribers in (0, 1, 10, 100, 1000):
                ours[f"subscribers_{subscribers}"] = with_subscribers(
                    workdir, target, redis.url, pids, subscribers, 1000, min(seconds, 5)
                )
            # And with streams that take batches, as the clients in clients/ ask by default.
            for subscribers in (10, 100, 1000):
                ours[f"subscribers_{subscribers}_batched"] = with_subscribers(
                    workdir, target, redis.url, pids, subscribers, 1000, min(seconds, 5),
                    max_per_message=64,
                )  # fmt: skip
            # grpc.aio binds to the first event loop of a process: one loop for all of these.
            ours.update(
                asyncio.run(sampled_fan_outs(workdir, target, pids, smoke=smoke, connections=1))
            )
            ours["publish_closed_loop"] = sampled(
                lambda: loadgen(
                    target,
                    "closed",
                    "--seconds",
                    str(seconds),
                    "--concurrency",
                    str(UNARY_CONCURRENCY),
                )
            )
            ours["publish_closed_loop_go_client"] = sampled(
                lambda: go_loadgen(
                    target, "closed", seconds, "--concurrency", str(UNARY_CONCURRENCY)
                )
            )
            for batch in (10, 100, 1000):
                ours[f"publish_batch_{batch}"] = sampled(
                    lambda batch=batch: go_loadgen(
                        target, "closed", seconds, "--batch", str(batch), "--concurrency", "8"
                    )
                )
            # Overload last: more than one worker can serve, to show how it is refused.
            ours.update(
                overload(
                    target, ours["publish_closed_loop_go_client"]["calls_per_s"], seconds, pids
                )
            )
        finally:
            sidecar.stop()
        ours.update(
            several_workers(workdir, kafka.bootstrap, redis.url, 2, seconds, broker, smoke=smoke)
        )
        ours.update(
            delivery_process(workdir, kafka.bootstrap, redis.url, min(seconds, 5), smoke=smoke)
        )
        ours["idle_streams_fresh_sidecar"] = idle_streams_rss(
            workdir, kafka.bootstrap, redis.url, 100 if smoke else 1000
        )
        telemetry = telemetry_costs(
            workdir, kafka.bootstrap, redis.url, seconds, broker, smoke=smoke
        )
        ours.update(telemetry["runs"])
        results["ours"] = ours
    results["ratios"] = {**ratios(results), **telemetry["ratios"]}
    results["bench_process_max_rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return results


def telemetry_costs(
    workdir: Path, bootstrap: str, redis_url: str, seconds: float, broker: Broker, *, smoke: bool
) -> dict[str, Any]:
    """What telemetry costs the unary path: the Go client's closed loop against a sidecar with
    everything off (``OTEL_SDK_DISABLED``), with metrics only (the default; ``/metrics``
    scraped every second, far more often than Prometheus would), with every span exported to
    a real Jaeger as well, and with one trace in ten sampled (parent-based ratio). The arms
    alternate over several rounds (medians), so that the machine's drift hits each alike.
    Returns the runs and their ratios."""
    from stack.jaeger import JaegerServer

    otlp_port, query_port = free_ports(2)
    exported = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}"}
    arms = {
        "telemetry_off": {"OTEL_SDK_DISABLED": "true"},
        "telemetry_metrics": {},
        "telemetry_tracing": exported,
        "telemetry_tracing_sampled_10": {
            **exported,
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.1",
        },
    }
    rounds: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    with JaegerServer(workdir / "jaeger", otlp_port, query_port):
        for number in range(1 if smoke else 3):
            for arm, environment in arms.items():
                sidecar, target = start_sidecar(
                    workdir / f"{arm}-{number}", bootstrap, redis_url, extra_env=environment
                )
                try:
                    assert sidecar.pid is not None
                    go_loadgen(target, "closed", 1.0, "--concurrency", str(UNARY_CONCURRENCY))
                    with _scraping(sidecar.admin_port), Sampler(sidecar.pid, broker) as sampler:
                        run = go_loadgen(
                            target, "closed", seconds, "--concurrency", str(UNARY_CONCURRENCY)
                        )
                    rounds[arm].append({**run, **sampler.figures(run.get("events"))})
                finally:
                    sidecar.stop()

    def median_run(arm: str) -> dict[str, Any]:
        ordered = sorted(rounds[arm], key=lambda run: run["calls_per_s"])
        return {**ordered[len(ordered) // 2], "rounds": [r["calls_per_s"] for r in ordered]}

    runs = {arm: median_run(arm) for arm in arms}
    off, metrics, tracing, sampled = (runs[arm]["calls_per_s"] for arm in arms)

    def ratio(value: float, to: float) -> float:
        return round(value / to, 3) if to else 0.0

    # Tracing is compared with the metrics arm: both record metrics, only one traces.
    return {
        "runs": runs,
        "ratios": {
            "unary_metrics_on_vs_off (target >= 0.85)": ratio(metrics, off),
            "unary_tracing_exported_vs_off (target >= 0.85)": ratio(tracing, metrics),
            "unary_tracing_one_in_ten_sampled_vs_off": ratio(sampled, metrics),
        },
    }


@contextlib.contextmanager
def _scraping(admin_port: int) -> Iterator[None]:
    """GET /metrics every second in a thread while the block runs."""
    stop = threading.Event()

    def scrape() -> None:
        while not stop.wait(1.0):
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5).read()

    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    try:
        yield
    finally:
        stop.set()
        scraper.join()


def start_sidecar(
    workdir: Path,
    bootstrap: str,
    redis_url: str,
    *extra_args: str,
    extra_env: dict[str, str] | None = None,
    subscribe_port: int | None = None,
) -> tuple[SidecarProcess, str]:
    """A sidecar with the benchmark's settings; returns it and its address. The fan-out opens
    1,000 streams from one client, beyond the default per-client limit. With
    ``subscribe_port``, streams have a process of their own there."""
    port = free_port()
    sidecar = SidecarProcess(
        workdir, port, bootstrap, redis_url, "events",
        extra_args=["--kafka-linger-ms", str(LINGER_MS), "--kafka-max-batch-bytes",
                    str(BATCH_BYTES), "--max-streams-per-client", "5000",
                    "--log-level", "WARNING", *extra_args],
        extra_env=extra_env, subscribe_port=subscribe_port,
    )  # fmt: skip
    sidecar.start()
    return sidecar, f"127.0.0.1:{port}"


@contextlib.contextmanager
def idle_cpu_hogs() -> Iterator[None]:
    """A busy loop under SCHED_IDLE on every core while the block runs."""
    hogs = [
        subprocess.Popen([*priority_prefix("idle"), sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 1)
    ]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def delivery_process(
    workdir: Path, bootstrap: str, redis_url: str, seconds: float, *, smoke: bool
) -> dict[str, Any]:
    """Isolation and the fan-out again, against a sidecar whose streams have a process of
    their own (``--subscribe-listen``, at the default lower CPU priority, SCHED_IDLE): the
    publishes go to the listen address, the subscribers to the delivery process's. The smoke
    run checks the plumbing only, at equal priority: CI may run it beside a CPU hog, which
    would leave an idle-policy delivery process next to no CPU to start in.

    The subscribing client shares the two cores here, at the same priority as the publishing
    load, while a sidecar's subscribers (gateways, UIs) would be on other machines. So the
    last runs take 1,000 subscribers again with that client under SCHED_IDLE, beside two
    runs with none to compare them with: again on a quiet machine, and beside a SCHED_IDLE
    busy loop on every core, which does nothing but take the CPU nobody else wants. That is
    the floor of any isolation by CPU policy: what it costs the publishes on this machine
    that the cores they leave are used at all."""
    equal_priority = ["--delivery-cpu-policy", "nice", "--delivery-nice", "0"]
    idle_client: SubscriberPriority = 0 if smoke else "idle"
    sidecar, target = start_sidecar(
        workdir / "sidecar-delivery-process", bootstrap, redis_url,
        *(equal_priority if smoke else []), subscribe_port=free_port(),
    )  # fmt: skip
    figures: dict[str, Any] = {}
    try:
        pids = sidecar.worker_pids()
        runs: list[tuple[int, int, SubscriberPriority, str]] = [
            *[(n, 0, 0, "") for n in (0, 10, 100, 1000)],
            *[(n, 64, 0, "_batched") for n in (10, 100, 1000)],
            (0, 0, 0, "_again"),
            (0, 0, 0, "_beside_idle_cpu_hogs"),
            (1000, 0, idle_client, "_idle_client"),
            (1000, 64, idle_client, "_batched_idle_client"),
        ]
        for subscribers, batched, priority, suffix in runs:
            name = f"subscribers_{subscribers}_delivery_process{suffix}"
            beside = idle_cpu_hogs() if suffix == "_beside_idle_cpu_hogs" else None
            with beside or contextlib.nullcontext():
                figures[name] = with_subscribers(
                    workdir / name, target, redis_url, pids, subscribers, 1000, seconds,
                    batched, subscribe_target=sidecar.subscribe_target,
                    subscriber_priority=priority,
                )  # fmt: skip
        figures.update(
            fan_out_in_child(
                workdir / "fan-delivery-process", target, pids, smoke=smoke,
                suffix="_delivery_process", subscribe_target=sidecar.subscribe_target,
            )
        )  # fmt: skip
    finally:
        sidecar.stop()
    return figures


def idle_streams_rss(workdir: Path, bootstrap: str, redis_url: str, streams: int) -> dict[str, Any]:
    """RSS per idle stream, on a sidecar started for it. The fan-out's own figure comes from
    the sidecar every earlier run used: its heap has room to spare, or frees what those runs
    left behind while the streams open, so that figure was 0 or negative as often as not."""
    sidecar, target = start_sidecar(workdir / "sidecar-idle-streams", bootstrap, redis_url)
    try:
        assert sidecar.pid is not None
        time.sleep(1)
        before = rss_kib([sidecar.pid])
        processes = SubscriberProcesses(workdir, "idle-streams", 1)
        processes.subscribers(target, "idle-streams", streams, 120)
        processes.wait_ready()
        time.sleep(1)
        after = rss_kib([sidecar.pid])
        processes.results(stop_after=0)
    finally:
        sidecar.stop()
    return {"streams": streams, "rss_per_idle_stream_kib": round((after - before) / streams, 2)}


def several_workers(
    workdir: Path,
    bootstrap: str,
    redis_url: str,
    workers: int,
    seconds: float,
    broker: Broker,
    *,
    smoke: bool,
) -> dict[str, Any]:
    """The unary, batch and fan-out runs against ``--workers N``, the load spread over 8
    connections."""
    sidecar, target = start_sidecar(
        workdir / f"sidecar-{workers}", bootstrap, redis_url, "--workers", str(workers)
    )
    figures: dict[str, Any] = {}
    try:
        assert sidecar.pid is not None
        pids = sidecar.worker_pids()
        # As with one worker: the latency run first, after the broker settles from the floods
        # before it, and the throughput floods after. The streams go over 8 connections, which
        # the kernel spreads across the workers.
        time.sleep(0 if smoke else 10)
        figures.update(
            fan_out_in_child(
                workdir / f"fan-{workers}",
                target,
                pids,
                smoke=smoke,
                suffix=f"_{workers}_workers",
                connections=8,
            )
        )
        for batch, concurrency in ((1, UNARY_CONCURRENCY), (100, 8), (1000, 8)):
            with Sampler(pids, broker) as sampler:
                result = go_loadgen(
                    target, "closed", seconds, "--batch", str(batch),
                    "--concurrency", str(concurrency), "--connections", "8",
                )  # fmt: skip
            name = "publish_closed_loop" if batch == 1 else f"publish_batch_{batch}"
            figures[f"{name}_{workers}_workers"] = {**result, **sampler.figures(result["events"])}
    finally:
        sidecar.stop()
    return figures


OPEN_LOOP_2X = ("overload_open_loop_2x", "overload_open_loop_2x_client_throttle")


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    base, ours = results["baselines"], results["ours"]
    batches = (10, 100, 1000)
    best_batch = max(ours[f"publish_batch_{b}"]["events_per_s"] for b in batches)
    best_batch_workers = max(
        ours[f"publish_batch_{b}_2_workers"]["events_per_s"] for b in (100, 1000)
    )
    best_go_batch = max(base[f"go_peer_publish_batch_{b}"]["events_per_s"] for b in batches)
    raw = base["aiokafka_raw"]
    empty_grpc = base["grpc_empty_handler"]["calls_per_s"]
    unary = ours["publish_closed_loop_go_client"]
    e2e_10 = ours["subscribers_10"]
    fan_out, batched = ours["fan_out"], ours["fan_out_batched"]
    quiet_p99 = ours["subscribers_0"]["publish"]["p99_ms"]
    quiet_delivery_p99 = min(
        ours[f"subscribers_0_delivery_process{run}"]["publish"]["p99_ms"] for run in ("", "_again")
    )
    hogs_p99 = ours["subscribers_0_delivery_process_beside_idle_cpu_hogs"]["publish"]["p99_ms"]
    throttled = ours["overload_open_loop_2x_client_throttle"]

    def ratio(value: float, to: float) -> float:
        return round(value / to, 3) if to else 0.0

    return {
        "unary_sidecar_cpu_s_per_10k_events (target <= 2.5)": unary["sidecar_cpu_s_per_10k_events"],
        "floor: grpc_empty_handler_cpu_s_per_10k_calls": base["grpc_empty_handler_go_client"][
            "sidecar_cpu_s_per_10k_events"
        ],
        "unary_broker_cpu_per_event_vs_raw_aiokafka_same_concurrency (target <= 1.5)": ratio(
            unary["broker_cpu_s_per_10k_events"],
            raw["closed_loop"]["broker_cpu_s_per_10k_events"],
        ),
        "batch_100_vs_raw_aiokafka_per_message (target >= 1)": ratio(
            ours["publish_batch_100"]["events_per_s"], raw["events_per_s"]
        ),
        "best_batch_vs_raw_aiokafka": ratio(best_batch, raw["events_per_s"]),
        "batch_2_workers_vs_raw_aiokafka": ratio(best_batch_workers, raw["events_per_s"]),
        "raw_aiokafka_vs_raw_confluent_kafka": ratio(
            raw["events_per_s"], base["confluent_kafka_raw"]["events_per_s"]
        ),
        "batch_vs_go_peer_batch": ratio(best_batch, best_go_batch),
        "unary_vs_go_peer_publish": ratio(
            unary["events_per_s"], base["go_peer_publish"]["events_per_s"]
        ),
        "unary_vs_empty_grpc": ratio(ours["publish_closed_loop"]["calls_per_s"], empty_grpc),
        "unary_vs_empty_grpc_both_with_go_client": ratio(
            unary["calls_per_s"], base["grpc_empty_handler_go_client"]["calls_per_s"]
        ),
        "unary_2_workers_vs_empty_grpc_go_client": ratio(
            ours["publish_closed_loop_2_workers"]["calls_per_s"],
            base["grpc_empty_handler_go_client"]["calls_per_s"],
        ),
        "p99_at_1k_minus_send_and_wait_p99_ms (target <= 2)": round(
            ours["publish_open_loop_1000"]["p99_ms"] - raw["send_and_wait_1k"]["p99_ms"], 3
        ),
        "fan_out_cpu_s_per_10k_deliveries_paced (target <= 0.25)": fan_out[
            "paced_cpu_s_per_10k_deliveries"
        ],
        "fan_out_batched_cpu_s_per_10k_deliveries_paced": batched["paced_cpu_s_per_10k_deliveries"],
        "floor: grpc_empty_fan_out_cpu_s_per_10k_deliveries_paced": base["grpc_empty_fan_out"][
            "paced_cpu_s_per_10k_deliveries"
        ],
        "floor: grpc_empty_fan_out_burst_deliveries_per_s": base["grpc_empty_fan_out"][
            "deliveries_per_s"
        ],
        "floor: grpc_empty_fan_out_batched_burst_deliveries_per_s": base[
            "grpc_empty_fan_out_batched"
        ]["deliveries_per_s"],
        "fan_out_last_delivery_p99_ms (target <= 50)": fan_out["last_delivery"]["p99_ms"],
        "fan_out_batched_last_delivery_p99_ms": batched["last_delivery"]["p99_ms"],
        "fan_out_burst_deliveries_per_s (target >= 50000)": fan_out["deliveries_per_s"],
        "fan_out_batched_burst_deliveries_per_s": batched["deliveries_per_s"],
        "fan_out_2_workers_burst_deliveries_per_s": ours["fan_out_2_workers"]["deliveries_per_s"],
        # Streams in a delivery process of their own: the publishes no longer wait behind the
        # deliveries, so a burst's notifications queue up and batched streams take them up to
        # 64 to a message.
        "fan_out_delivery_process_single_and_batched_cpu_s_per_10k_deliveries_paced": [
            ours[f"fan_out_delivery_process{kind}"]["paced_cpu_s_per_10k_deliveries"]
            for kind in ("", "_batched")
        ],
        "fan_out_delivery_process_single_and_batched_last_delivery_p99_ms": [
            ours[f"fan_out_delivery_process{kind}"]["last_delivery"]["p99_ms"]
            for kind in ("", "_batched")
        ],
        "fan_out_delivery_process_single_and_batched_burst_deliveries_per_s": [
            ours[f"fan_out_delivery_process{kind}"]["deliveries_per_s"] for kind in ("", "_batched")
        ],
        "rss_per_idle_stream_kib (target <= 30)": ours["idle_streams_fresh_sidecar"][
            "rss_per_idle_stream_kib"
        ],
        "failed_publishes_with_10_100_1000_subscribers (target 0)": [
            ours[f"subscribers_{n}"]["failed_publishes"] for n in (10, 100, 1000)
        ],
        "failed_publishes_with_10_100_1000_batched_subscribers": [
            ours[f"subscribers_{n}_batched"]["failed_publishes"] for n in (10, 100, 1000)
        ],
        "gaps_of_10_subscribers_single_and_batched": [
            ours["subscribers_10"]["gaps"],
            ours["subscribers_10_batched"]["gaps"],
        ],
        "notification_e2e_10_batched_p50_ms": ours["subscribers_10_batched"]["p50_ms"],
        "publish_p99_1000_subscribers_minus_none_ms (target <= 2)": round(
            ours["subscribers_1000"]["publish"]["p99_ms"] - quiet_p99, 3
        ),
        "failed_publishes_delivery_process_10_100_1000_single_and_batched": [
            ours[f"subscribers_{n}_delivery_process{kind}"]["failed_publishes"]
            for kind in ("", "_batched")
            for n in (10, 100, 1000)
        ],
        "publish_p99_1000_subscribers_minus_none_delivery_process_single_and_batched_ms": [
            round(
                ours[f"subscribers_1000_delivery_process{kind}"]["publish"]["p99_ms"]
                - ours["subscribers_0_delivery_process"]["publish"]["p99_ms"],
                3,
            )
            for kind in ("", "_batched")
        ],
        # The subscribing client under SCHED_IDLE, as if on another machine, against the
        # quieter of the block's two runs with none (the later one follows 1,000 subscribers'
        # teardown and now and then catches a stall; the quieter makes the target harder), and
        # against the same runs beside idle-policy busy loops, the floor of any CPU policy.
        "floor: publish_p99_beside_idle_cpu_hogs_minus_none_delivery_process_ms": round(
            hogs_p99 - quiet_delivery_p99, 3
        ),
        **{
            f"publish_p99_1000_idle_client_subscribers_minus_{baseline}_delivery_process"
            f"_single_and_batched_ms{label}": [
                round(
                    ours[f"subscribers_1000_delivery_process{kind}_idle_client"]["publish"][
                        "p99_ms"
                    ]
                    - baseline_p99,
                    3,
                )
                for kind in ("", "_batched")
            ]
            for baseline, baseline_p99, label in (
                ("none", quiet_delivery_p99, " (target <= 2)"),
                ("idle_cpu_hogs", hogs_p99, " (the same against its floor)"),
            )
        },
        "failed_publishes_delivery_process_1000_idle_client_single_and_batched": [
            ours[f"subscribers_1000_delivery_process{kind}_idle_client"]["failed_publishes"]
            for kind in ("", "_batched")
        ],
        "notification_e2e_10_p50_ms (target <= 1.5)": e2e_10["p50_ms"],
        "notification_e2e_10_p99_ms (target <= 5)": e2e_10["p99_ms"],
        "floor_for_e2e: send_and_wait_1k_p50_ms": raw["send_and_wait_1k"]["p50_ms"],
        "notification_e2e_10_redis_to_subscriber_p50_ms": e2e_10["redis_to_subscriber"]["p50_ms"],
        "notification_e2e_10_redis_to_subscriber_p99_ms": e2e_10["redis_to_subscriber"]["p99_ms"],
        "overload_cancelled_open_loop_2x_and_burst_3000 (target 0)": [
            ours[name]["errors"].get("CANCELLED", 0)
            for name in ("overload_open_loop_2x", "overload_burst_3000")
        ],
        "overload_accepted_p99_ms_open_loop_2x_and_burst_3000": [
            ours[name]["p99_ms"] for name in ("overload_open_loop_2x", "overload_burst_3000")
        ],
        "overload_open_loop_2x_refusal_p50_ms_sidecar_alone_and_with_client_throttle": [
            ours[name]["refusal"]["p50_ms"] for name in OPEN_LOOP_2X
        ],
        "overload_open_loop_2x_accepted_p99_ms_sidecar_alone_and_with_client_throttle": [
            ours[name]["p99_ms"] for name in OPEN_LOOP_2X
        ],
        "overload_open_loop_2x_client_throttle_held_back_share": ratio(
            throttled["throttled"],
            throttled["calls"] + sum(throttled["errors"].values()) + throttled["throttled"],
        ),
    }


def write(results: dict[str, Any], stem: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    note = " (smoke: figures mean nothing)" if results["smoke"] else ""
    lines = [
        f"# Benchmark {results['date']}{note}",
        "",
        "| measurement | figures |",
        "| --- | --- |",
    ]
    for group in ("baselines", "ours"):
        for name, figures in results[group].items():
            lines.append(f"| {group}: {name} | {_compact(figures)} |")
    lines += ["", "| ratio against the same run's baseline | value |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in results["ratios"].items()]
    markdown = RESULTS / f"{stem}.md"
    markdown.write_text("\n".join(lines) + "\n")
    plot(results, stem)
    return markdown


def _compact(figures: Any) -> str:
    return (
        ", ".join(
            f"{k}={_compact_value(v)}"
            for k, v in figures.items()
            if not isinstance(v, list) and (not isinstance(v, str) or len(v) < 40)
        )
        if isinstance(figures, dict)
        else str(figures)
    )


def _compact_value(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if not isinstance(v, list)}
    return value


def plot(results: dict[str, Any], stem: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ours, base = results["ours"], results["baselines"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    sizes = [1, 10, 100, 1000]
    rates = [ours["publish_closed_loop"]["events_per_s"]] + [
        ours[f"publish_batch_{b}"]["events_per_s"] for b in sizes[1:]
    ]
    left.plot(sizes, rates, marker="o", label="dualstream, 1 worker")
    left.plot(
        [1, 100, 1000],
        [ours[f"{n}_2_workers"]["events_per_s"]
         for n in ("publish_closed_loop", "publish_batch_100", "publish_batch_1000")],
        marker="s", label="dualstream, 2 workers",
    )  # fmt: skip
    left.plot(
        sizes,
        [base["go_peer_publish"]["events_per_s"]]
        + [base[f"go_peer_publish_batch_{b}"]["events_per_s"] for b in sizes[1:]],
        marker="^", label="Go peer (in process)",
    )  # fmt: skip
    left.axhline(base["aiokafka_raw"]["events_per_s"], linestyle="--", label="raw aiokafka")
    left.axhline(
        base["confluent_kafka_raw"]["events_per_s"], linestyle="-.", label="raw confluent-kafka"
    )
    left.axhline(
        base["kafka_producer_performance"]["events_per_s"],
        linestyle=":",
        label="Kafka ProducerPerformance",
    )
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("events per call")
    left.set_ylabel("events/s")
    left.set_title("Throughput against batch size")
    left.legend(fontsize="small")
    curves = {
        "aiokafka send_and_wait 1k/s": base["aiokafka_raw"]["send_and_wait_1k"],
        "Publish 1k/s": ours["publish_open_loop_1000"],
        "e2e 1 sub": ours["subscribers_1"],
        "e2e 10 subs": ours["subscribers_10"],
        "Redis to 10 subs": ours["subscribers_10"]["redis_to_subscriber"],
        "last of 1,000 streams": ours["fan_out"]["last_delivery"],
        "last of 1,000 streams, batched": ours["fan_out_batched"]["last_delivery"],
        "last of 1,000 streams, 2 workers": ours["fan_out_2_workers"]["last_delivery"],
    }
    for label, figures in curves.items():
        right.plot(figures["cdf_ms"], CDF_QUANTILES, label=label)
    right.set_xscale("log")
    right.set_xlabel("ms")
    right.set_ylabel("fraction of calls / deliveries")
    right.set_title("Latency CDFs")
    right.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(RESULTS / f"{stem}.png", dpi=100)


def show_in_readme(markdown: Path) -> None:
    """Put the run's table between the README's ``bench:start`` and ``bench:end`` markers."""
    readme = REPO / "README.md"
    text = readme.read_text()
    start, end = "<!-- bench:start -->\n", "<!-- bench:end -->"
    before, _, rest = text.partition(start)
    _, found, after = rest.partition(end)
    if not found:
        return
    table = markdown.read_text().split("\n", 1)[1].strip()  # Without the run's heading.
    readme.write_text(f"{before}{start}{table}\n{end}{after}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="a brief run that checks the harness")
    parser.add_argument("--fan-out-against", metavar="TARGET", help=argparse.SUPPRESS)
    parser.add_argument("--pids", default="", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default="", help=argparse.SUPPRESS)
    parser.add_argument("--suffix", default="", help=argparse.SUPPRESS)
    parser.add_argument("--subscribe-against", default="", help=argparse.SUPPRESS)
    parser.add_argument("--connections", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fan_out_against:
        pids = [int(pid) for pid in args.pids.split(",")]
        result = asyncio.run(
            sampled_fan_outs(
                args.workdir,
                args.fan_out_against,
                pids,
                smoke=args.smoke,
                connections=args.connections,
                prefix=args.prefix,
                suffix=args.suffix,
                subscribe_target=args.subscribe_against,
            )
        )
        print(json.dumps(result))
        return
    workdir = Path(tempfile.mkdtemp(prefix="dualstream-bench-"))
    results = measure(args, workdir)
    # Its Kafka log alone is hundreds of MB a run; a run that fails keeps it, with the logs.
    shutil.rmtree(workdir, ignore_errors=True)
    stem = ("smoke-" if args.smoke else "") + datetime.date.today().isoformat()
    if args.smoke:
        global RESULTS
        RESULTS = REPO / "build" / "bench"
    markdown = write(results, stem)
    if not args.smoke:
        show_in_readme(markdown)
    print(markdown.read_text())


if __name__ == "__main__":
    main()
