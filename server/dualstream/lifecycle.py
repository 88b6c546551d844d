"""Idempotent start/stop and ``async with`` for every long-lived part of the sidecar."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Self


class Service:
    """Base of long-lived parts: ``start()`` and ``stop()`` may be called any number of times.

    Subclasses implement ``_start`` and ``_stop``. A failed ``_start`` leaves the part stopped,
    so it may be started again; ``stop()`` always runs ``_stop`` for a started part.
    """

    _started: bool = False
    _transition: asyncio.Lock | None = None

    @property
    def started(self) -> bool:
        return self._started

    def _lock(self) -> asyncio.Lock:
        if self._transition is None:
            self._transition = asyncio.Lock()
        return self._transition

    async def start(self) -> None:
        async with self._lock():
            if self._started:
                return
            await self._start()
            self._started = True

    async def stop(self) -> None:
        async with self._lock():
            if not self._started:
                return
            self._started = False
            await self._stop()

    async def _start(self) -> None:
        raise NotImplementedError

    async def _stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()


async def cancel_and_wait(task: asyncio.Future[Any] | None) -> None:
    """Cancel ``task`` and wait until it has finished.

    The child's own CancelledError is expected and absorbed; a cancellation of the task that
    called this is not: ``contextlib.suppress(CancelledError)`` around the await would absorb
    both, and a stop() that was itself cancelled would carry on as if nothing happened. A task
    that had already finished is left as it is: whoever supervised it dealt with its outcome.
    """
    if task is None or task.done():
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise


async def event_set_within(event: asyncio.Event, timeout: float) -> bool:
    """Until ``event`` is set, for up to ``timeout`` seconds; whether it is."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def wait_all_done(futures: Iterable[asyncio.Future[Any]]) -> None:
    """Until every one of ``futures`` is done, without awaiting them: a caller cancelled
    meanwhile leaves them alone (their outcomes stay for whoever reads them).

    What ``asyncio.wait`` does with no timeout, at a fraction of its cost (no sets of done and
    pending futures, no checks for coroutines): every publish waits this way for Kafka.
    """
    pending = [future for future in futures if not future.done()]
    if not pending:
        return
    all_done = asyncio.get_running_loop().create_future()
    remaining = len(pending)

    def one_done(_: asyncio.Future[Any]) -> None:
        nonlocal remaining
        remaining -= 1
        if not remaining and not all_done.done():
            all_done.set_result(None)

    for future in pending:
        future.add_done_callback(one_done)
    try:
        await all_done
    except asyncio.CancelledError:
        for future in pending:
            future.remove_done_callback(one_done)
        raise
