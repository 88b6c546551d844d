"""Stopping a child task: its cancellation is absorbed, the stopper's own never is."""

from __future__ import annotations

import asyncio

import pytest

from dualstream.lifecycle import cancel_and_wait


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
