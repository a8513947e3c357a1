"""The node's side of Sphere: run segment attempts, take bucket parts, commit output.

The job's driver (a client) schedules; a node only does what it is told, and keeps
no state that outlives a job except files in ``<data>/sphere/<job>/``:

- ``sphere.run``: start one *attempt* of a segment in an engine (``sector.sphere.spe``).
  The reply comes at once; the outcome is collected by ``sphere.poll``, a long poll
  (the original's one-per-second progress report), so no RPC is held for the minutes
  a segment may take, and a dead node shows as a failed poll.
- With buckets, a finished attempt pushes each bucket's part to the bucket's node
  (``sphere.push``, bulk, sendfile) before it counts as done. Parts are kept per
  attempt on both sides: a speculative duplicate or a retried segment never doubles
  records, because commit takes exactly one attempt per segment (the winner), and the
  mapper keeps its parts until the job ends so a lost bucket node can be fed again
  (``sphere.resend``) without re-running the UDF.
- ``sphere.cancel``: stop an attempt that lost its segment to another (speculation):
  its engine is killed and replaced (``engines``), its staged output removed.
- ``sphere.commit``: turn staged output into Sector files (concatenated in segment
  order, then put through the node itself, so the first replica is local -- the data
  waits for the next stage there).
- ``sphere.cleanup``: forget the job and remove its files. Jobs whose driver vanished
  are removed after ``JOB_TTL`` of silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import secrets
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sector.aio import gather_all, wait_event
from sector.errors import (
    BadRequest,
    JobFailed,
    NoSpace,
    NotFound,
    PermissionDenied,
    SectorError,
    from_wire,
)
from sector.ids import to_hex
from sector.meta import records as rec
from sector.meta.records import FileRecord
from sector.node import bulkfile
from sector.node.engines import EngineDied, EnginePool
from sector.security import guard
from sector.sphere import spe
from sector.sphere.wire import KINDS, STAGING, staging_owner
from sector.storage.blobs import check_blob_id, checksum_file
from sector.transport.rpc import BulkChannel, split_addr

if TYPE_CHECKING:
    from sector.client.aio import AsyncClient
    from sector.node.server import Node

log = logging.getLogger("sector.sphere")

JOB_RE = re.compile(r"^[0-9a-f]{8,32}$")
MODES = ("client", "files", "buckets", "none")
MAX_BUCKETS = 1 << 16
JOB_TTL = 1800.0  # seconds without a word from its driver before a job is dropped
REPORT_MAX = 12 << 20  # client-bound output bytes in one poll reply


@dataclass(slots=True)
class Attempt:
    id: int
    seg: int
    state: str = "running"  # running | done | cancelled
    result: dict[str, Any] | None = None
    task: asyncio.Task[None] | None = None
    parts: dict[int, int] = field(default_factory=dict)  # bucket -> bytes (staged here)


@dataclass(slots=True)
class JobState:
    id: str
    dir: Path
    attempts: dict[int, Attempt] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    touched: float = field(default_factory=time.monotonic)
    owner: str | None = None  # the user whose driver runs the job (secure clusters)


def _int(a: dict[str, Any], name: str, lo: int = 0, hi: int = 1 << 62) -> int:
    v = a.get(name)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise BadRequest(f"{name} must be an integer from {lo} to {hi}")
    return v


def _job(a: dict[str, Any]) -> str:
    j = a.get("job")
    if not isinstance(j, str) or not JOB_RE.fullmatch(j):
        raise BadRequest("job must be a hex job id")
    return j


def _bucket_map(v: Any) -> dict[int, str]:
    """``{"<bucket id>": "host:port"}`` from a message, checked."""
    if not isinstance(v, dict):
        raise BadRequest("buckets must map bucket ids to addresses")
    out: dict[int, str] = {}
    for k, addr in v.items():
        if not isinstance(k, str) or not k.isdigit() or len(k) > 6 or int(k) >= MAX_BUCKETS:
            raise BadRequest(f"bucket id {k!r:.40} is not a number from 0 to {MAX_BUCKETS - 1}")
        try:
            split_addr(addr)
        except (TypeError, ValueError, AttributeError):
            raise BadRequest(f"bucket address {addr!r:.60} is not HOST:PORT") from None
        out[int(k)] = addr
    return out


def _check_range(seg: dict[str, Any], kind: str) -> None:
    """A data segment's byte range (and records) must lie within its file."""
    offset, length, size = _int(seg, "offset"), _int(seg, "length"), _int(seg, "size")
    if offset + length > size:
        raise BadRequest(f"segment range {offset}+{length} is past the file's {size} bytes")
    if not isinstance(seg.get("path"), str):
        raise BadRequest("a data segment needs the path of its file")
    if kind == "fixed":
        rs = _int(seg, "record_size", 1, 1 << 30)
        if length % rs:
            raise BadRequest(f"segment length {length} is not a whole number of {rs}-byte records")
    elif kind == "idx":
        raw = seg.get("index")
        if not isinstance(raw, bytes) or not raw or len(raw) % 8:
            raise BadRequest("an idx segment needs its index as int64 offsets")
        idx = np.frombuffer(raw, dtype=np.int64)
        if idx[0] != 0 or idx[-1] != length or bool(np.any(idx[1:] < idx[:-1])):
            raise BadRequest(f"the segment's index must run from 0 up to its length {length}")


class SphereService:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.root = node.data / "sphere"
        # Staged files of jobs from before a restart are dead: their driver has
        # re-run or failed those attempts (a restarted node answers no polls for them).
        shutil.rmtree(self.root, ignore_errors=True)
        self.engines = node.cfg.engines or os.cpu_count() or 1
        self.pool = EnginePool(self.engines)
        self.jobs: dict[str, JobState] = {}
        self._client: AsyncClient | None = None
        self._fetching: dict[str, asyncio.Future[Path]] = {}
        # Bulk file work of the shuffle (receive, concatenate, hash) on threads of its
        # own: on the loop's default executor a burst of pushes would queue the
        # metadata service's work behind minutes of copying. Its size is the cap on
        # parts received at once; the others wait in their senders' TCP buffers.
        self.io = ThreadPoolExecutor(8, thread_name_prefix="sphere-io")
        self.stats = {"attempts": 0, "failed": 0, "cancelled": 0, "pushed": 0, "received": 0}

    def handlers(self) -> dict[str, Any]:
        return {
            "sphere.info": self._h_info,
            "sphere.run": self._h_run,
            "sphere.poll": self._h_poll,
            "sphere.cancel": self._h_cancel,
            "sphere.resend": self._h_resend,
            "sphere.commit": self._h_commit,
            "sphere.cleanup": self._h_cleanup,
        }

    def bulk_handlers(self) -> dict[str, Any]:
        return {"sphere.push": self._h_push}

    def status(self) -> dict[str, Any]:
        running = sum(
            1 for j in self.jobs.values() for t in j.attempts.values() if t.state == "running"
        )
        return {
            "name": "sphere",
            "state": "busy" if running else "idle",
            "engines": self.engines,
            "engines_busy": self.pool.busy,
            "jobs": len(self.jobs),
            "running": running,
            **self.stats,
        }

    async def stop(self) -> None:
        for j in list(self.jobs.values()):
            self._drop(j)
        await self.pool.close()
        self.io.shutdown(wait=False, cancel_futures=True)
        if self._client is not None:
            await self._client.close()

    async def _io(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.io, fn, *args)

    # ------------------------------------------------------------------ engines

    def _job_state(self, job: str, *, create: bool = False) -> JobState:
        self._expire()
        j = self.jobs.get(job)
        if j is None:
            if not create:
                raise NotFound(f"no job {job} on this node")
            j = self.jobs[job] = JobState(job, self.root / job)
            j.dir.mkdir(parents=True, exist_ok=True)
        self._own(j)
        j.touched = time.monotonic()
        return j

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
        for j in [j for j in self.jobs.values() if now - j.touched > JOB_TTL]:
            log.info("job %s: no word from its driver for %.0f s, dropping it", j.id, JOB_TTL)
            self._drop(j)

    def _drop(self, j: JobState) -> None:
        for t in j.attempts.values():
            if t.task is not None and not t.task.done():
                t.task.cancel()
        self.jobs.pop(j.id, None)
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
        return {
            "id": to_hex(self.node.state.me.id),
            "address": self.node.addr,
            **me,
            **self.status(),
        }

    async def _h_run(self, a: dict[str, Any]) -> Any:
        guard.compute()
        job = _job(a)
        attempt = _int(a, "attempt", 0, 1 << 40)
        seg = a.get("seg")
        udf, digest = a.get("udf"), a.get("digest")
        mode = a.get("mode")
        if not isinstance(seg, dict) or not isinstance(udf, bytes) or not isinstance(digest, str):
            raise BadRequest("sphere.run needs seg, udf and digest")
        if len(digest) > 128:
            raise BadRequest("digest must be at most 128 characters")
        if mode not in MODES:
            raise BadRequest(f"mode must be one of {', '.join(MODES)}")
        kind = seg.get("kind")
        if kind not in KINDS:
            raise BadRequest(f"segment kind must be one of {', '.join(KINDS)}")
        nbuckets = _int(a, "nbuckets", 0, MAX_BUCKETS)
        buckets: dict[int, str] = {}
        if mode == "buckets":
            if nbuckets < 1:
                raise BadRequest("a bucket job needs nbuckets >= 1")
            buckets = _bucket_map(a.get("buckets"))
            if sorted(buckets) != list(range(nbuckets)):
                raise BadRequest(
                    f"a bucket job needs an address for each of buckets 0..{nbuckets - 1}"
                )
        elif not isinstance(a.get("buckets", {}), dict):
            raise BadRequest("buckets must map bucket ids to addresses")
        if kind != "task":
            _check_range(seg, kind)
        task: dict[str, Any] = {
            "udf": udf,
            "digest": digest,
            "kind": kind,
            "segment": _int(seg, "id", 0, 1 << 40),
            "offset": _int(seg, "offset") if kind != "task" else 0,
            "length": _int(seg, "length") if kind != "task" else 0,
            "size": _int(seg, "size") if kind != "task" else 0,
            "record_size": _int(seg, "record_size", 0, 1 << 30) if "record_size" in seg else 0,
            "first": _int(seg, "first") if "first" in seg else 0,
            "index": seg.get("index") if isinstance(seg.get("index"), bytes) else None,
            "param": seg.get("param") if isinstance(seg.get("param"), bytes) else None,
            "path": rec.normalize(seg["path"]) if kind != "task" else "",
            "node": to_hex(self.node.state.me.id),
            "mode": mode,
            "nbuckets": nbuckets,
        }
        src = None
        if kind != "task":
            holders = seg.get("holders", [])
            if not isinstance(holders, list) or not all(isinstance(h, str) for h in holders):
                raise BadRequest("holders must be a list of addresses")
            if not isinstance(seg.get("checksum"), str | None):
                raise BadRequest("checksum must be a string")
            src = {
                "blob": check_blob_id(seg.get("blob")),
                "checksum": seg.get("checksum"),
                "holders": holders[:16],
                "size": task["size"],
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
                src["local"] = to_hex(self.node.state.me.id) in {n for n, _ in r.replicas}
        j = self._job_state(job, create=True)
        if attempt in j.attempts:
            return {"accepted": True, "duplicate": True}
        t = j.attempts[attempt] = Attempt(attempt, task["segment"])
        task["out"] = str(j.dir / f"a{attempt}")
        t.task = asyncio.create_task(
            self._run(j, t, task, src, buckets),
            name=f"sphere-{job}-{attempt}",
        )
        self.stats["attempts"] += 1
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
            if src is not None and task["size"] > 0:
                task["file"] = str(await self._local_copy(src))
            res = await self.pool.run(spe.run_task, task)
        except asyncio.CancelledError:
            raise
        except EngineDied:
            res = {
                "error": "the engine process died (did the UDF exit or crash?)",
                "retryable": True,
            }
        except (SectorError, OSError) as exc:
            res = {"error": f"cannot get the segment's data: {exc}", "retryable": True}
        except Exception as exc:  # a bug of ours: report it, keep the node up
            log.exception("attempt %s of job %s", t.id, j.id)
            res = {"error": f"{type(exc).__name__}: {exc}", "retryable": True}
        if res.get("ok"):
            t.parts = {int(b): n for b, n in (res.get("parts") or {}).items()}
            if task["mode"] == "buckets":
                res["undelivered"] = await self._push(j, t, buckets)
        else:
            self.stats["failed"] += 1
        res["attempt"], res["seg"] = t.id, t.seg
        t.result, t.state = res, "done"
        j.changed.set()

    async def _local_copy(self, src: dict[str, Any]) -> Path:
        """The path of a local replica, or of a verified copy fetched from a holder."""
        blob = src["blob"]
        if src.get("local", True) and self.node.blobs.exists(blob):
            return self.node.blobs.path(blob)
        fut = self._fetching.get(blob)
        if fut is None:
            fut = asyncio.ensure_future(self._fetch(src))
            self._fetching[blob] = fut
            fut.add_done_callback(lambda _f: self._fetching.pop(blob, None))
        return await asyncio.shield(fut)

    async def _fetch(self, src: dict[str, Any]) -> Path:
        cache = self.root / "cache"
        cache.mkdir(parents=True, exist_ok=True)
        dst = cache / src["blob"]
        if dst.exists():
            return dst
        errors = []
        for addr in src["holders"]:
            tmp = dst.with_suffix(".part")
            try:
                chan = await self.node.pool.open_bulk(addr, "blob.get", {"blob": src["blob"]})
                try:
                    head = await chan.read_frame()
                    if head.e is not None:
                        raise from_wire(head.e)
                    size = int(head.r["size"])
                    await bulkfile.recv_file(chan, size, tmp, self.io)
                finally:
                    await chan.close()
                if isinstance(src["checksum"], str):
                    got = await self._io(checksum_file, tmp)
                    if got != src["checksum"]:
                        raise SectorError(f"copy at {addr} does not match its checksum")
                os.replace(tmp, dst)
                return dst
            except (SectorError, OSError) as exc:
                errors.append(f"{addr}: {exc}")
                with contextlib.suppress(OSError):
                    tmp.unlink()
        raise NotFound(f"no holder served blob {src['blob']} ({'; '.join(errors) or 'none'})")

    async def _push(self, j: JobState, t: Attempt, buckets: dict[int, str]) -> list[int]:
        """Send this attempt's bucket parts to their nodes; the buckets that failed."""
        sem = asyncio.Semaphore(4)

        async def one(b: int, n: int) -> int | None:
            addr = buckets.get(b)
            if addr is None:
                return b
            async with sem:
                try:
                    await self._send_part(j, t, b, n, addr)
                    return None
                except (SectorError, OSError) as exc:
                    log.warning("job %s: part of bucket %d to %s failed: %s", j.id, b, addr, exc)
                    return b

        got = await asyncio.gather(*(one(b, n) for b, n in sorted(t.parts.items())))
        return [b for b in got if b is not None]

    async def _send_part(self, j: JobState, t: Attempt, b: int, n: int, addr: str) -> None:
        path = j.dir / f"a{t.id}" / f"b{b}"
        if addr == self.node.addr:
            recv = j.dir / "recv"
            recv.mkdir(exist_ok=True)
            dst = recv / f"b{b}.a{t.id}"
            with contextlib.suppress(FileNotFoundError):
                dst.unlink()
            os.link(path, dst)  # the mapper keeps its own name for a resend
            self.stats["pushed"] += n
            return
        args = {"job": j.id, "bucket": b, "attempt": t.id, "size": n}
        chan = await self.node.pool.open_bulk(addr, "sphere.push", args)
        try:
            with open(path, "rb") as f:
                await chan.sendfile(f, 0, n)
            await chan.read_reply()
        finally:
            await chan.close()
        self.stats["pushed"] += n

    async def _h_push(self, a: dict[str, Any], chan: BulkChannel) -> Any:
        job = _job(a)
        b = _int(a, "bucket", 0, MAX_BUCKETS)
        attempt = _int(a, "attempt", 0, 1 << 40)
        size = _int(a, "size")
        if self.node.blobs.free() - size < self.node.cfg.min_free:
            raise NoSpace(f"node {self.node.addr} has no room for a {size}-byte bucket part")
        j = self._job_state(job, create=True)
        recv = j.dir / "recv"
        recv.mkdir(exist_ok=True)
        dst = recv / f"b{b}.a{attempt}"
        tmp = recv / f".b{b}.a{attempt}.part"
        try:
            await bulkfile.recv_file(chan, size, tmp, self.io)
        except BaseException:
            # A sender that hung up (or a job dropped meanwhile) leaves no partial part.
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        os.replace(tmp, dst)
        self.stats["received"] += size
        return {"ok": True}

    async def _h_poll(self, a: dict[str, Any]) -> Any:
        """``{job, ack: [attempt], wait}``: finished attempts not yet acknowledged."""
        guard.compute()
        job = _job(a)
        wait = a.get("wait", 0.0)
        if not isinstance(wait, int | float) or not 0 <= wait <= 30:
            raise BadRequest("wait must be 0 to 30 seconds")
        ack = a.get("ack") or []
        if not isinstance(ack, list):
            raise BadRequest("ack must be a list of attempt ids")
        j = self.jobs.get(job)
        if j is None:
            return {"done": [], "running": []}
        self._own(j)
        j.touched = time.monotonic()
        for x in ack:
            t = j.attempts.get(x) if isinstance(x, int) else None
            if t is not None and t.state == "done" and t.result is not None:
                # Keep the attempt (its parts may be resent or committed), drop the report.
                t.result = {"acked": True}
        if not self._unreported(j) and wait > 0:
            j.changed.clear()
            await wait_event(j.changed, wait)
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

    async def _h_cancel(self, a: dict[str, Any]) -> Any:
        """``{job, attempt}``: the attempt lost its segment; stop it (its engine is killed
        and replaced, see ``engines``) and discard its staged output. A cancel that
        overtakes its ``sphere.run`` leaves a mark that refuses the run."""
        guard.compute()
        job, aid = _job(a), _int(a, "attempt", 0, 1 << 40)
        j = self._job_state(job, create=True)
        t = j.attempts.setdefault(aid, Attempt(aid, -1, state="cancelled"))
        was, t.state, t.result, t.parts = t.state, "cancelled", None, {}
        if t.task is not None and not t.task.done():
            t.task.cancel()
            await asyncio.wait([t.task])  # the engine is killed when this returns
        if was != "cancelled":
            self.stats["cancelled"] += 1
            await self._io(shutil.rmtree, j.dir / f"a{aid}", True)
        return {"cancelled": was == "running"}

    async def _h_resend(self, a: dict[str, Any]) -> Any:
        """``{job, attempt, buckets: {b: addr}}``: push parts of a finished attempt again
        (their first bucket node was lost)."""
        guard.compute()
        j = self._job_state(_job(a))
        t = j.attempts.get(_int(a, "attempt", 0, 1 << 40))
        if t is None or t.state != "done":
            raise NotFound("no such finished attempt on this node")
        targets = {b: addr for b, addr in _bucket_map(a.get("buckets")).items() if b in t.parts}
        sub = Attempt(t.id, t.seg, parts={b: t.parts[b] for b in targets})
        return {"undelivered": await self._push(j, sub, targets)}

    async def _h_commit(self, a: dict[str, Any]) -> Any:
        """``{job, rf, items: [{path, bucket, attempts} | {path, attempt}]}``: make Sector
        files of staged output (buckets: the winning attempts' parts in segment order)."""
        guard.compute()
        j = self._job_state(_job(a))
        items = a.get("items")
        if not isinstance(items, list):
            raise BadRequest("commit needs a list of items")
        rf = a.get("rf")
        if rf is not None and (
            not isinstance(rf, int) or isinstance(rf, bool) or not 1 <= rf <= 16
        ):
            raise BadRequest("rf must be from 1 to 16")
        durable = a.get("durable", True)
        if not isinstance(durable, bool):
            raise BadRequest("durable must be true or false")
        # Every item is checked, and every part found, before any file is made: a bad
        # commit stores nothing. Output goes only under the job's staging directory
        # (the driver renames it into place), never elsewhere in the namespace.
        stage = f"{STAGING}/{staging_owner(guard.user())}/{j.id}/"
        plan: list[tuple[str, list[Path], int | None]] = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("path"), str):
                raise BadRequest("each commit item needs a path")
            path = rec.normalize(item["path"])
            if not path.startswith(stage):
                raise BadRequest(f"commit paths must be under {stage}, not {path}")
            if "bucket" in item:
                b = _int(item, "bucket", 0, MAX_BUCKETS)
                ids = item.get("attempts")
                if not isinstance(ids, list) or not all(
                    isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= 1 << 40
                    for x in ids
                ):
                    raise BadRequest("attempts must be a list of attempt ids")
                parts = [j.dir / "recv" / f"b{b}.a{x}" for x in ids]
                bucket: int | None = b
            else:
                parts = [j.dir / f"a{_int(item, 'attempt', 0, 1 << 40)}" / "out"]
                bucket = None
            for p in parts:
                if not p.exists():
                    _missing(p)
            plan.append((path, parts, bucket))
        if len({path for path, _, _ in plan}) != len(plan):
            raise BadRequest("commit items must have distinct paths")
        reduce = _reduce_spec(a.get("reduce"))
        # Reduces run on the engines, one per engine at a time; plain commits are bulk
        # file work and two at a time keep the disk busy without thrashing it.
        sem = asyncio.Semaphore(self.engines if reduce else 2)
        commit = j.dir / "commit"
        commit.mkdir(exist_ok=True)

        async def one(i: int, path: str, parts: list[Path], bucket: int | None) -> dict[str, Any]:
            if reduce is not None and bucket is not None:
                out = commit / f"f{i}"
                async with sem:  # the engine's part; the next reduce starts as this stores
                    await self._reduce(reduce, bucket, path, parts, out)
                return await self._store(out, path, rf, durable)
            async with sem:
                if len(parts) == 1:
                    out = parts[0]  # sealed as it is (a link, no copy)
                else:
                    out = commit / f"f{i}"
                    await self._io(bulkfile.concat, parts, out)
                return await self._store(out, path, rf, durable)

        # Every item ends before the reply, even when one fails: a commit still running
        # after the driver gave up would store a file into a staging directory that
        # the driver's cleanup has already removed.
        return {"files": await gather_all(*(one(i, *p) for i, p in enumerate(plan)))}

    async def _reduce(
        self, spec: dict[str, Any], bucket: int, path: str, parts: list[Path], out: Path
    ) -> None:
        """Run the job's reduce over one bucket's parts in an engine, into ``out``."""
        task = {
            **spec,
            "parts": [str(p) for p in parts],
            "bucket": bucket,
            "path": path,
            "node": to_hex(self.node.state.me.id),
            "out": str(out),
        }
        try:
            res = await self.pool.run(spe.run_reduce, task)
        except EngineDied:
            raise JobFailed(
                f"bucket {bucket}: the engine process died in the reduce "
                "(did the UDF exit or crash?)"
            ) from None
        if not res.get("ok"):
            raise JobFailed(
                f"bucket {bucket} on {self.node.addr}: {res.get('error')}",
                traceback=str(res.get("traceback") or ""),
            )

    async def _store(
        self, src: Path, path: str, rf: int | None, durable: bool = True
    ) -> dict[str, Any]:
        """Make a Sector file of a local file: first copy here (sealed in place), the
        others chain-copied from here, then the record -- as a put would, minus the
        two copies of the bytes through this node's own socket."""
        node = self.node
        size = src.stat().st_size if src.exists() else 0
        if not src.exists():
            src.parent.mkdir(parents=True, exist_ok=True)
            src.touch()
        host = split_addr(node.addr)[0]
        plan = await node.fs._h_begin_put(
            {"path": path, "size": size, "rf": rf, "client_host": host}
        )
        me = [to_hex(node.state.me.id), node.addr]
        targets = [tuple(t) for t in plan["targets"]]
        if not targets or list(targets[0]) != me:
            # Placement would not put a copy here (draining, full): a plain put.
            if self._client is None:
                from sector.client.aio import AsyncClient

                self._client = AsyncClient(
                    node.addr,
                    timeout=node.cfg.rpc_timeout * 6,
                    ssl=node.security.client_ctx if node.security else None,
                )
            return await self._client.put(src, path, replicas=rf)
        blob = plan["blob"]
        size, checksum = await self._io(
            functools.partial(node.blobs.adopt, src, blob, plan["path"], sync=durable)
        )
        stored: list[list[str]] = [me]
        if len(targets) > 1:
            chain = [(str(n), str(a)) for n, a in targets[1:]]
            try:
                stored += await node.transfer.replicate(blob, size, checksum, chain, plan["path"])
            except SectorError as exc:
                # Fewer copies now; the file's owner repairs it to its target.
                log.warning("output %s: replication failed (%s)", path, exc)
        res: dict[str, Any] = await node.fs._h_commit_put(
            {
                "path": plan["path"],
                "blob": blob,
                "size": size,
                "checksum": checksum,
                "replicas": stored,
                "rf": plan["rf"],
            }
        )
        return res

    async def _h_cleanup(self, a: dict[str, Any]) -> Any:
        guard.compute()
        j = self.jobs.get(_job(a))
        if j is not None:
            self._own(j)
            self._drop(j)
        return {"ok": True}


def _reduce_spec(raw: Any) -> dict[str, Any] | None:
    """A commit's ``reduce``: {udf, digest, kind, record_size}, checked, or None."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise BadRequest("reduce must be a map")
    udf, digest, kind = raw.get("udf"), raw.get("digest"), raw.get("kind")
    if not isinstance(udf, bytes) or not isinstance(digest, str) or len(digest) > 128:
        raise BadRequest("reduce needs udf (bytes) and digest (a short string)")
    if kind not in ("file", "lines", "fixed"):
        raise BadRequest("reduce kind must be file, lines or fixed")
    size = _int(raw, "record_size", 0, 1 << 30) if "record_size" in raw else 0
    if kind == "fixed" and size < 1:
        raise BadRequest("a fixed-size reduce needs record_size >= 1")
    return {"udf": udf, "digest": digest, "kind": kind, "record_size": size}


def _missing(p: Path) -> None:
    what = (
        f"bucket part {p.name}"
        if p.parent.name == "recv"
        else f"output of attempt {p.parent.name[1:]}"
    )
    raise NotFound(f"{what} is not on this node (lost in a restart?)")
