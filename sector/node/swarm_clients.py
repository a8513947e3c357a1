"""The swarm's requests from clients (issue 14), served by a node for the readers on
its host: ``swarm.want``, ``swarm.get`` (streamed as verified pieces arrive),
``swarm.fetch`` and ``swarm.job`` (``sector distribute``).

- ``swarm.want`` tells a client on this host whether this node would serve its get
  (the file is cached here, or busy: at least ``BUSY`` other readers, or for a file
  under ``SMALL`` bytes ``PER_REPLICA`` per replica, or of at least
  ``LARGE`` bytes: the node's fetch takes it from every holder at once, and from
  peers, where a read of its own would take one replica's link, or share it).
- ``swarm.get`` sends the file from its start, in order, while the fetch through the
  swarm fills the cache: each run of verified pieces at the front of the file goes
  out as soon as it is in (a pipeline: the client's bytes flow while the pieces come).
  A fetch that fails, or a file dropped from the cache, after the header was sent
  ends the stream short with no final frame: the client sees a cut-off stream (and
  checks the file's checksum in any case), never a short file taken for whole, and
  falls back to the replicas. A reader that leaves mid-get costs the fetch nothing.
- ``swarm.fetch`` (a job) is for identified callers on a secure cluster (a user's
  credential or a node's certificate; anonymous readers may not fill a node's cache),
  and at most ``JOBS_PER_CALLER`` jobs of one caller (a user, a node, or on an open
  cluster a client host) run on a node at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sector.errors import (
    ConnectError,
    NotFound,
    PermissionDenied,
    SectorError,
    TransportError,
    Unavailable,
)
from sector.meta import records as rec
from sector.meta.records import FileRecord
from sector.node.cache import Cache, Entry
from sector.security import guard
from sector.storage.blobs import BlobStore, check_blob_id
from sector.swarm import messages as m
from sector.swarm.schedule import front
from sector.swarm.tracker import Ref
from sector.transport import bulk
from sector.transport.bulk import BulkChannel
from sector.transport.rpc import current_session
from sector.wire import codec
from sector.wire.messages import to_args, typed


class _Node(Protocol):
    @property
    def blobs(self) -> BlobStore: ...


class ClientHost(Protocol):
    """What the client side needs of the node's swarm service (``node/swarm``)."""

    @property
    def node(self) -> _Node: ...
    @property
    def cache(self) -> Cache: ...
    @property
    def counters(self) -> Counter[str]: ...
    @property
    def me(self) -> Ref: ...

    async def track(self, path: str, op: str, args: dict[str, Any]) -> Any: ...
    async def record(self, path: str) -> FileRecord: ...
    async def fetch_record(
        self,
        r: FileRecord,
        progress: Callable[[int], None] | None = None,
        *,
        restart: bool = True,
    ) -> Path: ...
    def local_copy(self, r: FileRecord) -> Path | None: ...
    def start_fetch(self, r: FileRecord) -> asyncio.Task[Entry]: ...
    def arrivals(self, blob: str) -> AbstractContextManager[asyncio.Event]: ...


# A get joins the swarm when at least this many *others* read the file now. With the
# default 3 replicas two readers at once are served well by the replicas; from the
# third on, readers start to share a replica's disk and link, and the one local copy
# a swarm fetch makes (then served to every reader on this host) costs less.
BUSY = 2
# A small file's replicas serve a few readers each sooner than a swarm starts (its
# RPCs cost more than the bytes): under SMALL bytes, the swarm is for a file read by
# more than PER_REPLICA readers per replica (ten hosts reading 1 MiB from 3 replicas
# are served by the replicas; a thousand by the swarm).
SMALL = 2 << 20
PER_REPLICA = 4
# A file this large is served through the node even when quiet. Ten readers at one
# moment: the first two find the file quiet, read a replica each, and share its
# uplink with the swarm: they ended last.
LARGE = 16 << 20
JOB_TTL = 600.0  # seconds a finished distribute job's outcome is kept
MAX_JOBS = 64
JOBS_PER_CALLER = 8
JOB_FILES_AT_ONCE = 4
WAKE = 1.0  # seconds a streaming get waits for a piece before it looks again


@dataclass
class _Job:
    """A ``swarm.fetch`` (``sector distribute`` on this node)."""

    id: str
    paths: list[str]
    caller: str
    started: float = field(default_factory=time.monotonic)
    files: int = 0
    bytes: int = 0
    fetched: int = 0  # bytes that came over the network
    progress: int = 0  # bytes done, for the progress bar
    errors: list[str] = field(default_factory=list)
    ended: float | None = None
    task: asyncio.Task[None] | None = None

    def view(self) -> dict[str, Any]:
        end = self.ended if self.ended is not None else time.monotonic()
        return {
            "job": self.id,
            "state": "running" if self.ended is None else "done",
            "files": self.files,
            "bytes": self.bytes,
            "fetched": self.fetched,
            "progress": self.progress,
            "seconds": round(end - self.started, 3),
            "errors": self.errors[:20],
        }


class Clients:
    """The client-facing half of a node's swarm service (module doc)."""

    def __init__(self, svc: ClientHost) -> None:
        self.svc = svc
        self.jobs: dict[str, _Job] = {}

    def handlers(self) -> dict[str, Any]:
        return {"swarm.want": self._h_want, "swarm.fetch": self._h_fetch, "swarm.job": self._h_job}

    def bulk_handlers(self) -> dict[str, Any]:
        return {"swarm.get": self._h_get}

    def expire(self, now: float) -> None:
        for jid in [j for j, job in self.jobs.items() if job.ended and now - job.ended > JOB_TTL]:
            del self.jobs[jid]

    def stop(self) -> None:
        for j in self.jobs.values():
            if j.task is not None:
                j.task.cancel()

    # ------------------------------------------------------------------ gets

    @typed(m.Want)
    async def _h_want(self, req: m.Want) -> Any:
        svc = self.svc
        path = rec.normalize(req.path)
        guard.read(path)
        blob = check_blob_id(req.blob)
        if svc.node.blobs.exists(blob):
            return {"serve": False, "why": "holder"}
        if svc.cache.lookup(path, blob) is not None:
            return {"serve": True, "why": "cached"}
        if req.size is not None and req.size >= LARGE and req.size <= svc.cache.limit:
            return {"serve": True, "why": "large"}
        reader = f"{svc.me.id}:{req.reader}"
        args = to_args(m.Interest(blob=blob, reader=reader))
        try:
            rep = await svc.track(path, "swarm.interest", args)
            others = int(rep["others"])
        except (SectorError, KeyError, TypeError, ValueError):
            return {"serve": False, "why": "quiet"}
        busy = BUSY
        if req.size is not None and req.size < SMALL and req.replicas:
            busy = max(BUSY, PER_REPLICA * req.replicas)
        return {"serve": others >= busy, "why": "busy" if others >= busy else "quiet"}

    @typed(m.SwarmGet)
    async def _h_get(self, req: m.SwarmGet, chan: BulkChannel) -> Any:
        svc = self.svc
        blob = check_blob_id(req.blob)
        r = await svc.record(req.path)
        if r.blob != blob:
            raise NotFound(f"{r.path} changed since it was looked up")
        start = min(req.offset, r.size)
        end = r.size if req.length is None else min(r.size, start + req.length)
        local = svc.local_copy(r)
        if local is None and not r.pieces:  # no piece root: checked whole, at the end
            local = await svc.fetch_record(r, restart=False)
        if local is not None:
            with open(local, "rb") as f:
                await chan.write(codec.reply(1, {"size": end - start, "total": r.size}))
                await bulk.send_file(chan, f, start, end - start)
        else:
            await self._stream(r, chan, start, end)
        svc.counters["local_gets"] += 1
        svc.counters["local_get_bytes"] += end - start
        return None

    async def _stream(self, r: FileRecord, chan: BulkChannel, pos: int, stop: int) -> None:
        """Bytes ``pos`` to ``stop`` of the file to ``chan``, in order, as its fetch
        verifies their pieces (module doc)."""
        svc = self.svc
        task = svc.start_fetch(r)
        await chan.write(codec.reply(1, {"size": stop - pos, "total": r.size}))
        fd: int | None = None
        try:
            with svc.arrivals(r.blob) as woken:
                while pos < stop:
                    woken.clear()
                    e = svc.cache.get(r.blob)
                    if e is not None and e.dropped:
                        raise ConnectError(f"{r.path} was dropped from the cache mid-get")
                    if fd is None and e is not None:
                        with contextlib.suppress(OSError):
                            fd = svc.cache.open(e)
                    if fd is not None and e is not None and e.size == r.size:
                        ps = e.piece_size
                        end = min(stop, front(e.have, pos // ps, e.pieces) * ps)
                        if end > pos:
                            with os.fdopen(os.dup(fd), "rb") as f:
                                await bulk.send_file(chan, f, pos, end - pos)
                            svc.counters["streamed_bytes"] += end - pos
                            pos = end
                            continue
                    if task.done():
                        if task.cancelled() or task.exception() is not None:
                            exc = None if task.cancelled() else task.exception()
                            raise ConnectError(f"the swarm fetch of {r.path} failed: {exc}")
                        if e is None or not e.complete:  # sealed and evicted meanwhile
                            raise ConnectError(f"{r.path} left the cache mid-get")
                        continue
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(woken.wait(), WAKE)
        except TransportError:
            svc.counters["local_gets_cut"] += 1
            raise  # no final frame: the client sees the stream end short
        finally:
            if fd is not None:
                os.close(fd)

    # ------------------------------------------------------------------ distribute

    @typed(m.Fetch)
    async def _h_fetch(self, req: m.Fetch) -> Any:
        paths = [rec.normalize(p) for p in req.paths]
        try:
            who = _caller()
        except PermissionDenied:
            self.svc.counters["fetches_refused"] += 1
            raise
        for p in paths:
            guard.read(p)
        running = [j for j in self.jobs.values() if j.ended is None]
        if len(running) >= MAX_JOBS:
            raise Unavailable("too many distribute jobs running on this node")
        if sum(1 for j in running if j.caller == who) >= JOBS_PER_CALLER:
            self.svc.counters["fetches_refused"] += 1
            raise Unavailable(
                f"{who} has {JOBS_PER_CALLER} distribute jobs running on this node already; "
                "wait for one to end"
            )
        job = _Job(secrets.token_hex(8), paths, who)
        self.jobs[job.id] = job
        job.task = asyncio.create_task(self._run_job(job), name=f"swarm-job-{job.id}")
        return {"job": job.id}

    async def _run_job(self, job: _Job) -> None:
        sem = asyncio.Semaphore(JOB_FILES_AT_ONCE)
        svc = self.svc

        async def one(path: str) -> None:
            got = [0]

            def progress(n: int) -> None:
                got[0] += n
                job.progress += n
                job.fetched += n

            async with sem:
                try:
                    r = await svc.record(path)
                    await svc.fetch_record(r, progress)
                except SectorError as exc:
                    job.errors.append(f"{path}: {exc}")
                    return
                job.files += 1
                job.bytes += r.size
                job.progress += r.size - got[0]  # held here, or fetched by another

        try:
            await asyncio.gather(*(one(p) for p in job.paths))
        finally:
            job.ended = time.monotonic()

    @typed(m.Job)
    async def _h_job(self, req: m.Job) -> Any:
        job = self.jobs.get(req.job)
        if job is None:
            raise NotFound(f"no distribute job {req.job} on this node (restarted?)")
        return job.view()


def _caller() -> str:
    """Who asks for a fetch job: a user or a node on a secure cluster (anonymous
    callers are refused), the client's host on an open one."""
    ident = guard.caller()
    if ident is None:
        sess = current_session.get()
        return f"host:{sess.host if sess is not None else ''}"
    if ident.kind not in ("user", "node"):
        raise PermissionDenied(
            "permission denied: asking a node to fetch files into its cache "
            "(sector distribute) needs a user credential on a secure cluster"
        )
    return f"{ident.kind}:{ident.name}"
