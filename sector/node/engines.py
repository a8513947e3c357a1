"""The node's Sphere engines: worker processes, each started, fed and killed on its own.

This module owns the engine processes of one node (``sector.sphere.spe.serve`` runs in
each): starting them (spawn, lazily), handing each one task at a time, queueing tasks
while every engine is busy, and stopping a task whose caller gave up -- a speculative
attempt that lost its segment (``sphere.cancel``), an attempt of a dropped job. Such a
task is stopped by killing its engine with SIGKILL and starting a fresh one in its
place: a UDF busy in a loop, in C code or in a sleep cannot be interrupted
cooperatively, and an engine left running a moot task would hold a core for minutes.
The other engines' tasks run on undisturbed; so they do when a UDF kills its own
process (``EngineDied``, for that task only).

Why not ``concurrent.futures.ProcessPoolExecutor``: a worker that has a task cannot be
stopped (``Future.cancel`` only drops queued work, and the pool does not say which
worker runs what), and one dead worker breaks the whole pool, failing every task on it.

Each engine talks to the node over its own pipe; the blocking send/receive of a task
runs on a thread of this pool (one per engine), so the event loop never waits. An
engine goes back to the idle queue only when that thread is done with it, so a killed
engine is reaped, and its successor started, before another task can reach it.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from sector.sphere import spe

__all__ = ["EngineDied", "EnginePool"]

REAP_TIMEOUT = 10.0  # seconds to wait for a killed engine to be gone


class EngineDied(RuntimeError):
    """A task got no answer from its engine: the process died (the UDF exited or
    crashed), or the task was stopped, or the node is stopping. Local to the node, which
    reports a death as the attempt's (retryable) failure; a stopped task's caller was
    cancelled and never sees it."""


class _Engine:
    """One worker process and its pipe. ``call`` runs on a pool thread, one call at a
    time; ``stop`` comes from the event loop, before or during the call it is for."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: BaseProcess | None = None
        self.conn: Connection | None = None
        # The current task is to stop. Set by stop(), cleared only when the pool hands
        # the engine to its next task: a stop may come before the call's thread starts.
        self.stopping = False
        self.doomed = False  # the process got a SIGKILL: the next call starts another
        self.closed = False  # the node is stopping: no successor after a death
        # Orders stop() against reaping: a reaped process's pid may be reused, and a
        # SIGKILL must never reach a stranger.
        self._lock = threading.Lock()

    def call(self, fn: Callable[[Any], Any], arg: Any) -> Any:
        with self._lock:
            if self.stopping:
                raise EngineDied("stopped before it started")
        if self.proc is None or self.doomed:
            self._restart()
        with self._lock:
            # A stop during the restart found no process (or the old one) to kill.
            if self.stopping:
                raise EngineDied("stopped before it started")
        assert self.conn is not None
        try:
            self.conn.send((fn, arg))
            return self.conn.recv()
        except (EOFError, OSError):
            # Dead: a fresh engine in its place now, so it starts up while idle.
            code = self._restart()
            raise EngineDied(f"engine {self.index} died (exit code {code})") from None

    def stop(self) -> None:
        """Stop the current task: SIGKILL to the process, if it runs."""
        with self._lock:
            self.stopping = True
            if self.proc is not None and self.proc.exitcode is None:
                self.proc.kill()
                self.doomed = True

    def _restart(self) -> int | None:
        """Reap the current process (killing it if need be); start a new one unless the
        pool is closed. Returns the old one's exit code."""
        code = self._reap()
        if self.closed:
            raise EngineDied("the node is stopping")
        ctx = multiprocessing.get_context("spawn")
        ours, theirs = ctx.Pipe()
        # spawn, not fork: the node has threads (fsync, copy pumps) and a running loop,
        # and a forked child would inherit their locks mid-flight. Not a daemon: a UDF
        # may start processes of its own (the node kills its engines when it stops).
        proc = ctx.Process(
            target=spe.serve, args=(theirs, os.getpid()), name=f"sphere-engine-{self.index}"
        )
        proc.start()
        theirs.close()
        with self._lock:
            self.proc, self.conn, self.doomed = proc, ours, False
        return code

    def _reap(self) -> int | None:
        with self._lock:
            proc, conn = self.proc, self.conn
            self.proc = self.conn = None
            if proc is not None and proc.exitcode is None:
                proc.kill()
        if conn is not None:
            conn.close()
        if proc is None:
            return None
        proc.join(REAP_TIMEOUT)
        code = proc.exitcode
        with contextlib.suppress(ValueError):  # still running after all: leave it be
            proc.close()
        return code


class EnginePool:
    """``size`` engines; ``await run(fn, arg)`` runs ``fn(arg)`` in one of them."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._engines = [_Engine(i) for i in range(size)]
        self._idle: asyncio.Queue[_Engine] | None = None  # made on first use, in the loop
        self._threads = ThreadPoolExecutor(size, thread_name_prefix="sphere-engine")
        self.busy = 0  # engines running a task (or being reaped after one)

    async def run(self, fn: Callable[[Any], Any], arg: Any) -> Any:
        """``fn(arg)`` in an engine (``fn`` must be importable there by name). Raises
        ``EngineDied`` if the engine died meanwhile. Cancelling the caller kills the
        engine, if it had started the task: the engine is free again at once."""
        if self._idle is None:
            self._idle = asyncio.Queue()
            for e in self._engines:
                self._idle.put_nowait(e)
        eng = await self._idle.get()
        eng.stopping = False  # (its last call's thread is done: no race)
        self.busy += 1
        fut = asyncio.get_running_loop().run_in_executor(self._threads, eng.call, fn, arg)
        fut.add_done_callback(lambda f: self._release(eng, f))
        try:
            # Shielded: a cancel must not mark the call done while its thread still uses
            # the engine; the engine comes back in _release, when the thread is through.
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            if not fut.done():
                eng.stop()
            raise

    def _release(self, eng: _Engine, fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled():
            fut.exception()  # retrieved: a killed engine's EngineDied is nobody's news
        self.busy -= 1
        assert self._idle is not None
        self._idle.put_nowait(eng)

    async def close(self) -> None:
        """Kill every engine and wait until they are reaped (the node is stopping). A
        busy engine is reaped by the thread of its task, an idle one here."""
        for e in self._engines:
            e.closed = True
            e.stop()
        idle = []
        while self._idle is not None and not self._idle.empty():
            idle.append(self._idle.get_nowait())
        if self._idle is None:
            idle = self._engines
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(loop.run_in_executor(None, e._reap) for e in idle),
            loop.run_in_executor(None, self._threads.shutdown),
            return_exceptions=True,
        )
