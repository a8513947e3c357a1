"""Every directory is listed by its parent: the namespace's one invariant that no single
record can keep (the directory's record and its entry in the parent have different
owners, and are written one after the other).

A ``mkdir -p`` (or a put's missing parents) makes a directory's record first, then
enters it into its parent. Two ways leave a directory made and not entered:

- the entry fails and the take-back fails too (both owners cut off): ``take_back``
  settles it in the background (``settle``): removed if still empty, else entered;
- the node doing it dies between the two steps (thrash: a SIGKILL): nothing is left
  to settle it. Another call then puts a file into it, or makes a directory in it,
  and its entry in its parent succeeds, since the record is there. So whoever enters
  something into a directory it did not make itself checks that the directory is
  listed, up the tree to one it knows to be (``listed``; a node caches what it
  checked, per directory version, so the check costs a look-up once per directory).

Unlisted, the directory and everything put into it would be out of reach of an
``rm -r`` of an ancestor, and its files would outlive a removal that was acknowledged.
One found unlisted is entered *at its own stamp*, the time it was made, not now: an
``rm -r`` of its parent that ran after it was made then finishes on it (records rule
7), and where an ancestor was already removed with its tree since, it is removed as
that ``rm -r`` would have removed it (and the call that found it fails: NotFound). A
parent missing otherwise (taken back meanwhile) is made again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Coroutine
from typing import Any, Protocol

from sector.errors import DirectoryNotEmpty, NotFound, SectorError
from sector.meta import records as rec
from sector.meta.records import DirRecord, FileRecord, Gone, Record
from sector.node import rmtree

log = logging.getLogger("sector.fs")

SETTLE_FIRST = 0.5  # seconds before a directory made and not entered is tried again
SETTLE_TRIES = 40  # ... and tries, backing off to 30 s: ~20 minutes
KNOWN = 100_000  # directories a node remembers as listed (path -> version)


class Meta(Protocol):
    async def get(self, path: str) -> Record | None: ...
    async def call(self, path: str, op: str, args: dict[str, Any] | None = None) -> Any: ...


class Node(Protocol):
    @property
    def meta(self) -> Meta: ...


class Namespace(rmtree.Namespace, Protocol):
    """What this needs of ``FsService``."""

    @property
    def node(self) -> Node: ...
    async def get(self, path: str) -> Record | None: ...
    async def ensure_dir(self, path: str, *, parents: bool, exist_ok: bool) -> None: ...
    def spawn(self, coro: Coroutine[Any, Any, None]) -> None: ...


class Links:
    def __init__(self, ns: Namespace) -> None:
        self.ns = ns
        self._known: OrderedDict[str, rec.Stamp] = OrderedDict()

    def known(self, d: str, v: rec.Stamp) -> None:
        """``d`` at version ``v`` is listed by its parent (it was just entered)."""
        self._known[d] = v
        self._known.move_to_end(d)
        while len(self._known) > KNOWN:
            self._known.popitem(last=False)

    async def listed(self, d: str, v: Any) -> None:
        """``d``, a directory at version ``v`` (as its owner said when an entry was
        added to it), and its ancestors are listed by their parents; one that is not
        is entered (the module doc)."""
        meta = self.ns.node.meta
        stamp: rec.Stamp | None = rec.stamp_of(v) if v is not None else None
        while d != "/" and stamp is not None:
            if self._known.get(d) == stamp:
                return
            par, name = rec.parent(d), rec.basename(d)
            p = await meta.get(par)
            entry = p.children.get(name) if isinstance(p, DirRecord) else None
            if entry is None or entry.kind != "dir":
                await self._enter(d, stamp)
            self.known(d, stamp)
            d, stamp = par, (p.v if isinstance(p, DirRecord) else None)

    async def _enter(self, d: str, v: rec.Stamp) -> None:
        par, name = rec.parent(d), rec.basename(d)
        args = {"name": name, "kind": "dir", "at": list(v)}
        try:
            await self.ns.node.meta.call(par, "add_child", args)
        except NotFound:
            if await self._removed_with_tree(d, v):
                log.warning("rm -r of an ancestor finished on %s, made while it ran", d)
                await rmtree.remove(self.ns, d, recursive=True)
                raise NotFound(f"{d} was removed (with an ancestor)") from None
            await self.ns.ensure_dir(par, parents=True, exist_ok=True)
            await self.ns.node.meta.call(par, "add_child", args)
        log.warning("%s was not listed in %s (made by a mkdir -p cut short): entered", d, par)

    async def _removed_with_tree(self, p: str, v: rec.Stamp) -> bool:
        """Whether an ancestor of ``p`` (up to its nearest live one) was removed with its
        tree after ``v``."""
        while p != "/":
            p = rec.parent(p)
            r = await self.ns.node.meta.get(p)
            if isinstance(r, Gone) and r.tree and r.v > v:
                return True
            if isinstance(r, DirRecord | FileRecord):
                return False
        return False

    # ------------------------------------------------------------------ take-back

    async def take_back(self, made: list[str], linked: list[str]) -> None:
        """Undo an ensure_dir that failed, deepest first: each directory it made goes,
        then its entry. One that is no longer empty (another call's mkdir -p or put
        used it meanwhile, taking it as made) stays, and so do its ancestors; it is
        entered if it was not. One that could be neither removed nor entered now (its
        owner or its parent's cut off) is settled in the background."""
        meta = self.ns.node.meta
        for p in made:  # in the order made: the deepest first
            par, name = rec.parent(p), rec.basename(p)
            try:
                await meta.call(p, "delete")
                if p in linked:
                    await meta.call(par, "remove_child", {"name": name})
            except DirectoryNotEmpty:
                if p not in linked and not await self.settle_once(p):
                    self.ns.spawn(self.settle(p))
            except SectorError:
                if p not in linked:
                    self.ns.spawn(self.settle(p))

    async def settle_once(self, p: str) -> bool:
        """One try at settling a directory this node made and did not enter: removed if
        still empty, else entered at its own stamp. True once settled (or gone)."""
        try:
            r = await self.ns.get(p)
            if not isinstance(r, DirRecord):
                return True
            with contextlib.suppress(DirectoryNotEmpty):
                await self.ns.node.meta.call(p, "delete")
                return True
            with contextlib.suppress(NotFound):  # removed with an ancestor: settled
                await self._enter(p, r.v)
            return True
        except SectorError as exc:
            log.info("settling %s, made and not entered: %s", p, exc)
            return False

    async def settle(self, p: str) -> None:
        delay = SETTLE_FIRST
        for _ in range(SETTLE_TRIES):
            await asyncio.sleep(delay)
            if await self.settle_once(p):
                return
            delay = min(delay * 2, 30.0)
        log.warning("%s: made by a mkdir -p that failed, left unlisted", p)
