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
engine goes back to the idle list only when that thread is done with it, so a killed
engine is reaped, and its successor started, before another task can reach it.

Sandboxed engines (``sector.sphere.sandbox``; the node's setup is ``node/sandbox.py``,
made once, on a thread, before the first engine starts): an engine's view holds the
staging of one Sector user, so a task goes to an idle engine set up for its user if
there is one, else the least recently used idle engine is restarted for that user (an
open cluster has one user: no restarts). An engine also restarts before a task that
could not have its whole CPU allowance (the engine says so in its answer). An engine
greets the node when it is ready, or says why its sandbox failed; the node reads how
an engine died from its exit status (a limit, a crash, an exit: ``sandbox.death``).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from sector.node.sandbox import Setup, own_dir
from sector.sphere import jail
from sector.sphere.sandbox import Limits, Spec, death

__all__ = ["EngineDied", "EnginePool"]

REAP_TIMEOUT = 10.0  # seconds to wait for a killed engine to be gone
START_TIMEOUT = 60.0  # seconds for a new engine to greet (it imports numpy, on a busy host)
DEATH_GRACE = 2.0  # seconds for a dead engine's exit status to come up its processes
UNSANDBOXED = Spec(mode="none", uid=-1, gid=-1, user="", data="")


class EngineDied(RuntimeError):
    """A task got no answer from its engine: the process died (the UDF exited, crashed
    or hit a limit), or could not start, or the task was stopped, or the node is
    stopping. Local to the node, which reports a death as the attempt's failure
    (``retryable``: not for a limit, which another node would hit too); a stopped
    task's caller was cancelled and never sees it."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class _Engine:
    """One worker process and its pipe. ``call`` runs on a pool thread, one call at a
    time; ``stop`` comes from the event loop, before or during the call it is for."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: BaseProcess | None = None
        self.conn: Connection | None = None
        self.spec = UNSANDBOXED  # what the next process starts with (set by the pool)
        self.stage: str | None = None  # the staging its current process can see
        self.greeted = False  # the current process said it is ready
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
            if not self.greeted:
                self._greet()
            self.conn.send((fn, arg))
            res = self.conn.recv()
        except (EOFError, OSError):
            # Dead: a fresh engine in its place now, so it starts up while idle. The
            # dead one's exit status says why; in a sandbox it comes up from the
            # process that served (E2) through two more: a moment's grace for it.
            code = self._restart(grace=DEATH_GRACE)
            why, retry = death(code, self.spec.limits)
            raise EngineDied(f"{why} (engine {self.index})", retryable=retry) from None
        if isinstance(res, dict) and res.pop("_retire", False):
            self.doomed = True  # its CPU allowance is spent: a fresh one for the next task
        return res

    def _greet(self) -> None:
        """Wait for the new process to say it is ready (or why it cannot be)."""
        assert self.conn is not None
        if not self.conn.poll(START_TIMEOUT):
            self.doomed = True
            raise EngineDied(f"engine {self.index} did not start within {START_TIMEOUT:g} s")
        kind, what = self.conn.recv()
        if kind != "hello":
            self.doomed = True
            raise EngineDied(f"engine {self.index}: {what}")
        self.greeted = True

    def stop(self) -> None:
        """Stop the current task: SIGKILL to the process, if it runs."""
        with self._lock:
            self.stopping = True
            if self.proc is not None and self.proc.exitcode is None:
                self.proc.kill()
                self.doomed = True

    def _restart(self, grace: float = 0.0) -> int | None:
        """Reap the current process (killing it if it is not gone within ``grace``
        seconds); start a new one unless the pool is closed. Returns the old one's
        exit code."""
        code = self._reap(grace)
        if self.closed:
            raise EngineDied("the node is stopping")
        ctx = multiprocessing.get_context("spawn")
        ours, theirs = ctx.Pipe()
        # spawn, not fork: the node has threads (fsync, copy pumps) and a running loop,
        # and a forked child would inherit their locks mid-flight. Not a daemon: a UDF
        # may start processes of its own (the node kills its engines when it stops).
        proc = ctx.Process(
            target=jail.engine_main,
            args=(theirs, os.getpid(), self.spec),
            name=f"sphere-engine-{self.index}",
        )
        proc.start()
        theirs.close()
        with self._lock:
            self.proc, self.conn, self.doomed = proc, ours, False
            self.stage, self.greeted = self.spec.stage, False
        return code

    def _reap(self, grace: float = 0.0) -> int | None:
        if grace and self.proc is not None and not self.doomed:
            self.proc.join(grace)  # (a stop() meanwhile kills it: doomed)
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
    """``size`` engines; ``await run(fn, arg)`` runs ``fn(arg)`` in one of them.
    ``setup``: the node's sandbox (blocking; run once on a thread before the first
    engine starts); without one, engines are unsandboxed."""

    def __init__(self, size: int, setup: Callable[[], Setup] | None = None) -> None:
        self.size = size
        self._engines = [_Engine(i) for i in range(size)]
        self._idle = list(self._engines)  # least recently used first
        self._free: asyncio.Semaphore | None = None  # made on first use, in the loop
        self._threads = ThreadPoolExecutor(size, thread_name_prefix="sphere-engine")
        self._setup_fn = setup
        self._setup: asyncio.Future[Setup] | None = None
        self.setup: Setup | None = None  # once known
        self.busy = 0  # engines running a task (or being reaped after one)

    def start(self) -> None:
        """Find out the sandbox now, in the background (else at the first task)."""
        if self._setup is None:
            loop = asyncio.get_running_loop()
            if self._setup_fn is None:
                self._setup = loop.create_future()
                self._setup.set_result(Setup(UNSANDBOXED, "none"))
            else:
                self._setup = asyncio.ensure_future(asyncio.to_thread(self._setup_fn))
            self._setup.add_done_callback(self._set_up)

    def _set_up(self, fut: asyncio.Future[Setup]) -> None:
        if not fut.cancelled() and fut.exception() is None:
            self.setup = fut.result()

    @property
    def limits(self) -> Limits:
        return self.setup.spec.limits if self.setup and self.setup.spec else Limits()

    async def ready(self) -> Spec:
        """The engines' spec, once the sandbox is known; EngineDied if it cannot be had."""
        self.start()
        assert self._setup is not None
        setup = await asyncio.shield(self._setup)
        if setup.spec is None:
            raise EngineDied(
                f"the UDF sandbox ({setup.requested}) cannot be set up on this node: {setup.error}"
            )
        return setup.spec

    async def run(
        self,
        fn: Callable[[Any], Any],
        arg: Any,
        *,
        stage: Path | None = None,
        outdirs: Sequence[Path] = (),
    ) -> Any:
        """``fn(arg)`` in an engine (``fn`` must be importable there by name). Raises
        ``EngineDied`` if the engine died meanwhile. Cancelling the caller kills the
        engine, if it had started the task: the engine is free again at once.
        ``stage``: the staging directory of the task's user (the engine's view shows
        it, and only it); ``outdirs``: directories the task writes, made for it."""
        spec = await self.ready()
        for d in outdirs:
            own_dir(d, spec)
        want = str(stage) if stage is not None and spec.mode != "none" else None
        if self._free is None:
            self._free = asyncio.Semaphore(len(self._idle))
        await self._free.acquire()
        eng = self._pick(want)
        if eng.spec != (new := spec.with_stage(want)):
            eng.spec = new
            if eng.proc is not None:
                eng.doomed = True  # restarted for this user, before the task reaches it
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

    def _pick(self, want: str | None) -> _Engine:
        """An idle engine for ``want``: one set up for it, else one never started, else
        the least recently used."""
        for test in (
            lambda e: e.proc is not None and e.stage == want,
            lambda e: e.proc is None,
            lambda e: True,
        ):
            for i, e in enumerate(self._idle):
                if test(e):
                    return self._idle.pop(i)
        raise AssertionError("no idle engine, yet the semaphore let a task through")

    def _release(self, eng: _Engine, fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled():
            fut.exception()  # retrieved: a killed engine's EngineDied is nobody's news
        self.busy -= 1
        self._idle.append(eng)
        assert self._free is not None
        self._free.release()

    async def close(self) -> None:
        """Kill every engine and wait until they are reaped (the node is stopping). A
        busy engine is reaped by the thread of its task, an idle one here."""
        if self._setup is not None and not self._setup.done():
            self._setup.cancel()
        for e in self._engines:
            e.closed = True
            e.stop()
        idle, self._idle = self._idle, []
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(loop.run_in_executor(None, e._reap) for e in idle),
            loop.run_in_executor(None, self._threads.shutdown),
            return_exceptions=True,
        )
