"""Past capacity, publishes are refused at once with RESOURCE_EXHAUSTED and a retry hint.

Refusal turns on while calls queue too long for the sidecar to take them (unit tests of the
rule, and a real sidecar whose loop is held up while a burst arrives); a call refused, for
that or because too many are in progress (a real sidecar whose Redis is stopped, so the calls
in progress stay in progress), ends with RESOURCE_EXHAUSTED carrying ``grpc-retry-pushback-ms``
and a ``google.rpc.RetryInfo`` detail, and none ends CANCELLED.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from dataclasses import replace
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from dualstream.transport.admission import (
    BATCHED_NOTIFICATION_COST,
    LIMIT_DELAY,
    MAX_RETRY_AFTER,
    MIN_BACKLOG,
    MIN_CALLS_HELD,
    MIN_CALLS_LIMIT,
    MIN_DELIVERY_RATE,
    MIN_RETRY_AFTER,
    RATE_WINDOW,
    TARGET_CALL_TIME,
    Admission,
)
from dualstream.transport.server import CALLS_PER_CONNECTION_HEADROOM, Sidecar
from dualstream.transport.status import retry_trailers
from dualstream.v1 import event_service_pb2 as pb
from dualstream.v1 import event_service_pb2_grpc as pb_grpc
from stack.localstack import KafkaBroker, RedisServer
from tests.conftest import eventually, make_settings, target_of


def test_a_backlog_that_waits_too_long_turns_part_of_the_calls_away() -> None:
    admission = Admission(max_calls=1000, max_queue_delay=0.1)
    assert admission.try_admit()
    admission.observe(0.15, MIN_BACKLOG, finished=False)  # A probe still waiting.
    assert admission.shedding
    taken = sum(admission.try_admit() for _ in range(1000))
    assert taken == pytest.approx(750, abs=1), "a quarter turned away, spread evenly"
    for _ in range(30):
        admission.observe(0.5, 500, finished=True)
    assert sum(admission.try_admit() for _ in range(1000)) < 5
    admission.observe(0.08, 500, finished=True)  # Shorter, but not short: no change.
    admission.observe(0.01, 0, finished=False)  # A probe still on its way says nothing yet.
    share = admission.share
    admission.observe(0.01, 0, finished=True)
    assert admission.share > share
    for _ in range(40):
        admission.observe(0.01, 0, finished=True)
    assert not admission.shedding
    assert all(admission.try_admit() for _ in range(100))


async def test_while_the_loop_lags_calls_in_progress_are_held_to_what_completes_soon() -> None:
    admission = Admission(max_calls=2000, max_queue_delay=0.25)
    admission.observe(0.001, 0, finished=True)  # Completions are counted from here on.
    assert all(admission.try_admit() for _ in range(2000))
    await asyncio.sleep(RATE_WINDOW)
    for _ in range(500):
        admission.release()
    admission.observe(0.2, MIN_BACKLOG - 1, finished=True)  # Few calls came: a slow machine.
    assert admission.limit == 2000
    admission.observe(0.2, MIN_BACKLOG, finished=True)
    # 500 completed in the 0.1 s or more since the first probe (at most 5,000 a second), and
    # 2,000 came.
    assert 0 < admission.completion_rate <= 500 / RATE_WINDOW
    assert admission.arrival_rate == 4 * admission.completion_rate
    rate = admission.completion_rate
    assert admission.limit == max(MIN_CALLS_LIMIT, math.ceil(rate * TARGET_CALL_TIME))
    assert admission.limited
    assert not admission.shedding
    assert not admission.try_admit(), "1,500 in progress, over the limit"
    while admission.in_progress >= admission.limit:
        admission.release()
    assert admission.try_admit()
    limit = admission.limit
    admission.observe(LIMIT_DELAY * 0.75, MIN_BACKLOG, finished=True)  # Neither way: held.
    assert admission.limit == limit
    for _ in range(30):
        admission.observe(0.001, 0, finished=True)
    assert admission.limit == 2000
    assert not admission.limited


async def test_calls_that_complete_as_fast_as_they_come_are_not_limited() -> None:
    # A loop that lags for another reason (a fan-out at its floor, a slow machine) with calls
    # completing as they come: refusing some would not make the others faster.
    admission = Admission(max_calls=2000, max_queue_delay=0.25)
    admission.observe(0.001, 0, finished=True)
    for _ in range(3):
        for _ in range(300):
            assert admission.try_admit()
            admission.release()
        await asyncio.sleep(RATE_WINDOW)
        admission.observe(0.2, MIN_BACKLOG, finished=True)
    assert admission.arrival_rate == admission.completion_rate > 0
    assert admission.limit == 2000


async def test_calls_in_progress_are_not_limited_while_the_gate_holds_streams_back() -> None:
    admission = Admission(max_calls=2000, max_queue_delay=0.25)
    gate = admission.gate
    admission.observe(0.001, 0, finished=True)
    assert all(admission.try_admit() for _ in range(1000))  # Calls come and none completes ...
    await asyncio.sleep(RATE_WINDOW)
    for _ in range(100_000):  # ... while a fan-out goes far above its floor.
        gate.try_pass()
    admission.observe(0.2, MIN_BACKLOG, finished=True)
    assert admission.arrival_rate > 0
    assert admission.completion_rate == 0
    assert gate.limited
    assert admission.limit == 2000


def test_a_slow_machine_with_no_backlog_refuses_nothing() -> None:
    admission = Admission(max_calls=1000, max_queue_delay=0.1)
    for _ in range(10):
        admission.observe(5.0, MIN_BACKLOG - 1, finished=True)
    assert not admission.shedding
    assert admission.try_admit()


def test_calls_in_progress_are_capped() -> None:
    admission = Admission(max_calls=3, max_queue_delay=0.1)
    assert [admission.try_admit() for _ in range(4)] == [True, True, True, False]
    admission.release()
    assert admission.try_admit()


def test_the_retry_hint_follows_the_delay_within_bounds() -> None:
    admission = Admission(max_calls=10, max_queue_delay=0.05)
    assert admission.retry_after == MIN_RETRY_AFTER
    admission.observe(0.4, 0, finished=True)
    assert admission.retry_after == pytest.approx(0.8)
    admission.observe(60, 0, finished=True)
    assert admission.retry_after == MAX_RETRY_AFTER


def test_retry_trailers_carry_pushback_and_retry_info() -> None:
    trailers = dict(retry_trailers(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy", 0.25))
    assert trailers["grpc-retry-pushback-ms"] == "250"
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    assert (status.code, status.message) == (grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], "busy")
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    assert info.retry_delay.ToMilliseconds() == 250


async def _publish(stub: Any, source_id: str) -> grpc.aio.AioRpcError | None:
    """Publish over the raw stub (a grpc.aio one; its typing is the sync API's), so the
    trailers of a failed call can be read."""
    event = pb.Event(type="t", source_type="admission", source_id=source_id)
    try:
        await stub.Publish(pb.PublishRequest(event=event), timeout=60)
    except grpc.aio.AioRpcError as exc:
        return exc
    return None


async def test_calls_beyond_the_limit_are_refused_with_a_retry_hint(
    kafka: KafkaBroker, private_redis: RedisServer, topic: str, tracer: Any
) -> None:
    """Redis stopped: each publish, written to Kafka, waits for its notification, so the calls
    stay in progress while more arrive."""
    settings = make_settings(
        kafka.bootstrap, private_redis.url, topic, max_concurrent_rpcs=4, redis_timeout=60.0
    )
    async with (
        Sidecar(settings, tracer) as sidecar,
        grpc.aio.insecure_channel(target_of(sidecar)) as channel,
    ):
        assert await sidecar.publisher.event_log.wait_ready(30)
        stub = pb_grpc.EventServiceStub(channel)
        assert await _publish(stub, "warm") is None
        private_redis.pause()
        try:
            held = [asyncio.create_task(_publish(stub, f"held{i}")) for i in range(4)]

            async def all_held() -> bool:
                return sidecar.admission.in_progress == 4

            try:
                await eventually(all_held, timeout=30)
            except TimeoutError:
                admission = sidecar.admission
                raise AssertionError(
                    f"in progress {admission.in_progress}, refused {admission.refused}, "
                    f"arrivals {admission.arrivals}, share {admission.share}, "
                    f"held {[t.done() and t.result() for t in held]}"
                ) from None
            refused = await asyncio.gather(*(_publish(stub, f"more{i}") for i in range(20)))
        finally:
            private_redis.resume()
        assert [await task for task in held] == [None] * 4, "held calls end well once Redis is"
    for error in refused:
        assert error is not None, "a call past the limit was served"
        _assert_refused_with_retry_hint(error.code(), error.trailing_metadata())


def _assert_refused_with_retry_hint(code: grpc.StatusCode, metadata: Any) -> None:
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailers: dict[str, Any] = dict(metadata or ())
    assert int(trailers["grpc-retry-pushback-ms"]) > 0
    details = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    info = error_details_pb2.RetryInfo()
    assert details.details[0].Unpack(info)
    assert info.retry_delay.ToMilliseconds() == int(trailers["grpc-retry-pushback-ms"])


def _burst_while_the_loop_is_held(target: str, calls: int) -> list[Any]:
    """Start ``calls`` publishes from a thread (a sync client) while this thread, and so the
    sidecar's event loop, is held up: they all wait in gRPC's queue when it resumes."""
    fired = threading.Event()
    futures: list[Any] = []

    def fire() -> None:
        channel = grpc.insecure_channel(target)
        stub: Any = pb_grpc.EventServiceStub(channel)
        event = pb.Event(type="t", source_type="admission", source_id="burst")
        futures.extend(
            stub.Publish.future(pb.PublishRequest(event=event), timeout=60) for _ in range(calls)
        )
        fired.set()

    thread = threading.Thread(target=fire)
    thread.start()
    assert fired.wait(60)
    time.sleep(0.5)  # Holding the loop up is the point.
    thread.join()
    return futures


@pytest.mark.parametrize("api_server", ["grpcio", "h2"])
async def test_a_burst_that_queues_too_long_is_partly_refused_with_retry_hints_never_cancelled(
    settings: Any, tracer: Any, api_server: str
) -> None:
    held = replace(settings, max_queue_delay=0.02, api_server=api_server)
    async with Sidecar(held, tracer) as sidecar:
        assert await sidecar.publisher.event_log.wait_ready(30)
        futures = _burst_while_the_loop_is_held(target_of(sidecar), 2000)
        outcomes = await asyncio.gather(*(asyncio.to_thread(_outcome, f) for f in futures))
    codes = [code for code, _ in outcomes]
    assert grpc.StatusCode.CANCELLED not in codes
    assert codes.count(grpc.StatusCode.OK) > 0
    refused = [(code, trailers) for code, trailers in outcomes if code != grpc.StatusCode.OK]
    if api_server == "grpcio":
        # On grpc.aio the calls wait in gRPC's queue, which the probe measures. The sidecar's
        # own HTTP/2 has no queue of its own: once the loop runs again it reads every call
        # waiting in the socket in one turn and takes them on, up to max_concurrent_rpcs
        # (2,000 by default); it refuses only what comes past that.
        assert refused, "2,000 calls queued behind a held-up loop were all served"
    for code, trailers in refused:
        _assert_refused_with_retry_hint(code, trailers)


async def test_each_connection_is_told_how_many_calls_it_may_have_open(
    settings: Any, tracer: Any
) -> None:
    """HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS: a client holds calls beyond it under its own
    deadline, so one connection cannot fill gRPC's queue to where the core cancels calls."""
    settings = replace(settings, max_streams_per_client=7, max_concurrent_rpcs=40)
    async with Sidecar(settings, tracer) as sidecar:
        host, port = target_of(sidecar).rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(HTTP2_PREFACE + _frame(HTTP2_SETTINGS, b""))
            length, kind = 0, -1
            while kind != HTTP2_SETTINGS:
                header = await asyncio.wait_for(reader.readexactly(9), 30)
                length, kind = int.from_bytes(header[:3], "big"), header[3]
                payload = await reader.readexactly(length)
        finally:
            writer.close()
            await writer.wait_closed()
    values = {
        int.from_bytes(payload[i : i + 2], "big"): int.from_bytes(payload[i + 2 : i + 6], "big")
        for i in range(0, length, 6)
    }
    assert values[HTTP2_MAX_CONCURRENT_STREAMS] == 7 + 40 + CALLS_PER_CONNECTION_HEADROOM


HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HTTP2_SETTINGS = 0x4
HTTP2_MAX_CONCURRENT_STREAMS = 0x3


def _frame(kind: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, 0]) + (0).to_bytes(4, "big") + payload


def _outcome(future: Any) -> tuple[grpc.StatusCode, Any]:
    try:
        future.result()
    except grpc.RpcError as exc:
        return exc.code(), exc.trailing_metadata()
    return grpc.StatusCode.OK, ()


async def test_the_gate_lets_everything_through_until_the_fan_out_holds_calls_up() -> None:
    admission = Admission(max_calls=1000, max_queue_delay=0.25)
    gate = admission.gate
    admission.observe(0.001, 0, finished=True)  # The first probe measures from here on.
    assert all(gate.try_pass() for _ in range(100_000))
    admission.observe(0.001, 0, finished=True)
    assert not gate.limited
    # A call or two wait 10 ms while the fan-out runs at over 4,000 messages a second: too few
    # to hold thousands of deliveries back for.
    await asyncio.sleep(0.05)
    for _ in range(10_000):
        gate.try_pass()
    admission.observe(0.01, MIN_CALLS_HELD - 1, finished=True)
    assert not gate.limited
    # Calls keep coming and wait 10 ms: the fan-out is held.
    await asyncio.sleep(0.05)
    for _ in range(10_000):
        gate.try_pass()
    admission.observe(0.01, MIN_CALLS_HELD, finished=True)
    assert gate.limited
    assert MIN_DELIVERY_RATE <= gate.rate < 10_000 / 0.05
    assert not admission.shedding, "the fan-out gives way before any publish is refused"


async def test_a_held_fan_out_goes_at_its_rate_first_come_first_served() -> None:
    gate = Admission(max_calls=1000, max_queue_delay=0.25).gate
    gate.achieved = 8000 / 0.7
    gate.slow_down()
    assert gate.rate == pytest.approx(8000.0)  # Messages a second.
    order: list[int] = []

    async def stream(number: int) -> None:
        for _ in range(20):
            if not gate.try_pass():
                await gate.wait()
            order.append(number)
            await asyncio.sleep(0)  # Its message being written.

    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.gather(*(stream(n) for n in range(20)))
    elapsed = loop.time() - started
    assert len(order) == 400
    assert elapsed >= 400 / 8000 * 0.8, "the rate held"  # A lower bound: load only adds.
    assert set(order[:20]) == set(range(20)), "every stream had its turn before any had two"


async def test_a_batch_is_billed_for_every_notification_it_carries() -> None:
    gate = Admission(max_calls=1000, max_queue_delay=0.25).gate
    gate.achieved = 8000 / 0.7
    gate.slow_down()
    assert gate.rate == pytest.approx(8000.0)
    per_message = 1 + 8 * BATCHED_NOTIFICATION_COST  # A message of 9 notifications.
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(100):
        if not gate.try_pass():
            await gate.wait()
        gate.charge(9)
    elapsed = loop.time() - started
    assert gate.passed == pytest.approx(100 * per_message)
    # A lower bound: load only adds. Billed per message, it would take a third of that.
    assert elapsed >= 100 * per_message / 8000 * 0.8


async def test_publishes_are_refused_only_once_the_fan_out_is_at_its_floor() -> None:
    admission = Admission(max_calls=1000, max_queue_delay=0.1)
    gate = admission.gate
    admission.observe(0.001, 0, finished=True)  # The first probe measures from here on.
    for _ in range(100):
        # A busy fan-out, and calls waiting far too long, again and again.
        while gate.try_pass() and gate.passed % 1000:
            pass
        await asyncio.sleep(0.01)
        admission.observe(0.5, MIN_BACKLOG, finished=True)
        if admission.shedding:
            break
        assert gate.limited
    assert admission.shedding
    assert gate.rate == MIN_DELIVERY_RATE, "publishes were refused while the fan-out ran on"
