"""One swarm fetch: a file's blob into this node's cache, piece by piece, from the
sources the file's tracker names (issue 14). The driver of ``swarm/schedule.Plan``.

The steps:
1. The piece list from a holder, checked against the record's root (``pieces``); a
   record made before piece lists (no root) takes a holder's list, and the whole
   file is checked against the record's checksum at the end instead.
2. Room in the cache (``cache.begin``): a partial file, which serves its verified
   pieces to peers from now on.
3. Announce to the tracker (the join); its answer is the sources, with their have-sets.
4. Requests (``swarm.piece``, ``sendfile`` on the serving side) to several sources at
   once, several pieces each, pipelined on pooled links (``swarm_links``); every
   piece is hashed as it arrives (one copy thread per answer, ``_Run``) and checked
   against the list before it counts. A source that fails is dropped and reported as
   failed, one that sends a corrupt piece is dropped and reported as bad (the
   tracker has a holder's copy repaired, a peer's cache entry dropped); either costs
   only the pieces it was sending, asked again elsewhere. The tracker is asked again
   every ``ANNOUNCE`` seconds with the progress (in the background), and soon after
   a source is lost. At the end, the endgame (``schedule`` rule 6): the last pieces
   in flight are asked of a second source too; the first verified copy is written
   (``_commit``), the request it beat cancelled.
5. All pieces verified: the file moves into the cache, and a last announce makes this
   node a seed.

A fetch with nothing to ask for ``STALL`` seconds ends with ``Stalled``: the caller
looks at the record again (the file may have been replaced; its old blob's holders
delete it) and starts over on the new version, or fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import statistics
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol

import blake3

from sector.errors import (
    ChecksumMismatch,
    NoSpace,
    SectorError,
    TransportError,
    Unavailable,
)
from sector.meta.records import FileRecord
from sector.node.cache import Cache, Entry
from sector.node.swarm_links import LinkReset, Links
from sector.storage import pieces
from sector.storage.blobs import checksum_file
from sector.storage.pieces import PieceList
from sector.swarm.messages import MAX_BATCH, Announce, Leave, Pieces
from sector.swarm.messages import PieceList as ListReq
from sector.swarm.schedule import Plan, Request, bits_from, bits_to
from sector.swarm.tracker import Ref, Source
from sector.transport import bulk
from sector.transport.bulk import BulkChannel
from sector.transport.rpc import RpcPool
from sector.wire.messages import to_args

log = logging.getLogger("sector.swarm")

ANNOUNCE = 0.1  # seconds between two progress announces while fetching
# (a follower learns of its peers' new pieces this much late: at 0.25 s, a sixth of
# the time a 16 MiB file takes at 100 Mbit/s)
IDLE_MAX = 0.2  # seconds at most between two announces of a fetch with nothing to ask
STALL = 15.0  # seconds with nothing to ask of anyone before the record is looked at again
PIECE_STALL = 10.0  # a piece stream silent this long fails its source
# A request taking SLOW times what this fetch's median rate says it should (and at
# least SLOW_MIN seconds) is given up: its pieces are asked elsewhere, and a slow peer
# is not asked again by this fetch (a slow holder is: it may be the only one).
SLOW = 4.0
SLOW_MIN = 2.0
# Bytes asked of a source in one request (at least one piece), and requests in flight
# per source: what a source has been asked and not yet sent is at most ~512 KiB (two
# 4 MiB pieces with the default size). Asked for more at once, one fast holder takes
# a whole file's pieces before any peer has had time to get some (tried: 4 MiB
# requests had five fetchers of a 2 MiB file take it all from its holder).
BATCH_BYTES = 256 << 10
PER_SOURCE = 2
PER_HOLDER = (
    1  # (2, pipelined on one link: 1.23-1.28x S/R against 1.09-1.18x, 10 nodes on loopback)
)
WINDOW_BYTES = 64 << 20  # bytes in flight in all
# Endgame (``schedule`` rule 6): once at most this many pieces (and bytes) are missing,
# all of them in flight, each is asked of a second source too.
ENDGAME_PIECES = 16
ENDGAME_BYTES = 8 << 20


class Stalled(Unavailable):
    """No source had anything to give for ``STALL`` seconds."""


class Dropped(Stalled):
    """The blob was dropped from this cache during its fetch: its file was replaced or
    removed (``cache.drop``). The caller looks at the record again, as for a stall."""


class _Corrupt(Exception):
    def __init__(self, piece: int) -> None:
        super().__init__(f"piece {piece}")
        self.piece = piece


class FetchHost(Protocol):
    """What a fetch needs from its node: its name, RPC, the cache, its counters, the
    pool its copy loops run on, and the tracker of a path."""

    @property
    def me(self) -> Ref: ...
    @property
    def pool(self) -> RpcPool: ...
    @property
    def cache(self) -> Cache: ...
    @property
    def counters(self) -> Counter[str]: ...
    @property
    def pumps(self) -> Executor: ...
    @property
    def links(self) -> Links: ...

    def topology_of(self, node_id: str) -> str: ...
    def arrived(self, blob: str) -> None: ...
    async def track(self, path: str, op: str, args: dict[str, Any]) -> Any: ...


class _Run:
    """A sink for the pieces of one answer, in the order they are sent: each piece's
    bytes at their place in the partial file, hashed, and checked at the piece's end
    (``_Corrupt``); ``done``: the pieces verified so far. Runs in a copy thread, one
    per answer rather than per piece. Writes take the entry's lock, so a copy thread
    still running after its fetch ended (or its request was given up, ``stop``) never
    writes through a descriptor that was closed and perhaps reused, nor over a piece
    had since (from an endgame's other copy: those bytes are hashed and dropped)."""

    def __init__(
        self, e: Entry, lock: threading.Lock, stop: threading.Event, sent: list[int], pl: PieceList
    ) -> None:
        self.e, self.lock, self.stop, self.pl = e, lock, stop, pl
        self.todo = deque((i, pieces.piece_len(i, e.size, pl.piece_size)) for i in sent)
        self.total = sum(n for _, n in self.todo)
        self.done: list[int] = []
        self.h = blake3.blake3()
        self.offset = self.left = 0
        if self.todo:
            self.offset, self.left = self.todo[0][0] * pl.piece_size, self.todo[0][1]

    def write(self, data: memoryview) -> None:
        view = memoryview(data)
        e = self.e
        while view:
            i = self.todo[0][0]
            part = view[: self.left]
            with self.lock:
                if e.fd is None or self.stop.is_set():
                    raise NoSpace(f"the fetch of {e.path} ended")
                if not e.have >> i & 1:
                    _pwrite(e.fd, part, self.offset)
            self.h.update(part)
            view = view[len(part) :]
            self.offset += len(part)
            self.left -= len(part)
            if self.left:
                continue
            if self.h.digest() != self.pl.of(i):
                raise _Corrupt(i)
            self.done.append(i)
            self.todo.popleft()
            self.h = blake3.blake3()
            if self.todo:
                nxt, self.left = self.todo[0]
                self.offset = nxt * self.pl.piece_size


class _Mem:
    """A sink keeping an endgame copy of a piece in memory until it is verified."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def write(self, data: memoryview) -> None:
        self.buf += data


def _pwrite(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _commit(
    e: Entry, lock: threading.Lock, piece: int, data: bytearray, stop: threading.Event
) -> bool:
    """A verified endgame copy into the file, if the piece is not had yet (blocking);
    whether it was written."""
    bit = 1 << piece
    with lock:
        if e.fd is None or stop.is_set():
            raise NoSpace(f"the fetch of {e.path} ended")
        if e.have & bit:
            return False
        _pwrite(e.fd, memoryview(data), piece * e.piece_size)
        e.have |= bit
        return True


@dataclass(slots=True)
class _Flight:
    """A request under way: when it started, how many bytes it asked for."""

    req: Request
    started: float
    nbytes: int
    stop: threading.Event = field(default_factory=threading.Event)


class Fetcher:
    """The fetch of record ``r``'s blob into the cache (module steps)."""

    def __init__(
        self, host: FetchHost, r: FileRecord, progress: Callable[[int], None] | None = None
    ) -> None:
        self.host = host
        self.r = r
        self.progress = progress
        self.holders = [Ref(nid, addr, host.topology_of(nid)) for nid, addr in r.replicas]
        self.failed: set[str] = set()  # sources to report as failed at the next announce
        self.bad: set[str] = set()  # ... as bad (a corrupt piece)
        self.banned: set[str] = set()  # never asked again by this fetch
        self.lock = threading.Lock()
        self.n = 0
        self.rates: deque[float] = deque(maxlen=16)  # bytes/s of whole requests
        self.t0 = time.monotonic()
        self.list_at = self.first_at = 0.0  # seconds from t0: piece list, first piece
        self.by_source: Counter[str] = Counter()  # bytes taken from each source

    async def run(self) -> Entry:
        r, host = self.r, self.host
        pl = await self._piece_list()
        self.list_at = time.monotonic() - self.t0
        self.n = pieces.count(r.size, pl.piece_size)
        e = host.cache.begin(r.blob, r.path, r.size, r.checksum, pl)
        try:
            await self._loop(e, pl)
            if not r.pieces:  # a record without a root: the whole file is checked
                await asyncio.to_thread(_check_whole, e, r.checksum)
            with self.lock:
                if e.dropped:
                    raise Dropped(f"{e.path} changed during its fetch (blob {e.blob} dropped)")
                host.cache.seal(e)
        except BaseException:
            with self.lock:
                host.cache.abort(e)
            _spawn(self._leave())
            raise
        with contextlib.suppress(SectorError):
            await self._announce(Plan(self.n, batch=1), done=True)  # a seed now
        host.counters["fetches"] += 1
        log.info("%s", self.summary(pl))
        return e

    def summary(self, pl: PieceList) -> str:
        """One line on how the fetch went: its times, and what came from whom."""
        holders = {h.id for h in self.holders}
        mib = 1 << 20
        peers = sum(n for s, n in self.by_source.items() if s not in holders)
        return (
            f"fetched {self.r.path} ({self.r.size / mib:.1f} MiB, {self.n} pieces of"
            f" {pl.piece_size / mib:g} MiB) in {time.monotonic() - self.t0:.2f} s"
            f" (piece list at {self.list_at:.2f} s, first piece at"
            f" {self.first_at:.2f} s): {len(self.by_source)} sources,"
            f" {peers / mib:.1f} MiB from peers"
        )

    # ------------------------------------------------------------------ steps

    async def _piece_list(self) -> PieceList:
        """Step 1."""
        r = self.r
        for h in self.holders:
            args = to_args(ListReq(blob=r.blob, piece_size=r.piece_size))
            try:
                rep = await self.host.pool.call(h.addr, "swarm.pieces", args, timeout=30.0)
                pl = PieceList(int(rep["size"]), int(rep["piece_size"]), bytes(rep["digests"]))
            except (SectorError, KeyError, TypeError, ValueError) as exc:
                log.info("piece list of %s from %s: %s", r.path, h.addr, exc)
                continue
            if not pl.valid() or pl.size != r.size:
                continue
            if r.pieces and (pl.root != r.pieces or pl.piece_size != r.piece_size):
                log.warning("piece list of %s from %s does not match its record", r.path, h.addr)
                continue
            return pl
        raise Unavailable(f"no holder of {r.path} gave its piece list")

    async def _loop(self, e: Entry, pl: PieceList) -> None:
        """Steps 3 and 4."""
        n = self.n
        batch = max(1, min(MAX_BATCH, BATCH_BYTES // pl.piece_size))
        window = max(batch, WINDOW_BYTES // pl.piece_size)
        start = zlib.crc32(self.host.me.id.encode()) % max(1, n)
        plan = Plan(
            n,
            batch=batch,
            per_source=PER_SOURCE,
            per_holder=PER_HOLDER,
            window=window,
            start=start,
        )
        endgame = max(2, min(ENDGAME_PIECES, ENDGAME_BYTES // pl.piece_size))
        flights: dict[asyncio.Task[None], _Flight] = {}
        await self._announce(plan)
        ann: asyncio.Task[None] | None = None
        next_announce = time.monotonic() + ANNOUNCE
        quiet_since = time.monotonic()
        backoff = 0.05
        try:
            while not plan.done:
                if e.dropped:
                    raise Dropped(f"{e.path} changed during its fetch (blob {e.blob} dropped)")
                for req in plan.next() + plan.endgame(endgame):
                    if req.dup:
                        self.host.counters["endgame_requests"] += 1
                    size = sum(pieces.piece_len(i, self.r.size, pl.piece_size) for i in req.pieces)
                    f = _Flight(req, time.monotonic(), size)
                    flights[asyncio.create_task(self._request(plan, e, pl, f))] = f
                if plan.done:
                    break
                now = time.monotonic()
                if not flights:
                    if now - quiet_since > STALL:
                        raise Stalled(f"{e.path}: no source had a piece to give for {STALL:g} s")
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, IDLE_MAX)
                    if ann is not None and not ann.done():
                        await ann
                    await self._announce(plan)
                    continue
                backoff, quiet_since = 0.05, now
                waits: set[asyncio.Task[None]] = set(flights)
                if ann is not None and not ann.done():
                    waits.add(ann)  # its new sources may be asked at once
                done, _ = await asyncio.wait(
                    waits, timeout=max(0.0, next_announce - now), return_when="FIRST_COMPLETED"
                )
                for t in done:
                    if t is ann:
                        t.result()
                        continue
                    del flights[t]
                    if not t.cancelled():
                        t.result()  # a local failure (the disk) ends the fetch
                self._give_up_slow(plan, flights)
                self._cancel_beaten(plan, flights)
                now = time.monotonic()
                lost = (self.failed or self.bad) and now >= next_announce - ANNOUNCE + 0.05
                due = now >= next_announce or lost
                if due and (ann is None or ann.done()):
                    # In the background: a tracker slow to answer (its node just
                    # died) holds up no request meanwhile.
                    ann = asyncio.create_task(self._announce(plan))
                    next_announce = time.monotonic() + ANNOUNCE
        finally:
            if ann is not None:
                ann.cancel()
            for t, f in flights.items():
                f.stop.set()
                t.cancel()
            await asyncio.gather(*flights, return_exceptions=True)

    def _cancel_beaten(self, plan: Plan, flights: dict[asyncio.Task[None], _Flight]) -> None:
        """Endgame: a request whose every piece came by another copy is cancelled (its
        link closes; the requests queued behind it on the link are asked again)."""
        if not plan.dup and plan.count < plan.n - 2 * ENDGAME_PIECES:
            return
        for t, f in flights.items():
            mask = sum(1 << i for i in f.req.pieces)
            if not f.stop.is_set() and plan.have & mask == mask:
                f.stop.set()
                t.cancel()
                self.host.counters["endgame_cancelled"] += 1

    def _give_up_slow(self, plan: Plan, flights: dict[asyncio.Task[None], _Flight]) -> None:
        """Requests far slower than this fetch's median (``SLOW``) are given up."""
        if len(self.rates) < 3:
            return
        rate = statistics.median(self.rates)
        now = time.monotonic()
        for t, f in flights.items():
            if f.stop.is_set() or now - f.started <= max(SLOW_MIN, SLOW * f.nbytes / rate):
                continue
            log.info("pieces of %s from %s: too slow, asked elsewhere", self.r.path, f.req.addr)
            self.host.counters["slow_requests"] += 1
            f.stop.set()
            t.cancel()
            if not any(h.id == f.req.source for h in self.holders):
                self.banned.add(f.req.source)
                plan.drop(f.req.source)

    async def _announce(self, plan: Plan, *, done: bool = False) -> None:
        """Tell the tracker where this fetch stands; take its sources. Without a
        tracker (its node unreachable) the holders and the peers it named last are."""
        me = self.host.me
        have = plan.full if done else plan.have
        req = Announce(
            path=self.r.path,
            blob=self.r.blob,
            pieces=self.n,
            have=bits_to(have, self.n),
            me=[me.id, me.addr, me.topology],
            holders=[[h.id, h.addr, h.topology] for h in self.holders][:16],
            failed=sorted(failed := set(self.failed))[:64],
            bad=sorted(bad := set(self.bad))[:64],
        )
        try:
            rep = await self.host.track(self.r.path, "swarm.announce", to_args(req))
            srcs = [_source(x, self.n) for x in rep["sources"]]
            rank, of = rep.get("stripe") or (0, 1)
            plan.set_stripe(int(rank), int(of))
            self.failed -= failed  # (those found meanwhile are told next time)
            self.bad -= bad
        except (SectorError, KeyError, TypeError, ValueError) as exc:
            if done:
                raise SectorError(f"tracker of {self.r.path}: {exc}") from None
            log.info("tracker of %s: %s; from holders and known peers", self.r.path, exc)
            srcs = [Source(h.id, h.addr, None, True) for h in self.holders]
            known = {s.id for s in srcs}
            srcs += [  # the peers it named last time, with what they had then
                Source(s.id, s.addr, s.have, s.holder)
                for s in plan.sources.values()
                if s.id not in known
            ]
            srcs = [s for s in srcs if s.id not in self.failed]
        plan.set_sources([s for s in srcs if s.id not in self.banned and s.id != me.id])

    async def _leave(self) -> None:
        args = to_args(Leave(blob=self.r.blob, peer=self.host.me.id))
        with contextlib.suppress(SectorError):
            await self.host.track(self.r.path, "swarm.leave", args)

    async def _request(self, plan: Plan, e: Entry, pl: PieceList, f: _Flight) -> None:
        """One request to one source, on a link to it (step 4)."""
        r, ps, req = self.r, pl.piece_size, f.req
        got: list[int] = []
        sent: list[int] = []
        args = to_args(Pieces(blob=r.blob, piece_size=ps, size=r.size, pieces=req.pieces))
        what = f"pieces of {r.path} from {req.addr}"
        try:
            async with self.host.links.request(req.addr, args) as reply:
                sent = _sent(reply.head, req.pieces)
                if req.dup:
                    for i in sent:
                        if await self._dup_piece(reply.chan, e, pl, f, i):
                            plan.got(i)
                            got.append(i)
                else:
                    sink = _Run(e, self.lock, f.stop, sent, pl)
                    try:
                        await bulk.recv(
                            reply.chan, sink.total, sink, executor=self.host.pumps, what=what
                        )
                    finally:
                        got += self._took(plan, e, sink.done, req.source)
                reply.whole = True
            plan.lacks(req.source, [i for i in req.pieces if i not in sent])
            if len(sent) == len(req.pieces) and not req.dup:
                self.rates.append(f.nbytes / max(1e-3, time.monotonic() - f.started))
        except LinkReset:
            pass  # an earlier request on the link failed: these pieces are asked again
        except _Corrupt as exc:
            log.warning(
                "corrupt piece %d of %s (blob %s) from %s: dropped as a source, reported",
                exc.piece,
                r.path,
                r.blob,
                req.addr,
            )
            self.host.counters["bad_pieces"] += 1
            self.bad.add(req.source)
            self.banned.add(req.source)
            plan.drop(req.source)
        except SectorError as exc:
            log.info("pieces of %s from %s failed: %s", r.path, req.addr, exc)
            if isinstance(exc, TransportError):
                self.failed.add(req.source)
            self.banned.add(req.source)
            plan.drop(req.source)
        finally:
            plan.give_back([i for i in req.pieces if i not in got], dup=req.dup)
            plan.finished(req.source)

    def _took(self, plan: Plan, e: Entry, done: list[int], source: str) -> list[int]:
        """Verified pieces in the file: had now (those had already, from an endgame's
        other copy, are counted as wasted)."""
        new: list[int] = []
        with self.lock:  # (``_commit`` sets bits of ``have`` in a thread)
            for i in done:
                if not e.have >> i & 1:
                    e.have |= 1 << i
                    new.append(i)
        for i in done:
            plan.got(i)
        self.host.counters["endgame_wasted"] += len(done) - len(new)
        for i in new:
            self._count(pieces.piece_len(i, self.r.size, e.piece_size), source)
        if new:
            self.host.arrived(self.r.blob)
        return done

    async def _dup_piece(
        self, chan: BulkChannel, e: Entry, pl: PieceList, f: _Flight, i: int
    ) -> bool:
        """Piece ``i`` of an endgame's second request: verified in memory, then
        written unless the other copy came first; whether it is new here."""
        r, req = self.r, f.req
        n = pieces.piece_len(i, r.size, pl.piece_size)
        h = blake3.blake3()
        sink = _Mem()
        what = f"piece {i} of {r.path} from {req.addr}"
        await bulk.recv(chan, n, sink, hasher=h, executor=self.host.pumps, what=what)
        if h.digest() != pl.of(i):
            raise _Corrupt(i)
        loop = asyncio.get_running_loop()
        new = await loop.run_in_executor(
            self.host.pumps, _commit, e, self.lock, i, sink.buf, f.stop
        )
        if not new:
            self.host.counters["endgame_wasted"] += 1
            return False
        self._count(n, req.source)
        self.host.arrived(r.blob)
        return True

    def _count(self, n: int, source: str) -> None:
        c = self.host.counters
        if not self.by_source:
            self.first_at = time.monotonic() - self.t0
        self.by_source[source] += n
        c["pieces_fetched"] += 1
        c["bytes_fetched"] += n
        if any(h.id == source for h in self.holders):
            c["bytes_from_holders"] += n
        else:
            c["bytes_from_peers"] += n
        if self.progress is not None:
            self.progress(n)


def _source(x: Any, n: int) -> Source:
    sid, addr, have, holder = x
    return Source(
        str(sid), str(addr), None if have is None else bits_from(bytes(have), n), bool(holder)
    )


def _sent(head: Any, asked: list[int]) -> list[int]:
    """The pieces a source says follow: a subset of those asked, in their order."""
    got = head.get("pieces") if isinstance(head, dict) else None
    if not isinstance(got, list) or not all(isinstance(i, int) for i in got):
        raise SectorError("malformed swarm.piece header")
    want = set(asked)
    if any(i not in want for i in got) or got != sorted(got, key=asked.index):
        raise SectorError("swarm.piece sent pieces that were not asked for")
    return got


def _check_whole(e: Entry, checksum: str) -> None:
    """A file whose record has no piece root, checked whole (blocking)."""
    if checksum_file(e.file) != checksum:
        raise ChecksumMismatch(f"{e.path}: the fetched copy does not match its checksum")


_bg: set[asyncio.Task[None]] = set()


def _spawn(coro: Any) -> None:
    task = asyncio.ensure_future(coro)
    _bg.add(task)
    task.add_done_callback(_bg.discard)
