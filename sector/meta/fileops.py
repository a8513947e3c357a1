"""Owner-side operations on file records used by repair (issue 3), kept out of
``service.py``: they follow its rules (read, compute and stage with no await between;
acknowledged after commit and replication) through the same ``path_lock``/``stage``/
``commit`` steps, which the service offers as ``Owner`` (so this module does not import
it).

Neither makes a new version of the file: they bump the record's ``rv`` (records rule
4a), so a repair or ``setrf`` that worked from a stale record loses to any overwrite or
delete made meanwhile, wherever it was made.

Both are compare-and-set on the blob: a repair works on one *version* of a file, and
if the file was overwritten, moved away or deleted while its copies were being made,
the update is a no-op (the new version has replicas of its own, or none are needed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import msgspec

from sector.errors import BadRequest, IsADirectory, NotFound
from sector.meta import records as rec
from sector.meta.records import FileRecord, Record


class Owner(Protocol):
    """The owner-side update steps of ``MetaService`` these operations use."""

    @property
    def clock(self) -> rec.Clock: ...
    @property
    def now(self) -> Callable[[], float]: ...
    def tick(self, after: Record | None = None, entry: str | None = None) -> rec.Stamp: ...
    def path_lock(self, path: str) -> asyncio.Lock: ...
    async def read(self, path: str) -> Record | None: ...
    def stage(
        self,
        r: Record,
        *,
        derived_from: Record | None = None,
        changed: Iterable[str] | None = None,
    ) -> Record: ...
    async def commit(self, staged: list[Record], *, deltas: list[Record] | None = ...) -> None: ...


MAX_REPLICAS = 32


def _replicas(obj: Any) -> list[tuple[str, str]]:
    if not isinstance(obj, list) or not obj or len(obj) > MAX_REPLICAS:
        raise BadRequest("replicas must be a non-empty list of [node id, address]")
    out: list[tuple[str, str]] = []
    for x in obj:
        if not (isinstance(x, list | tuple) and len(x) == 2 and all(isinstance(y, str) for y in x)):
            raise BadRequest("replicas must be [node id, address] pairs")
        if x[0] not in {n for n, _ in out}:
            out.append((x[0], x[1]))
    return out


def _rv_tick(svc: Owner, old: FileRecord) -> rec.Stamp:
    """A replica-list stamp later than the record's version and its current list."""
    if old.rv is not None:
        svc.clock.observe(old.rv)
    return svc.tick(old)


async def set_replicas(svc: Owner, path: str, a: dict[str, Any]) -> Any:
    """``{blob, replicas, expect?}``: replace the replica list of the current version.

    ``expect`` (the list the caller planned from) makes it a full compare-and-set: a
    concurrent repair of the same version (two nodes briefly both owners during churn)
    must not overwrite the other's result with a list missing its new copy.
    """
    blob = a.get("blob")
    if not isinstance(blob, str):
        raise BadRequest("set_replicas needs a blob id")
    new = _replicas(a.get("replicas"))
    expect = a.get("expect")
    async with svc.path_lock(path):
        old = await svc.read(path)
        if not isinstance(old, FileRecord) or old.blob != blob:
            return {"updated": False, "reason": "changed"}
        if expect is not None and [list(r) for r in old.replicas] != [list(r) for r in expect]:
            return {"updated": False, "reason": "raced"}
        # rv, not v (records rule 4a): a new list for this version, never a new version.
        staged = svc.stage(msgspec.structs.replace(old, replicas=new, rv=_rv_tick(svc, old)))
    await svc.commit([staged])
    return {"updated": True, "record": rec.to_builtins(staged)}


async def set_rf(svc: Owner, path: str, a: dict[str, Any]) -> Any:
    """``{rf, blob?}``: change a file's replica target (repair then adds or trims)."""
    rf = a.get("rf")
    if not isinstance(rf, int) or isinstance(rf, bool) or not 1 <= rf <= MAX_REPLICAS:
        raise BadRequest(f"rf must be an integer from 1 to {MAX_REPLICAS}")
    async with svc.path_lock(path):
        old = await svc.read(path)
        if not isinstance(old, FileRecord):
            if old is not None and not isinstance(old, rec.Gone):
                raise IsADirectory(f"{path} is a directory (set rf on its files)")
            raise NotFound(f"no such file: {path}")
        if a.get("blob") not in (None, old.blob):
            return {"updated": False, "reason": "changed"}
        staged = svc.stage(msgspec.structs.replace(old, rf=rf, rv=_rv_tick(svc, old)))
    await svc.commit([staged])
    return {"updated": True, "record": rec.to_builtins(staged)}
