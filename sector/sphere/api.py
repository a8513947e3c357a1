"""The Sphere face of the clients: ``c.sphere.run(udf, input=..., ...)``.

    with sector.connect() as c:
        job = c.sphere.run(count_words, input="/logs", output="/counts", buckets=8,
                           records="lines")
        job.wait()          # a live progress bar on a terminal; job.progress() otherwise

Options (keyword-only; see ``options.job_options``):
    input     a path, a directory (walked), a glob, or a list of them
    tasks     instead of input: one generator task per item (the UDF gets it as
              ``seg.param``), e.g. to generate data on the nodes
    records   "file" (whole files, the default), "lines", "idx" (NAME.idx offsets),
              or an int: fixed-size records of that many bytes
    output    a Sector directory for the output (must not exist); without it the
              output comes back to the client (``job.results()``)
    buckets   N > 0: the UDF returns (records, bucket_ids) and bucket i becomes
              ``output/bucket-0000i``; otherwise each segment's output becomes
              ``output/part-<segment>`` on the node that ran it
    reduce    with buckets: a second UDF run on each bucket's node over the whole
              bucket (its parts in segment order, one ``Batch``) before it is stored;
              what it returns is the bucket file. The bucket never becomes an
              intermediate file (e.g. TeraSort: map = key range, reduce = sort)
    reduce_records   how the reduce sees the bucket's records: "file" (one record,
              the default), "lines" or an int (fixed size) -- the whole bucket in
              memory, refused at once if it is more than half the engine's memory
              limit; or "stream": a bucket larger than memory. The reduce then gets a
              ``Bucket`` (``sphere.bucket``), nothing loaded: ``seg.parts(chunk=None)``
              yields each part (or ``chunk``-byte windows of it) as a read-only view of
              a map, one at a time; ``seg.reader()`` is all of it as one binary file;
              ``seg.spill_dir`` is a directory on disk for its temporary files (not
              /tmp, which is RAM in an engine). It may return an iterator (a generator)
              of outputs, each written as it comes
    param     any picklable object, handed to the UDF (and the reduce) as ``seg.param``
    replicas  replica target of the output files (default: the cluster's)
    min_unit / max_unit   bounds of a segment's size in bytes (1 MiB / 256 MiB)
    map_batch with fixed-size records and an output: the UDF is called on consecutive
              batches of at most this many bytes of its segment (their outputs
              appended to the same parts), so an engine's memory follows the batch,
              not the segment; only for a UDF that maps each record on its own
    shuffle_compress  with a reduce: each map writes its bucket parts as zstd frames
              (a fast level, ~1 GB/s a core) and the reduce decompresses them, so the
              shuffle moves and stores fewer bytes -- worth it where the intermediate
              data outgrows the page cache or the network, a cost where it does not
              (default False; TeraSort turns it on from 2 GiB of input)
    speculate run a backup of a straggling segment elsewhere (default True)
    durable   fsync the output (default True); False for intermediate data that a
              later stage consumes and the job would recompute if lost
    required_files   Sector paths (files or directories) every engine sees as local
              files before its first segment: each node fetches each one once per job
              (through the swarm and its cache) and copies it, read-only, into the
              job's directory, the engines' working directory and first import path,
              under its base name; ``seg.required`` maps each Sector path to its local
              path (``sphere.required``, ``node/sphere_files``). A missing one fails the
              job before it starts
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import Callable
from typing import Any

from sector.errors import CredentialError, NotFound, PermissionDenied, Unavailable, UsageError
from sector.sphere import wire
from sector.sphere.cluster import cluster_engines
from sector.sphere.driver import AsyncJob
from sector.sphere.options import job_options
from sector.sphere.ports import JobClient, LoopClient


class AsyncSphere:
    def __init__(self, client: JobClient) -> None:
        self._c = client

    def run(self, udf: Callable[..., Any], input: Any = None, **opts: Any) -> AsyncJob:
        """Start a job (it runs in the background); ``await job.wait()`` for its result."""
        return AsyncJob(self._c, udf, **job_options(input=input, **opts)).start()

    async def engines(self) -> dict[str, int]:
        """Processing engines per live node, by address."""
        found, _places = await cluster_engines(self._c)
        return {addr: k for addr, k in found.values()}

    async def cancel(self, job: str) -> dict[str, Any]:
        """Cancel a running job by id (see ``cancel_job``)."""
        return await cancel_job(self._c, job)


async def cancel_job(c: JobClient, job: str) -> dict[str, Any]:
    """Cancel job ``job`` -- whichever process drives it -- on every live node
    (``sphere.stop``, as the caller: its user or an admin may). The nodes kill its
    running attempts, remove its staged files and refuse it from then on, so its driver
    raises ``JobCancelled`` at its next word with them (within a poll, about a second).

    Raises ``NotFound`` if no node runs the job, ``PermissionDenied`` if it is not the
    caller's (and the caller no admin)."""
    if not re.fullmatch(r"[0-9a-f]{8,32}", job):
        raise UsageError(f"not a Sphere job id: {job[:40]!r} (8-32 hex digits)")
    st = await c._call("fs.status", {})
    # Every node not known to be down: one that is suspected may still run attempts.
    addrs = sorted({str(m["address"]) for m in st.get("nodes", []) if m.get("state") != "down"})

    async def one(addr: str) -> dict[str, Any]:
        got: dict[str, Any] = await c.pool.call(addr, wire.STOP, {"job": job}, timeout=10)
        return got

    got = await asyncio.gather(*(one(a) for a in addrs), return_exceptions=True)
    for r in got:
        if isinstance(r, PermissionDenied | CredentialError):
            raise r
    replies = [r for r in got if isinstance(r, dict)]
    known = [r for r in replies if r.get("known")]
    unanswered = [a for a, r in zip(addrs, got, strict=True) if isinstance(r, BaseException)]
    if not known and unanswered:
        raise Unavailable(
            f"cannot tell whether job {job} was cancelled: {unanswered} did not answer"
        )
    if not known:
        raise NotFound(f"no node runs Sphere job {job}")
    return {
        "job": job,
        "cancelled": True,
        "nodes": len(known),
        "attempts_stopped": sum(int(r.get("stopped") or 0) for r in known),
        "unanswered": unanswered,
    }


class Job:
    """A job of the sync client: it runs in the client's loop thread meanwhile."""

    def __init__(self, client: LoopClient, job: AsyncJob) -> None:
        self._client = client
        self._job = job

    @property
    def id(self) -> str:
        return self._job.id

    def progress(self) -> dict[str, Any]:
        return self._job.progress()

    def done(self) -> bool:
        return self._job.done()

    def wait(self, *, progress: bool | None = None, timeout: float | None = None) -> dict[str, Any]:
        """Block until the job ends; its result, or the error that failed it."""
        if progress is None:
            progress = sys.stderr.isatty()
        fut = asyncio.run_coroutine_threadsafe(self._job.wait(), self._client._loop)
        if progress:
            _show(self._job, fut)
        try:
            return fut.result(timeout)
        except TimeoutError:
            raise TimeoutError(f"job {self.id} still running after {timeout} s") from None

    def results(self) -> list[bytes]:
        """The output of every segment, in segment order (jobs without an output)."""
        return list(self.wait(progress=False).get("results", []))

    def cancel(self) -> None:
        self._client._run(self._job.cancel())


class Sphere:
    def __init__(self, client: LoopClient) -> None:
        self._client = client

    def run(self, udf: Callable[..., Any], input: Any = None, **opts: Any) -> Job:
        """Start a job in the background and return its handle (see the module doc)."""
        opts = job_options(input=input, **opts)

        async def start() -> AsyncJob:
            return AsyncJob(self._client._aio, udf, **opts).start()

        return Job(self._client, self._client._run(start()))

    def engines(self) -> dict[str, int]:
        """Processing engines per live node, by address."""
        return self._client._run(AsyncSphere(self._client._aio).engines())

    def cancel(self, job: str) -> dict[str, Any]:
        """Cancel a running job by id, whichever process drives it (its user or an
        admin may): its driver raises ``JobCancelled``. See ``cancel_job``."""
        return self._client._run(cancel_job(self._client._aio, job))


def _table(p: dict[str, Any]) -> Any:
    from rich.table import Table

    t = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("node", "engines", "running", "done", "failed"):
        t.add_column(name, justify="left" if name == "node" else "right")
    for addr, n in sorted(p.get("nodes", {}).items()):
        t.add_row(
            addr + (" (lost)" if n.get("gone") else ""),
            str(n.get("slots", "")),
            str(n.get("running", 0)),
            str(n.get("done", 0)),
            str(n.get("failed", 0)),
        )
    return t


def _show(job: AsyncJob, fut: Any) -> None:
    """A live view until ``fut`` ends: a bar of segments done, and per node what runs
    there, what finished and what failed."""
    from rich.console import Console, Group
    from rich.live import Live
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
    )
    task = bar.add_task(job.progress()["name"], total=None, info="")

    def view() -> Any:
        p = job.progress()
        info = f"{p['phase']} · {p['elapsed']:.1f} s"
        if p.get("failed_attempts"):
            info += f" · {p['failed_attempts']} failed attempts"
        if p.get("speculative"):
            info += f" · {p['speculative']} speculative"
        bar.update(task, total=p["segments"] or None, completed=p["done"], info=info)
        return Group(bar, _table(p))

    with Live(view(), console=Console(stderr=True), refresh_per_second=5, transient=False) as live:
        while not fut.done():
            time.sleep(0.2)
            live.update(view())
        live.update(view())
