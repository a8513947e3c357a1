"""The node's engine pool (sector/node/engines.py) without a node: a cancelled task's
engine is killed and replaced at whatever stage the cancel finds it, a task that ends
its process fails alone, and tasks queue for a busy engine.

The functions run are builtins (``abs``, ``time.sleep``, ``os._exit``): an engine is a
spawned process and imports what it runs by name.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from sector.node.engines import EngineDied, EnginePool

FREED_WITHIN = 1.0


async def _until_idle(pool: EnginePool) -> float:
    """Seconds until no engine is busy; fails past FREED_WITHIN."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    async with asyncio.timeout(FREED_WITHIN):
        while pool.busy:
            await asyncio.sleep(0.005)
    return loop.time() - t0


def _pid(pool: EnginePool) -> int | None:
    proc = pool._engines[0].proc
    return None if proc is None else proc.pid


def test_a_cancelled_task_frees_its_engine_at_any_stage() -> None:
    async def main() -> None:
        pool = EnginePool(1)
        try:
            # Cancelled while its engine is still starting (the first task starts it).
            t = asyncio.create_task(pool.run(time.sleep, 60))
            await asyncio.sleep(0)
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
            await _until_idle(pool)
            assert await pool.run(abs, -3) == 3
            first = _pid(pool)
            # Cancelled while it runs: the engine is killed and another takes its place.
            t = asyncio.create_task(pool.run(time.sleep, 60))
            await asyncio.sleep(0.2)
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
            await _until_idle(pool)
            assert await pool.run(abs, -4) == 4
            assert _pid(pool) not in (None, first)
            # Cancelled while queued behind a busy engine: never runs.
            busy = asyncio.create_task(pool.run(time.sleep, 0.3))
            queued = asyncio.create_task(pool.run(os._exit, 9))
            await asyncio.sleep(0.05)
            queued.cancel()
            await busy
            with pytest.raises(asyncio.CancelledError):
                await queued
            assert await pool.run(abs, -5) == 5
        finally:
            await pool.close()

    asyncio.run(main())


def test_a_task_that_ends_its_engine_fails_alone_and_tasks_queue() -> None:
    async def main() -> None:
        pool = EnginePool(2)
        try:
            slow = asyncio.create_task(pool.run(time.sleep, 1.0))
            with pytest.raises(EngineDied, match="exited with code 3"):
                await pool.run(os._exit, 3)
            assert await slow is None  # the other engine's task ran on
            got = await asyncio.gather(*(pool.run(abs, -i) for i in range(5)))
            assert got == list(range(5))  # five tasks through two engines
            assert pool.busy == 0
        finally:
            await pool.close()
        assert all(e.proc is None for e in pool._engines)  # all reaped

    asyncio.run(main())
