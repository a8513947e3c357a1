"""The client-side driver of a Sphere job (DESIGN "Sphere"; original §3 "Scheduling").

One job is one stage: a UDF over a stream of Sector files (or a list of generator
tasks), with output back to the client, to files on the processing nodes, or to N
buckets. A multi-stage job chains stages: one stage's output directory is the next
one's input. The driver is an asyncio task of the client, so one client runs several
jobs at once.

How a stage runs:
1. Resolve the input to files with their replica holders; cut segments (``segments``).
2. Ask every live node how many engines it has; the pure ``Scheduler`` decides which
   segment attempt runs where (locality, pull, retries, speculation); the driver sends
   ``sphere.run`` and collects outcomes with one long poll per node. It sleeps until an
   outcome or the scheduler's next deadline (``wake_at``), never on a tick, and sends
   ``sphere.cancel`` for every attempt the scheduler cancels (a backup's loser).
3. A node that stops answering is lost: its running attempts are re-run elsewhere, and
   if it held buckets they move to other nodes and are fed again -- from the mappers'
   kept parts (``sphere.resend``), or by re-running segments whose mapper died too.
   (The original failed the whole job here.)
4. Commit: staged output becomes Sector files under ``/.sphere/<job>``, which is then
   renamed to the output path -- readers see all of a job's output or none of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

import cloudpickle
import numpy as np

from sector.aio import gather_all, wait_event
from sector.errors import (
    AlreadyExists,
    ClusterError,
    CredentialError,
    JobFailed,
    NotFound,
    PermissionDenied,
    SectorError,
    TransportError,
    UsageError,
)
from sector.meta import records as rec
from sector.sphere.ports import JobClient
from sector.sphere.schedule import Cancel, Scheduler, Start, Work, topology_distance
from sector.sphere.segments import InputFile, Segment, check_index, plan_segments, task_segments
from sector.sphere.udf import pickle_udf
from sector.sphere.wire import STAGING, staging_owner
from sector.storage.placement import Candidate

log = logging.getLogger("sector.sphere.driver")

# STAGING and staging_owner live in ``wire`` (node and driver share them); importable
# from here as they always were.
__all__ = ["STAGING", "AsyncJob", "cluster_engines", "job_options", "staging_owner"]

POLL_WAIT = 1.0
LOST_AFTER = 2  # consecutive failed polls before a node counts as lost
SPEC_MIN = 5.0  # seconds a segment runs before a backup of it is considered
MAX_ROUNDS = 5  # commit rounds (each may re-run segments whose output was lost)


async def cluster_engines(
    c: JobClient,
) -> tuple[dict[str, tuple[str, int]], dict[str, Candidate]]:
    """Live nodes that run engines: ``{node id: (address, engines)}``, and where each
    is (host and topology, as placement sees nodes).

    From the entry node's member view (one cheap ping), then ``sphere.info`` of each
    node in parallel -- not ``status``, which walks every node's records.
    """
    info = await c._call("node.ping", {})
    topo = info.get("topology") or {}
    alive = [(str(i), str(a)) for i, a in info.get("ring", []) if str(i) in topo]
    out: dict[str, tuple[str, int]] = {}
    places: dict[str, Candidate] = {}

    async def one(nid: str, addr: str) -> None:
        with contextlib.suppress(SectorError):
            r = await c.pool.call(addr, "sphere.info", {}, timeout=5)
            out[nid] = (addr, max(1, int(r.get("engines", 1))))
            where = str(r.get("topology", topo.get(nid)) or "")
            places[nid] = Candidate(nid, addr, str(r.get("host") or ""), where, 0)

    await asyncio.gather(*(one(n, a) for n, a in alive))
    return out, places


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
        self.reduce: dict[str, Any] | None = None
        if opts.get("reduce") is not None:
            udf = pickle_udf(opts["reduce"], opts.get("param"))
            spec = opts.get("reduce_records", "file")
            self.reduce = {
                "udf": udf,
                "digest": hashlib.blake2b(udf, digest_size=16).hexdigest(),
                "kind": "fixed" if isinstance(spec, int) else spec,
                "record_size": spec if isinstance(spec, int) else 0,
            }
        self.phase = "starting"
        self.started = time.monotonic()
        self.phases: dict[str, float] = {}  # seconds spent in each phase (the result's)
        self._phase_at = self.started
        self.sched: Scheduler | None = None
        self.segments: list[Segment] = []
        self.error: str | None = None
        self.result: dict[str, Any] | None = None
        self._task: asyncio.Task[dict[str, Any]] | None = None
        # node id -> address, and the nodes the job lost
        self.addr: dict[str, str] = {}
        self.lost: set[str] = set()
        self.running: dict[int, Start] = {}  # attempt -> start
        # attempt -> when its node accepted it: a poll sent before that cannot list it.
        self.accepted: dict[int, float] = {}
        self.winners: dict[
            int, tuple[int, str, dict[str, Any]]
        ] = {}  # seg -> (attempt, node, result)
        self.bucket_node: dict[int, str] = {}  # bucket -> node id
        self.delivered: dict[int, dict[int, str]] = {}  # seg -> bucket -> node id holding its part
        self.touched: set[str] = set()  # nodes that may hold files of this job
        self.speculative = 0
        # per input path: size, checksum, replica addresses, record index (idx jobs)
        self._fsizes: dict[str, int] = {}
        self._checksums: dict[str, str] = {}
        self._replicas: dict[str, list[str]] = {}
        self._idx: dict[str, np.ndarray] = {}
        self._tb: str | None = None
        self._failed: BaseException | None = None
        self._wake = asyncio.Event()  # the run loop's alarm: news for the scheduler
        self._cancelling: set[asyncio.Future[None]] = set()  # sphere.cancel calls
        # seg -> (attempt, its commit started as soon as it won; files mode)
        self._early: dict[int, tuple[int, asyncio.Future[list[dict[str, Any]] | None]]] = {}

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
            "speculative": self.speculative,
            "nodes": {},
        }
        if self.sched is not None:
            p.update(self.sched.progress())
            p["speculative"] = self.speculative
            p["nodes"] = {self.addr.get(n, n): v for n, v in p["nodes"].items()}
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
            files: list[dict[str, Any]] = []
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
            self.result = self._summary(files)
            return self.result
        except BaseException as exc:
            self._set_phase("failed")
            self.error = self.error or str(exc)
            raise
        finally:
            await self._cleanup(staged)

    def _set_phase(self, phase: str) -> None:
        now = time.monotonic()
        self.phases[self.phase] = round(self.phases.get(self.phase, 0.0) + now - self._phase_at, 3)
        self.phase, self._phase_at = phase, now

    def _summary(self, files: list[dict[str, Any]]) -> dict[str, Any]:
        ordered = [self.winners[s.id][2] for s in self.segments if s.id in self.winners]
        res: dict[str, Any] = {
            "job": self.id,
            "output": self.opts.get("output"),
            "segments": len(self.segments),
            "seconds": round(time.monotonic() - self.started, 3),
            "records_out": sum(int(r.get("records_out", 0)) for r in ordered),
            "bytes_in": sum(int(r.get("bytes_in", 0)) for r in ordered),
            "bytes_out": sum(int(r.get("bytes_out", 0)) for r in ordered),
            "speculative": self.speculative,
            "failed_attempts": self.sched.progress()["failed_attempts"] if self.sched else 0,
            "lost_nodes": sorted(self.addr.get(n, n) for n in self.lost),
            "phases": dict(self.phases),
            "files": files,
        }
        if self.opts.get("mode") == "client":
            res["results"] = [r.get("data", b"") for r in ordered]
        return res

    async def _cleanup(self, staged: bool) -> None:
        # Early commits finish first: one still running would write into the staging
        # directory after it is removed.
        for _att, fut in self._early.values():
            with contextlib.suppress(BaseException):
                await fut
        with contextlib.suppress(BaseException):
            await asyncio.gather(*self._cancelling)

        async def one(nid: str) -> None:
            with contextlib.suppress(SectorError, OSError):
                await self.c.pool.call(
                    self.addr[nid], "sphere.cleanup", {"job": self.id}, timeout=5
                )

        with contextlib.suppress(BaseException):
            await asyncio.gather(*(one(n) for n in self.touched if n not in self.lost))
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
        found, places = await cluster_engines(self.c)
        self.addr.update({nid: a for nid, (a, _k) in found.items()})
        engines = {nid: k for nid, (_a, k) in found.items()}
        if not engines:
            raise ClusterError("no node of the cluster runs Sphere engines")
        per_node = o.get("engines")
        if per_node:
            engines = {n: min(k, per_node) for n, k in engines.items()}
        if o.get("tasks") is not None:
            self.segments = task_segments(list(o["tasks"]))
        else:
            files = await self._input_files(o.get("input"), o.get("records", "file"))
            self.segments = plan_segments(
                files,
                o.get("records", "file"),
                engines=sum(engines.values()),
                min_unit=o.get("min_unit", 1 << 20),
                max_unit=o.get("max_unit", 256 << 20),
            )
        nb = int(o.get("buckets") or 0)
        nodes = sorted(engines)
        start = int(self.id[:8], 16) % len(nodes)
        self.bucket_node = {b: nodes[(start + b) % len(nodes)] for b in range(nb)}
        work = [
            Work(s.id, tuple(h for h in s.holders if h in engines), s.length) for s in self.segments
        ]
        self.sched = Scheduler(
            work,
            engines,
            distance=topology_distance(places),
            max_attempts=o.get("max_attempts", 4),
            speculate=o.get("speculate", True),
            # A backup of a segment that takes seconds cannot win much, and on busy
            # cores it only slows the others: speculate on real stragglers.
            spec_min=SPEC_MIN,
        )
        self._set_phase("running")

    async def _input_files(self, spec: Any, records: Any) -> list[InputFile]:
        if spec is None:
            raise UsageError("a job needs an input (files, a directory or a glob) or tasks")
        specs = [spec] if isinstance(spec, str) else list(spec)
        stats: list[dict[str, Any]] = []
        for s in specs:
            if not isinstance(s, str):
                raise UsageError(f"input paths must be strings, not {type(s).__name__}")
            stats += await self._expand(s)
        if not stats:
            raise NotFound(f"the input {spec} has no files")
        out = []
        for st in stats:
            holders = tuple(r["id"] for r in st["replicas"] if r["state"] == "up")
            index = None
            if records == "idx":
                try:
                    raw = await self.c.read(st["path"] + ".idx")
                except NotFound:
                    raise UsageError(f"{st['path']} has no index file {st['path']}.idx") from None
                if len(raw) % 8:
                    raise UsageError(
                        f"{st['path']}: the index {st['path']}.idx has {len(raw)} bytes, "
                        "not a whole number of 8-byte offsets (int64)"
                    )
                index = check_index(np.frombuffer(raw, dtype=np.int64), st["size"], st["path"])
                self._idx[st["path"]] = index
            out.append(InputFile(st["path"], st["size"], st["blob"], holders, index))
            self._fsizes[st["path"]] = st["size"]
            self._checksums[st["path"]] = st["checksum"]
            self._replicas[st["path"]] = [r["address"] for r in st["replicas"]]
        return out

    async def _expand(self, spec: str) -> list[dict[str, Any]]:
        if any(ch in spec for ch in "*?["):
            base = rec.parent(rec.normalize(spec.split("*")[0].split("?")[0].split("[")[0] + "x"))
            # Matched name by name, as a shell does: "*" never crosses a "/".
            pattern = rec.normalize(spec).split("/")
            found = [
                st
                for st in await self._walk(base)
                if len(parts := st["path"].split("/")) == len(pattern)
                and all(fnmatch.fnmatchcase(n, p) for n, p in zip(parts, pattern, strict=True))
            ]
            return sorted(found, key=lambda s: s["path"])
        st = await self.c.stat(spec)
        if st["type"] == "dir":
            return await self._walk(st["path"])
        return [st]

    async def _walk(self, path: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for e in sorted(await self.c.ls(path), key=lambda e: e["name"]):
            if e["type"] == "dir":
                out += await self._walk(e["path"])
            elif not e["name"].endswith(".idx") and not e["name"].startswith("."):
                out.append(await self.c.stat(e["path"]))
        return out

    # ------------------------------------------------------------------ running

    async def _run_all(self) -> None:
        assert self.sched is not None
        pollers: dict[str, asyncio.Task[None]] = {}
        try:
            while True:
                # Cleared before the state is read: whatever changes it from here on
                # sets the event, and the wait below returns at once.
                self._wake.clear()
                now = time.monotonic()
                if self._failed is not None:
                    raise JobFailed(f"job {self.id} failed: {self.error}")
                if self.sched.error:
                    raise JobFailed(
                        f"job {self.id} failed: {self.sched.error}", traceback=self._tb or ""
                    )
                if self.sched.done:
                    return
                starts = self.sched.schedule(now)
                if starts:
                    await asyncio.gather(*(self._start(s) for s in starts))
                for nid in {s.node for s in self.running.values()}:
                    if nid not in pollers or pollers[nid].done():
                        pollers[nid] = asyncio.create_task(self._poll(nid))
                # No tick: asleep until an event (a poll's news, a lost node) or the
                # scheduler's next deadline (a straggler to back up). The margin: a
                # timer may fire a hair early, and schedule() would find nothing yet.
                at = self.sched.wake_at(time.monotonic())
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

    def _seg_args(self, seg: Segment) -> dict[str, Any]:
        a: dict[str, Any] = {"id": seg.id, "kind": seg.kind}
        if seg.kind == "task":
            a["param"] = bytes(cloudpickle.dumps(seg.param))
            return a
        a.update(
            path=seg.path,
            blob=seg.blob,
            offset=seg.offset,
            length=seg.length,
            size=self._fsizes[seg.path],
            record_size=seg.record_size,
            first=seg.first,
            checksum=self._checksums.get(seg.path),
            holders=self._replicas.get(seg.path, []),
        )
        if seg.kind == "idx":
            idx = self._idx[seg.path][seg.first : seg.first + seg.count + 1]
            a["index"] = (idx - idx[0]).astype(np.int64).tobytes()
        return a

    async def _start(self, s: Start) -> None:
        assert self.sched is not None
        seg = self.segments[s.seg]
        if s.speculative:
            self.speculative += 1
        mode = self.opts.get("mode", "none")
        args = {
            "job": self.id,
            "attempt": s.attempt,
            "seg": self._seg_args(seg),
            "udf": self.udf,
            "digest": self.digest,
            "mode": mode,
            "nbuckets": len(self.bucket_node),
            "buckets": {str(b): self.addr[n] for b, n in self.bucket_node.items()},
        }
        self.running[s.attempt] = s
        self.touched.add(s.node)
        try:
            await self.c.pool.call(self.addr[s.node], "sphere.run", args, timeout=30)
            self.accepted[s.attempt] = time.monotonic()
        except TransportError as exc:
            self.running.pop(s.attempt, None)
            self.sched.failed(s.attempt, time.monotonic(), f"{self.addr[s.node]}: {exc}")
            self._wake.set()
            await self._node_lost(s.node)
        except (PermissionDenied, CredentialError) as exc:
            # Another node would say the same: fail now, not after every retry.
            self.running.pop(s.attempt, None)
            self.error = self.error or str(exc)
            self._failed = exc
            self._wake.set()
        except SectorError as exc:
            self.running.pop(s.attempt, None)
            self.sched.failed(
                s.attempt, time.monotonic(), f"{self.addr[s.node]}: {exc}", retryable=True
            )
            self._wake.set()

    async def _poll(self, nid: str) -> None:
        """Long-poll one node while it runs attempts of this job."""
        try:
            await self._poll_loop(nid)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug of ours must fail the job, not hang it
            log.exception("job %s: poller of %s failed", self.id, self.addr.get(nid))
            self.error = self.error or f"internal error: {type(exc).__name__}: {exc}"
            self._failed = exc
            self._wake.set()

    async def _poll_loop(self, nid: str) -> None:
        assert self.sched is not None
        misses = 0
        ack: list[int] = []
        addr = self.addr[nid]
        while any(s.node == nid for s in self.running.values()) or ack:
            sent = time.monotonic()
            # Only an acknowledgement left to send (nothing runs there): no long poll,
            # which would hold the job for POLL_WAIT before its commit.
            wait = POLL_WAIT if any(s.node == nid for s in self.running.values()) else 0.0
            try:
                rep = await self.c.pool.call(
                    addr,
                    "sphere.poll",
                    {"job": self.id, "ack": ack, "wait": wait},
                    timeout=POLL_WAIT + 15,
                )
            except (TransportError, SectorError) as exc:
                misses += 1
                if misses >= LOST_AFTER:
                    log.warning("job %s: node %s lost (%s)", self.id, addr, exc)
                    await self._node_lost(nid)
                    self._wake.set()
                    return
                await asyncio.sleep(0.3)
                continue
            misses = 0
            ack = []
            news = bool(rep.get("done"))
            for r in rep.get("done", []):
                if not isinstance(r, dict) or not isinstance(r.get("attempt"), int):
                    continue
                ack.append(r["attempt"])
                await self._finished(nid, r)
            alive = set(rep.get("running", [])) | set(ack)
            for att, s in list(self.running.items()):
                took = self.accepted.get(att)
                if took is None or took > sent:
                    continue  # not accepted when this poll left: its absence says nothing
                if s.node == nid and att not in alive:
                    # The node does not know the attempt: it restarted and lost it.
                    self.running.pop(att, None)
                    self.sched.failed(att, time.monotonic(), f"{addr} forgot the attempt")
                    news = True
            if news:
                self._wake.set()  # an empty reply is no news: the driver sleeps on
            if not ack and not any(s.node == nid for s in self.running.values()):
                return

    async def _finished(self, nid: str, r: dict[str, Any]) -> None:
        assert self.sched is not None
        att = r["attempt"]
        s = self.running.pop(att, None)
        if s is None:
            return  # already written off (the node was declared lost meanwhile)
        now = time.monotonic()
        if not r.get("ok"):
            if r.get("traceback"):
                self._tb = str(r["traceback"])
                self.error = f"{r.get('error')}\n{self._tb}"
            self.sched.failed(
                att,
                now,
                f"{self.addr[nid]}: {r.get('error')}",
                retryable=bool(r.get("retryable", True)),
            )
            return
        won, cancels = self.sched.succeeded(att, now)
        for c in cancels:
            self._cancel(c)
        if not won:
            return
        self.winners[s.seg] = (att, nid, r)
        if self.opts.get("mode") == "files" and self.opts.get("output") is not None:
            # Seal this segment's output now, while others still run: its hashing and
            # fsync overlap their work instead of queueing at the end (it is still under
            # the staging directory; the job's output appears only at the rename).
            item = {"path": f"{self.stage}/part-{s.seg:05d}", "attempt": att}
            self._early[s.seg] = (att, asyncio.ensure_future(self._commit_on(nid, [item])))
        if self.opts.get("mode") != "buckets":
            return
        parts = {int(b) for b in (r.get("parts") or {})}
        bad = {int(b) for b in r.get("undelivered") or []}
        self.delivered[s.seg] = {b: self.bucket_node[b] for b in parts - bad}
        if bad:
            # Whoever held those buckets did not take the part: treat it as lost.
            for b in bad:
                holder = self.bucket_node[b]
                if holder not in self.lost:
                    with contextlib.suppress(Exception):
                        await self.c.pool.call(self.addr[holder], "sphere.info", {}, timeout=3)
                        continue
                    await self._node_lost(holder)

    def _cancel(self, c: Cancel) -> None:
        """Stop an attempt that lost its segment: its engine is free now, not when its
        UDF ends. In the background (the poll that brought the winner goes on); a node
        that cannot be told is no worse off: the job's cleanup ends the attempt there."""
        self.running.pop(c.attempt, None)

        async def tell() -> None:
            args = {"job": self.id, "attempt": c.attempt}
            with contextlib.suppress(SectorError, OSError):
                await self.c.pool.call(self.addr[c.node], "sphere.cancel", args, timeout=10)

        t = asyncio.ensure_future(tell())
        self._cancelling.add(t)
        t.add_done_callback(self._cancelling.discard)

    async def _node_lost(self, nid: str) -> None:
        assert self.sched is not None
        if nid in self.lost:
            return
        self.lost.add(nid)
        for att, s in list(self.running.items()):
            if s.node == nid:
                self.running.pop(att, None)
        self.sched.node_lost(nid, time.monotonic())
        self._wake.set()
        # Buckets it held move to the survivors; their parts are fed again below.
        moved = [b for b, n in self.bucket_node.items() if n == nid]
        live = sorted(n for n in self.addr if n not in self.lost)
        if not live:
            raise JobFailed(f"job {self.id}: every node was lost")
        for i, b in enumerate(moved):
            self.bucket_node[b] = live[i % len(live)]
        if self.opts.get("mode") not in ("files", "buckets"):
            return  # finished segments' output is already here, at the client
        # Their staged output died with the node: those segments run again.
        reopen = [seg for seg, (_a, n, _r) in self.winners.items() if n == nid]
        for seg in reopen:
            self.winners.pop(seg, None)
            self.delivered.pop(seg, None)
        self.sched.reopen(reopen, time.monotonic())

    async def _redeliver(self) -> None:
        """Make every winner's parts sit on their bucket's current node (resend)."""
        for _round in range(MAX_ROUNDS):
            todo: dict[int, dict[int, str]] = {}
            for seg, (_att, _nid, r) in self.winners.items():
                have = self.delivered.get(seg, {})
                for b in (int(x) for x in (r.get("parts") or {})):
                    if have.get(b) != self.bucket_node[b]:
                        todo.setdefault(seg, {})[b] = self.bucket_node[b]
            if not todo:
                return

            async def one(seg: int, want: dict[int, str]) -> None:
                att, nid, _r = self.winners[seg]
                try:
                    rep = await self.c.pool.call(
                        self.addr[nid],
                        "sphere.resend",
                        {
                            "job": self.id,
                            "attempt": att,
                            "buckets": {str(b): self.addr[n] for b, n in want.items()},
                        },
                        timeout=600,
                    )
                except (TransportError, SectorError):
                    await self._node_lost(nid)
                    return
                bad = {int(b) for b in rep.get("undelivered", [])}
                for b, n in want.items():
                    if b not in bad:
                        self.delivered.setdefault(seg, {})[b] = n
                for b in bad:
                    await self._node_lost(self.bucket_node[b])

            await asyncio.gather(*(one(s, w) for s, w in todo.items()))
            if self.sched is not None and not self.sched.done:
                raise _Reopened()
        raise JobFailed(f"job {self.id}: bucket nodes kept failing")

    # ------------------------------------------------------------------ commit

    async def _commit(self) -> list[dict[str, Any]]:
        mode = self.opts.get("mode")
        if mode not in ("files", "buckets"):
            return []
        stage = self.stage
        items: dict[str, list[dict[str, Any]]] = {}
        if mode == "buckets":
            await self._redeliver()
            for b, nid in sorted(self.bucket_node.items()):
                atts = [
                    self.winners[s.id][0]
                    for s in self.segments
                    if s.id in self.winners and str(b) in (self.winners[s.id][2].get("parts") or {})
                ]
                items.setdefault(nid, []).append(
                    {"path": f"{stage}/bucket-{b:05d}", "bucket": b, "attempts": atts}
                )
        files: list[dict[str, Any]] = []
        if mode == "files":
            for s in self.segments:
                att, nid, _r = self.winners[s.id]
                early = self._early.get(s.id)
                if early is not None and early[0] == att:
                    got = await early[1]  # committed while the stage ran
                    if got is not None:
                        files.extend(got)
                        continue
                items.setdefault(nid, []).append(
                    {"path": f"{stage}/part-{s.id:05d}", "attempt": att}
                )
        lost: list[str] = []

        async def one(nid: str, its: list[dict[str, Any]]) -> None:
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
                await self._node_lost(nid)
            raise _Reopened()
        return sorted(files, key=lambda f: f["path"])

    async def _commit_on(
        self, nid: str, items: list[dict[str, Any]]
    ) -> list[dict[str, Any]] | None:
        """Have a node seal staged output as Sector files; None if the node is gone (or
        restarted, which lost its staged parts)."""
        args = {
            "job": self.id,
            "rf": self.opts.get("replicas"),
            "items": items,
            "durable": bool(self.opts.get("durable", True)),
        }
        if self.reduce is not None and any("bucket" in it for it in items):
            args["reduce"] = self.reduce
        try:
            rep = await self.c.pool.call(self.addr[nid], "sphere.commit", args, timeout=3600)
        except (TransportError, NotFound):
            return None
        except JobFailed as exc:  # the reduce raised: the job fails with its traceback
            self._tb = str(exc.data.get("traceback") or "") or None
            self.error = self.error or (f"{exc}\n{self._tb}" if self._tb else str(exc))
            raise JobFailed(f"job {self.id} failed: {exc}", traceback=self._tb or "") from None
        return list(rep.get("files", []))


class _Reopened(Exception):
    """Output of some segments was lost; run them again, then commit again."""


def job_options(
    *,
    input: Any = None,
    output: str | None = None,
    buckets: int = 0,
    records: Any = "file",
    param: Any = None,
    tasks: Sequence[Any] | None = None,
    replicas: int | None = None,
    min_unit: int = 1 << 20,
    max_unit: int = 256 << 20,
    speculate: bool = True,
    max_attempts: int = 4,
    engines: int | None = None,
    name: str | None = None,
    to_client: bool | None = None,
    durable: bool = True,
    reduce: Callable[..., Any] | None = None,
    reduce_records: Any = "file",
) -> dict[str, Any]:
    """Check a job's options; the mode follows from them (buckets > files > client)."""
    if reduce is not None:
        if not buckets:
            raise UsageError("reduce needs buckets: it runs on each bucket's node")
        if not callable(reduce):
            raise UsageError(f"reduce must be a function, not {type(reduce).__name__}")
    if not (
        reduce_records in ("file", "lines")
        or (
            isinstance(reduce_records, int)
            and not isinstance(reduce_records, bool)
            and 1 <= reduce_records <= 1 << 30
        )
    ):
        raise UsageError(
            f"reduce_records must be 'file', 'lines' or a record size, not {reduce_records!r}"
        )
    if not isinstance(buckets, int) or isinstance(buckets, bool) or not 0 <= buckets <= 1 << 16:
        raise UsageError(f"buckets must be a whole number from 0 to 65536, not {buckets!r}")
    if buckets and output is None:
        raise UsageError("a job with buckets needs an output directory")
    if replicas is not None and not 1 <= replicas <= 16:
        raise UsageError("replicas must be from 1 to 16")
    if not 1 <= min_unit <= max_unit:
        raise UsageError("min_unit must be >= 1 and <= max_unit")
    if tasks is None and input is None:
        raise UsageError("a job needs an input (files, a directory or a glob) or tasks")
    if tasks is not None and input is not None:
        raise UsageError("give a job either an input or tasks, not both")
    if buckets:
        mode = "buckets"
    elif output is not None:
        mode = "files"
    elif to_client is False:
        mode = "none"
    else:
        mode = "client"
    return {
        "input": input,
        "output": output,
        "buckets": buckets,
        "records": records,
        "param": param,
        "tasks": tasks,
        "replicas": replicas,
        "min_unit": min_unit,
        "max_unit": max_unit,
        "speculate": speculate,
        "max_attempts": max_attempts,
        "engines": engines,
        "name": name,
        "mode": mode,
        "durable": durable,
        "reduce": reduce,
        "reduce_records": reduce_records,
    }
