"""The collector: removes local blobs no file record claims (issue 3, part 3).

Orphans come from a writer killed between its upload and its commit, from a repair
whose record update lost a race, from a delete or overwrite whose ``blob.delete``
did not reach this node (it was down), and from copies trimmed while we were away.

Rules:
- Only blobs committed more than ``grace`` seconds ago are looked at: a put commits
  its record right after its blobs, a repair right after its copy.
- For each, the owner of the file's record is asked (``meta.get``, routed) and the
  pure ``inventory.verdict`` decides: the record's blob is this blob and lists this
  node -> keep; a tombstone, another blob, or a list without us -> collect. Deleting
  is only ever on the metadata's word, so a returning node's copies never bring a
  deleted file back, and its current copies are kept.
- "No record at all" is not trusted (a shard may still be filling after a restart):
  a blob is collected only when two passes at least ``confirm`` seconds apart agree
  it is unclaimed; any failure to ask keeps it. Nothing is collected during ``settle``
  seconds after start.
- A blob with no known path (written by an older node or client) is kept and counted
  as "unknown": nothing tells us which record could claim it.
- A rename adds the new path to the holders' inventories (``blob.alias``) before the
  record moves, so a moved file's blob is claimed by one of its paths; a holder that
  was down then still finds it, through the tombstone's ``moved`` pointer.
- Nothing is collected while the cluster is not whole (a member out of reach, or the
  ring not yet agreeing with the member view): the far side of a partition may hold
  the only record that still claims a blob. The pass is skipped and counted.
- A record stamped well before a copy was committed does not disown it at once (the
  copy may belong to a newer write not merged here yet): it is re-asked, as a miss is.
- Temp files of writes (``tmp/*.part``) untouched for ``grace`` seconds are removed:
  a live upload writes its file continuously.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Annotated, Any, Protocol

import msgspec

from sector.aio import Worker
from sector.errors import SectorError
from sector.ids import to_hex
from sector.meta import records as rec
from sector.meta.records import FileRecord, Gone, Record, kind_of
from sector.routing.chord import Peer
from sector.storage.blobs import BlobStore, check_blob_id
from sector.storage.inventory import COLLECT, KEEP, UNSURE, Inventory, Row, verdict
from sector.wire.messages import Request, typed

log = logging.getLogger("sector.gc")
MAX_MOVES = 16  # renames of a renamed file followed before giving up (keep the blob)


class Alias(Request, frozen=True):
    """blob.alias: the file of ``blob`` is being renamed to ``path`` (``confirm``: done)."""

    op = "blob.alias"
    path: Annotated[str, msgspec.Meta(pattern="^/", max_length=4096)]  # absolute
    blob: Any = None  # check_blob_id: "invalid blob id", whatever the type
    confirm: bool = False


class Records(Protocol):
    async def get(self, path: str) -> Record | None: ...


class GcHost(Protocol):
    """What the collector needs from its node: the local blobs and their inventory,
    the metadata to ask, and whether the cluster is whole."""

    blobs: BlobStore
    inventory: Inventory
    started: float

    @property
    def me(self) -> Peer: ...
    @property
    def meta(self) -> Records: ...
    def converged(self) -> bool: ...


class GcWorker(Worker):
    def __init__(self, node: GcHost, *, grace: float, interval: float, settle: float) -> None:
        super().__init__("gc", interval=interval, settle=settle)
        self.node = node
        self.grace = grace
        self.confirm = max(1.0, min(grace / 2, 60.0))
        self.counters = {
            "passes": 0,
            "checked": 0,
            "collected": 0,
            "collected_bytes": 0,
            "parts_removed": 0,
            "unknown": 0,
            "deferred": 0,
        }
        self._suspects: dict[str, float] = {}  # blob -> when first seen with no record
        self._lock = asyncio.Lock()

    def handlers(self) -> dict[str, Any]:
        return {"gc.now": self._h_now, "blob.alias": self._h_alias}

    def status(self) -> dict[str, Any]:
        return {**super().status(), **self.counters, "grace": self.grace}

    async def _h_now(self, a: dict[str, Any]) -> Any:
        await self.run_pass()
        return self.status()

    @typed(Alias)
    async def _h_alias(self, req: Alias) -> Any:
        """``{blob, path}``: the file of this blob is being renamed to ``path``.
        ``{blob, path, confirm: true}``: the rename is done, ``path`` (already an alias)
        becomes the blob's only path."""
        blob = check_blob_id(req.blob)
        path = rec.normalize(req.path)
        inv = self.node.inventory
        if req.confirm:
            return await asyncio.to_thread(inv.confirm_alias, blob, path)
        return await asyncio.to_thread(inv.add_alias, blob, path)

    async def work(self) -> None:
        await self.run_pass()

    async def run_pass(self) -> None:
        async with self._lock:
            self.state = "collecting"
            try:
                await self._pass()
                self.counters["passes"] += 1
            finally:
                self.state = "idle"

    async def _pass(self) -> None:
        now = time.time()
        if now - self.node.started < self.settle:
            return
        if not self.node.converged():
            # A blob is deleted only when no record on any side can still name it: with
            # a member out of reach (a partition, or a node down) or the ring not yet
            # agreeing with the members, the records we can ask are not all there are.
            self.counters["deferred"] += 1
            return
        self.counters["parts_removed"] += await asyncio.to_thread(self._sweep_parts, now)
        rows = await asyncio.to_thread(self._rows, now)
        unknown = 0
        seen: set[str] = set()
        for row in rows:
            if row.committed_at > now - self.grace:
                continue
            seen.add(row.blob)
            paths = await asyncio.to_thread(self.node.inventory.paths, row.blob)
            if not paths:
                unknown += 1
                continue
            self.counters["checked"] += 1
            v = await self._ask(row.blob, paths, row.committed_at)
            if v == KEEP or v is None:
                self._suspects.pop(row.blob, None)
                continue
            if v == UNSURE:
                first = self._suspects.setdefault(row.blob, now)
                if now - first < self.confirm:
                    continue
            log.info("collecting blob %s (%s): no record claims it here", row.blob, paths[0])
            if await asyncio.to_thread(self.node.blobs.delete, row.blob):
                self.counters["collected"] += 1
                self.counters["collected_bytes"] += row.size
            self._suspects.pop(row.blob, None)
        self.counters["unknown"] = unknown
        for b in list(self._suspects):
            if b not in seen:
                del self._suspects[b]

    def _rows(self, now: float) -> list[Row]:
        self.node.inventory.reconcile(self.node.blobs.sizes(), now)
        return self.node.inventory.rows()

    async def _ask(self, blob: str, paths: list[str], committed_at: float) -> str | None:
        """KEEP, COLLECT or UNSURE over every path of the blob; None if a question failed."""
        me = to_hex(self.node.me.id)
        answers = []
        for first in paths:
            p = first
            try:
                r = await self.node.meta.get(p)
                # A renamed file's tombstone names where it went: follow it, so a copy
                # whose holder missed the rename (it was down) is still claimed.
                for _ in range(MAX_MOVES):
                    if not (isinstance(r, Gone) and r.moved):
                        break
                    p = r.moved
                    r = await self.node.meta.get(p)
            except SectorError as exc:
                self.last_error = f"{p}: {exc}"
                return None  # cannot ask: keep it
            if isinstance(r, Gone) and r.moved:
                return None  # a longer chain of renames than we follow: keep it
            holders = [nid for nid, _ in r.replicas] if isinstance(r, FileRecord) else []
            rblob = r.blob if isinstance(r, FileRecord) else None
            v = verdict(kind_of(r) if r is not None else None, rblob, holders, blob, me)
            if v == COLLECT and r is not None and r.v[0] < committed_at * 1000 - self.grace * 1000:
                # A record older than the copy cannot be the word that disowns it: the
                # copy may be of a later write this view has not caught up with yet (a
                # partition just healed). Ask again after ``confirm``, as for a miss.
                v = UNSURE
            if v == KEEP:
                if len(paths) > 1 or p != paths[0]:
                    await asyncio.to_thread(self.node.inventory.confirm_path, blob, p)
                return KEEP
            answers.append(v)
        return UNSURE if UNSURE in answers else COLLECT

    def _sweep_parts(self, now: float) -> int:
        n = 0
        for p in self.node.blobs.tmp_dir.glob("*.part"):
            with contextlib.suppress(OSError):
                if p.stat().st_mtime < now - self.grace:
                    p.unlink()
                    n += 1
        return n
