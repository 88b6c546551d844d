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
import datetime
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from dualstream_client import DualstreamClient, EventInput, Notification
from stack.localstack import (
    KafkaBroker,
    RedisServer,
    SidecarProcess,
    create_topic,
    ensure_kafka_jars,
    free_port,
)

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
PAYLOAD = b"x" * 200
# One set of producer settings for every Kafka client measured.
LINGER_MS = 2
BATCH_BYTES = 65536


class Sampler:
    """Samples a process's RSS and CPU time in a thread while a measurement runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_rss_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_rss_kib = max(self.peak_rss_kib, self.rss_kib())
            self._stop.wait(0.1)

    def __enter__(self) -> Sampler:
        self._cpu_start, self._wall_start = self.cpu_seconds(), time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        wall = time.monotonic() - self._wall_start
        self.cpu_percent = round(100 * (self.cpu_seconds() - self._cpu_start) / wall, 1)

    def figures(self) -> dict[str, Any]:
        return {"sidecar_cpu_percent": self.cpu_percent, "sidecar_peak_rss_kib": self.peak_rss_kib}


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


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)

    def at(q: float) -> float:
        if not ordered:
            return 0.0
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {"p50_ms": at(0.5), "p99_ms": at(0.99), "p999_ms": at(0.999)}


async def aiokafka_raw(bootstrap: str, topic: str, records: int, seconds: float) -> dict[str, Any]:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=LINGER_MS,
        max_batch_size=BATCH_BYTES,
    )
    await producer.start()
    try:
        started = time.monotonic()
        pending = []
        for number in range(records):
            pending.append(await producer.send(topic, PAYLOAD, key=f"s{number % 64}".encode()))
        await asyncio.gather(*pending)
        throughput = records / (time.monotonic() - started)
        # send_and_wait at 1k/s, open loop: the latency floor for one acknowledged event.
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
    finally:
        await producer.stop()
    return {"events_per_s": round(throughput, 1), "send_and_wait_1k": _percentiles(latencies)}


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


def empty_grpc(seconds: float) -> dict[str, Any]:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "bench.empty_server", str(port)], cwd=REPO)
    try:
        for _ in range(100):
            try:
                return loadgen(f"127.0.0.1:{port}", "closed", "--seconds", str(seconds))
            except subprocess.CalledProcessError:
                time.sleep(0.1)
        raise RuntimeError("the empty gRPC server did not start")
    finally:
        server.terminate()
        server.wait()


async def notification_latency(
    target: str, subscribers: int, rate: float, seconds: float
) -> dict[str, Any]:
    """Publish at ``rate`` and time each notification's arrival at every subscriber."""
    sent: dict[str, float] = {}
    latencies: list[float] = []
    async with DualstreamClient(target) as client:
        streams = [client.subscribe([("bench", "e2e")]) for _ in range(subscribers)]
        await asyncio.gather(*(s.wait_live() for s in streams))
        expected = int(rate * seconds)
        loop = asyncio.get_running_loop()

        async def receive(stream: Any) -> None:
            async for message in stream:
                if isinstance(message, Notification):
                    latencies.append(loop.time() - sent[message.id])

        receivers = [asyncio.create_task(receive(s)) for s in streams]
        start = loop.time()
        publishes = []
        for number in range(expected):
            scheduled = start + number / rate
            await asyncio.sleep(max(0.0, scheduled - loop.time()))
            event_id = f"e2e-{subscribers}-{number}-{time.monotonic_ns()}"
            sent[event_id] = loop.time()
            publishes.append(
                asyncio.create_task(
                    client.publish(EventInput("bench", "bench", "e2e", id=event_id))
                )
            )
        outcomes = await asyncio.gather(*publishes, return_exceptions=True)
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        arriving = (expected - len(failed)) * subscribers
        settle = loop.time() + 30
        while len(latencies) < arriving and loop.time() < settle:
            await asyncio.sleep(0.05)
        for stream in streams:
            stream.close()
        for receiver in receivers:
            receiver.cancel()
    return {
        "subscribers": subscribers,
        "rate": rate,
        "failed_publishes": len(failed),
        "received": len(latencies),
        **_percentiles(latencies),
    }


async def fan_out(target: str, sampler: Sampler, streams_count: int, events: int) -> dict[str, Any]:
    async with DualstreamClient(target) as client:
        rss_before = sampler.rss_kib()
        streams = [client.subscribe([("bench", "fan")]) for _ in range(streams_count)]
        await asyncio.gather(*(s.wait_live() for s in streams))
        await asyncio.sleep(1)
        rss_idle = sampler.rss_kib()
        last_delivery: dict[str, float] = {}
        sent: dict[str, float] = {}
        loop = asyncio.get_running_loop()

        async def receive(stream: Any) -> None:
            for _ in range(events):
                message = await anext(stream)
                while not isinstance(message, Notification):
                    message = await anext(stream)
                last_delivery[message.id] = loop.time()

        receivers = [asyncio.create_task(receive(s)) for s in streams]
        started = loop.time()
        for number in range(events):
            event_id = f"fan-{number}-{time.monotonic_ns()}"
            sent[event_id] = loop.time()
            await client.publish(EventInput("bench", "bench", "fan", id=event_id))
            await asyncio.sleep(0.05)
        await asyncio.wait_for(asyncio.gather(*receivers), 120)
        elapsed = max(last_delivery.values()) - started
        for stream in streams:
            stream.close()
    last = [last_delivery[i] - sent[i] for i in sent]
    return {
        "streams": streams_count,
        "deliveries_per_s": round(streams_count * events / elapsed, 1),
        "last_delivery": _percentiles(last),
        "rss_per_idle_stream_kib": round((rss_idle - rss_before) / streams_count, 2),
    }


async def in_process(target: str, pid: int, *, smoke: bool, seconds: float) -> dict[str, Any]:
    """The measurements whose clients must share the sidecar's clock with the publisher."""
    figures: dict[str, Any] = {}
    for subscribers in (1, 10, 100):
        with Sampler(pid) as sampler:
            result = await notification_latency(target, subscribers, 1000, min(seconds, 5))
        figures[f"notification_e2e_{subscribers}"] = {**result, **sampler.figures()}
    with Sampler(pid) as sampler:
        result = await fan_out(target, sampler, 100 if smoke else 1000, 5 if smoke else 40)
    figures["fan_out"] = {**result, **sampler.figures()}
    return figures


def measure(args: argparse.Namespace) -> dict[str, Any]:
    smoke = args.smoke
    seconds = 2.0 if smoke else 10.0
    records = 20_000 if smoke else 500_000
    workdir = Path(tempfile.mkdtemp(prefix="dualstream-bench-"))
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
        },
    }
    with (
        KafkaBroker(workdir / "kafka", port=free_port(), controller_port=free_port()) as kafka,
        RedisServer(workdir / "redis", port=free_port()) as redis,
    ):
        for topic in ("perf", "raw", "events"):
            create_topic(kafka.bootstrap, topic, 6)
        base: dict[str, Any] = {}
        base["kafka_producer_performance"] = kafka_producer_performance(
            kafka.bootstrap, "perf", records
        )
        base["aiokafka_raw"] = asyncio.run(aiokafka_raw(kafka.bootstrap, "raw", records, seconds))
        base["redis_benchmark_publish"] = redis_benchmark(redis.port, records)
        base["grpc_empty_handler"] = empty_grpc(seconds)
        results["baselines"] = base

        port = free_port()
        sidecar = SidecarProcess(
            workdir / "sidecar", port, kafka.bootstrap, redis.url, "events",
            extra_args=["--kafka-linger-ms", str(LINGER_MS), "--kafka-max-batch-bytes",
                        str(BATCH_BYTES), "--max-streams-per-client", "5000",
                        "--log-level", "WARNING"],
        )  # fmt: skip
        sidecar.start()
        target = f"127.0.0.1:{port}"
        ours: dict[str, Any] = {}
        try:
            assert sidecar.pid is not None
            sampler_pid = sidecar.pid

            def sampled(run: Any) -> dict[str, Any]:
                with Sampler(sampler_pid) as sampler:
                    figures: dict[str, Any] = run()
                return {**figures, **sampler.figures()}

            ours["publish_closed_loop"] = sampled(
                lambda: loadgen(target, "closed", "--seconds", str(seconds), "--concurrency", "64")
            )
            for rate in (1000, 5000):
                ours[f"publish_open_loop_{rate}"] = sampled(
                    lambda rate=rate: loadgen(
                        target, "open", "--seconds", str(seconds), "--rate", str(rate)
                    )
                )
            for batch in (10, 100, 1000):
                ours[f"publish_batch_{batch}"] = sampled(
                    lambda batch=batch: loadgen(
                        target,
                        "closed",
                        "--seconds",
                        str(seconds),
                        "--batch",
                        str(batch),
                        "--concurrency",
                        "8",
                    )
                )
            # grpc.aio binds to the first event loop of a process: one loop for all of these.
            ours.update(asyncio.run(in_process(target, sampler_pid, smoke=smoke, seconds=seconds)))
        finally:
            sidecar.stop()
        results["ours"] = ours
    results["ratios"] = ratios(results)
    results["bench_process_max_rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return results


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    base, ours = results["baselines"], results["ours"]
    best_batch = max(ours[f"publish_batch_{b}"]["events_per_s"] for b in (10, 100, 1000))
    return {
        "batch_vs_raw_aiokafka (target >= 0.7)": round(
            best_batch / base["aiokafka_raw"]["events_per_s"], 3
        ),
        "unary_vs_empty_grpc (target >= 0.6)": round(
            ours["publish_closed_loop"]["calls_per_s"] / base["grpc_empty_handler"]["calls_per_s"],
            3,
        ),
        "p99_at_1k_minus_send_and_wait_p99_ms (target <= 2)": round(
            ours["publish_open_loop_1000"]["p99_ms"]
            - base["aiokafka_raw"]["send_and_wait_1k"]["p99_ms"],
            3,
        ),
        "notification_e2e_10_p50_ms (target <= 1.5)": ours["notification_e2e_10"]["p50_ms"],
        "notification_e2e_10_p99_ms (target <= 5)": ours["notification_e2e_10"]["p99_ms"],
        "fan_out_deliveries_per_s (target >= 20000)": ours["fan_out"]["deliveries_per_s"],
        "fan_out_last_delivery_p99_ms (target <= 50)": ours["fan_out"]["last_delivery"]["p99_ms"],
        "rss_per_idle_stream_kib (target <= 30)": ours["fan_out"]["rss_per_idle_stream_kib"],
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
        ", ".join(f"{k}={v}" for k, v in figures.items() if not isinstance(v, str) or len(v) < 40)
        if isinstance(figures, dict)
        else str(figures)
    )


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
    left.plot(sizes, rates, marker="o", label="dualstream")
    left.axhline(base["aiokafka_raw"]["events_per_s"], linestyle="--", label="raw aiokafka")
    left.axhline(
        base["kafka_producer_performance"]["events_per_s"],
        linestyle=":",
        label="Kafka ProducerPerformance",
    )
    left.set_xscale("log")
    left.set_xlabel("events per call")
    left.set_ylabel("events/s")
    left.set_title("Throughput against batch size")
    left.legend()
    names = ["publish_open_loop_1000", "publish_open_loop_5000", "notification_e2e_1",
             "notification_e2e_10", "notification_e2e_100"]  # fmt: skip
    quantiles = ["p50_ms", "p99_ms", "p999_ms"]
    for offset, quantile in enumerate(quantiles):
        right.bar([i + offset * 0.25 for i in range(len(names))],
                  [ours[n][quantile] for n in names], width=0.25, label=quantile)  # fmt: skip
    right.set_xticks([i + 0.25 for i in range(len(names))])
    right.set_xticklabels(
        [n.replace("publish_", "").replace("notification_", "") for n in names], rotation=20
    )
    right.set_ylabel("ms")
    right.set_yscale("log")
    right.set_title("Latency percentiles")
    right.legend()
    figure.tight_layout()
    figure.savefig(RESULTS / f"{stem}.png", dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="a brief run that checks the harness")
    args = parser.parse_args()
    results = measure(args)
    stem = ("smoke-" if args.smoke else "") + datetime.date.today().isoformat()
    if args.smoke:
        global RESULTS
        RESULTS = REPO / "build" / "bench"
    markdown = write(results, stem)
    print(markdown.read_text())


if __name__ == "__main__":
    main()
