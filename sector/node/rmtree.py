"""``rm`` and ``rm -r`` on the entry node (``fs.rm``; the order of steps is ``fs.py``'s:
the record becomes a tombstone, then the parent's entry goes, then the blobs).

A recursive rm works a directory at a time (issue 17): each child is removed on its
own (``FANOUT`` at once), then their entries leave the directory in one update
(``remove_children``, at most ``MAX_NAMES`` names each) rather than one update of the
directory per child, which all waited in turn on that directory's owner; then the
directory itself goes. A child its entry says is a file is deleted at once, with no
look-up first (the delete answers with the record it removed, whose blobs then go);
one that turns out to be a directory is removed as one.

A crash part way leaves the directory with entries of children already gone: a
later ``rm -r`` (or a look-up that misses, see ``remove``) drops them.

A child the removal could not see (its entry was acknowledged on copies that a kill and
a partition at once put out of reach) turns up later, when those copies merge with the
tombstone: the removal is finished on it then (``finish``, records rule 7).

The blobs of removed file versions go to their holders through a ``Reaper``: one
``blob.delete`` per holder for many files (best effort, as before: what a holder
misses, its collector takes after its grace, on the metadata's word).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from sector.errors import DirectoryNotEmpty, NotFound, SectorError
from sector.meta import records as rec
from sector.meta.dirops import MAX_NAMES
from sector.meta.records import DirRecord, FileRecord, Record
from sector.storage.messages import MAX_DELETE, Delete
from sector.wire.messages import to_args

log = logging.getLogger("sector.fs")


class Namespace(Protocol):
    """What a removal needs of ``FsService``."""

    async def must_get(self, path: str) -> FileRecord | DirRecord: ...
    async def call(self, path: str, op: str, args: dict[str, Any] | None = None) -> Any: ...
    async def gather(self, coros: list[Awaitable[Any]]) -> list[Any]: ...
    def spawn_delete(self, r: Record | None) -> None: ...


async def remove(ns: Namespace, path: str, *, recursive: bool) -> int:
    """Remove ``path`` (with everything under it if ``recursive``) and its entry in its
    parent; how many entries went."""
    try:
        r = await ns.must_get(path)
    except NotFound:
        # A dangling entry (a crash between the two steps of an earlier rm) would
        # keep the parent "not empty" for ever: drop it, then report the miss.
        await ns.call(rec.parent(path), "remove_child", {"name": rec.basename(path)})
        raise
    n = await _remove(ns, r, recursive=recursive)
    await ns.call(rec.parent(path), "remove_child", {"name": rec.basename(path)})
    return n


async def _remove(ns: Namespace, r: FileRecord | DirRecord, *, recursive: bool) -> int:
    """``r``'s record (and its tree) removed; its entry in its parent is left."""
    count = 0
    if isinstance(r, DirRecord) and recursive:
        kids = rec.live_children(r)
        done = await ns.gather([_child(ns, rec.join(r.path, n), k) for n, k in kids.items()])
        count += sum(done)
        names = list(kids)
        for i in range(0, len(names), MAX_NAMES):
            await ns.call(r.path, "remove_children", {"names": names[i : i + MAX_NAMES]})
    # A directory removed with its tree says so (records rule 7): should a copy that
    # lists a child this removal did not see turn up later, the removal finishes on it.
    tree = {"tree": True} if isinstance(r, DirRecord) and recursive else None
    _delete(ns, r.path, await ns.call(r.path, "delete", tree))
    return count + 1


async def finish(ns: Namespace, path: str) -> int:
    """An ``rm -r`` of ``path`` finished on the children it did not see (records rule 7:
    a copy listing them was out of reach when it ran, and merged in since): each one's
    tree goes, then its entry in the tombstone's shadow; how many entries went."""
    found = await ns.call(path, "get")
    r = rec.from_builtins(found) if found else None
    count = 0
    for name, kind in (rec.unseen_children(r) if r is not None else {}).items():
        count += await _child(ns, rec.join(path, name), kind)
        await ns.call(path, "remove_child", {"name": name})
        log.warning("rm -r of %s finished on %s, a child it had not seen", path, name)
    return count


async def _child(ns: Namespace, path: str, kind: str) -> int:
    """One child of a directory being removed (its entry is the caller's); 0 if it was
    gone already.

    "Gone" is asked of every copy, not only of the owner: a new owner may not hold every
    record yet, and dropping the entry of a child that exists would leave its subtree
    behind, unlisted (thrash found one come back). A delete checks a miss with the
    copies itself; a look-up says ``merge`` (a fan-out only on a miss)."""
    if kind == "file":
        try:
            _delete(ns, path, await ns.call(path, "delete"))
            return 1
        except DirectoryNotEmpty:
            pass  # a directory after all (the entry was older): remove it as one
        except NotFound:
            return 0
    found = await ns.call(path, "get", {"merge": True})
    r = rec.from_builtins(found) if found else None
    if not isinstance(r, FileRecord | DirRecord):
        return 0
    try:
        return await _remove(ns, r, recursive=True)
    except NotFound:
        return 0


def _delete(ns: Namespace, path: str, res: Any) -> None:
    """A delete's answer: the blobs of the file version it removed go (best effort)."""
    old = rec.from_builtins(res["old"]) if res and res.get("old") else None
    if isinstance(old, FileRecord):
        log.info("rm of %s: deleting blob %s (v %s)", path, old.blob, old.v)
    elif res and res.get("repeat"):
        # The first attempt removed it (its answer was lost): which blob it freed is
        # not known here, and the collector takes the unclaimed copies.
        log.info("rm of %s: done by an earlier attempt of this delete", path)
    ns.spawn_delete(old)


class Reaper:
    """``blob.delete`` to each holder in batches: (blob, path) pairs are queued per
    holder, and one task per holder sends what has queued as soon as its previous
    request is answered (so under a burst of removals one request carries many, and a
    lone removal goes at once)."""

    def __init__(
        self,
        call: Callable[..., Awaitable[Any]],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self._call = call
        self._spawn = spawn
        self._queued: dict[str, list[tuple[str, str]]] = {}
        self._busy: set[str] = set()

    def add(self, addr: str, blob: str, path: str) -> None:
        self._queued.setdefault(addr, []).append((blob, path))
        if addr not in self._busy:
            self._busy.add(addr)
            self._spawn(self._drain(addr))

    async def _drain(self, addr: str) -> None:
        try:
            # No await between the last pop that finds nothing and the discard: an add
            # never finds this holder busy with no task left to send its blob.
            while batch := self._queued.pop(addr, None):
                for i in range(0, len(batch), MAX_DELETE):
                    part = batch[i : i + MAX_DELETE]
                    req = Delete(blobs=[b for b, _ in part], paths=[p for _, p in part])
                    with contextlib.suppress(SectorError, OSError):
                        await self._call(addr, "blob.delete", to_args(req), timeout=10.0)
        finally:
            self._busy.discard(addr)


__all__ = ["Namespace", "Reaper", "finish", "remove"]
