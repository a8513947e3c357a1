"""Handoff and anti-entropy of one node's metadata shard (``service.py`` rules):
after every ring change and periodically, the records this node owns are reconciled
with its replica peers (when its arc or its peers changed, and every
``FULL_SYNC_EVERY`` seconds, which repairs whatever an update missed, e.g. one
acknowledged while a replica was cut off), and a record it does not own is handed to
its owner (``meta.absorb``) and dropped here if the owner says this node is not among
its replicas. Merges are idempotent, so pushing too much only costs bandwidth. A
graceful leave gives every record to the successor.

Cost (issue 17): a pass never decodes the shard. Reconciling sends the peer the
digests of the arc's buckets (``digest.py``, kept by the store on every write) and
pushes only the records of the buckets the peer reports different; the records this
node does not own are read by key range, a page at a time; ``counts`` sums the
bucket table. So an unchanged shard costs a digest exchange, and memory stays bounded
by a page or a bucket whatever the shard's size.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sector.aio import Worker
from sector.errors import SectorError, TransportError
from sector.ids import MASK, between_right, from_hex, key_id, to_hex
from sector.meta import digest
from sector.meta import records as rec
from sector.meta.batch import BATCH
from sector.meta.messages import Digests
from sector.meta.records import Record
from sector.meta.ring import Ring
from sector.meta.store import MetaStore
from sector.routing.chord import Peer
from sector.routing.rangecache import RangeCache
from sector.wire.messages import typed

log = logging.getLogger("sector.meta")

FULL_SYNC_EVERY = 300.0  # seconds between anti-entropy rounds (digests, then what differs)
SYNC_EVERY = 15.0  # seconds between syncs when nothing asks for one
MAX_OWNERS = 256  # owners of records held here that one pass compares digests with


class Handoff(Worker):
    """The sync loop of one shard. ``prune`` stops senders to peers no longer ours;
    ``unchanged(r)``: r is still the stored record; ``forget(path)`` drops a decoded
    copy; ``io`` is the shard's commit thread."""

    def __init__(
        self,
        store: MetaStore,
        ring: Ring,
        *,
        k: int,
        rpc_timeout: float,
        cache: RangeCache,
        prune: Callable[[set[str]], Awaitable[None]],
        unchanged: Callable[[Record], bool],
        forget: Callable[[str], object],
        io: ThreadPoolExecutor,
    ) -> None:
        # Woken by every ring change (a burst of them makes one sync), else every
        # SYNC_EVERY seconds; the first right away (the node has just joined).
        super().__init__("meta-sync", interval=SYNC_EVERY, coalesce=0.2)
        self.store = store
        self.ring = ring
        self.k = k
        self.rpc_timeout = rpc_timeout
        self.cache = cache
        self._prune = prune
        self._unchanged = unchanged
        self.forget = forget  # also the tombstone purger's (node/tombstones.py)
        self._io = io
        self._pushed_layout: tuple[int | None, tuple[int, ...]] | None = None
        self._full_at = time.monotonic()
        self.stats = {"syncs": 0, "digests": 0, "buckets_pushed": 0, "pushed": 0, "handed_off": 0}
        self._counts: tuple[Any, dict[str, int]] | None = None

    def status(self) -> dict[str, Any]:
        return {**super().status(), **self.stats}

    async def work(self) -> None:
        await self.sync()

    def arc(self) -> tuple[int, int] | None:
        """The ring arc (lo, hi] this node serves now (lo == hi: the whole ring); None
        while it serves nothing (joined, no predecessor known yet: ``Ring``)."""
        me = self.ring.me.id
        if not self.ring.responsible_for(me):
            return None
        pred = self.ring.predecessor()
        return (me, me) if pred is None else (pred.id, me)

    async def sync(self) -> None:
        """Reconcile owned records with the replica peers; hand records we do not own
        to their owner."""
        self.stats["syncs"] += 1
        arc = self.arc()
        if arc is None:
            return  # woken again when the ring tells us our predecessor
        lo, hi = arc
        peers = self.ring.replica_peers(self.k)[1:]
        pred = self.ring.predecessor()
        layout = (pred.id if pred else None, tuple(p.id for p in peers))
        full = time.monotonic() - self._full_at > FULL_SYNC_EVERY
        if layout != self._pushed_layout or full:
            # Our arc or our replica peers changed: they may lack what we own. (With an
            # unchanged layout every update already went to them synchronously; the
            # periodic round is anti-entropy for whatever that missed, e.g. an update
            # acknowledged while one replica was cut off.) A peer that could not be
            # reconciled is tried again at the next pass.
            self._full_at = time.monotonic()
            done = [await self._reconcile(p, lo, hi) for p in peers]
            if all(done):
                self._pushed_layout = layout
        await self._prune({p.addr for p in peers})
        if lo != hi:
            await self._offer(lo, hi)

    async def _offer(self, lo: int, hi: int) -> None:
        """The records held here outside our arc (lo, hi]: walk them clockwise, owner by
        owner; each owner compares its arc's digests with ours and takes the buckets
        that differ (``meta.absorb``). An owner that does not count us among its
        replicas gets every record of its arc, and we drop them (``_hand_off``). Cost:
        two calls per owner whose keys we hold, plus what differs or moves. Where the
        owner's view of its arc disagrees with the lookup (the ring is converging), a
        page of records is handed to the owner the lookup names, as before digests."""
        me = to_hex(self.ring.me.id)
        pos = hi
        for _ in range(MAX_OWNERS):
            k = await asyncio.to_thread(self.store.next_key, pos, lo)
            if k is None:
                return
            owner: Peer | None = None
            try:
                owner, arc = await self._owner_arc(k, me)
                if owner is None:
                    return  # the lookup names us: the ring has not settled
                if arc is None:
                    page: list[Record] = await asyncio.to_thread(
                        next, self.store.arc_pages(pos, lo), []
                    )
                    await self._hand_off(page, owner)
                    pos = key_id(page[-1].path) if page else k
                    continue
                a, b, keep = arc
                if not keep:
                    async for page in _pages(self.store.arc_pages(a, b)):
                        await self._hand_off(page, owner)
                else:
                    mine = await asyncio.to_thread(self.store.arc_digests, a, b)
                    rep = await self._digest_call(owner, a, b, mine, me)
                    async for recs in self._differing(rep, a, b):
                        await self._hand_off(recs, owner)
            except TransportError as exc:
                if owner is not None:
                    self.ring.failed(owner, exc)
                return
            except SectorError as exc:
                log.warning("anti-entropy with the owner of %x failed: %s", k, exc)
                return
            if a == b or not between_right(b, pos, lo) or b == lo:
                return  # past the end of what is not ours
            pos = b

    async def _owner_arc(self, k: int, me: str) -> tuple[Peer | None, tuple[int, int, bool] | None]:
        """The owner of key k and its arc (lo, hi, whether we keep copies); the arc is
        None if the owner does not own k by its own view. The range cache first; if
        its owner disagrees, forgotten, and a fresh lookup."""
        hit = self.cache.find(k)
        for owner in [Peer(hit[0], hit[1])] if hit else []:
            rep = await self._digest_call(owner, k - 1 & MASK, k, None, me)
            if (arc := _arc_of(rep, k)) is not None:
                return owner, arc
            self.cache.forget(owner.id)
        owner = await self.ring.lookup(k)
        if owner.id == self.ring.me.id:
            return None, None
        return owner, _arc_of(await self._digest_call(owner, k - 1 & MASK, k, None, me), k)

    async def _differing(
        self, rep: dict[str, Any], lo: int, hi: int
    ) -> AsyncIterator[list[Record]]:
        """The records of (lo, hi] in the buckets a ``meta.digest`` answer names, in
        batches of about BATCH (one call per batch, not per bucket)."""
        buf: list[Record] = []
        for bucket in _buckets(rep):
            buf += await asyncio.to_thread(self.store.bucket_records, lo, hi, bucket)
            self.stats["buckets_pushed"] += 1
            if len(buf) >= BATCH:
                yield buf
                buf = []
        if buf:
            yield buf

    async def _digest_call(
        self, peer: Peer, lo: int, hi: int, mine: dict[str, digest.Digest] | None, me: str
    ) -> dict[str, Any]:
        args: dict[str, Any] = {"lo": to_hex(lo), "hi": to_hex(hi), "sender": me}
        if mine is not None:
            args["buckets"] = [[b, *d] for b, d in mine.items()]
        rep = await self.ring.call(peer.addr, "meta.digest", args, self.rpc_timeout)
        self.stats["digests"] += 1
        return rep if isinstance(rep, dict) else {}

    async def _reconcile(self, peer: Peer, lo: int, hi: int) -> bool:
        """Push to ``peer`` the records of the buckets of (lo, hi] whose digests differ
        there; False if the peer could not be asked."""
        mine = await asyncio.to_thread(self.store.arc_digests, lo, hi)
        try:
            rep = await self._digest_call(peer, lo, hi, mine, to_hex(self.ring.me.id))
            async for recs in self._differing(rep, lo, hi):
                chunk = [rec.to_builtins(r) for r in recs]
                await self.ring.call(
                    peer.addr, "meta.replicate", {"records": chunk}, self.rpc_timeout
                )
                self.stats["pushed"] += len(chunk)
        except TransportError as exc:
            self.ring.failed(peer, exc)
            return False
        except SectorError as exc:
            log.warning("anti-entropy with %s failed: %s", peer.addr, exc)
            return False
        return True

    @typed(Digests)
    async def h_digest(self, req: Digests) -> Any:
        """meta.digest: the buckets of the sender's arc whose digests differ here, the
        arc we own, and whether the sender keeps copies of it (is a replica peer)."""
        arc = self.arc()
        out: dict[str, Any] = {"arc": None if arc is None else [to_hex(x) for x in arc]}
        if req.sender is not None:
            out["keep"] = req.sender in {to_hex(p.id) for p in self.ring.replica_peers(self.k)}
        if req.buckets is not None:
            theirs = {b: (n, x, y) for b, n, x, y in req.buckets}
            lo, hi = from_hex(req.lo), from_hex(req.hi)
            mine = await asyncio.to_thread(self.store.arc_digests, lo, hi)
            out["differ"] = digest.differ(mine, theirs)
        return out

    async def _hand_off(self, page: list[Record], owner: Peer) -> None:
        """Give records we do not own to their owner (``meta.absorb``); drop them here
        if it does not count us among its replicas."""
        recs = [r for r in page if not self._mine(r)]
        me = to_hex(self.ring.me.id)
        for i in range(0, len(recs), BATCH):
            chunk = recs[i : i + BATCH]
            try:
                rep = await self.ring.call(
                    owner.addr,
                    "meta.absorb",
                    {"records": [rec.to_builtins(r) for r in chunk], "sender": me},
                    self.rpc_timeout,
                )
            except TransportError as exc:
                self.ring.failed(owner, exc)
                return
            except SectorError as exc:
                log.warning("handoff to %s failed: %s", owner.addr, exc)
                return
            self.stats["handed_off"] += len(chunk)
            if isinstance(rep, dict) and rep.get("keep") is False:
                # Drop only what did not change meanwhile.
                gone = [r.path for r in chunk if self._unchanged(r)]
                for p in gone:
                    self.forget(p)
                await asyncio.get_running_loop().run_in_executor(
                    self._io, self.store.delete_many, gone
                )

    def _mine(self, r: Record) -> bool:
        return self.ring.responsible_for(key_id(r.path))  # the arc may have moved

    def counts(self) -> dict[str, int]:
        """Counts over the records this node owns (so a cluster sum counts each once),
        from the bucket sums (blocking: run in a thread): files, bytes, and
        ``under_replicated`` as far as the records tell (files listing fewer holders
        than their target; a listed holder that is down is the repair scanner's count,
        ``RepairWorker.lacking``). Kept until the store changes: the web page asks
        every 1.5 s."""
        arc = self.arc()
        if arc is None:
            return {"files": 0, "under_replicated": 0, "bytes": 0}
        key = (self.store.generation, arc)
        if self._counts is None or self._counts[0] != key:
            c = self.store.arc_counts(*arc)
            out = {"files": c["files"], "under_replicated": c["short"], "bytes": c["bytes"]}
            self._counts = (key, out)
        return dict(self._counts[1])

    async def handoff_all(self, successor: Peer) -> None:
        """Graceful leave: give every record to the successor that takes our keys over."""
        async for page in _pages(self.store.arc_pages(0, 0)):  # the whole ring
            for i in range(0, len(page), BATCH):
                await self._absorb_at(successor, page[i : i + BATCH])

    async def _absorb_at(self, peer: Peer, records: Iterable[Record]) -> None:
        await self.ring.call(
            peer.addr,
            "meta.absorb",
            {"records": [rec.to_builtins(r) for r in records], "sender": to_hex(self.ring.me.id)},
            self.rpc_timeout,
        )


async def _pages(pages: Iterator[list[Record]]) -> AsyncIterator[list[Record]]:
    """Pages of a store scan, each read in a thread (a read must not stall the loop)."""
    while True:
        page = await asyncio.to_thread(next, pages, None)
        if page is None:
            return
        yield page


def _buckets(rep: dict[str, Any]) -> list[str]:
    """The differing buckets of a ``meta.digest`` answer (only well-formed names)."""
    differ = rep.get("differ")
    if not isinstance(differ, list):
        return []
    return [b for b in differ if isinstance(b, str) and len(b) == digest.PREFIX]


def _arc_of(rep: dict[str, Any], k: int) -> tuple[int, int, bool] | None:
    """The owner's arc from a ``meta.digest`` answer, if it holds key k."""
    arc = rep.get("arc")
    if not isinstance(arc, list) or len(arc) != 2:
        return None
    try:
        a, b = from_hex(arc[0]), from_hex(arc[1])
    except (TypeError, ValueError):
        return None
    return (a, b, rep.get("keep") is not False) if between_right(k, a, b) or a == b else None
