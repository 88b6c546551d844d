"""The Kafka buffer's room accounting, as pure logic: waiters are admitted in arrival order,
and one that gives up never leaves the others waiting for room that is free."""

from __future__ import annotations

import asyncio

import pytest

from dualstream.budget import Budget
from dualstream.errors import ResourceExhaustedError


@pytest.mark.parametrize("leaves_by", ["timeout", "cancel"])
async def test_a_waiter_leaving_the_head_admits_the_next_that_fits(leaves_by: str) -> None:
    budget = Budget(max_events=10, max_bytes=1000)
    await budget.acquire(5, 100, wait=0)
    # The large request cannot fit (5 + 8 > 10); the small one fits but is queued behind it.
    timing_out = leaves_by == "timeout"
    large = asyncio.create_task(budget.acquire(8, 100, wait=0.05 if timing_out else 60))
    await asyncio.sleep(0)
    small = asyncio.create_task(budget.acquire(1, 100, wait=60))
    await asyncio.sleep(0)
    if not timing_out:
        large.cancel()
    with pytest.raises(ResourceExhaustedError if timing_out else asyncio.CancelledError):
        await large
    # No room was released: only the large waiter's departure can let the small one in, and
    # it must, long before its own 60 s are up.
    await asyncio.wait_for(small, 10)
    assert (budget.events, budget.bytes) == (6, 200)


async def test_waiters_are_admitted_in_order_as_room_returns() -> None:
    budget = Budget(max_events=3, max_bytes=1000)
    await budget.acquire(3, 30, wait=0)
    admitted: list[str] = []

    async def waiter(name: str, events: int) -> None:
        await budget.acquire(events, 10 * events, wait=60)
        admitted.append(name)

    first = asyncio.create_task(waiter("two", 2))
    await asyncio.sleep(0)
    second = asyncio.create_task(waiter("one", 1))
    await asyncio.sleep(0)
    budget.release(1, 10)  # Room for "one", but "two" came first and does not fit yet.
    await asyncio.sleep(0)
    assert admitted == []
    budget.release(2, 20)
    await asyncio.wait_for(asyncio.gather(first, second), 10)
    assert admitted == ["two", "one"]
    assert (budget.events, budget.bytes) == (3, 30)


async def test_a_waiter_admitted_as_it_gives_up_returns_its_room() -> None:
    budget = Budget(max_events=1, max_bytes=1000)
    await budget.acquire(1, 10, wait=0)
    waiting = asyncio.create_task(budget.acquire(1, 10, wait=60))
    await asyncio.sleep(0)
    budget.release(1, 10)  # Admits the waiter; it is cancelled before it runs again.
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert (budget.events, budget.bytes) == (0, 0)


async def test_a_request_larger_than_the_whole_buffer_is_refused_at_once() -> None:
    budget = Budget(max_events=10, max_bytes=100)
    with pytest.raises(ResourceExhaustedError, match="exceed the Kafka buffer"):
        await budget.acquire(1, 101, wait=60)
