"""The asyncio helpers keep a cancel that arrives in the same turn as the event."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from typing import Any

import pytest

from sector.aio import Every, Worker, cancel_and_wait, gather_all, wait_event


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


class _Counting(Worker):
    def __init__(self, **kw: Any) -> None:
        super().__init__("counting", **kw)
        self.passes: list[float] = []
        self.fail_next = False

    async def work(self) -> None:
        self.passes.append(time.monotonic())
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("boom")


async def _until(cond: Any, deadline: float = 5.0) -> None:
    async with asyncio.timeout(deadline):
        while not cond():
            await asyncio.sleep(0.005)


def test_a_worker_runs_after_its_settle_and_again_when_woken() -> None:
    async def main() -> None:
        w = _Counting(interval=60.0, settle=0.05)
        assert w.status()["state"] == "settling"
        t0 = time.monotonic()
        await w.start()
        w.wake()  # during the settle: kept, not acted on early
        await _until(lambda: len(w.passes) == 1 and w.state == "idle")
        assert w.passes[0] - t0 >= 0.05
        w.wake()  # not the 60 s wait
        await _until(lambda: len(w.passes) == 2)
        assert w.status()["runs"] >= 1
        await w.stop()
        assert w.status()["state"] == "stopped"
        n = len(w.passes)
        w.wake()
        await asyncio.sleep(0.05)
        assert len(w.passes) == n  # a stopped worker does nothing

    asyncio.run(main())


def test_a_failing_pass_is_counted_and_the_worker_goes_on() -> None:
    async def main() -> None:
        w = _Counting(interval=0.01)
        w.fail_next = True
        await w.start()
        await _until(lambda: len(w.passes) >= 3)
        await w.stop()
        st = w.status()
        assert st["errors"] == 1 and st["last_error"] == "RuntimeError: boom"

    asyncio.run(main())


def test_coalesce_makes_one_pass_of_a_burst_and_throttle_spaces_passes() -> None:
    async def main() -> None:
        w = _Counting(interval=60.0, coalesce=0.05)
        await w.start()
        await _until(lambda: len(w.passes) == 1 and w.state == "idle")
        for _ in range(20):  # a burst: each wake yields to the loop, none waits on a clock
            w.wake()
            await asyncio.sleep(0)
        await _until(lambda: len(w.passes) == 2)
        await asyncio.sleep(0.1)
        assert len(w.passes) == 2  # the burst made one pass
        await w.stop()

        t = _Counting(interval=0.0, throttle=0.05)
        await t.start()
        await _until(lambda: len(t.passes) >= 4)
        await t.stop()
        gaps = [b - a for a, b in itertools.pairwise(t.passes)]
        assert min(gaps) >= 0.045  # woken at once each time, yet spaced by the throttle

    asyncio.run(main())


def test_every_steps_after_one_interval() -> None:
    async def main() -> None:
        calls: list[float] = []

        async def step() -> None:
            calls.append(time.monotonic())

        t0 = time.monotonic()
        e = Every("tick", step, 0.03)
        await e.start()
        await _until(lambda: len(calls) >= 2)
        await e.stop()
        assert calls[0] - t0 >= 0.03 and e.status()["name"] == "tick"

    asyncio.run(main())
