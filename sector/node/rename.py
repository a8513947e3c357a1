"""``mv`` of one file on the entry node (``fs.mv``; a directory's move is ``fs.py``'s,
a file at a time through here).

A rename is not one transaction: the file's record and its new name belong to other
owners than the old ones. The steps, and why each is where it is:

1. The holders learn the new path as an alias of the blob (``blob.alias``), so that a
   delete of the old path's version spares the bytes the new name is about to claim
   (``blob.delete`` with a path keeps a blob another path claims). A holder answers
   whether it has the blob: if every holder that answers says no, the version read
   is gone (the old path was overwritten or removed after it was read: a stale read
   in a ring that has not converged, or a race) and the move fails before anything
   is written. Thrash's partition run found a rename that went on and made the new
   name point at a blob its overwrite had already deleted.
2. The new record (``put_file``) and its directory entry.
3. The old record goes, but only if it is still that version (``delete`` with
   ``blob``). If it is not (overwritten or removed meanwhile), the move did not
   happen: the new record is taken back -- the file it replaced is put back, or the
   name removed -- and the move fails, so no name ever shows a version that a later
   write had already replaced.
4. The holders make the new path the blob's only one; a replaced file's copies go.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Coroutine
from typing import Any, Protocol

from sector.errors import AlreadyExists, NotFound, SectorError
from sector.meta import records as rec
from sector.meta.records import FileRecord, Record


class Meta(Protocol):
    async def call(self, path: str, op: str, args: dict[str, Any] | None = None) -> Any: ...


class Mover(Protocol):
    """What a file's move needs of ``FsService``."""

    @property
    def meta(self) -> Meta: ...
    async def gather(self, coros: list[Any]) -> list[Any]: ...
    def alias(
        self, addr: str, blob: str, path: str, *, confirm: bool = False
    ) -> Coroutine[Any, Any, bool | None]: ...
    def spawn_delete(self, r: Record | None, keep: str | None = None) -> None: ...
    async def listed(self, d: str, added: Any) -> None: ...


def renamed(r: FileRecord, path: str) -> FileRecord:
    """``r`` under another name: a new record there (its owner gives the version)."""
    return FileRecord(
        path=path,
        v=(0, 0, ""),
        size=r.size,
        checksum=r.checksum,
        blob=r.blob,
        replicas=r.replicas,
        rf=r.rf,
        owner=r.owner,
        mode=r.mode,
        ctime=r.ctime,
        mtime=time.time(),
        piece_size=r.piece_size,
        pieces=r.pieces,
    )


async def move_file(fs: Mover, r: FileRecord, dst: str) -> None:
    """Steps 1-4 of the module doc; raises AlreadyExists / NotFound if ``r`` is not the
    old path's version any more (nothing is left changed then)."""
    src = r.path
    # 1. (best effort: an unreachable holder answers None)
    seen = await fs.gather([fs.alias(addr, r.blob, dst) for _nid, addr in r.replicas])
    if True not in seen and False in seen:
        raise AlreadyExists(f"{src} changed while it was being moved (its data is gone)")
    # 2.
    res = await fs.meta.call(dst, "put_file", {"record": rec.to_builtins(renamed(r, dst))})
    old = rec.from_builtins(res["old"]) if res.get("old") else None
    added = await fs.meta.call(
        dst_dir := rec.parent(dst), "add_child", {"name": rec.basename(dst), "kind": "file"}
    )
    await fs.listed(dst_dir, added)
    # 3.
    try:
        await fs.meta.call(src, "delete", {"blob": r.blob, "moved_to": dst})
    except (AlreadyExists, NotFound) as exc:
        await _take_back(fs, r, dst, old)
        raise type(exc)(f"{src} changed while it was being moved") from None
    # 4. Removing the moved file now deletes its copies at once (the collector would
    # do the same for a holder that missed this, after its grace).
    await fs.gather([fs.alias(addr, r.blob, dst, confirm=True) for _nid, addr in r.replicas])
    if isinstance(old, FileRecord) and old.blob != r.blob:
        fs.spawn_delete(old, keep=r.blob)


async def _take_back(fs: Mover, r: FileRecord, dst: str, old: Record | None) -> None:
    """Undo step 2 (best effort: a failure here leaves the new name with a version whose
    bytes the alias keeps, which a later write or rm replaces)."""
    with contextlib.suppress(SectorError):
        if isinstance(old, FileRecord):
            await fs.meta.call(dst, "put_file", {"record": rec.to_builtins(renamed(old, dst))})
            return
        await fs.meta.call(dst, "delete", {"blob": r.blob})
        await fs.meta.call(rec.parent(dst), "remove_child", {"name": rec.basename(dst)})
