"""Small asyncio helpers that Python 3.11's standard library gets subtly wrong, and
``Worker``, the one shape of every background loop of a node.

``asyncio.wait_for`` in 3.11 can swallow a cancellation: when the awaited thing finishes
in the same loop turn as the cancel arrives, it returns the result and the cancel is lost
(CPython gh-86296, fixed in 3.12). A background loop built on it then never stops, and a
graceful leave waits for it for ever. ``asyncio.timeout`` has no such race.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("sector.worker")


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set or ``timeout`` seconds pass; True if it was set."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[Any] | None], grace: float = 10.0
) -> list[asyncio.Task[Any]]:
    """Cancel ``tasks`` and wait for them to end, at most ``grace`` seconds.

    A task that swallowed its cancel (see above) is cancelled again each second. Returns
    the tasks still running at the deadline (the caller logs them); never raises.
    """
    pending = {t for t in tasks if t is not None and not t.done()}
    deadline = asyncio.get_running_loop().time() + grace
    while pending:
        for t in pending:
            t.cancel()
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            break
        _, pending = await asyncio.wait(pending, timeout=min(1.0, left))
    return list(pending)


async def gather_all(*aws: Awaitable[T]) -> list[T]:
    """``asyncio.gather`` that lets every awaitable finish before raising the first
    error (plain gather raises at once and leaves the others running unwatched)."""
    got = await asyncio.gather(*aws, return_exceptions=True)
    for r in got:
        if isinstance(r, BaseException):
            raise r
    return got  # type: ignore[return-value]


class Worker:
    """A background loop with a name, a state, counters and its last error (garage's
    ``background/worker.rs`` is the model), so every loop of a node is seen the same
    way in ``sector status --workers``.

    ``settle`` seconds after ``start`` (a wake-up meanwhile is kept, not acted on: a
    node decides nothing until its member table has filled), then for ever: run
    ``work()`` and wait ``interval`` seconds (or the delay ``work`` returns) or until
    ``wake()``. ``coalesce``: after a wake-up, wait that long first, so a burst of
    wake-ups makes one pass. ``throttle``: at least that long between two passes
    however often it is woken. ``jitter``: each wait is scaled by a random factor in
    [1 - jitter, 1 + jitter], so a cluster's nodes do not beat in step. A pass that
    raises is logged and counted; the loop goes on (a worker that dies silently leaves
    its job undone).
    """

    def __init__(
        self,
        name: str,
        *,
        interval: float,
        settle: float = 0.0,
        coalesce: float = 0.0,
        throttle: float = 0.0,
        jitter: float = 0.0,
    ) -> None:
        self.name = name
        self.interval = interval
        self.settle = settle
        self.coalesce = coalesce
        self.throttle = throttle
        self.jitter = jitter
        self.state = "settling" if settle > 0 else "idle"
        self.last_error = ""
        self.errors = 0
        self.runs = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_end = 0.0
        self.last_seconds = 0.0  # how long the last pass took (bench/shard.py reads it)

    async def work(self) -> float | None:
        """One pass; returns the wait before the next (None: ``interval``)."""
        raise NotImplementedError

    def wake(self) -> None:
        """Run a pass soon (after ``coalesce``), not at the end of the wait."""
        self._wake.set()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait([task])
        self.state = "stopped"

    def status(self) -> dict[str, Any]:
        """The fields every worker reports; a worker adds its own."""
        return {
            "name": self.name,
            "state": self.state,
            "runs": self.runs,
            "errors": self.errors,
            "last_error": self.last_error,
            "last_seconds": round(self.last_seconds, 4),
        }

    def _scaled(self, wait: float) -> float:
        return wait * (1 + random.uniform(-self.jitter, self.jitter)) if self.jitter else wait

    async def _loop(self) -> None:
        if self.settle:
            await asyncio.sleep(self._scaled(self.settle))
        woken = self._wake.is_set()
        while True:
            if woken and self.coalesce:
                await asyncio.sleep(self.coalesce)
            gap = self._last_end + self.throttle - time.monotonic()
            if gap > 0:
                await asyncio.sleep(gap)
            self._wake.clear()
            self.state = "busy"
            delay = None
            began = time.monotonic()
            try:
                delay = await self.work()
                self.runs += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("%s: a pass failed", self.name)
            self._last_end = time.monotonic()
            self.last_seconds = self._last_end - began
            self.state = "idle"
            wait = self.interval if delay is None else delay
            woken = await wait_event(self._wake, self._scaled(max(0.0, wait)))


class Every(Worker):
    """A worker that runs ``step()`` every ``interval`` seconds, the first after one
    interval unless ``settle`` says otherwise (Chord's maintenance steps, gossip, the
    policy pull, repair's scan)."""

    def __init__(
        self,
        name: str,
        step: Callable[[], Awaitable[object]],
        interval: float,
        *,
        settle: float | None = None,
        coalesce: float = 0.0,
        jitter: float = 0.0,
    ) -> None:
        super().__init__(
            name,
            interval=interval,
            settle=interval if settle is None else settle,
            coalesce=coalesce,
            jitter=jitter,
        )
        self.step = step

    async def work(self) -> None:
        await self.step()
