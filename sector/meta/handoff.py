"""Handoff and anti-entropy of one node's metadata shard (``service.py`` rules):
after every ring change and periodically, the records this node owns are pushed to its
replica peers (when its arc or its peers changed, and in full every
``FULL_SYNC_EVERY`` seconds, which reconciles whatever an update missed, e.g. one
acknowledged while a replica was cut off), and a record it does not own is handed to
its owner (``meta.absorb``) and dropped here if the owner says this node is not among
its replicas. Merges are idempotent, so pushing too much only costs bandwidth. A
graceful leave gives every record to the successor.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sector.aio import Worker
from sector.errors import SectorError, TransportError
from sector.ids import key_id, to_hex
from sector.meta import records as rec
from sector.meta.batch import BATCH
from sector.meta.records import Record
from sector.meta.ring import Ring
from sector.meta.store import MetaStore
from sector.routing.chord import Peer
from sector.routing.rangecache import RangeCache

log = logging.getLogger("sector.meta")

FULL_SYNC_EVERY = 300.0  # seconds between anti-entropy pushes of a whole shard
SYNC_EVERY = 15.0  # seconds between syncs when nothing asks for one


class Handoff(Worker):
    """The sync loop of one shard. ``replicate`` sends records to the replica peers
    (the service's batched path); ``prune`` stops senders to peers no longer ours;
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
        replicate: Callable[[list[Record]], Awaitable[int]],
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
        self._replicate = replicate
        self._prune = prune
        self._unchanged = unchanged
        self.forget = forget  # also the tombstone purger's (node/tombstones.py)
        self._io = io
        self._pushed_layout: tuple[int | None, tuple[int, ...]] | None = None
        self._full_at = time.monotonic()
        self.stats = {"syncs": 0, "pushed": 0, "handed_off": 0}

    def status(self) -> dict[str, Any]:
        return {**super().status(), **self.stats}

    async def work(self) -> None:
        await self.sync()

    async def sync(self) -> None:
        """Push owned records to replica peers; hand records we do not own to their owner."""
        self.stats["syncs"] += 1
        # The scan decodes the whole shard: off the event loop, or a big shard would
        # stall heartbeats long enough for peers to think this node dead.
        owned, foreign = await asyncio.to_thread(self._partition)
        peers = self.ring.replica_peers(self.k)[1:]
        pred = self.ring.predecessor()
        layout = (pred.id if pred else None, tuple(p.id for p in peers))
        full = time.monotonic() - self._full_at > FULL_SYNC_EVERY
        if layout != self._pushed_layout or full:
            # Our arc or our replica peers changed: they may lack what we own. (With an
            # unchanged layout every update already went to them synchronously; the
            # periodic full push is anti-entropy for whatever that missed, e.g. an
            # update acknowledged while one replica was cut off.)
            self._full_at = time.monotonic()
            for i in range(0, len(owned), BATCH):
                await self._replicate(owned[i : i + BATCH])
                self.stats["pushed"] += len(owned[i : i + BATCH])
            self._pushed_layout = layout
        await self._prune({p.addr for p in peers})
        foreign.sort(key=lambda x: x[0])
        groups: dict[str, tuple[Peer, list[Record]]] = {}
        for k, r in foreign:
            hit = self.cache.find(k)
            owner = Peer(hit[0], hit[1]) if hit else await self.ring.lookup(k)
            if owner.id == self.ring.me.id:
                continue
            groups.setdefault(owner.addr, (owner, []))[1].append(r)
        me = to_hex(self.ring.me.id)
        for owner, recs in groups.values():
            for i in range(0, len(recs), BATCH):
                chunk = recs[i : i + BATCH]
                try:
                    rep = await self.ring.call(
                        owner.addr,
                        "meta.absorb",
                        {"records": [rec.to_builtins(r) for r in chunk], "sender": me},
                        self.rpc_timeout,
                    )
                except TransportError:
                    self.ring.failed(owner)
                    break
                except SectorError as exc:
                    log.warning("handoff to %s failed: %s", owner.addr, exc)
                    break
                self.stats["handed_off"] += len(chunk)
                if isinstance(rep, dict) and rep.get("keep") is False:
                    # Drop only what did not change meanwhile.
                    gone = [r.path for r in chunk if self._unchanged(r)]
                    for p in gone:
                        self.forget(p)
                    await asyncio.get_running_loop().run_in_executor(
                        self._io, self.store.delete_many, gone
                    )

    def _partition(self) -> tuple[list[Record], list[tuple[int, Record]]]:
        owned: list[Record] = []
        foreign: list[tuple[int, Record]] = []
        for r in self.store.all():
            k = key_id(r.path)
            if self.ring.responsible_for(k):
                owned.append(r)
            else:
                foreign.append((k, r))
        return owned, foreign

    async def handoff_all(self, successor: Peer) -> None:
        """Graceful leave: give every record to the successor that takes our keys over."""
        batch: list[Record] = []
        for r in self.store.all():
            batch.append(r)
            if len(batch) >= BATCH:
                await self._absorb_at(successor, batch)
                batch = []
        if batch:
            await self._absorb_at(successor, batch)

    async def _absorb_at(self, peer: Peer, records: Iterable[Record]) -> None:
        await self.ring.call(
            peer.addr,
            "meta.absorb",
            {"records": [rec.to_builtins(r) for r in records], "sender": to_hex(self.ring.me.id)},
            self.rpc_timeout,
        )
