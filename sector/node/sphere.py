"""The node's side of Sphere: the ``sphere.*`` handlers and the state of jobs' attempts.

The job's driver (a client) schedules; a node only does what it is told, and keeps
no state that outlives a job except files in its job directory (below):

- ``sphere.run``: start one *attempt* of a segment in an engine (``sector.sphere.spe``)
  on the segment's data (``sphere_input``: the local replica, or a verified copy).
  The reply comes at once; the outcome is collected by ``sphere.poll``, a long poll
  (the original's one-per-second progress report), so no RPC is held for the minutes
  a segment may take, and a dead node shows as a failed poll.
- With buckets, a finished attempt sends each bucket's part to the bucket's node
  before it counts as done (``sphere_shuffle``: ``sphere.push`` takes a part in,
  ``sphere.resend`` feeds a lost bucket node again).
- ``sphere.cancel``: stop an attempt that lost its segment to another (speculation):
  its engine is killed and replaced (``engines``), its staged output removed.
- ``sphere.commit``: turn staged output into Sector files (``sphere_commit``: the
  winners' parts in segment order, made through the put protocol from this node, so
  the first replica is local -- the data waits for the next stage there).
- ``sphere.cleanup``: forget the job and remove its files. Jobs whose driver vanished
  are removed after ``JOB_TTL`` of silence.
- ``sphere.stop``: cancel a whole job (its user or an admin; the web page's and
  ``sector sphere cancel``'s way, through ``sphere.api.cancel_job`` on every node): its
  running attempts and commits (a reduce) are killed, its staged files removed, and
  whatever its driver asks next is refused with ``JobCancelled`` -- so the driver, in
  its client, stops too. The job stays listed as cancelled (with its counts) until
  ``JOB_TTL`` passes.

The messages are declared in ``sphere.wire`` and decoded at the handler table; what
their types cannot say is checked in ``sphere_args``. Attempts and jobs are owned by the
user who started them (secure clusters); nodes pushing parts may touch any job.

Engines run sandboxed (``node/sandbox.py``): a job's files are under its user's staging
directory, ``<data>/sphere/u/<user>/<job>/`` (``<data>/sphere/open/<job>/`` on an open
cluster), the only staging an engine running that user's tasks can see. A node that first
hears of a job from a pushed part learns its user from the push.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import secrets
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from sector.aio import Worker, wait_event
from sector.errors import (
    BadRequest,
    JobCancelled,
    JobFailed,
    NotFound,
    PermissionDenied,
    SectorError,
)
from sector.ids import to_hex
from sector.meta import records as rec
from sector.meta.records import FileRecord
from sector.node import sandbox
from sector.node.engines import EngineDied, EnginePool
from sector.node.jobview import acked, job_views
from sector.node.put import Namespace, PutHost, PutProtocol
from sector.node.sphere_args import bucket_map, check_range, reduce_spec
from sector.node.sphere_commit import Committer
from sector.node.sphere_commit import plan as plan_commit
from sector.node.sphere_files import FileFetcher, RequiredError
from sector.node.sphere_files import check as check_required
from sector.node.sphere_files import prepare as prepare_required
from sector.node.sphere_input import SegmentInput
from sector.node.sphere_shuffle import Shuffle
from sector.node.sphere_state import Attempt, JobState
from sector.security import guard
from sector.sphere import spe, wire
from sector.sphere.wire import STAGING, staging_owner
from sector.storage.blobs import check_blob_id
from sector.transport.rpc import BulkChannel
from sector.wire.messages import typed

log = logging.getLogger("sector.sphere")

JOB_TTL = 1800.0  # seconds without a word from its driver before a job is dropped
JANITOR_EVERY = 60.0  # seconds between looks for such jobs
REPORT_MAX = 12 << 20  # client-bound output bytes in one poll reply
IO_THREADS = 8  # Sphere's bulk file work at once (see SphereService.io)
MAX_STOPS = 4096  # cancels of jobs not seen here that a node keeps (the oldest go)


class SphereHost(PutHost, Protocol):
    """What the Sphere service needs from its node: where it is and its data
    directory, the namespace (to check a segment against its file's record) and what
    the put protocol needs."""

    @property
    def data(self) -> Path: ...
    @property
    def host(self) -> str: ...
    @property
    def fs(self) -> Namespace: ...
    @property
    def swarm(self) -> FileFetcher: ...


class SphereService(Worker):
    """The Sphere handlers and job state; as a worker, the janitor that drops the jobs
    whose driver went silent (also checked at every request of a job)."""

    def __init__(self, node: SphereHost) -> None:
        super().__init__("sphere", interval=JANITOR_EVERY, settle=JANITOR_EVERY)
        self.node = node
        # Absolute: engines see these paths through their sandbox's binds (``translate``).
        self.root = Path(os.path.abspath(node.data)) / "sphere"
        # Staged files of jobs from before a restart are dead: their driver has
        # re-run or failed those attempts (a restarted node answers no polls for them).
        shutil.rmtree(self.root, ignore_errors=True)
        self.engines = node.cfg.engines or os.cpu_count() or 1
        self.pool = EnginePool(
            self.engines, functools.partial(sandbox.prepare, node.cfg, node.data, self.engines)
        )
        self.jobs: dict[str, JobState] = {}
        # Cancels of jobs not seen here yet: job -> (by whom, an admin?, when)
        self.stops: dict[str, tuple[str | None, bool, float]] = {}
        # Bulk file work of the shuffle (receive, concatenate, hash) on threads of its
        # own: on the loop's default executor a burst of pushes would queue the
        # metadata service's work behind minutes of copying. Its size is the cap on
        # parts received at once; the others wait in their senders' TCP buffers.
        self.io = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="sphere-io")
        self.input = SegmentInput(node.blobs, node.pool, self.root / "cache", self.io)
        self.shuffle = Shuffle(
            node.addr, node.pool, node.blobs, self.io, min_free=node.cfg.min_free
        )
        # Output is a node's put of its own bytes: the put protocol, no client.
        self.commits = Committer(
            PutProtocol(node, node.fs),
            self.pool,
            self.engines,
            self.io,
            node_id=to_hex(node.me.id),
            addr=node.addr,
        )
        self.stats = {"attempts": 0, "failed": 0, "cancelled": 0, "required_files": 0}
        self.stats["speculative"] = 0  # attempts started as backups of stragglers

    def handlers(self) -> dict[str, Any]:
        return {
            "sphere.info": self._h_info,
            "sphere.run": self._h_run,
            "sphere.poll": self._h_poll,
            "sphere.cancel": self._h_cancel,
            "sphere.resend": self._h_resend,
            "sphere.commit": self._h_commit,
            "sphere.cleanup": self._h_cleanup,
            "sphere.stop": self._h_stop,
        }

    def bulk_handlers(self) -> dict[str, Any]:
        return {"sphere.push": self._h_push}

    def status(self) -> dict[str, Any]:
        running = sum(
            1 for j in self.jobs.values() for t in j.attempts.values() if t.state == "running"
        )
        return {
            **super().status(),
            "state": "busy" if running else "idle",
            "engines": self.engines,
            "engines_busy": self.pool.busy,
            "sandbox": self.sandbox,
            "jobs": len(self.jobs),
            "running": running,
            **self.stats,
            **self.shuffle.stats,
        }

    @property
    def sandbox(self) -> str:
        """The engines' sandbox mode (``sector.sphere.sandbox``), "starting" until known."""
        return self.pool.setup.mode if self.pool.setup is not None else "starting"

    async def start(self) -> None:
        self.pool.start()  # the sandbox probe, in the background
        await super().start()

    async def work(self) -> None:
        self._expire()

    async def stop(self) -> None:
        await super().stop()
        for j in list(self.jobs.values()):
            self._drop(j)
        await self.pool.close()
        self.io.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ jobs

    def _job_state(self, job: str, *, create: bool = False, owner: str | None = None) -> JobState:
        """The job, made if ``create``: its user is the caller (``owner`` for a node
        pushing a part), and its files go to that user's staging directory."""
        self._expire()
        j = self.jobs.get(job)
        if j is None:
            if not create:
                raise NotFound(f"no job {job} on this node")
            user = owner if guard.is_node() else guard.user()
            by, admin, _at = self.stops.get(job, (None, False, 0.0))
            if job in self.stops and (admin or (by is not None and by == user)):
                raise JobCancelled(f"job {job} was cancelled by {by or 'an admin'}")
            j = JobState(job, self._staging(user) / job, owner=user)
            j.dir.mkdir(parents=True, exist_ok=True)
            self.jobs[job] = j
        self._own(j)
        j.touched = time.monotonic()
        if j.stopped is not None:
            raise JobCancelled(j.stopped)
        return j

    def _staging(self, user: str | None) -> Path:
        """A user's staging directory (user names are ``[a-z_][a-z0-9_.-]*``: no path)."""
        return self.root / "open" if user is None else self.root / "u" / user

    def _own(self, j: JobState) -> None:
        """A job is its user's: the first user to name it owns it here, and no other
        user may poll, commit, resend or clean it up (nodes pushing parts may)."""
        who = guard.user()
        if who is not None:
            if j.owner is None:
                j.owner = who
            elif j.owner != who:
                raise PermissionDenied(f"permission denied: job {j.id} is not {who}'s")

    def _expire(self) -> None:
        now = time.monotonic()
        for job in [k for k, (_b, _a, at) in self.stops.items() if now - at > JOB_TTL]:
            del self.stops[job]
        for j in [j for j in self.jobs.values() if now - j.touched > JOB_TTL]:
            log.info("job %s: no word from its driver for %.0f s, dropping it", j.id, JOB_TTL)
            self._drop(j)

    def _drop(self, j: JobState) -> None:
        for t in j.attempts.values():
            if t.task is not None and not t.task.done():
                t.task.cancel()
        if j.files is not None:
            j.files.cancel()
        self.jobs.pop(j.id, None)
        self._trash(j)

    def _trash(self, j: JobState) -> None:
        # A job's staged files can be gigabytes: move them aside at once (the job's
        # directory name is free again) and delete them on a thread, off the loop.
        trash = self.root / f".gone-{j.id}-{secrets.token_hex(4)}"
        try:
            os.rename(j.dir, trash)
        except FileNotFoundError:
            return
        except OSError:
            trash = j.dir
        try:
            self.io.submit(shutil.rmtree, trash, True)
        except RuntimeError:  # the node is stopping: its restart clears the directory
            pass

    # ------------------------------------------------------------------ handlers

    async def _h_info(self, a: dict[str, Any]) -> Any:
        # host and topology: where the node is, for the driver's scheduler (placement's
        # distance, so "near" means the same to both)
        me = {"host": self.node.host, "topology": self.node.cfg.topology}
        extra = {}
        if a.get("jobs"):  # the web page's job view (issue 16)
            who, trusted = guard.user(), guard.is_node() or guard.is_admin()
            extra["job_list"] = job_views(self.jobs.values(), who, trusted=trusted)
        return {
            "id": to_hex(self.node.me.id),
            "address": self.node.addr,
            **me,
            **self.status(),
            **extra,
        }

    @typed(wire.Run)
    async def _h_run(self, req: wire.Run) -> Any:
        guard.compute()
        job, attempt, seg, nbuckets = req.job, req.attempt, req.seg, req.nbuckets
        buckets: dict[int, str] = {}
        if req.mode == "buckets":
            if nbuckets < 1:
                raise BadRequest("a bucket job needs nbuckets >= 1")
            buckets = bucket_map(req.buckets)
            if sorted(buckets) != list(range(nbuckets)):
                raise BadRequest(
                    f"a bucket job needs an address for each of buckets 0..{nbuckets - 1}"
                )
        me = to_hex(self.node.me.id)
        task: dict[str, Any] = {
            "udf": req.udf,
            "digest": req.digest,
            "kind": seg.kind,
            "segment": seg.id,
            "offset": 0,
            "length": 0,
            "size": 0,
            "record_size": 0,
            "first": 0,
            "index": None,
            "param": seg.param if isinstance(seg, wire.TaskSegment) else None,
            "path": "",
            "node": me,
            "mode": req.mode,
            "nbuckets": nbuckets,
            "batch": req.batch if isinstance(req.batch, int) else 0,  # spe: fixed records only
            "compress": req.compress is True and req.mode == "buckets",
        }
        src = None
        if isinstance(seg, wire.DataSegment):
            check_range(seg)
            task["offset"], task["length"], task["size"] = seg.offset, seg.length, seg.size
            task["record_size"], task["first"] = seg.record_size, seg.first
            task["index"] = seg.index if isinstance(seg.index, bytes) else None
            task["path"] = rec.normalize(seg.path)
            src = {
                "blob": check_blob_id(seg.blob),
                "checksum": seg.checksum,
                "holders": seg.holders[:16],
                "size": seg.size,
            }
            guard.read(task["path"])  # a UDF reads the segment: its caller must be able to
            if not guard.is_node():
                # A user's word for which blob a path is, and where it lives, is not
                # taken: the file's record says (else a public path could be paired with
                # a private file's blob, or with a copy planted on a node that is not a
                # holder), and the checksum fetched copies are checked against is its.
                r = await self.node.fs.get(task["path"])
                if not isinstance(r, FileRecord) or r.blob != src["blob"]:
                    raise BadRequest(f"segment of {task['path']}: not that file's blob")
                src["checksum"] = r.checksum
                src["holders"] = [ad for _, ad in r.replicas][:16]
                src["local"] = me in {n for n, _ in r.replicas}
        listed = req.required if isinstance(req.required, list) else []
        required = check_required(listed)
        j = self._job_state(job, create=True)
        if isinstance(req.total, int):
            j.total = max(j.total, req.total)
        if attempt in j.attempts:
            return {"accepted": True, "duplicate": True}
        if required:
            self._fetch_required(j, listed)
            task["required"] = required
        t = j.attempts[attempt] = Attempt(attempt, task["segment"])
        task["out"] = str(j.dir / f"a{attempt}")
        t.task = asyncio.create_task(
            self._run(j, t, task, src, buckets),
            name=f"sphere-{job}-{attempt}",
        )
        self.stats["attempts"] += 1
        self.stats["speculative"] += req.speculative is True
        return {"accepted": True}

    async def _run(
        self,
        j: JobState,
        t: Attempt,
        task: dict[str, Any],
        src: dict[str, Any] | None,
        buckets: dict[int, str],
    ) -> None:
        try:
            if j.files is not None:
                task["files_dir"] = str(await asyncio.shield(j.files))
            if src is not None and task["size"] > 0:
                task["file"] = os.path.abspath(await self.input.local_copy(src))
            writes = task["mode"] in ("files", "buckets")
            res = await self.pool.run(
                spe.run_task,
                task,
                stage=j.dir.parent,
                outdirs=[Path(task["out"])] if writes else [],
            )
        except asyncio.CancelledError:
            raise
        except EngineDied as exc:
            res = {"error": str(exc), "retryable": exc.retryable}
        except RequiredError as exc:
            res = {"error": str(exc), "retryable": False}
        except (SectorError, OSError) as exc:
            res = {"error": f"cannot get the segment's data: {exc}", "retryable": True}
        except Exception as exc:  # a bug of ours: report it, keep the node up
            log.exception("attempt %s of job %s", t.id, j.id)
            res = {"error": f"{type(exc).__name__}: {exc}", "retryable": True}
        if res.get("ok"):
            t.parts = {int(b): n for b, n in (res.get("parts") or {}).items()}
            if task["mode"] == "buckets":
                res["undelivered"] = await self.shuffle.push(
                    j.dir, j.id, t.id, t.parts, buckets, owner=j.owner
                )
        else:
            self.stats["failed"] += 1
        res["attempt"], res["seg"] = t.id, t.seg
        t.result, t.state, t.ended = res, "done", time.time()
        j.changed.set()

    def _fetch_required(self, j: JobState, required: list[wire.Required]) -> asyncio.Task[Path]:
        """The job's required files here: fetched by the first request that names them,
        in its context (the fetches read as the job's user), awaited by every task."""
        if j.files is None:
            j.files = asyncio.create_task(self._required(j, required))
            j.files.add_done_callback(_retrieved)
        return j.files

    async def _required(self, j: JobState, required: list[wire.Required]) -> Path:
        files = sum(1 for r in required if not r.dir)
        path = await prepare_required(self.node.swarm, j.dir, required, self.io)
        self.stats["required_files"] += files
        return path

    @typed(wire.Push)
    async def _h_push(self, req: wire.Push, chan: BulkChannel) -> Any:
        parts = [(req.bucket, req.size), *req.more]
        self.shuffle.check_room(sum(n for _, n in parts))
        j = self._job_state(req.job, create=True, owner=req.owner)
        for bucket, size in parts:  # in the order they follow each other
            await self.shuffle.receive(chan, j.dir, bucket, req.attempt, size)
        return {"ok": True}

    @typed(wire.Poll)
    async def _h_poll(self, req: wire.Poll) -> Any:
        """``{job, ack: [attempt], wait}``: finished attempts not yet acknowledged."""
        guard.compute()
        wait = req.wait
        j = self.jobs.get(req.job)
        if j is None:
            return {"done": [], "running": []}
        self._own(j)
        j.touched = time.monotonic()
        for x in req.ack:
            t = j.attempts.get(x)
            if t is not None and t.state == "done" and t.result is not None:
                # Keep the attempt (its parts may be resent or committed), drop the report
                # but for what the web page shows of it.
                t.result = {**acked(t.result), "acked": True}
        if not self._unreported(j) and wait > 0 and j.stopped is None:
            j.changed.clear()
            await wait_event(j.changed, wait)
        if j.stopped is not None:  # before, or while the poll waited
            raise JobCancelled(j.stopped)
        done: list[dict[str, Any]] = []
        budget = REPORT_MAX
        for t in self._unreported(j):
            assert t.result is not None
            n = len(t.result.get("data") or b"")
            if done and n > budget:
                break
            budget -= n
            done.append(t.result)
        running = [t.id for t in j.attempts.values() if t.state == "running"]
        return {"done": done, "running": running}

    def _unreported(self, j: JobState) -> list[Attempt]:
        return [
            t
            for t in j.attempts.values()
            if t.state == "done" and t.result is not None and not t.result.get("acked")
        ]

    @typed(wire.Cancel)
    async def _h_cancel(self, req: wire.Cancel) -> Any:
        """``{job, attempt}``: the attempt lost its segment; stop it (its engine is killed
        and replaced, see ``engines``) and discard its staged output. A cancel that
        overtakes its ``sphere.run`` leaves a mark that refuses the run."""
        guard.compute()
        aid = req.attempt
        j = self._job_state(req.job, create=True)
        t = j.attempts.setdefault(aid, Attempt(aid, -1, state="cancelled"))
        was, t.state, t.result, t.parts = t.state, "cancelled", None, {}
        if t.task is not None and not t.task.done():
            t.task.cancel()
            await asyncio.wait([t.task])  # the engine is killed when this returns
        if was != "cancelled":
            self.stats["cancelled"] += 1
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self.io, shutil.rmtree, j.dir / f"a{aid}", True)
        return {"cancelled": was == "running"}

    @typed(wire.Resend)
    async def _h_resend(self, req: wire.Resend) -> Any:
        """``{job, attempt, buckets: {b: addr}}``: push parts of a finished attempt that
        it could not deliver (to their bucket's new node)."""
        guard.compute()
        j = self._job_state(req.job)
        t = j.attempts.get(req.attempt)
        if t is None or t.state != "done":
            raise NotFound("no such finished attempt on this node")
        targets = {b: addr for b, addr in bucket_map(req.buckets).items() if b in t.parts}
        gone = sorted(set(targets) - set(self.shuffle.kept(j.dir, t.id, list(targets))))
        if gone:
            # Delivered once and deleted here; the driver re-runs a segment whose
            # bucket node was lost rather than asking for its parts again.
            raise NotFound(f"parts of buckets {gone} were delivered and are no longer here")
        parts = {b: t.parts[b] for b in targets}
        undelivered = await self.shuffle.push(j.dir, j.id, t.id, parts, targets, owner=j.owner)
        return {"undelivered": undelivered}

    @typed(wire.Commit)
    async def _h_commit(self, req: wire.Commit) -> Any:
        """``{job, rf, items: [{path, bucket, attempts} | {path, attempt}]}``: make Sector
        files of staged output (buckets: the winning attempts' parts in segment order)."""
        guard.compute()
        j = self._job_state(req.job)
        # Output goes only under the job's staging directory (the driver renames it
        # into place), never elsewhere in the namespace; see ``sphere_commit``.
        stage = f"{STAGING}/{staging_owner(guard.user())}/{j.id}/"
        todo = plan_commit(j.dir, stage, req.items)
        reduce = reduce_spec(req.reduce)
        extra: dict[str, Any] = {}
        if reduce is not None and isinstance(req.required, list) and req.required:
            # The reduce sees the job's required files too (fetched here now if no map
            # task of the job ran on this node).
            extra["required"] = check_required(req.required)
            fetching = self._fetch_required(j, req.required)
            try:
                extra["files_dir"] = str(await asyncio.shield(fetching))
            except RequiredError as exc:
                raise JobFailed(str(exc)) from None
        run = asyncio.ensure_future(
            self.commits.run(j.dir, todo, reduce, req.rf, req.durable, extra)
        )
        j.commits.add(run)
        try:
            files = await run
        except (Exception, asyncio.CancelledError):
            if j.stopped is not None and run.done():  # the job was cancelled meanwhile
                raise JobCancelled(j.stopped) from None
            raise
        finally:
            j.commits.discard(run)
        return {"files": files}

    @typed(wire.Cleanup)
    async def _h_cleanup(self, req: wire.Cleanup) -> Any:
        guard.compute()
        j = self.jobs.get(req.job)
        if j is not None:
            self._own(j)
            if isinstance(req.cancelled, str) and j.stopped is None:
                # The driver learnt of a cancel from another node before this one did:
                # the job is cancelled here too, and stays listed as such.
                await self._stop(j, req.cancelled[:200])
            if j.stopped is None:  # a cancelled job stays listed (its files are gone)
                self._drop(j)
        return {"ok": True}

    @typed(wire.Stop)
    async def _h_stop(self, req: wire.Stop) -> Any:
        """``{job}``: cancel the whole job -- its user or an admin may (a job not seen
        here yet is marked, and refused when it comes if the mark is its user's)."""
        who, admin = guard.user(), guard.is_admin()
        j = self.jobs.get(req.job)
        if j is None:
            if len(self.stops) >= MAX_STOPS:
                self.stops.pop(next(iter(self.stops)))
            self.stops[req.job] = (who, admin, time.monotonic())
            return {"known": False, "stopped": 0}
        if not admin and (who is None or who != j.owner):
            raise PermissionDenied(f"permission denied: job {j.id} is not {who or 'yours'}")
        if j.stopped is not None:
            return {"known": True, "stopped": 0}
        why = f"job {j.id} was cancelled by {who or 'an admin'}"
        return {"known": True, "stopped": await self._stop(j, why)}

    async def _stop(self, j: JobState, why: str) -> int:
        """Cancel job ``j`` here; the number of its attempts that were running."""
        j.stopped = why
        log.info("%s", j.stopped)
        running = [t for t in j.attempts.values() if t.state == "running"]
        for t in running:
            t.state, t.ended = "cancelled", time.time()
            if t.task is not None:
                t.task.cancel()  # the engine is killed (``engines``)
        self.stats["cancelled"] += len(running)
        if j.files is not None:
            j.files.cancel()
        for c in j.commits:
            c.cancel()  # a reduce's engine is killed (the driver removes its staging)
        tasks = [t.task for t in running if t.task is not None] + list(j.commits)
        if tasks:
            await asyncio.wait(tasks)
        self._trash(j)
        j.touched = time.monotonic()
        j.changed.set()  # a waiting poll answers JobCancelled now
        return len(running)


def _retrieved(t: asyncio.Task[Path]) -> None:
    """A job's required files failed: its tasks say so; the failure is not news here."""
    if not t.cancelled():
        t.exception()
