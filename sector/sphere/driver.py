"""The client-side driver of a Sphere job (DESIGN "Sphere"; original §3 "Scheduling").

One job is one stage: a UDF over a stream of Sector files (or a list of generator
tasks), with output back to the client, to files on the processing nodes, or to N
buckets. A multi-stage job chains stages: one stage's output directory is the next
one's input. The driver is an asyncio task of the client, so one client runs several
jobs at once.

How a stage runs:
1. Resolve the input to files with their replica holders (``inputs``); cut segments
   (``segments``).
2. Ask every live node how many engines it has. The pure ``JobMachine`` (``machine``,
   around the ``Scheduler``) decides which segment attempt runs where (locality, pull,
   retries, speculation); this driver performs what it says -- ``sphere.run``, one
   long poll per node, ``sphere.cancel`` of a backup's loser -- and feeds back what
   came of it. It sleeps until an outcome or the scheduler's next deadline, never on a
   tick.
3. A node that stops answering is lost: its running attempts are re-run elsewhere, and
   if it held buckets they move to other nodes and are fed again -- from the mappers'
   kept parts (``sphere.resend``), or by re-running segments whose mapper died too.
   (The original failed the whole job here.)
4. Commit: staged output becomes Sector files under ``/.sphere/<job>``, which is then
   renamed to the output path -- readers see all of a job's output or none of it.

The messages are declared in ``wire``; what the driver needs of its client in ``ports``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import msgspec

from sector.aio import gather_all, wait_event
from sector.errors import (
    AlreadyExists,
    ClusterError,
    CredentialError,
    JobCancelled,
    JobFailed,
    NotFound,
    PermissionDenied,
    SectorError,
    TransportError,
)
from sector.meta import records as rec
from sector.sphere import machine as jm
from sector.sphere import wire
from sector.sphere.cluster import cluster_engines
from sector.sphere.inputs import Inputs, expand, required
from sector.sphere.machine import JobMachine
from sector.sphere.options import job_options
from sector.sphere.ports import JobClient
from sector.sphere.schedule import Scheduler, Work, topology_distance
from sector.sphere.segments import Segment, plan_segments, task_segments
from sector.sphere.summary import summary
from sector.sphere.udf import pickle_udf
from sector.sphere.wire import STAGING, staging_owner

# Importable from here as they always were (job_options and cluster_engines live in
# ``options`` and ``cluster``).
__all__ = ["STAGING", "AsyncJob", "cluster_engines", "job_options", "pickle_udf", "staging_owner"]

log = logging.getLogger("sector.sphere.driver")

POLL_WAIT = 1.0
LOST_AFTER = 2  # consecutive failed polls before a node counts as lost
SPEC_MIN = 5.0  # seconds a segment runs before a backup of it is considered
MAX_ROUNDS = 5  # commit rounds (each may re-run segments whose output was lost)

Files = list[dict[str, Any]]


class AsyncJob:
    """A running stage. ``await job.wait()`` returns its result dict; ``progress()``
    is a live view (segments done/running/failed per node)."""

    def __init__(self, client: JobClient, fn: Callable[..., Any], **opts: Any) -> None:
        self.c = client
        self.id = secrets.token_hex(8)
        # Staging is per user (``/.sphere/<user>/<job>``): the compute right covers
        # one's own jobs' staging, not another user's (sector.security.guard.write).
        self.stage = f"{STAGING}/{staging_owner(client.whoami().get('user'))}/{self.id}"
        self.fn = fn
        self.opts = opts
        # Pickled here, not when the job runs: a UDF that cannot be shipped is a
        # UsageError at run(), before anything starts.
        self.udf = pickle_udf(fn, opts.get("param"))
        self.digest = hashlib.blake2b(self.udf, digest_size=16).hexdigest()
        self.reduce: wire.Reduce | None = None
        if opts.get("reduce") is not None:
            udf = pickle_udf(opts["reduce"], opts.get("param"))
            spec = opts.get("reduce_records", "file")
            self.reduce = wire.Reduce(
                udf=udf,
                digest=hashlib.blake2b(udf, digest_size=16).hexdigest(),
                kind="fixed" if isinstance(spec, int) else spec,
                record_size=spec if isinstance(spec, int) else 0,
                compress=True if opts.get("shuffle_compress") else msgspec.UNSET,
            )
        self.phase = "starting"
        self.started = time.monotonic()
        self.phases: dict[str, float] = {}  # seconds spent in each phase (the result's)
        self._phase_at = self.started
        self.m: JobMachine | None = None  # the stage's state, once it is planned
        self.segments: list[Segment] = []
        self.inputs = Inputs()
        self.required: list[wire.Required] = []  # required_files, resolved at the start
        self.result: dict[str, Any] | None = None
        self._error: str | None = None  # until the machine holds it
        self._task: asyncio.Task[dict[str, Any]] | None = None
        self._wake = asyncio.Event()  # the run loop's alarm: news for the scheduler
        self._cancelling: set[asyncio.Future[None]] = set()  # sphere.cancel calls
        self._stopped: str | None = None  # a node said the job was cancelled (sphere.stop)
        # seg -> (attempt, its commit started as soon as it won; files mode)
        self._early: dict[int, tuple[int, asyncio.Future[Files | None]]] = {}

    @property
    def error(self) -> str | None:
        """Why the job failed (or the first failure it met), or None."""
        return self.m.error if self.m is not None else self._error

    def _fail(self, error: str, traceback: str | None = None) -> None:
        """Note an error (the first one stays; see ``machine`` rule 7)."""
        if self.m is not None:
            self._feed_now(jm.Failed(error, traceback))
        else:
            self._error = self._error or error

    # ------------------------------------------------------------------ public

    def start(self) -> AsyncJob:
        self._task = asyncio.ensure_future(self._main())
        return self

    async def wait(self) -> dict[str, Any]:
        assert self._task is not None
        return await asyncio.shield(self._task)

    def done(self) -> bool:
        return self._task is not None and self._task.done()

    async def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    def progress(self) -> dict[str, Any]:
        p: dict[str, Any] = {
            "job": self.id,
            "name": self.opts.get("name") or getattr(self.fn, "__name__", "udf"),
            "phase": self.phase,
            "elapsed": round(time.monotonic() - self.started, 3),
            "segments": len(self.segments),
            "done": 0,
            "running": 0,
            "pending": len(self.segments),
            "failed_attempts": 0,
            "speculative": 0,
            "nodes": {},
        }
        if self.m is not None:
            p.update(self.m.progress())
        if self.error:
            p["error"] = self.error
        return p

    # ------------------------------------------------------------------ main

    async def _main(self) -> dict[str, Any]:
        output = self.opts.get("output")
        staged = False
        try:
            # Rights first (compute, and write on the output), before any work is done.
            await self.c._call("sec.check", {"compute": True, "write": [output] if output else []})
            await self._prepare()
            if output is not None:
                await self.c.mkdir(self.stage, parents=True)
                staged = True
            files: Files = []
            for _round in range(MAX_ROUNDS):
                await self._run_all()
                self._set_phase("reducing" if self.reduce else "committing")
                try:
                    files = await self._commit()
                    break
                except _Reopened:
                    continue
            else:
                raise JobFailed(f"job {self.id}: output kept being lost while committing")
            if output is not None:
                self._set_phase("renaming")
                parent = rec.parent(output)
                if parent != "/":
                    await self.c.mkdir(parent, parents=True)
                await self.c.mv(self.stage, output)
                staged = False
                files = [{**f, "path": rec.join(output, rec.basename(f["path"]))} for f in files]
            self._set_phase("done")
            elapsed = time.monotonic() - self.started
            self.result = summary(self.id, self._machine(), self.opts, elapsed, self.phases, files)
            return self.result
        except BaseException as exc:
            self._set_phase("cancelled" if isinstance(exc, JobCancelled) else "failed")
            self._fail(str(exc))
            raise
        finally:
            await self._cleanup(staged)

    def _set_phase(self, phase: str) -> None:
        now = time.monotonic()
        self.phases[self.phase] = round(self.phases.get(self.phase, 0.0) + now - self._phase_at, 3)
        self.phase, self._phase_at = phase, now

    async def _cleanup(self, staged: bool) -> None:
        # Early commits finish first: one still running would write into the staging
        # directory after it is removed.
        for _att, fut in self._early.values():
            with contextlib.suppress(BaseException):
                await fut
        with contextlib.suppress(BaseException):
            await asyncio.gather(*self._cancelling)
        m = self.m

        async def one(nid: str) -> None:
            assert m is not None
            with contextlib.suppress(SectorError, OSError):
                args = {"job": self.id, **({"cancelled": self._stopped} if self._stopped else {})}
                await self.c.pool.call(m.addr[nid], wire.CLEANUP, args, timeout=5)

        if m is not None:
            with contextlib.suppress(BaseException):
                await asyncio.gather(*(one(n) for n in m.touched if n not in m.lost))
        if staged:
            with contextlib.suppress(BaseException):
                await self.c.rm(self.stage, recursive=True)
        # The user's staging directory goes too once empty (another job of the same
        # user keeps it: a plain rm refuses a directory that is not empty).
        with contextlib.suppress(BaseException):
            await self.c.rm(rec.parent(self.stage))

    # ------------------------------------------------------------------ preparation

    async def _prepare(self) -> None:
        o = self.opts
        output = o.get("output")
        if output is not None:
            output = o["output"] = rec.normalize(output)
            if await self.c.exists(output):
                raise AlreadyExists(f"output {output} already exists (remove it or pick another)")
        # Required files first: a missing (or unreadable) one fails the job at once,
        # before any node is asked to run anything.
        self.required = await required(self.c, list(o.get("required_files") or ()))
        found, places = await cluster_engines(self.c)
        engines = {nid: k for nid, (_a, k) in found.items()}
        if not engines:
            raise ClusterError("no node of the cluster runs Sphere engines")
        per_node = o.get("engines")
        if per_node:
            engines = {n: min(k, per_node) for n, k in engines.items()}
        if o.get("tasks") is not None:
            self.segments = task_segments(list(o["tasks"]))
        else:
            self.inputs = await expand(self.c, o.get("input"), o.get("records", "file"))
            self.segments = plan_segments(
                self.inputs.files,
                o.get("records", "file"),
                engines=sum(engines.values()),
                min_unit=o.get("min_unit", 1 << 20),
                max_unit=o.get("max_unit", 256 << 20),
            )
        work = [
            Work(s.id, tuple(h for h in s.holders if h in engines), s.length) for s in self.segments
        ]
        sched = Scheduler(
            work,
            engines,
            distance=topology_distance(places),
            max_attempts=o.get("max_attempts", 4),
            speculate=o.get("speculate", True),
            # A backup of a segment that takes seconds cannot win much, and on busy
            # cores it only slows the others: speculate on real stragglers.
            spec_min=SPEC_MIN,
        )
        mode = o.get("mode", "none")
        self.m = JobMachine(
            self.id,
            [s.id for s in self.segments],
            sched,
            {nid: a for nid, (a, _k) in found.items()},
            mode=mode,
            buckets=jm.place_buckets(self.id, list(engines), int(o.get("buckets") or 0)),
            # Files mode seals each winner's output as soon as it wins.
            early=mode == "files" and output is not None,
        )
        self._set_phase("running")

    # ------------------------------------------------------------------ performing

    def _machine(self) -> JobMachine:
        assert self.m is not None, "the job is not planned yet"
        return self.m

    async def _feed(self, event: jm.Event) -> None:
        """Hand the machine an event, then do what it says."""
        await self._perform(self._machine().handle(event, time.monotonic()))

    def _feed_now(self, event: jm.Event) -> None:
        """``_feed`` of an event whose only action is a wake-up (``Failed``)."""
        for a in self._machine().handle(event, time.monotonic()):
            assert isinstance(a, jm.Wake), a
            self._wake.set()

    async def _perform(self, actions: list[jm.Action]) -> None:
        """Do the machine's actions in order; starts go out together at the end. The
        run loop acts on ``Sleep`` and ``StageDone`` itself."""
        starts: list[jm.Start] = []
        for a in actions:
            if isinstance(a, jm.Wake):
                self._wake.set()
            elif isinstance(a, jm.Start):
                starts.append(a)
            elif isinstance(a, jm.Cancel):
                self._cancel(a)
            elif isinstance(a, jm.CommitEarly):
                # Seal this segment's output now, while others still run: its hashing
                # and fsync overlap their work instead of queueing at the end (it is
                # still under the staging directory; the output appears at the rename).
                item: wire.CommitItem = {
                    "path": jm.part_path(self.stage, a.seg),
                    "attempt": a.attempt,
                }
                fut = asyncio.ensure_future(self._commit_on(a.node, [item]))
                self._early[a.seg] = (a.attempt, fut)
            elif isinstance(a, jm.Probe):
                await self._probe(a.node)
            elif isinstance(a, jm.Abort):
                if a.traceback is None:
                    raise JobFailed(a.message)
                raise JobFailed(a.message, traceback=a.traceback)
        if starts:
            await asyncio.gather(*(self._start(s) for s in starts))

    async def _run_all(self) -> None:
        m = self._machine()
        pollers: dict[str, asyncio.Task[None]] = {}
        try:
            while True:
                # Cleared before the state is read: whatever changes it from here on
                # sets the event, and the wait below returns at once.
                self._wake.clear()
                if self._stopped is not None:  # no retry elsewhere: the job is over
                    raise JobCancelled(self._stopped)
                actions = m.handle(jm.Schedule(), time.monotonic())
                if any(isinstance(a, jm.StageDone) for a in actions):
                    return
                await self._perform(actions)
                for nid in m.busy_nodes():
                    if nid not in pollers or pollers[nid].done():
                        pollers[nid] = asyncio.create_task(self._poll(nid))
                # No tick: asleep until an event (a poll's news, a lost node) or the
                # scheduler's next deadline (a straggler to back up). The margin: a
                # timer may fire a hair early, and schedule() would find nothing yet.
                at = next((a.until for a in actions if isinstance(a, jm.Sleep)), None)
                if at is None:
                    await self._wake.wait()
                else:
                    await wait_event(self._wake, at - time.monotonic() + 0.001)
        finally:
            for t in pollers.values():
                t.cancel()
            for t in pollers.values():
                with contextlib.suppress(BaseException):
                    await t

    async def _start(self, s: jm.Start) -> None:
        m = self._machine()
        run = wire.Run(
            job=self.id,
            attempt=s.attempt,
            seg=self.inputs.segment_args(self.segments[s.seg]),
            udf=self.udf,
            digest=self.digest,
            mode=self.opts.get("mode", "none"),
            nbuckets=len(m.bucket_node),
            buckets={str(b): m.addr[n] for b, n in m.bucket_node.items()},
            batch=self.opts.get("map_batch") or msgspec.UNSET,
            compress=True if self.opts.get("shuffle_compress") else msgspec.UNSET,
            required=self.required or msgspec.UNSET,
            speculative=True if s.speculative else msgspec.UNSET,
            total=len(self.segments),
        )
        try:
            await self.c.pool.call(m.addr[s.node], wire.RUN, wire.to_args(run), timeout=30)
        except JobCancelled as exc:
            self._stop(str(exc))
        except TransportError as exc:
            await self._feed(jm.StartFailed(s.attempt, str(exc), "down"))
        except (PermissionDenied, CredentialError) as exc:
            await self._feed(jm.StartFailed(s.attempt, str(exc), "denied"))
        except SectorError as exc:
            await self._feed(jm.StartFailed(s.attempt, str(exc), "refused"))
        else:
            await self._feed(jm.Accepted(s.attempt))

    async def _poll(self, nid: str) -> None:
        """Long-poll one node while it runs attempts of this job."""
        try:
            await self._poll_loop(nid)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug of ours must fail the job, not hang it
            log.exception("job %s: poller of %s failed", self.id, self._machine().addr.get(nid))
            self._fail(f"internal error: {type(exc).__name__}: {exc}")

    async def _poll_loop(self, nid: str) -> None:
        m = self._machine()
        misses = 0
        ack: list[int] = []
        addr = m.addr[nid]
        while m.runs_on(nid) or ack:
            sent = time.monotonic()
            # Only an acknowledgement left to send (nothing runs there): no long poll,
            # which would hold the job for POLL_WAIT before its commit.
            poll = wire.Poll(job=self.id, ack=ack, wait=POLL_WAIT if m.runs_on(nid) else 0.0)
            args = wire.to_args(poll)
            try:
                rep = await self.c.pool.call(addr, wire.POLL, args, timeout=POLL_WAIT + 15)
            except JobCancelled as exc:
                self._stop(str(exc))
                return
            except (TransportError, SectorError) as exc:
                misses += 1
                if misses >= LOST_AFTER:
                    log.warning("job %s: node %s lost (%s)", self.id, addr, exc)
                    await self._feed(jm.NodeLost(nid))
                    return
                await asyncio.sleep(0.3)
                continue
            misses = 0
            ack = []
            for r in wire.outcomes(rep):
                ack.append(r["attempt"])
                await self._feed(jm.Finished(nid, r))
            await self._feed(jm.Polled(nid, sent, frozenset(wire.alive(rep) | set(ack))))
            if not ack and not m.runs_on(nid):
                return

    def _stop(self, why: str) -> None:
        """A node refused the job as cancelled: the run loop raises ``JobCancelled``."""
        self._stopped = self._stopped or why
        self._wake.set()

    async def _probe(self, nid: str) -> None:
        """A bucket's node refused a part: lost, unless it still answers."""
        try:
            await self.c.pool.call(self._machine().addr[nid], wire.INFO, {}, timeout=3)
        except Exception:
            await self._feed(jm.NodeLost(nid))

    def _cancel(self, c: jm.Cancel) -> None:
        """Stop an attempt that lost its segment: its engine is free now, not when its
        UDF ends. In the background (the poll that brought the winner goes on); a node
        that cannot be told is no worse off: the job's cleanup ends the attempt there."""
        addr = self._machine().addr[c.node]

        async def tell() -> None:
            args = {"job": self.id, "attempt": c.attempt}
            with contextlib.suppress(SectorError, OSError):
                await self.c.pool.call(addr, wire.CANCEL, args, timeout=10)

        t = asyncio.ensure_future(tell())
        self._cancelling.add(t)
        t.add_done_callback(self._cancelling.discard)

    async def _redeliver(self) -> None:
        """Make every winner's parts sit on their bucket's current node (resend)."""
        m = self._machine()
        for _round in range(MAX_ROUNDS):
            todo = m.undelivered()
            if not todo:
                return

            async def one(seg: int, att: int, nid: str, want: dict[int, str]) -> None:
                resend = wire.Resend(
                    job=self.id,
                    attempt=att,
                    buckets={str(b): m.addr[n] for b, n in want.items()},
                )
                args = wire.to_args(resend)
                try:
                    rep = await self.c.pool.call(m.addr[nid], wire.RESEND, args, timeout=600)
                except (TransportError, SectorError):
                    await self._feed(jm.NodeLost(nid))
                    return
                bad = frozenset(int(b) for b in rep.get("undelivered", []))
                await self._feed(jm.Resent(seg, att, want, bad))

            # Who won each segment, read before any reply can lose a node.
            calls = [one(s, *m.winners[s][:2], want) for s, want in todo.items()]
            await asyncio.gather(*calls)
            if not m.done:
                raise _Reopened()
        raise JobFailed(f"job {self.id}: bucket nodes kept failing")

    # ------------------------------------------------------------------ commit

    async def _commit(self) -> Files:
        mode = self.opts.get("mode")
        if mode not in ("files", "buckets"):
            return []
        m = self._machine()
        items: dict[str, list[wire.CommitItem]] = {}
        if mode == "buckets":
            await self._redeliver()
            items = m.bucket_items(self.stage)
        files: Files = []
        if mode == "files":
            for seg in m.segments:
                att, nid, _r = m.winners[seg]
                early = self._early.get(seg)
                if early is not None and early[0] == att:
                    got = await early[1]  # committed while the stage ran
                    if got is not None:
                        files.extend(got)
                        continue
                items.setdefault(nid, []).append(
                    {"path": jm.part_path(self.stage, seg), "attempt": att}
                )
        lost: list[str] = []

        async def one(nid: str, its: list[wire.CommitItem]) -> None:
            got = await self._commit_on(nid, its)
            if got is None:
                lost.append(nid)
            else:
                files.extend(got)

        # Wait for every node's commit, even when one fails (a reduce that raised): the
        # cleanup that follows a failure must not race files still being stored.
        await gather_all(*(one(n, its) for n, its in items.items()))
        if lost:
            for nid in lost:
                await self._feed(jm.NodeLost(nid))
            raise _Reopened()
        return sorted(files, key=lambda f: f["path"])

    async def _commit_on(self, nid: str, items: list[wire.CommitItem]) -> Files | None:
        """Have a node seal staged output as Sector files; None if the node is gone (or
        restarted, which lost its staged parts)."""
        reduces = self.reduce is not None and any("bucket" in it for it in items)
        commit = wire.Commit(
            job=self.id,
            rf=self.opts.get("replicas"),
            items=items,
            durable=bool(self.opts.get("durable", True)),
            reduce=self.reduce if reduces else msgspec.UNSET,
            required=self.required if reduces and self.required else msgspec.UNSET,
        )
        addr = self._machine().addr[nid]
        try:
            rep = await self.c.pool.call(addr, wire.COMMIT, wire.to_args(commit), timeout=3600)
        except (TransportError, NotFound):
            return None
        except JobCancelled:
            raise
        except JobFailed as exc:  # the reduce raised: the job fails with its traceback
            tb = str(exc.data.get("traceback") or "")
            self._fail(f"{exc}\n{tb}" if tb else str(exc), tb)
            raise JobFailed(f"job {self.id} failed: {exc}", traceback=tb) from None
        return list(rep.get("files", []))


class _Reopened(Exception):
    """Output of some segments was lost; run them again, then commit again."""
