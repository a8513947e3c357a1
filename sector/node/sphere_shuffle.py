"""The shuffle on this node: bucket parts out to their buckets' nodes, and in from mappers.

A finished attempt of a bucket job has one file per bucket it wrote to
(``<job>/a<attempt>/b<bucket>``, written by its engine). Before the attempt counts as
done, each part goes to its bucket's node; a part received is
``<job>/recv/b<bucket>.a<attempt>`` (``received``), which is what commit reads.

- One writer, two sinks (STYLE habit 12, after dask's ``shuffle/_buffer.py``): a
  ``BucketWriter`` hands the parts of one delivery (an attempt's, or a resend of some
  of them) to their sinks and owns the bounds; the sinks only move bytes.
  ``DiskSink`` links a part for a bucket of this node into ``recv/`` (no copy);
  ``NetSink`` pushes it to another node (``sphere.push``, bulk, ``sendfile``).
- One stream per node: an attempt's parts for one node go down one bulk stream, each
  right behind the other (one connection, one TLS handshake: with hundreds of buckets
  a stream per part spent more on handshakes than on bytes).
- Memory and back-pressure: the node has at most ``SHUFFLE_STREAMS`` streams in flight,
  all its writers together, and a writer waits for one to end before it starts the
  next. A part is spilled before it moves: the engine wrote it to a file as the UDF
  made it, so no part waits in memory for its turn. No byte of a part passes through
  Python memory on the way out (a link, or ``sendfile`` from its file), so what a part
  in flight holds is a connection and its buffers (on TLS the transport's two 4 MiB
  chunks): the stream count bounds the bytes the shuffle holds. On the way in, a part goes
  to a file on the Sphere I/O threads. On plain TCP a receive holds one thread and its
  4 MiB buffer for the whole part, so the pool's size caps the parts received at once
  and a push beyond it waits, its sender with it (TCP's flow control carries the
  back-pressure); on TLS a receive holds at most the chunk being written and the one
  being decrypted.
- Parts are kept per attempt on the receiving side: commit takes exactly one attempt
  per segment, so a speculative duplicate never doubles records.
- One copy on disk (issue 13): the mapper deletes a part as soon as its bucket's node
  has it -- renamed into place there (a push is answered only then), or linked into
  ``recv/`` here. A part that could not be delivered stays until a resend
  (``sphere.resend``) places it; if a bucket's node is lost, the segments that fed it
  run again (``sphere.machine`` rule 5), as Hadoop re-runs a map whose output died.
- A part is a file a UDF's engine wrote, in a directory the UDF may write: the node
  reads it without following a symlink (and only if it is a regular file), and links
  the name itself, never what a symlink there points at.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sector.errors import NoSpace, NotFound, SectorError
from sector.node import bulkfile
from sector.storage.blobs import BlobStore, open_nofollow
from sector.transport.rpc import BulkChannel, RpcPool

__all__ = ["SHUFFLE_STREAMS", "BucketWriter", "Part", "Shuffle", "received"]

log = logging.getLogger("sector.sphere")

SHUFFLE_STREAMS = 8  # streams out of one node at once, all its writers together


def received(jdir: Path, bucket: int, attempt: int) -> Path:
    """Where a job's part of ``bucket`` from ``attempt`` is kept once received."""
    return jdir / "recv" / f"b{bucket}.a{attempt}"


@dataclass(frozen=True, slots=True)
class Part:
    """One attempt's records for one bucket: a file the engine wrote."""

    job: str
    attempt: int
    bucket: int
    size: int
    file: Path
    owner: str | None = None  # the job's user (a node that first hears of it by a push)


class Sink(Protocol):
    async def deliver(self, parts: list[Part]) -> None: ...


class DiskSink:
    """Parts for buckets of this node: linked into the job's ``recv/`` (the writer then
    removes the mapper's name: a move)."""

    def __init__(self, jdir: Path) -> None:
        self.jdir = jdir

    async def deliver(self, parts: list[Part]) -> None:
        for part in parts:
            dst = received(self.jdir, part.bucket, part.attempt)
            dst.parent.mkdir(exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                dst.unlink()
            # The name is linked, not what a symlink planted there would point at;
            # readers of recv/ never follow one.
            os.link(part.file, dst, follow_symlinks=False)


class NetSink:
    """Parts of one attempt for buckets of another node: pushed there down one stream
    (``sphere.push``), each right behind the other."""

    def __init__(self, pool: RpcPool, addr: str) -> None:
        self.pool = pool
        self.addr = addr

    async def deliver(self, parts: list[Part]) -> None:
        first = parts[0]
        args: dict[str, Any] = {
            "job": first.job,
            "bucket": first.bucket,
            "attempt": first.attempt,
            "size": first.size,
        }
        if len(parts) > 1:
            args["more"] = [[p.bucket, p.size] for p in parts[1:]]
        if first.owner is not None:
            args["owner"] = first.owner
        with open(open_nofollow(first.file), "rb") as f:  # before a byte moves
            chan = await self.pool.open_bulk(self.addr, "sphere.push", args)
            try:
                await chan.sendfile(f, 0, first.size)
                for part in parts[1:]:  # each opened as its turn comes
                    with open(open_nofollow(part.file), "rb") as g:
                        await chan.sendfile(g, 0, part.size)
                await chan.read_reply()
            finally:
                await chan.close()


class BucketWriter:
    """Delivers parts to their buckets' nodes, as many at once as ``room`` lets (the
    module's bounds), and deletes each part delivered; a part that fails is reported
    and kept, not retried (the driver decides)."""

    def __init__(
        self,
        me: str,
        pool: RpcPool,
        jdir: Path,
        stats: dict[str, int],
        room: asyncio.Semaphore,
    ) -> None:
        self.me = me
        self.pool = pool
        self.disk = DiskSink(jdir)
        self.stats = stats  # "pushed": bytes delivered; "streams": streams in flight now
        self.room = room

    def sink(self, addr: str) -> Sink:
        return self.disk if addr == self.me else NetSink(self.pool, addr)

    async def write(self, parts: list[Part], buckets: dict[int, str]) -> list[int]:
        """Deliver ``parts`` to the nodes ``buckets`` names, one stream per node; the
        buckets that failed (a stream that fails fails all its parts)."""
        failed: list[int] = []  # no node named: reported, kept
        by_node: dict[str, list[Part]] = {}
        for p in parts:
            if p.bucket in buckets:
                by_node.setdefault(buckets[p.bucket], []).append(p)
            else:
                failed.append(p.bucket)

        async def one(addr: str, group: list[Part]) -> list[int]:
            async with self.room:  # back-pressure: wait for a stream to end
                self.stats["streams"] += 1
                self.stats["streams_peak"] = max(self.stats["streams_peak"], self.stats["streams"])
                try:
                    await self.sink(addr).deliver(group)
                except (SectorError, OSError) as exc:
                    log.warning(
                        "job %s: %d parts (buckets %d..%d) to %s failed: %s",
                        group[0].job,
                        len(group),
                        group[0].bucket,
                        group[-1].bucket,
                        addr,
                        exc,
                    )
                    return [p.bucket for p in group]
                finally:
                    self.stats["streams"] -= 1
            for p in group:
                # Its bucket's node has it: this copy goes (a link's other name stays).
                with contextlib.suppress(FileNotFoundError):
                    p.file.unlink()
                self.stats["pushed"] += p.size
            return []

        got = await asyncio.gather(*(one(a, g) for a, g in by_node.items()))
        return sorted(failed + [b for bs in got for b in bs])


class Shuffle:
    """This node's two ends of the shuffle, with their counters."""

    def __init__(
        self, me: str, pool: RpcPool, blobs: BlobStore, io: Executor, *, min_free: int
    ) -> None:
        self.me = me
        self.pool = pool
        self.blobs = blobs
        self.io = io
        self.min_free = min_free
        self.stats = {"pushed": 0, "received": 0, "streams": 0, "streams_peak": 0}
        self.room = asyncio.Semaphore(SHUFFLE_STREAMS)

    async def push(
        self,
        jdir: Path,
        job: str,
        attempt: int,
        parts: dict[int, int],
        buckets: dict[int, str],
        owner: str | None = None,
    ) -> list[int]:
        """Send an attempt's staged parts (``{bucket: bytes}``) to the nodes ``buckets``
        names, deleting each delivered; the buckets that failed (their parts kept)."""
        staged = jdir / f"a{attempt}"
        todo = [Part(job, attempt, b, n, staged / f"b{b}", owner) for b, n in sorted(parts.items())]
        writer = BucketWriter(self.me, self.pool, jdir, self.stats, self.room)
        return await writer.write(todo, buckets)

    @staticmethod
    def kept(jdir: Path, attempt: int, buckets: list[int]) -> list[int]:
        """Those of ``buckets`` whose part of ``attempt`` is still here (undelivered)."""
        staged = jdir / f"a{attempt}"
        return [b for b in buckets if os.path.lexists(staged / f"b{b}")]

    def check_room(self, size: int) -> None:
        """Refuse a part this node has no room for, before a byte of it moves."""
        if self.blobs.free() - size < self.min_free:
            raise NoSpace(f"node {self.me} has no room for a {size}-byte bucket part")

    async def receive(
        self, chan: BulkChannel, jdir: Path, bucket: int, attempt: int, size: int
    ) -> None:
        """A pushed part into ``received(...)``; a sender that hung up (or a job dropped
        meanwhile) leaves no partial part.

        Each push writes a file of its own: one part pushed twice at once (a resend
        racing the first push) is received twice, and the last in wins (the same
        bytes). A job dropped while its part arrives (its directory moved away under
        the push) is refused as NotFound."""
        dst = received(jdir, bucket, attempt)
        tmp = dst.with_name(f".{dst.name}.{secrets.token_hex(4)}.part")
        try:
            dst.parent.mkdir(exist_ok=True)
            await bulkfile.recv_file(chan, size, tmp, self.io)
            os.replace(tmp, dst)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if isinstance(exc, FileNotFoundError):
                raise NotFound(f"job {jdir.name} was dropped while a part of it arrived") from None
            raise
        self.stats["received"] += size
