"""Swarm distribution on a node (issue 14): the tracker of the files whose records it
owns, the cache of other nodes' files, the serving of pieces, and the fetches
(``swarm_fetch``) that fill the cache.

- ``fetch(path) -> Path``: the file as a local file on this node, for whoever on the
  node needs one (a get served by this node, ``sector distribute``, and later Sphere's
  ``required_files`` and the FUSE mount): the blob itself where this node holds a
  replica, else the cached copy, fetched through the swarm if it is not here. Two
  fetches of one blob at once on a node are one.
- The tracker of a path is the node that owns its metadata (routed as metadata
  requests are, ``track``); it keeps the swarms in memory (``swarm/tracker``) and
  acts on reports: a holder that served a corrupt piece is reported to repair (the
  owner, which is the tracker itself in a converged ring), a peer's cached copy is
  dropped there.
- A replaced or removed file: its old blob's swarm is forgotten and the caches that
  fetched it drop it (``forget``, from the namespace's blob deletion); a cached copy
  found on lookup under a record naming another blob goes too, and every
  ``CHECK_INTERVAL`` each cached file is checked against its record.
- Clients' requests (``swarm.want``, ``swarm.get`` streamed as the pieces arrive,
  ``swarm.fetch`` jobs) are served by ``swarm_clients``.
- Pieces are served (``swarm.piece``, ``sendfile``) from a holder's blob, a cached copy
  or a fetch under way (its verified pieces), paced by ``--swarm-upload-rate``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, Protocol

from sector.aio import Every
from sector.config import NodeConfig
from sector.errors import (
    IsADirectory,
    NotFound,
    SectorError,
    TransportError,
    Unavailable,
)
from sector.ids import key_id, to_hex
from sector.meta import records as rec
from sector.meta.records import FileRecord, Record
from sector.meta.route import Router
from sector.node.cache import Cache, Entry, default_limit
from sector.node.members import Members
from sector.node.swarm_clients import Clients
from sector.node.swarm_fetch import PIECE_STALL, Fetcher, Stalled
from sector.node.swarm_links import Links
from sector.routing.chord import Peer
from sector.security import guard
from sector.storage import pieces
from sector.storage.blobs import BlobStore, check_blob_id
from sector.swarm import messages as m
from sector.swarm.schedule import bits_from, bits_to
from sector.swarm.tracker import Ref, Tracker
from sector.transport import bulk
from sector.transport.bulk import BulkChannel
from sector.transport.rpc import RpcPool
from sector.wire import codec
from sector.wire.messages import decode, to_args, typed

log = logging.getLogger("sector.swarm")

CHECK_INTERVAL = 300.0  # seconds between checks of the cached files against their records
FETCH_RESTARTS = 3  # a file replaced mid-fetch: start over on the new version, so often


class Meta(Protocol):
    router: Router

    async def get(self, path: str) -> Record | None: ...


class Reporter(Protocol):
    async def report(
        self,
        path: str,
        node_id: str | None = None,
        *,
        hops: int = 0,
        check: bool = False,
        blob: str | None = None,
    ) -> Any: ...


class SwarmHost(Protocol):
    """What the swarm needs of its node."""

    @property
    def cfg(self) -> NodeConfig: ...
    @property
    def addr(self) -> str: ...
    @property
    def me(self) -> Peer: ...
    @property
    def data(self) -> Path: ...
    @property
    def blobs(self) -> BlobStore: ...
    @property
    def pool(self) -> RpcPool: ...
    @property
    def meta(self) -> Meta: ...
    @property
    def members(self) -> Members: ...
    @property
    def repair(self) -> Reporter: ...


class Pace:
    """Bytes/s of this node's piece uploads, all streams together (0: no cap)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._next = 0.0

    async def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        start = max(now, self._next)
        self._next = start + n / self.rate
        if start > now:
            await asyncio.sleep(start - now)


class SwarmService:
    def __init__(self, node: SwarmHost) -> None:
        self.node = node
        cfg = node.cfg
        limit = cfg.cache_size or default_limit(node.data)
        self.cache = Cache(node.data, limit, min_free=cfg.min_free)
        self.tracker = Tracker()
        self.counters: Counter[str] = Counter()
        self.pumps = ThreadPoolExecutor(16, thread_name_prefix="swarm-pump")
        self.io = ThreadPoolExecutor(4, thread_name_prefix="swarm-io")
        self.pace = Pace(cfg.swarm_upload_rate)
        self._fetching: dict[str, asyncio.Task[Any]] = {}
        self.clients = Clients(self)
        self.links = Links(node.pool, stall_timeout=PIECE_STALL)
        self._arrivals: dict[str, set[asyncio.Event]] = {}
        self._checked = time.monotonic()
        self._bg: set[asyncio.Task[Any]] = set()
        self.worker = Every("swarm", self._tick, 1.0)

    # ------------------------------------------------------------------ the node's side

    @property
    def me(self) -> Ref:
        return Ref(to_hex(self.node.me.id), self.node.addr, self.node.cfg.topology)

    @property
    def pool(self) -> RpcPool:
        return self.node.pool

    def topology_of(self, node_id: str) -> str:
        mem = self.node.members.get(node_id)
        return mem.topology if mem is not None else ""

    async def start(self) -> None:
        await asyncio.to_thread(self.cache.load)
        await self.worker.start()

    async def stop(self) -> None:
        await self.worker.stop()
        for t in list(self._fetching.values()) + list(self._bg):
            t.cancel()
        self.clients.stop()
        await self.links.close()
        self.pumps.shutdown(wait=False, cancel_futures=True)
        self.io.shutdown(wait=False, cancel_futures=True)

    def handlers(self) -> dict[str, Any]:
        return {
            "swarm.announce": self._h_announce,
            "swarm.leave": self._h_leave,
            "swarm.interest": self._h_interest,
            "swarm.forget": self._h_forget,
            "swarm.pieces": self._h_pieces,
            "cache.drop": self._h_drop,
            **self.clients.handlers(),
        }

    def bulk_handlers(self) -> dict[str, Any]:
        return {"swarm.piece": self._h_piece, **self.clients.bulk_handlers()}

    def status(self) -> dict[str, Any]:
        """The node's swarm figures (``node.info``, ``sector status --json``)."""
        c = self.counters
        keys = (
            "pieces_served",
            "bytes_served",
            "bytes_served_from_cache",
            "pieces_fetched",
            "bytes_fetched",
            "bytes_from_peers",
            "bytes_from_holders",
            "bad_pieces",
            "slow_requests",
            "fetches",
            "local_gets",
            "local_get_bytes",
            "streamed_bytes",
            "local_gets_cut",
            "piece_streams",
            "piece_requests",
            "endgame_requests",
            "endgame_wasted",
            "endgame_cancelled",
            "fetches_refused",
        )
        return {**self.cache.status(), **{k: c[k] for k in keys}, **self.tracker.status()}

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def _tick(self) -> None:
        now = time.monotonic()
        self.tracker.expire(now)
        self.clients.expire(now)
        await self.links.sweep(now)
        if now - self._checked > CHECK_INTERVAL:
            self._checked = now
            await self._check_cache()

    async def _check_cache(self) -> None:
        """Drop every cached file whose record no longer names its blob."""
        for e in self.cache.complete_entries()[:1000]:
            try:
                r = await self.node.meta.get(e.path)
            except SectorError:
                continue
            if not isinstance(r, FileRecord) or r.blob != e.blob:
                log.info("cache: %s is no longer blob %s: dropped", e.path, e.blob)
                self.cache.drop(e.blob)

    # ------------------------------------------------------------------ fetch

    async def record(self, path: str) -> FileRecord:
        """The current record of a file the caller may read."""
        path = rec.normalize(path)
        guard.read(path)
        r = await self.node.meta.get(path)
        if isinstance(r, FileRecord):
            return r
        if r is not None and rec.kind_of(r) == "dir":
            raise IsADirectory(f"{path} is a directory")
        raise NotFound(f"no such file: {path}")

    async def fetch(
        self, path: str, *, blob: str | None = None, progress: Callable[[int], None] | None = None
    ) -> Path:
        """``path`` as a local file of this node (module doc); with ``blob``, only that
        version of it (NotFound if the file is now another)."""
        r = await self.record(path)
        if blob is not None and r.blob != blob:
            raise NotFound(f"{r.path} changed since it was looked up")
        return await self.fetch_record(r, progress, restart=blob is None)

    async def fetch_record(
        self, r: FileRecord, progress: Callable[[int], None] | None = None, *, restart: bool = True
    ) -> Path:
        for _ in range(FETCH_RESTARTS):
            local = self.local_copy(r)
            if local is not None:
                return local
            task = self.start_fetch(r, progress)
            try:
                done: Entry = await asyncio.shield(task)
                return Path(done.file)
            except Stalled:
                cur = await self.node.meta.get(r.path)
                if not restart or not isinstance(cur, FileRecord) or cur.blob == r.blob:
                    raise
                log.info("%s was replaced during its fetch: fetching blob %s", r.path, cur.blob)
                r = cur
        raise Unavailable(f"{r.path} kept changing during its fetch")

    def local_copy(self, r: FileRecord) -> Path | None:
        """The blob itself where this node holds a replica, else its complete cached
        copy; None if it must be fetched."""
        if self.node.blobs.exists(r.blob):
            return self.node.blobs.path(r.blob)  # a replica holder: nothing to fetch
        e = self.cache.lookup(r.path, r.blob)
        return Path(e.file) if e is not None else None

    def start_fetch(
        self, r: FileRecord, progress: Callable[[int], None] | None = None
    ) -> asyncio.Task[Entry]:
        """The fetch of ``r``'s blob under way on this node, started if there is none
        (two fetches of one blob at once are one)."""
        task = self._fetching.get(r.blob)
        if task is None:
            task = asyncio.create_task(Fetcher(self, r, progress).run(), name="swarm-fetch")
            self._fetching[r.blob] = task
            task.add_done_callback(functools.partial(self._fetched, r.blob))
        return task

    @contextlib.contextmanager
    def arrivals(self, blob: str) -> Iterator[asyncio.Event]:
        """An event set whenever a piece of ``blob`` arrives here or its fetch ends."""
        ev = asyncio.Event()
        self._arrivals.setdefault(blob, set()).add(ev)
        try:
            yield ev
        finally:
            evs = self._arrivals.get(blob)
            if evs is not None:
                evs.discard(ev)
                if not evs:
                    del self._arrivals[blob]

    def arrived(self, blob: str) -> None:
        for ev in self._arrivals.get(blob, ()):
            ev.set()

    def _fetched(self, blob: str, task: asyncio.Task[Any]) -> None:
        self.arrived(blob)
        if self._fetching.get(blob) is task:
            del self._fetching[blob]
        if not task.cancelled() and task.exception() is not None:
            self.counters["fetches_failed"] += 1

    # ------------------------------------------------------------------ the tracker

    async def track(self, path: str, op: str, args: dict[str, Any]) -> Any:
        """``op`` at the tracker of ``path``: the owner of its record."""
        router = self.node.meta.router
        key = key_id(path)
        last: SectorError | None = None
        for fresh in (False, True):
            try:
                owner = await router.route(key, fresh=fresh)
            except SectorError as exc:
                last = exc
                continue
            if owner.id == self.node.me.id:
                return await self.handlers()[op](args)
            try:
                return await self.node.pool.call(owner.addr, op, args, timeout=5.0)
            except TransportError as exc:
                last = exc
                router.cache.forget(owner.id)
        assert last is not None
        raise last

    @typed(m.Announce)
    async def _h_announce(self, req: m.Announce) -> Any:
        blob = check_blob_id(req.blob)
        me = Ref(*req.me)
        holders = [Ref(*h) for h in req.holders]
        for nid in req.bad:
            self._act_on_bad(req.path, blob, nid, holders)
        srcs = self.tracker.announce(
            blob,
            req.pieces,
            me,
            bits_from(req.have, req.pieces),
            holders,
            time.monotonic(),
            failed=req.failed,
            bad=req.bad,
        )
        n = req.pieces
        return {
            "sources": [
                [s.id, s.addr, None if s.have is None else bits_to(s.have, n), s.holder]
                for s in srcs
            ],
            "stripe": list(self.tracker.stripe(blob, me.id)),
        }

    def _act_on_bad(self, path: str, blob: str, nid: str, holders: list[Ref]) -> None:
        """A node served a corrupt piece: its replica goes to repair (which re-checks
        it), or its cached copy is dropped."""
        if any(h.id == nid for h in holders):
            log.warning("swarm: holder %s served a corrupt piece of %s: reported", nid[:8], path)
            self.spawn(self._report(path, nid, blob))
            return
        ref = self.tracker.peer(blob, nid)
        if ref is not None:
            log.warning(
                "swarm: %s served a corrupt piece of %s: its copy is dropped", ref.addr, path
            )
            self.spawn(self._drop_at(ref.addr, [blob]))

    async def _report(self, path: str, nid: str, blob: str) -> None:
        with contextlib.suppress(SectorError):
            await self.node.repair.report(path, nid, check=True, blob=blob)

    async def _drop_at(self, addr: str, blobs: list[str]) -> None:
        if addr == self.node.addr:
            for b in blobs:
                self.cache.drop(b)
            return
        with contextlib.suppress(SectorError, OSError):
            await self.node.pool.call(addr, "cache.drop", {"blobs": blobs}, timeout=5.0)

    @typed(m.Leave)
    async def _h_leave(self, req: m.Leave) -> Any:
        self.tracker.leave(check_blob_id(req.blob), req.peer)
        return None

    @typed(m.Interest)
    async def _h_interest(self, req: m.Interest) -> Any:
        blob = check_blob_id(req.blob)
        return {"others": self.tracker.interest(blob, req.reader, time.monotonic())}

    @typed(m.Forget)
    async def _h_forget(self, req: m.Forget) -> Any:
        blob = check_blob_id(req.blob)
        refs = self.tracker.forget(blob)
        self.cache.drop(blob)
        await asyncio.gather(*(self._drop_at(r.addr, [blob]) for r in refs))
        return {"dropped_at": len(refs)}

    async def forget(self, path: str, blob: str) -> None:
        """The blob of ``path`` is gone (replaced or removed): tell its tracker, which
        has the caches that fetched it drop it (best effort)."""
        self.cache.drop(blob)
        with contextlib.suppress(SectorError, OSError):
            await self.track(path, "swarm.forget", to_args(m.Forget(path=path, blob=blob)))

    # ------------------------------------------------------------------ serving peers

    @typed(m.PieceList)
    async def _h_pieces(self, req: m.PieceList) -> Any:
        blob = check_blob_id(req.blob)
        if self.node.blobs.exists(blob):
            if req.piece_size:  # (0: the stored list, whatever its piece size)
                pieces.check_size(self.node.blobs.size(blob), req.piece_size)
            loop = asyncio.get_running_loop()
            pl = await loop.run_in_executor(
                self.io, self.node.blobs.piece_list, blob, req.piece_size or None
            )
            return {"size": pl.size, "piece_size": pl.piece_size, "digests": pl.digests}
        e = self.cache.get(blob)
        if e is not None and e.complete and req.piece_size in (0, e.piece_size):
            return {"size": e.size, "piece_size": e.piece_size, "digests": e.digests}
        raise NotFound(f"blob {blob} is not on this node")

    def _open_source(self, blob: str, size: int, ps: int) -> tuple[IO[bytes] | None, int, bool]:
        """The file to serve ``blob``'s pieces from, the pieces it has, and whether it
        is a cached copy."""
        full = (1 << pieces.count(size, ps)) - 1
        with contextlib.suppress(SectorError, OSError):
            f = self.node.blobs.open(blob)
            if os.fstat(f.fileno()).st_size == size:
                return f, full, False
            f.close()
        for _ in range(2):  # a fetch sealed between the lookup and the open: once more
            e = self.cache.get(blob)
            if e is None or e.dropped or e.size != size or e.piece_size != ps:
                break
            with contextlib.suppress(OSError):
                return open(self.cache.open(e), "rb"), e.have & full, True
        return None, 0, False

    async def _h_piece(self, args: dict[str, Any], chan: BulkChannel) -> Any:
        """``swarm.piece``; with ``keep``, the requests that follow on the stream too
        (a link, ``swarm_links``), until the peer closes it."""
        req = decode(m.Pieces, args)
        self.counters["piece_streams"] += 1
        while True:
            self.counters["piece_requests"] += 1
            await self._serve_pieces(req, chan)
            if not req.keep:
                return None
            more = await bulk.next_request(chan, "swarm.piece")
            if more is None:
                return None  # the peer closed its link (or it went idle)
            req = decode(m.Pieces, more)

    async def _serve_pieces(self, req: m.Pieces, chan: BulkChannel) -> None:
        blob = check_blob_id(req.blob)
        ps, size = req.piece_size, req.size
        pieces.check_size(size, ps)
        f, have, cached = self._open_source(blob, size, ps)
        sent = [i for i in req.pieces if have >> i & 1]
        try:
            await chan.write(codec.reply(1, {"pieces": sent}))
            # Consecutive pieces (a request's usual form) in one sendfile: each call is
            # a turn of the event loop and a syscall whose cost does not shrink with
            # the piece.
            for first, count in _runs(sent):
                n = min(size, (first + count) * ps) - first * ps  # the last may be short
                await self.pace.take(n)
                assert f is not None
                await bulk.send_file(chan, f, first * ps, n)
                self.counters["pieces_served"] += count
                self.counters["bytes_served"] += n
                if cached:
                    self.counters["bytes_served_from_cache"] += n
        finally:
            if f is not None:
                f.close()

    @typed(m.CacheDrop)
    async def _h_drop(self, req: m.CacheDrop) -> Any:
        blobs = [check_blob_id(b) for b in req.blobs]
        return {"dropped": sum(1 for b in blobs if self.cache.drop(b))}


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """``[first, count]`` of each run of consecutive indices, in order."""
    out: list[tuple[int, int]] = []
    for i in indices:
        if out and out[-1][0] + out[-1][1] == i:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((i, 1))
    return out
