"""The asyncio helpers keep a cancel that arrives in the same turn as the event."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from sector.aio import cancel_and_wait, gather_all, wait_event


async def _loop_on(ev: asyncio.Event, waits: list[int]) -> None:
    while True:  # the shape of every background loop in the node
        await wait_event(ev, 30.0)
        ev.clear()
        waits.append(1)


def test_a_cancel_in_the_same_turn_as_the_event_stops_the_loop() -> None:
    async def main() -> None:
        ev = asyncio.Event()
        waits: list[int] = []
        task = asyncio.create_task(_loop_on(ev, waits))
        await asyncio.sleep(0.01)  # the loop is parked in wait_event
        ev.set()
        task.cancel()  # same turn: asyncio.wait_for in 3.11 would lose this
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(5):
                await task

    asyncio.run(main())


def test_wait_event_reports_set_or_timeout() -> None:
    async def main() -> None:
        ev = asyncio.Event()
        assert await wait_event(ev, 0.01) is False
        ev.set()
        assert await wait_event(ev, 5.0) is True

    asyncio.run(main())


def test_cancel_and_wait_cancels_again_a_task_that_swallowed_one_cancel() -> None:
    async def stubborn() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(30)  # swallows the first cancel
        await asyncio.sleep(30)  # ends at the second

    async def main() -> None:
        task = asyncio.create_task(stubborn())
        await asyncio.sleep(0.01)
        left = await cancel_and_wait([task, None], grace=5.0)
        assert left == [] and task.cancelled()

    asyncio.run(main())


def test_gather_all_lets_every_awaitable_finish_before_raising() -> None:
    finished: list[str] = []

    async def fails() -> None:
        raise KeyError("first")

    async def slow() -> str:
        await asyncio.sleep(0.05)
        finished.append("slow")
        return "slow"

    async def main() -> None:
        assert await gather_all(slow(), slow()) == ["slow", "slow"]
        finished.clear()
        with pytest.raises(KeyError):
            await gather_all(fails(), slow())
        assert finished == ["slow"]  # plain gather would raise before it ended

    asyncio.run(main())
