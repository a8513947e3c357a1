"""Small asyncio helpers that Python 3.11's standard library gets subtly wrong.

``asyncio.wait_for`` in 3.11 can swallow a cancellation: when the awaited thing finishes
in the same loop turn as the cancel arrives, it returns the result and the cancel is lost
(CPython gh-86296, fixed in 3.12). A background loop built on it then never stops, and a
graceful leave waits for it for ever. ``asyncio.timeout`` has no such race.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


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
