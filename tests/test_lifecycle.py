"""Stopping a child task: its cancellation is absorbed, the stopper's own never is. Waiting for
futures without awaiting them."""

from __future__ import annotations

import asyncio

import pytest

from dualstream.lifecycle import cancel_and_wait, wait_all_done


async def _slow_to_stop(cleaning: asyncio.Event) -> None:
    try:
        await asyncio.sleep(3600)
    finally:
        cleaning.set()
        await asyncio.sleep(0.2)  # Cleanup that takes a while, as closing a connection does.


async def test_a_child_is_cancelled_and_waited_for() -> None:
    cleaning = asyncio.Event()
    child = asyncio.create_task(_slow_to_stop(cleaning))
    await asyncio.sleep(0)
    await cancel_and_wait(child)
    assert child.cancelled()
    await cancel_and_wait(child)  # Already finished: nothing to do.
    await cancel_and_wait(None)


async def test_the_stoppers_own_cancellation_is_not_absorbed() -> None:
    """With ``contextlib.suppress(CancelledError)`` around ``await child`` the stopper, cancelled
    while its child cleans up, would carry on as if nothing happened."""
    cleaning = asyncio.Event()
    child = asyncio.create_task(_slow_to_stop(cleaning))
    carried_on = False

    async def stopper() -> None:
        nonlocal carried_on
        await cancel_and_wait(child)
        carried_on = True

    stopping = asyncio.create_task(stopper())
    await cleaning.wait()
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    assert not carried_on
    with pytest.raises(asyncio.CancelledError):
        await child


async def test_waiting_for_futures_ends_when_the_last_is_done_whatever_their_outcome() -> None:
    loop = asyncio.get_running_loop()
    answered, failed, late = (loop.create_future() for _ in range(3))
    answered.set_result(1)  # Done before the wait: not waited for again.
    waiting = asyncio.create_task(wait_all_done([answered, failed, late, late]))
    failed.set_exception(ConnectionError("lost"))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    late.set_result(2)
    await asyncio.wait_for(waiting, 5)
    assert waiting.result() is None  # Outcomes are not raised; each future keeps its own.
    assert isinstance(failed.exception(), ConnectionError)
    await wait_all_done([])


async def test_a_cancelled_wait_leaves_the_futures_alone() -> None:
    shared = asyncio.get_running_loop().create_future()
    waiting = asyncio.create_task(wait_all_done([shared]))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not shared.done()  # Another caller's wait on it goes on.
    other = asyncio.create_task(wait_all_done([shared]))
    shared.set_result(None)
    await asyncio.wait_for(other, 5)
