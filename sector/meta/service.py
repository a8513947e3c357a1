"""The metadata shard of one node: owner-side operations, group commit, replication
and handoff (DESIGN "Metadata layer").

Rules:
- The record of a path lives on ``successor(key_id(path))`` (its *owner*) and on the
  owner's next k-1 successors. Requests are *routed*: a node that does not own the
  key forwards the request to the owner it finds by lookup (with a range cache), so a
  client may enter anywhere. A request that has been forwarded ``MAX_HOPS`` times is
  served where it is (during churn two nodes may briefly both think they own a key;
  merge rules reconcile them).
- The owner serialises updates to one path: read, compute and stage the new record
  happen with no await in between (``stage``), so concurrent updates compose. The
  staged record sits in an overlay that reads see at once, while a single committer
  writes all staged records in one SQLite transaction (group commit: one fsync for many
  updates). An update is acknowledged only after its commit and once a majority of
  its k copies is durable (the last replica completes in the background).
- Handoff (``sync``) runs after every ring change and periodically: the owner pushes
  the records it owns to its current replica peers; a record this node does not own is
  pushed to its owner, and dropped here if the owner says this node is not among its
  replicas. Merges are idempotent, so pushing too much is only wasted bandwidth.
- After the predecessor changes (a join in front of us, a crash behind, two rings
  merging after a partition), and after this node regains quorum or sees the cluster
  whole again (a heal: it owned keys all along that the majority side's owner wrote
  meanwhile), it may own keys whose newest records are still elsewhere: for
  ``warm_period`` seconds every read is merged with the copies held by its successors
  and by the key's successors in the member view (where whoever served the key in
  the meantime is) before it is answered, so a client reads its own acknowledged
  writes also right after a heal, and an update builds on them.
- Partitions (README "Consistency"): an update is accepted only by a node that has
  quorum (reaches a majority of the members) and that both the ring and the member
  view name as the key's owner (``Ring.write_refusal``); elsewhere it is refused with
  ``Unavailable``, which the entry node retries for ``RETRY_WINDOW`` while the ring
  converges. It is acknowledged only once durable on a majority of its k replicas
  ("1 of 3 metadata replicas answered" otherwise): a node cut off with a minority can
  never acknowledge a write that the majority side does not hold.
- Reads and writes take one route (``_route``): the ring's owner, unless the member
  view names another live node, which then is asked (the ring has not converged).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec

from sector.errors import (
    AlreadyExists,
    BadRequest,
    DirectoryNotEmpty,
    IsADirectory,
    NotFound,
    SectorError,
    TransportError,
    Unavailable,
)
from sector.ids import key_id, to_hex
from sector.meta import dirops, fileops
from sector.meta import records as rec
from sector.meta.batch import BATCH, Batcher
from sector.meta.handoff import Handoff
from sector.meta.messages import Absorb, Fetch, Replicate
from sector.meta.records import DirRecord, FileRecord, Gone, Record
from sector.meta.ring import Ring
from sector.meta.route import Router, root_record
from sector.meta.store import MetaStore
from sector.routing.chord import Peer
from sector.routing.rangecache import RangeCache
from sector.wire.messages import typed

log = logging.getLogger("sector.meta")

# Owner-side operations that change a record: refused without quorum (module rules).
WRITE_OPS = frozenset(
    {"put_file", "mkdir", "add_child", "remove_child", "delete", "set_replicas", "set_rf"}
) | {"remove_children"}
CACHE_RECORDS = 4096
WARM_FANOUT = 8  # member-view successors of a key a warm read also asks (a split that
# cut off up to 7 nodes in a row after the key left it with the 8th)


class MetaService:
    def __init__(
        self,
        store: MetaStore,
        ring: Ring,
        *,
        k: int = 3,
        warm_period: float = 10.0,
        rpc_timeout: float = 10.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.ring = ring
        self.k = k
        self.warm_period = warm_period
        self.rpc_timeout = rpc_timeout
        self.now = now
        self.clock = rec.Clock(to_hex(ring.me.id))
        self.cache = RangeCache()
        self._overlay: dict[str, Record] = {}
        # Per path, the directory entries staged since its last submit to the committer.
        self._dirty: dict[str, set[str]] = {}
        # Per directory, the entries dict this node made for its current record and
        # updates in place (``_merge_in_place``): of cached or staged paths only.
        self._owned: dict[str, dict[str, rec.Child]] = {}
        self._cache: OrderedDict[str, Record] = OrderedDict()
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        # Commits get a thread of their own: behind blob fsyncs in the shared pool, a
        # metadata commit waited for dozens of them under a burst of small puts.
        self._io = ThreadPoolExecutor(1, thread_name_prefix="meta-io")
        self._committer = Batcher("meta-committer", self._write, join=False)
        self._replicators: dict[str, Batcher] = {}
        self._warm_until = 0.0
        self._last_pred: int | None = None
        self._view: tuple[float, tuple[bool, bool] | None] = (-1.0, None)
        self.router = Router(
            ring, self.cache, local=self.local, read=self.read, read_many=self.read_many
        )
        self.handoff = Handoff(
            store,
            ring,
            k=k,
            rpc_timeout=rpc_timeout,
            cache=self.cache,
            prune=self._prune_replicators,
            unchanged=lambda r: self._read_local(r.path) == r,
            forget=self._forget,
            io=self._io,
        )
        self.on_delete: Callable[[Record], Awaitable[None]] | None = None
        self.on_unseen: Callable[[str], None] | None = None  # set by the node (rmtree)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._committer.start()
        await self.handoff.start()

    async def stop(self) -> None:
        await self.handoff.stop()
        await self._committer.stop()
        for b in self._replicators.values():
            await b.stop()
        self._io.shutdown(wait=True)

    async def _write(self, records: list[Record], changed: dict[str, set[str]]) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._io, self.store.put_many, records, changed)
        except Exception as exc:
            log.exception("metadata commit failed")
            raise SectorError(f"metadata commit failed: {exc}") from None

    def ring_changed(self) -> None:
        """Called by the routing driver whenever predecessor or successors change."""
        pred = self.ring.predecessor()
        pid = pred.id if pred is not None else None
        if pid != self._last_pred:
            self._last_pred = pid
            self._warm_until = self.now() + self.warm_period
        self.handoff.wake()

    def handlers(self) -> dict[str, Callable[[dict[str, Any]], Awaitable[Any]]]:
        return {
            "meta.op": self.router.h_op,
            "meta.replicate": self._h_replicate,
            "meta.fetch": self._h_fetch,
            "meta.absorb": self._h_absorb,
            "meta.digest": self.handoff.h_digest,
        }

    # ------------------------------------------------------------------ routing (route.py)

    async def call(self, path: str, op: str, args: dict[str, Any] | None = None) -> Any:
        """Run owner-side ``op`` on the record of ``path``, wherever its owner is."""
        return await self.router.call(path, op, args)

    async def get(self, path: str, *, brief: bool = False) -> Record | None:
        """The current record of a path (routed; no conversion when this node owns it);
        ``brief``: a directory maybe without its entries (``Router.get``)."""
        return await self.router.get(path, brief=brief)

    async def get_many(self, paths: list[str]) -> dict[str, Record | None]:
        return await self.router.get_many(paths)  # one call per owner

    # ------------------------------------------------------------------ owner-side ops

    def path_lock(self, path: str) -> asyncio.Lock:
        lock = self._locks.get(path)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[path] = lock
        return lock

    def _read_local(self, path: str) -> Record | None:
        r = self._overlay.get(path)
        if r is not None:
            return r
        r = self._cache.get(path)
        if r is not None:
            self._cache.move_to_end(path)
            return r
        r = self.store.get(path)
        if r is not None:
            self._remember(r)
        return r

    def _remember(self, r: Record) -> None:
        """Keep a decoded record: a busy directory is read on every update, and decoding
        its entries from SQLite each time cost more than the update itself."""
        self._cache[r.path] = r
        self._cache.move_to_end(r.path)
        if len(self._cache) > CACHE_RECORDS:
            path, _ = self._cache.popitem(last=False)
            self._owned.pop(path, None)

    def _forget(self, path: str) -> None:  # its row changed under the service
        self._cache.pop(path, None)
        self._owned.pop(path, None)

    def warm(self) -> bool:
        """Whether reads merge with the copies elsewhere now (module rules). A change
        of the view (quorum, a whole cluster) starts a warm period as a ring change
        does; it is looked at most every 0.1 s."""
        now = self.now()
        at, seen = self._view
        if not 0 <= now - at < 0.1:
            state = self.ring.view_state()
            if seen is not None and state != seen:
                self._warm_until = max(self._warm_until, now + self.warm_period)
            self._view = (now, state)
        return now < self._warm_until

    async def read(self, path: str) -> Record | None:
        r = self._read_local(path)
        if self.warm():
            r = await self._fetch_from_replicas(path, r)
        return r

    async def read_many(self, paths: list[str]) -> dict[str, Record | None]:
        """``read`` of each path (a listing's page: issue 17); those neither staged nor
        cached in one SQLite query, and not cached (a listing would push out the large
        directory itself, which its next create would then decode whole)."""
        if self.warm():
            return {p: await self.read(p) for p in paths}
        out = {p: self._overlay.get(p) or self._cache.get(p) for p in paths}
        missing = [p for p, r in out.items() if r is None]
        out.update(self.store.get_many(missing) if missing else {})
        return out

    async def _fetch_from_replicas(self, path: str, have: Record | None) -> Record | None:
        """``have`` merged with the copies our successors hold (the whole list: after
        two rings merge, the node that owned a gained key on the majority side is the
        first of them that was on that side, not always within k)."""
        found: Record | None = None
        # The whole successor list (replica_peers caps it), only the members seen live,
        # and the key's owner and successors by the member view: on the far side of a
        # split the key was served by the first of them that side reached.
        me = self.ring.me.id
        peers = {
            p.id: p
            for p in self.ring.replica_peers(1 << 10)[1:]
            if (hint := self.ring.owner_hint(p.id)) is None or hint.id == p.id
        }
        for p in self.ring.view_successors(key_id(path), WARM_FANOUT):
            if p.id != me:
                peers.setdefault(p.id, p)
        replies = await asyncio.gather(
            *(self.ring.call(p.addr, "meta.fetch", {"paths": [path]}, 1.5) for p in peers.values()),
            return_exceptions=True,
        )
        for rep in replies:
            if isinstance(rep, list):
                for obj in rep:
                    with contextlib.suppress(SectorError):
                        found = rec.merge(found, rec.from_builtins(obj))
        if found is None:
            return have
        merged = rec.merge(have, found)
        if merged != have:
            await self.commit([self.stage(found)], quorum=False)
            return self._read_local(path)
        return have

    def stage(
        self,
        r: Record,
        *,
        derived_from: Record | None = None,
        changed: Iterable[str] | None = None,
    ) -> Record:
        """Merge r into the current record of its path, visible to readers at once.

        Every record written to the store passes through here, so what is staged always
        contains what is stored: the committer can write it without merging again.
        ``derived_from``: r was computed from that record, and if it is still the
        current one, r already contains it and the merge (O(entries)) is skipped.
        ``changed``: the entries r changed (else every entry r names: all a merge can
        change), for the store to write alone; the ``commit`` that follows (no await
        between) takes them to the committer.
        """
        cur = self._read_local(r.path)
        if derived_from is not None and cur is derived_from:
            merged = r
        elif isinstance(cur, DirRecord) and isinstance(r, DirRecord) and rec.few(r, cur):
            merged = self._merge_in_place(cur, r)
        else:
            merged = rec.merge(cur, r)
        self._overlay[r.path] = merged
        if changed is None:
            changed = r.children if isinstance(r, DirRecord) else r.shadow
        self._dirty.setdefault(r.path, set()).update(changed)
        unseen = isinstance(merged, Gone) and rec.unseen_children(merged)  # records rule 7
        if unseen and self.on_unseen and self.ring.responsible_for(key_id(r.path)):
            self.on_unseen(r.path)  # an rm -r to finish
        return merged

    def _merge_in_place(self, cur: DirRecord, r: DirRecord) -> DirRecord:
        """``merge(cur, r)`` of a few entries into a large directory with no copy of its
        entries (``records.merge_into``) but the first: only a dict this node made for
        itself (``_owned``) is updated in place, never one another record may share."""
        if self._owned.get(cur.path) is not cur.children:
            cur = msgspec.structs.replace(cur, children=dict(cur.children))
            self._owned[cur.path] = cur.children
        return rec.merge_into(cur, r)

    async def commit(
        self,
        staged: list[Record],
        *,
        replicate: bool = True,
        deltas: list[Record] | None = None,
        quorum: bool = True,
    ) -> None:
        """Durable here and on the replica peers before returning.

        The local fsync and the replicas' run concurrently. With ``quorum`` (every
        owner-side update) it returns once a majority of the k copies is durable (the
        others complete in the background), and fewer is an error: the update stays
        here (merges reconcile it) but is not acknowledged. Without, it waits for every
        live copy.
        """
        changed = {r.path: self._dirty.pop(r.path, set()) for r in staged}
        try:
            if replicate:
                enough = self._majority() - 1 if quorum else None
                _, ok = await asyncio.gather(
                    self._committer.submit(staged, changed),
                    self._replicate(deltas or staged, enough=enough),
                )
                if quorum:
                    self._check_quorum(1 + ok, staged)
            else:
                await self._committer.submit(staged, changed)
        except BaseException:
            for r in staged:
                # What is on disk is now unknown (an earlier batch may have landed):
                # forget the decoded copy too, the next read goes to SQLite.
                self._cache.pop(r.path, None)
                self._owned.pop(r.path, None)
                if self._overlay.get(r.path) is r:
                    del self._overlay[r.path]
            raise
        for r in staged:
            if self._overlay.get(r.path) is r:
                del self._overlay[r.path]
                self._remember(r)

    async def _prune_replicators(self, current: set[str]) -> None:
        """Stop the idle batchers of peers that are no longer our replica peers."""
        for addr in [a for a, b in self._replicators.items() if a not in current and b.idle]:
            await self._replicators.pop(addr).stop()

    def _replicator(self, peer: Peer) -> Batcher:
        b = self._replicators.get(peer.addr)
        if b is None:

            async def send(records: list[Record], _: object = None, addr: str = peer.addr) -> None:
                payload = {"records": [rec.to_builtins(r) for r in records]}
                await self.ring.call(addr, "meta.replicate", payload, self.rpc_timeout)

            b = self._replicators[peer.addr] = Batcher(f"meta-replicate {peer.addr}", send)
        return b

    def _copies(self) -> int:
        """How many copies a record should have: k, capped by the number of members."""
        return max(1, min(self.k, self.ring.voters()))

    def _majority(self) -> int:
        return self._copies() // 2 + 1

    def _check_quorum(self, durable: int, staged: list[Record]) -> None:
        """Raise Unavailable unless ``durable`` copies are a majority of the k copies
        a record should have (k capped by the number of members)."""
        n = self._copies()
        need = self._majority()
        if durable < need:
            what = staged[0].path if len(staged) == 1 else f"{len(staged)} records"
            raise Unavailable(
                f"metadata of {what}: {durable} of {n} replicas answered "
                f"(a write needs {need}); the cluster may be partitioned",
                replicas=durable,
                need=need,
            )

    async def _replicate(self, records: list[Record], *, enough: int | None = None) -> int:
        """Send records to the replica peers and wait until each has them durably or
        failed, or (``enough``) until that many have them: the rest go on in the
        background. The number of peers known to have them.

        ``enough`` is what an owner-side update needs for its majority: a replica cut
        off by a partition then costs nothing until its RPC times out, instead of
        stalling every write on that arc for ``rpc_timeout``.
        """
        peers = self.ring.replica_peers(self.k)[1:]
        if not peers or not records:
            return 0
        futs = {self._replicator(p).submit(records): p for p in peers}
        ok = 0

        def outcome(f: asyncio.Future[None]) -> bool:
            p = futs[f]
            if f.cancelled():
                return False
            exc = f.exception()
            if isinstance(exc, TransportError):
                self.ring.failed(p, exc)
            elif exc is not None:
                log.warning("replicating to %s failed: %s", p.addr, exc)
            return exc is None

        pending: set[asyncio.Future[None]] = set(futs)
        try:
            while pending and (enough is None or ok < enough):
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                ok += sum(outcome(f) for f in done)
        finally:
            # The rest are looked at when they finish, also when this update was
            # cancelled meanwhile (its client hung up): a failed peer is still noted,
            # and no failure is left in a future nobody reads (asyncio logs those).
            for f in pending:
                f.add_done_callback(outcome)
        return ok

    def tick(self, after: Record | None = None, entry: str | None = None) -> rec.Stamp:
        """A new stamp, later than ``after`` (and its entry ``entry``, if named).

        An update must beat the record it replaces whatever this node's wall clock says
        (restarted with the clock stepped back, or taking over keys from a node whose
        clock ran ahead): otherwise it would lose the merge and a delete or overwrite
        that was acknowledged would silently not happen.
        """
        if after is not None:
            self.clock.observe(after.v)
            if entry is not None and isinstance(after, DirRecord) and entry in after.children:
                self.clock.observe(after.children[entry].v)
        return self.clock.tick(int(self.now() * 1000))

    async def local(self, op: str, path: str, a: dict[str, Any]) -> Any:
        fn = self._ops.get(op)
        if fn is None:
            raise BadRequest(f"unknown metadata operation {op!r}")
        if op in WRITE_OPS:
            refusal = self.ring.write_refusal(key_id(path))
            if refusal is not None:
                raise Unavailable(f"cannot change {path} here: {refusal}", node=self.ring.me.addr)
        return await fn(self, path, a)

    async def _op_get(self, path: str, a: dict[str, Any]) -> Any:
        r = await self.read(path)
        if a.get("merge") is True and not isinstance(r, FileRecord | DirRecord) and not self.warm():
            r = await self._fetch_from_replicas(path, r)  # a miss checked with every copy
        if r is None and path == "/":
            r = root_record((0, 0, ""))
        if a.get("brief") is True and isinstance(r, DirRecord):
            r = msgspec.structs.replace(r, children={})  # what it is, not what it holds
        return rec.to_builtins(r) if r is not None else None

    async def _op_put_file(self, path: str, a: dict[str, Any]) -> Any:
        new = rec.from_builtins(a.get("record"))
        if not isinstance(new, FileRecord) or new.path != path:
            raise BadRequest("put_file needs a file record of the same path")
        async with self.path_lock(path):
            old = await self.read(path)
            if isinstance(old, DirRecord):
                raise IsADirectory(f"{path} is a directory")
            staged = self.stage(msgspec.structs.replace(new, v=self.tick(old)))
        await self.commit([staged])
        return {
            "old": rec.to_builtins(old) if old is not None else None,
            "record": rec.to_builtins(staged),
        }

    async def _op_delete(self, path: str, a: dict[str, Any]) -> Any:
        expect_blob = a.get("blob")
        token = t if isinstance(t := a.get("token"), str) and len(t) <= 64 else ""
        async with self.path_lock(path):
            old = await self.read(path)
            if not isinstance(old, FileRecord) and not self.warm():
                # A directory goes only empty in every copy, and a miss is checked with
                # them: an entry, or a record, written while this node was not yet the
                # owner may sit on the replicas alone (thrash found subtrees left behind).
                old = await self._fetch_from_replicas(path, old)
            if isinstance(old, Gone) and token and old.token == token:
                return {"old": None, "repeat": True}  # this delete's own earlier attempt
            if old is None or isinstance(old, Gone):
                raise NotFound(f"no such file or directory: {path}")
            if isinstance(old, DirRecord) and rec.live_children(old):
                raise DirectoryNotEmpty(f"directory not empty: {path} (use -r)")
            if expect_blob is not None and (
                not isinstance(old, FileRecord) or old.blob != expect_blob
            ):
                raise AlreadyExists(f"{path} changed while it was being removed")
            moved = rec.normalize(m) if isinstance(m := a.get("moved_to"), str) else ""
            tree = a.get("tree") is True and isinstance(old, DirRecord)  # rm -r (rule 7)
            v = self.tick(old)
            staged = self.stage(
                Gone(path=path, v=v, mtime=self.now(), moved=moved, token=token, tree=tree)
            )
        await self.commit([staged])
        return {"old": rec.to_builtins(old)}

    async def _op_get_many(self, path: str, a: dict[str, Any]) -> Any:
        """The records of ``paths`` this node owns; False for each it does not."""
        paths: Any = a.get("paths")
        ok = isinstance(paths, list) and len(paths) <= BATCH
        if not ok or not all(isinstance(p, str) for p in paths):
            raise BadRequest(f"get_many needs a list of at most {BATCH} paths")
        ps = [rec.normalize(p) for p in paths]
        mine = [self.router.mine(key_id(p)) for p in ps]  # False: ask its owner
        got = await self.read_many([p for p, m in zip(ps, mine, strict=True) if m])
        return [
            (rec.to_builtins(r) if (r := got[p]) is not None else None) if m else False
            for p, m in zip(ps, mine, strict=True)
        ]

    _ops: dict[str, Callable[[MetaService, str, dict[str, Any]], Awaitable[Any]]] = {
        "get": _op_get,
        "put_file": _op_put_file,
        "mkdir": dirops.mkdir,
        "add_child": dirops.add_child,
        "remove_child": dirops.remove_child,
        "delete": _op_delete,
        "get_many": _op_get_many,
        "set_replicas": fileops.set_replicas,
        "set_rf": fileops.set_rf,
        "remove_children": dirops.remove_children,
    }

    # ------------------------------------------------------------------ replica-side handlers

    @typed(Replicate)
    async def _h_replicate(self, req: Replicate) -> Any:
        records = [rec.from_builtins(o) for o in req.records]
        for r in records:
            self.clock.observe(r.v)
            if isinstance(r, FileRecord) and r.rv is not None:
                self.clock.observe(r.rv)
        await self.commit([self.stage(r) for r in records], replicate=False)
        return len(records)

    @typed(Fetch)
    async def _h_fetch(self, req: Fetch) -> Any:
        out = []
        for p in req.paths[:BATCH]:
            r = self._read_local(p)
            if r is not None:
                out.append(rec.to_builtins(r))
        return out

    @typed(Absorb)
    async def _h_absorb(self, req: Absorb) -> Any:
        """Records handed to us as their owner: merge, replicate, say who should keep copies."""
        records = [rec.from_builtins(o) for o in req.records]
        for r in records:
            self.clock.observe(r.v)
        # A merge of what exists (no new version): no quorum asked, as for meta.replicate.
        await self.commit([self.stage(r) for r in records], quorum=False)
        keep = req.sender in {to_hex(p.id) for p in self.ring.replica_peers(self.k)}
        return {"keep": keep}

    # ------------------------------------------------------------------ handoff

    async def sync(self) -> None:
        await self.handoff.sync()

    async def handoff_all(self, successor: Peer) -> None:
        await self.handoff.handoff_all(successor)

    def counts(self) -> dict[str, int]:
        """files, under_replicated and bytes of what this node owns (``Handoff.counts``)."""
        return self.handoff.counts()
