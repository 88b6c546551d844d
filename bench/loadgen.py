"""The load client: closed-loop and open-loop Publish/PublishBatch over grpc.aio.

It runs in a process of its own (``python -m bench.loadgen MODE ...``) and prints one JSON
object, so its CPU use can be measured apart from the sidecar's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
import uuid
from typing import Any

import grpc
import uvloop

from dualstream.v1 import event_service_pb2 as pb
from dualstream.v1 import event_service_pb2_grpc as pb_grpc

PAYLOAD = b"x" * 200


def _event(source: int) -> pb.Event:
    return pb.Event(type="bench", source_type="bench", source_id=f"s{source % 64}", data=PAYLOAD)


CDF_QUANTILES = [q / 100 for q in range(1, 100)] + [0.999]


def percentiles(seconds: list[float]) -> dict[str, Any]:
    """p50/p99/p99.9/max in milliseconds, and the CDF's points for the plots."""
    ordered = sorted(seconds)

    def at(q: float) -> float:
        if not ordered:
            return 0.0
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {
        "p50_ms": at(0.5),
        "p99_ms": at(0.99),
        "p999_ms": at(0.999),
        "max_ms": at(1.0),
        "cdf_ms": [at(q) for q in CDF_QUANTILES],
    }


async def closed_loop(
    stubs: list[pb_grpc.EventServiceAsyncStub], seconds: float, concurrency: int, batch: int
) -> dict[str, object]:
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    request = (
        pb.PublishBatchRequest(events=[_event(i) for i in range(batch)]) if batch > 1 else None
    )

    async def worker(number: int) -> None:
        stub = stubs[number % len(stubs)]
        while time.monotonic() < deadline:
            started = time.monotonic()
            if request is not None:
                await stub.PublishBatch(request)
            else:
                await stub.Publish(pb.PublishRequest(event=_event(number)))
            latencies.append(time.monotonic() - started)

    started = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.monotonic() - started
    return {
        "calls_per_s": round(len(latencies) / elapsed, 1),
        "events_per_s": round(len(latencies) * max(batch, 1) / elapsed, 1),
        **percentiles(latencies),
    }


async def open_loop(
    stubs: list[pb_grpc.EventServiceAsyncStub], seconds: float, rate: float
) -> dict[str, object]:
    latencies: list[float] = []
    tasks: list[asyncio.Task[None]] = []
    # time.monotonic, not loop.time: uvloop's clock moves in whole milliseconds.
    start = time.monotonic()
    total = int(seconds * rate)

    errors: dict[str, int] = {}

    async def one(number: int, scheduled: float) -> None:
        try:
            await stubs[number % len(stubs)].Publish(pb.PublishRequest(event=_event(number)))
        except grpc.aio.AioRpcError as exc:
            errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
            return
        # Latency from the scheduled send time: a client falling behind shows, not hides.
        latencies.append(time.monotonic() - scheduled)

    for number in range(total):
        scheduled = start + number / rate
        delay = scheduled - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(number, scheduled)))
    await asyncio.gather(*tasks)
    return {"rate": rate, "sent": total, "errors": errors, **percentiles(latencies)}


async def main(args: argparse.Namespace) -> None:
    # Separate subchannel pools make separate TCP connections, which the kernel can spread
    # over sidecar workers sharing the port.
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [
        grpc.aio.insecure_channel(args.target, options=options) for _ in range(args.connections)
    ]
    try:
        stubs = [pb_grpc.EventServiceStub(channel) for channel in channels]
        for stub in stubs:
            await stub.Publish(pb.PublishRequest(event=_event(0)))  # connect and warm up
        before = resource.getrusage(resource.RUSAGE_SELF)
        wall = time.monotonic()
        if args.mode == "closed":
            result = await closed_loop(stubs, args.seconds, args.concurrency, args.batch)
        else:
            result = await open_loop(stubs, args.seconds, args.rate)
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        result["loadgen_cpu_percent"] = round(100 * cpu / (time.monotonic() - wall), 1)
    finally:
        for channel in channels:
            await channel.close(None)
    print(json.dumps(result))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["closed", "open"])
    parser.add_argument("--target", required=True)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--tag", default=str(uuid.uuid4()))
    uvloop.run(main(parser.parse_args()))
