"""The repair worker: keeps every file this node owns at its replica target (DESIGN
"Replication"; the model is garage's ``block/resync.rs``).

Rules:
- The metadata *owner* of a file repairs it: one decider per file, and the one that
  can update its record without a hop. A queued path this node no longer owns is
  dropped (its new owner finds it by its own scan).
- Work enters a persisted queue (``<data>/repair.sqlite3``, see ``repair_queue``) from
  three triggers: the set of live members changed (a crash, a leave, a join) or the
  ring did (we may own new keys): a scan of the owned records, off the event loop;
  a periodic scan (``scan_interval``) for anything the triggers missed; and
  ``repair.report {path, node_id?}`` from whoever found a bad copy.
- Nothing is decided during ``settle`` seconds after start: until gossip has filled
  the member table, live holders would look dead and be "repaired" for nothing.
- At most ``concurrency`` paths are repaired at once, and the bytes copied are paced
  to ``rate`` bytes/s (0 = no cap), so repair never starves client traffic. A failed
  repair backs off (1 s doubling to 60 s) and stays queued across restarts.
- One repair: plan (``repair_policy``), have a live good holder push its copy to new
  targets (``blob.replicate``: a chain write verified against the record's checksum),
  set the record's replica list by compare-and-set, then delete trimmed or bad
  copies. The record is changed before any copy is deleted and never loses a good one.
- A draining node's copies are "moving" (``repair_policy`` rule 5): copied elsewhere,
  then dropped. A member turning "draining" leaves ``alive_ids``, so it triggers the
  same urgent scan as a crash; ``held_on`` counts what still waits (drain progress).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Protocol

import msgspec

from sector.aio import Every, Worker, cancel_and_wait
from sector.config import NodeConfig
from sector.errors import (
    ChecksumMismatch,
    NotFound,
    SectorError,
    TransportError,
    Unavailable,
)
from sector.ids import key_id, to_hex
from sector.meta import records as rec
from sector.meta.records import FileRecord, Record
from sector.node import put
from sector.node.members import Members
from sector.routing.chord import Peer
from sector.security import guard
from sector.storage import repair_policy
from sector.storage.messages import MAX_AUDIT, Delete, Missing, Verify
from sector.storage.placement import Candidate
from sector.storage.repair_queue import Entry, RepairQueue
from sector.wire.messages import Request, to_args, typed


class Shard(Protocol):
    def files(self, lo: int, hi: int, since: int | None = None) -> Iterator[list[Record]]: ...
    def last_seq(self) -> int: ...


class Arcs(Protocol):
    def arc(self) -> tuple[int, int] | None: ...


class Meta(Protocol):
    """The metadata service as repair uses it: this node's shard (scans) and the arc
    it owns, routed reads and owner-side updates."""

    @property
    def store(self) -> Shard: ...
    @property
    def handoff(self) -> Arcs: ...
    async def get(self, path: str) -> Record | None: ...
    async def call(self, path: str, op: str, args: dict[str, Any] | None = None) -> Any: ...


class RepairHost(put.CopyHost, Protocol):
    """What repair needs from its node: ownership and lookup (reports go to a file's
    owner), the member view and quorum, the metadata, RPC, and the chain copy's needs."""

    @property
    def addr(self) -> str: ...
    @property
    def data(self) -> Path: ...
    @property
    def cfg(self) -> NodeConfig: ...
    @property
    def members(self) -> Members: ...
    @property
    def meta(self) -> Meta: ...
    def alive_ids(self) -> set[str]: ...
    def draining_ids(self) -> set[str]: ...
    def responsible_for(self, key: int) -> bool: ...
    async def lookup(self, key: int, *, verify: bool = False) -> Peer: ...
    def quorum_refusal(self) -> str | None: ...
    def converged(self) -> bool: ...


log = logging.getLogger("sector.repair")

MAX_HOPS = 3
HEX = r"^[0-9a-f]+\Z"  # a node id (hex)
FULL_SCAN_EVERY = 600.0  # seconds: a full scan at least this often (``_scan_sync``)
COPY_RATE_FLOOR = 4 << 20  # bytes/s assumed when sizing a copy's timeout


class Report(Request, frozen=True):
    """repair.report: a copy of ``path`` is bad (the one on ``node_id``, of ``blob``), or
    the file needs a look; routed to the file's owner (``hops``: forwarded so often)."""

    op = "repair.report"
    path: str
    node_id: Annotated[str, msgspec.Meta(max_length=64, pattern=HEX)] | None = None
    hops: int = 0
    check: bool = False  # believe the report only once checked (it came from a client)
    blob: str | None = None


class RepairWorker(Worker):
    """The queue runner (a worker woken by every report), with the scan as a second
    worker, ``scanner``, woken by member and ring changes, and the audit as a third,
    ``auditor``, every ``audit_interval``."""

    def __init__(
        self,
        node: RepairHost,
        *,
        concurrency: int = 2,
        rate: int = 0,
        scan_interval: float = 30.0,
        audit_interval: float = 600.0,
        settle: float = 5.0,
    ) -> None:
        super().__init__("repair", interval=5.0, settle=settle)
        self.node = node
        self.concurrency = max(1, concurrency)
        self.rate = rate
        self.scan_interval = scan_interval
        self.audit_interval = audit_interval
        self.queue = RepairQueue(str(node.data / "repair.sqlite3"))
        self.counters = {
            "done": 0,
            "failed": 0,
            "copies": 0,
            "trimmed": 0,
            "trims_deferred": 0,
            "bytes": 0,
            "scans": 0,
            "full_scans": 0,  # scans that read every owned file (the rest: what changed)
            "audits": 0,
            "missing": 0,  # copies an audit found listed but absent
        }
        self.last_error = ""
        self._running: dict[str, asyncio.Task[None]] = {}
        # A burst of changes makes one scan; the first right after the settle.
        self.scanner = Every(
            "repair-scan", self._scan_pass, scan_interval, settle=settle, coalesce=0.2
        )
        # The audit (are the copies our records list really there?) has its own.
        self.auditor = Every("repair-audit", self.audit, audit_interval)
        self._settled = False
        self._lost: set[str] = set()
        self._scanned: tuple[object, int | None] = (None, None)  # (inputs, seq) of the last scan
        self._full_at = 0.0
        self._lacking: dict[str, tuple[int, tuple[str, ...]]] = {}
        self._last_up: set[str] | None = None
        self._next_slot = 0.0
        self._qlen = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._qlen = await asyncio.to_thread(len, self.queue)
        await super().start()
        await self.scanner.start()
        await self.auditor.start()

    async def stop(self) -> None:
        await self.auditor.stop()
        await self.scanner.stop()
        await super().stop()
        await cancel_and_wait(list(self._running.values()))
        self.queue.close()

    def handlers(self) -> dict[str, Any]:
        return {"repair.report": self._h_report, "repair.audit": self._h_audit}

    async def _h_audit(self, a: dict[str, Any]) -> Any:
        """Run an audit now (tests, operators); how many missing copies it queued."""
        return {"missing": await self.audit()}

    def status(self) -> dict[str, Any]:
        state = "settling" if not self._settled else "busy" if self._running else "idle"
        return {
            **super().status(),
            "state": state,
            "queue": self._qlen,
            "in_flight": len(self._running),
            **self.counters,
        }

    # ------------------------------------------------------------------ triggers

    def members_changed(self) -> None:
        """Called every gossip round: a member turning down (or up) means a scan."""
        up = self.node.alive_ids()
        prev, self._last_up = self._last_up, up
        if prev is None or up == prev:
            return
        self._lost |= prev - up
        self.scanner.wake()

    def ring_changed(self) -> None:
        # After a crash behind us we own its keys: their files need a look too.
        self.scanner.wake()

    async def _scan_pass(self) -> None:
        lost, self._lost = self._lost, set()
        await self.scan(lost)

    async def audit(self) -> int:
        """Ask every live holder whether the copies our records list are there; queue
        the files whose copies are missing, as a failed read would. Returns how many."""
        live = self._live()
        by_node = await asyncio.to_thread(self._audit_plan, live)
        found: list[tuple[str, str]] = []

        async def one(nid: str, items: list[tuple[str, str]]) -> None:
            paths = dict((b, p) for p, b in items)
            blobs = list(paths)
            for i in range(0, len(blobs), MAX_AUDIT):
                try:
                    req = Missing(blobs=blobs[i : i + MAX_AUDIT])
                    rep = await self.node.call(live[nid].addr, "blob.missing", to_args(req))
                except SectorError:
                    return  # unreachable: the scans handle a node that is down
                found.extend((paths[b], nid) for b in rep.get("missing", []) if b in paths)

        await asyncio.gather(*(one(n, it) for n, it in by_node.items()))
        for path, nid in found:
            await asyncio.to_thread(
                self.queue.enqueue, path, f"missing on {nid[:8]}", time.time(), bad=nid, urgent=True
            )
        self.counters["audits"] += 1
        self.counters["missing"] += len(found)
        if found:
            log.info("repair audit: %d listed copies are missing", len(found))
            self.wake()
        return len(found)

    def _owned_files(self, since: int | None = None) -> Iterator[Record]:
        """The owned file records (with ``since``: all written after it), by pages."""
        if (arc := self.node.meta.handoff.arc()) is not None:
            for page in self.node.meta.store.files(*arc, since):
                yield from page

    def _audit_plan(self, live: dict[str, Candidate]) -> dict[str, list[tuple[str, str]]]:
        out: dict[str, list[tuple[str, str]]] = {}
        for r in self._owned_files():
            if isinstance(r, FileRecord):
                for nid, _addr in r.replicas:
                    if nid in live:
                        out.setdefault(nid, []).append((r.path, r.blob))
        return out

    async def scan(self, lost: set[str] | None = None) -> int:
        """Queue every owned file that is not exactly right; returns how many."""
        live = self._live()
        draining = self.node.draining_ids()
        lost = lost or set()
        n = await asyncio.to_thread(self._scan_sync, live, draining, lost)
        self.counters["scans"] += 1
        if n:
            log.info(
                "repair scan queued %d files%s", n, f" (lost {len(lost)} nodes)" if lost else ""
            )
            self.wake()
        return n

    def _scan_sync(self, live: dict[str, Candidate], draining: set[str], lost: set[str]) -> int:
        # In a thread (decoding on the loop would stall heartbeats). Incremental: while
        # the arc, the live members (hosts, topology: placement weighs them) and the
        # draining set stay, a plan changes only with its record, so a pass reads the
        # records written since the last; else (or a lost node, or FULL_SCAN_EVERY) all.
        sig = (
            self.node.meta.handoff.arc(),
            frozenset((c.node_id, c.host, c.topology) for c in live.values()),
            frozenset(draining),
        )
        now = time.monotonic()
        top = self.node.meta.store.last_seq()
        since: int | None = self._scanned[1]
        if lost or sig != self._scanned[0] or now - self._full_at > FULL_SCAN_EVERY:
            since, self._full_at = None, now
            self.counters["full_scans"] += 1
        paths = []
        lacking = {} if since is None else self._lacking
        for r in self._owned_files(since):
            if not isinstance(r, FileRecord):
                lacking.pop(r.path, None)  # removed (or a directory now)
                continue
            # Lists its target of holders, but some are down (``lacking``).
            if r.rf <= len(r.replicas) and sum(n in live for n, _ in r.replicas) < r.rf:
                lacking[r.path] = (r.rf, tuple(n for n, _ in r.replicas))
            else:
                lacking.pop(r.path, None)
            p = repair_policy.plan(r.replicas, r.rf, live, draining=draining, seed=r.blob)
            if not p.ok or any(nid in lost for nid, _ in r.replicas):
                paths.append(r.path)
        if paths:
            self.queue.enqueue_many(
                paths, "lost node" if lost else "scan", time.time(), urgent=bool(lost)
            )
        self._qlen = len(self.queue)
        self._scanned, self._lacking = (sig, top), lacking
        return len(paths)

    def lacking(self, alive: set[str]) -> int:
        """Owned files listing their target of holders, fewer of them in ``alive`` (of
        those the last scan found with one down; ``node.info`` adds the store's count
        of files listing too few)."""
        return sum(sum(n in alive for n in ids) < rf for rf, ids in list(self._lacking.values()))

    def held_on(self, ids: set[str]) -> dict[str, int]:
        """Owned files whose record still lists each of ``ids`` (blocking: run in a thread).

        A drained node is one no record lists: every copy it had is at ``rf`` elsewhere
        (the record dropped it only then) and the rest of its bytes are orphans.
        """
        out = dict.fromkeys(ids, 0)
        if not ids:
            return out
        for r in self._owned_files():
            for nid, _ in r.replicas if isinstance(r, FileRecord) else []:
                if nid in out:
                    out[nid] += 1
        return out

    @typed(Report)
    async def _h_report(self, req: Report) -> Any:
        """``{path, node_id?}``: a copy is bad (or the file needs a look); routed to the owner."""
        # A report from a client (not a node) is checked before it is believed: anyone
        # may read, so anyone may report, and a false report must not make the cluster
        # drop good copies. The flag travels with the report to the owner.
        check = req.check or not guard.is_node()
        path = rec.normalize(req.path)
        return await self.report(path, req.node_id, hops=req.hops, check=check, blob=req.blob)

    async def report(
        self,
        path: str,
        node_id: str | None = None,
        *,
        hops: int = 0,
        check: bool = False,
        blob: str | None = None,
    ) -> Any:
        key = key_id(path)
        if not self.node.responsible_for(key) and hops < MAX_HOPS:
            owner = await self.node.lookup(key)
            if owner.id != self.node.me.id:
                args = {"path": path, "node_id": node_id, "hops": hops + 1, "check": check}
                if blob is not None:
                    args["blob"] = blob
                return await self.node.call(owner.addr, "repair.report", args)
        if node_id and blob is not None:
            # A bad copy is a copy of one version: a report about a blob the record no
            # longer names (the reader's stat was stale, or an overwrite or delete raced
            # the read) says nothing about the current copies on that node.
            cur = await self.node.meta.get(path)
            if not isinstance(cur, FileRecord) or cur.blob != blob:
                return {"queued": False, "owner": self.node.addr, "stale": True}
        if check and not isinstance(await self.node.meta.get(path), FileRecord):
            # A client's report of a path with no file: nothing to repair, and nothing
            # to keep in the (persisted) queue -- anyone may report.
            return {"queued": False, "owner": self.node.addr, "missing": True}
        if node_id and check and await self._copy_is_good(path, node_id):
            return {"queued": False, "owner": self.node.addr, "health": "ok"}
        reason = f"bad copy on {node_id[:8]}" if node_id else "reported"
        await asyncio.to_thread(
            self.queue.enqueue, path, reason, time.time(), bad=node_id, urgent=True
        )
        self._qlen += 1
        self.wake()
        return {"queued": True, "owner": self.node.addr}

    async def _copy_is_good(self, path: str, node_id: str) -> bool:
        """Whether the holder ``node_id`` says its copy of ``path`` hashes right."""
        r = await self.node.meta.get(path)
        if not isinstance(r, FileRecord):
            return False
        addr = next((ad for nid, ad in r.replicas if nid == node_id), None)
        if addr is None:
            return True  # not a holder: nothing of ours to drop
        try:
            rep = await self.node.call(
                addr,
                "blob.verify",
                to_args(Verify(blob=r.blob, checksum=r.checksum)),
                timeout=max(30.0, r.size / (50 << 20)),
            )
        except SectorError:
            return False  # unreachable: let the repair look
        return isinstance(rep, dict) and rep.get("health") == "ok"

    # ------------------------------------------------------------------ the queue runner

    async def work(self) -> float:
        """Start the due repairs there are free slots for; the wait until the next is
        due (at most 5 s). The settle before the first pass is the module rule: decide
        nothing until the member table has filled."""
        self._settled = True
        free = self.concurrency - len(self._running)
        if free > 0:
            entries = await asyncio.to_thread(
                self.queue.due, time.time(), free, skip=set(self._running)
            )
            for e in entries:
                self._running[e.path] = asyncio.create_task(self._one(e), name=f"repair {e.path}")
        nd = await asyncio.to_thread(self.queue.next_due)
        self._qlen = await asyncio.to_thread(len, self.queue)
        return 5.0 if nd is None else min(5.0, max(0.2, nd - time.time()))

    async def _one(self, e: Entry) -> None:
        try:
            await self.repair(e)
            await asyncio.to_thread(self.queue.done, e)
            self.counters["done"] += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not isinstance(exc, SectorError | OSError):
                log.exception("repair of %s failed", e.path)
            now = time.time()
            due = await asyncio.to_thread(self.queue.failed, e, now, str(exc))
            self.counters["failed"] += 1
            self.last_error = f"{e.path}: {exc}"
            # The delay as planned (the thread may have waited: "retry in -8 s" was seen)
            log.info("repair of %s failed (retry in %.0f s): %s", e.path, due - now, exc)
        finally:
            self._running.pop(e.path, None)
            self.wake()

    def _live(self) -> dict[str, Candidate]:
        # Draining nodes included: they still serve their copies (policy rule 5).
        return {c.node_id: c for c in put.candidates(self.node.members, reachable=True)}

    async def repair(self, e: Entry) -> None:
        """Bring one path to its target (see the module rules). Raises to back off."""
        node = self.node
        if not node.responsible_for(key_id(e.path)):
            # The owner repairs; it finds a missing copy by its own scan, but not a
            # rotten one (the scan sees only the record): a bad-copy report queued
            # here before ownership moved is handed on, not dropped.
            if e.bad:
                owner = await node.lookup(key_id(e.path))
                if owner.id == node.me.id:
                    raise Unavailable(f"ownership of {e.path} is settling; retrying")
                for bad in sorted(e.bad):
                    await node.call(
                        owner.addr, "repair.report", {"path": e.path, "node_id": bad, "hops": 1}
                    )
            return
        refusal = node.quorum_refusal()
        if refusal is not None:
            # The minority side of a partition changes nothing (README "Consistency"):
            # its view of the records may be stale, and the majority side repairs.
            raise Unavailable(f"repair of {e.path} waits: {refusal}")
        r = await node.meta.get(e.path)
        if not isinstance(r, FileRecord):
            return  # deleted, or a directory now: nothing to keep
        live = self._live()
        draining = node.draining_ids()
        p = repair_policy.plan(r.replicas, r.rf, live, bad=e.bad, draining=draining, seed=r.blob)
        if p.ok:
            return
        shortfall = ""
        if p.need:
            if not p.sources:
                raise Unavailable(
                    f"no good copy of {e.path} is up ({len(p.dead)} down, {len(p.bad)} bad)"
                )
            targets = repair_policy.targets(
                p,
                r.replicas,
                live,
                size=r.size,
                seed=r.blob,
                min_free=node.cfg.min_free,
                draining=draining,
            )
            stored = await self._copy(e, r, p.sources, targets) if targets else []
            new, _ = repair_policy.after_copy(p, stored)
            good_after = len(p.good) + len(stored)
            if good_after < r.rf:
                shortfall = (
                    f"{e.path}: {good_after} of {r.rf} copies"
                    f" ({len(live)} nodes up, {len(targets)} could take one)"
                )
        else:
            new = p.keep()
        new_ids = {nid for nid, _ in new}
        drop = [x for x in p.good + p.bad + p.moving if x[0] not in new_ids and x[0] in live]
        if new != [tuple(x) for x in r.replicas]:
            res = await node.meta.call(
                e.path,
                "set_replicas",
                {
                    "blob": r.blob,
                    "replicas": [list(x) for x in new],
                    "expect": [list(x) for x in r.replicas],
                },
            )
            if not res.get("updated"):
                if res.get("reason") == "raced":
                    raise Unavailable(f"{e.path} changed during its repair; retrying")
                return  # overwritten or removed meanwhile: this version needs nothing
        if drop and not node.converged():
            # Deleting a copy needs the whole cluster in view: a record on the far side
            # of a partition may still list it. The copies stay, unlisted, and the
            # collector removes them once the cluster is whole again.
            self.counters["trims_deferred"] += len(drop)
            drop = []
        for nid, addr in drop:
            try:
                # With the path: a holder spares a blob another path still claims (a
                # rename cut short, by a crash or a partition, leaves two records on one
                # blob, each repaired on its own; one's trim must not take the other's
                # copy). The collector settles such a blob later, asking every path.
                args = to_args(Delete(blobs=[r.blob], path=e.path))
                await node.call(addr, "blob.delete", args, timeout=10.0)
                log.info("repair of %s: trimmed blob %s on %s", e.path, r.blob, nid[:8])
                self.counters["trimmed"] += 1
            except SectorError as exc:
                log.info("trim of %s on %s failed (an orphan now): %s", r.blob, nid[:8], exc)
        if shortfall:
            raise Unavailable(shortfall)

    async def _copy(
        self, e: Entry, r: FileRecord, sources: list[tuple[str, str]], targets: list[Candidate]
    ) -> list[tuple[str, str]]:
        """Have one good holder push its copy to ``targets``; the nodes that stored it."""
        await self._throttle(r.size * len(targets))
        chain = [(c.node_id, c.addr) for c in targets]
        me = to_hex(self.node.me.id)
        # Our own copy first (sendfile from here, no extra hop); then rotate by attempt,
        # so a holder that keeps failing is not the only one ever asked.
        mine = [s for s in sources if s[0] == me]
        others = [s for s in sources if s[0] != me]
        k = e.attempts % len(others) if others else 0
        order = mine + others[k:] + others[:k]
        errors: list[str] = []
        for nid, addr in order:
            try:
                got = await put.push_copy(
                    self.node,
                    (nid, addr),
                    r.blob,
                    r.size,
                    r.checksum,
                    chain,
                    r.path,
                    timeout=30.0 + r.size / COPY_RATE_FLOOR,
                )
            except (ChecksumMismatch, NotFound) as exc:
                # The holder's copy is missing or rotten: queue it as a bad copy (the
                # next pass replaces it) and try another holder.
                errors.append(f"{addr}: {exc}")
                await asyncio.to_thread(
                    self.queue.enqueue, e.path, f"bad copy on {nid[:8]}", time.time(), bad=nid
                )
                continue
            except (TransportError, SectorError) as exc:
                errors.append(f"{addr}: {exc}")
                continue
            want = {c.node_id for c in targets}
            stored = [(x[0], x[1]) for x in got if isinstance(x, list) and x and x[0] in want]
            self.counters["copies"] += len(stored)
            self.counters["bytes"] += r.size * len(stored)
            return stored
        raise Unavailable(f"no holder could copy {e.path}: {'; '.join(errors)}")

    async def _throttle(self, nbytes: int) -> None:
        """Pace copies to ``rate`` bytes/s, a whole file at a time.

        Per file rather than per chunk: the bytes move in a chain write we do not
        drive chunk by chunk, and with 2 repairs at a time the average is what matters.
        """
        if not self.rate or nbytes <= 0:
            return
        now = time.monotonic()
        start = max(now, self._next_slot)
        self._next_slot = start + nbytes / self.rate
        if start > now:
            await asyncio.sleep(start - now)
