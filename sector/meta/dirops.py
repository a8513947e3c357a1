"""Owner-side operations on directory records beyond ``service.py``'s own: an entry
removed (``remove_child``, also from the shadow a tombstone carries, records rule 7),
and the entries of many children removed in one update (``remove_children``), which a
recursive rm makes once per directory instead of once per child (issue 17).

They follow the service's rules through its ``Owner`` steps (``fileops.Owner``): read,
compute and stage with no await in between, then commit (durable on a majority of the
record's copies) before the answer. Only the changed entries travel to the replicas
(a delta), so the cost on the wire is the names removed, not the directory.
"""

from __future__ import annotations

from typing import Any

import msgspec

from sector.errors import BadRequest, NotADirectory, NotFound
from sector.meta import records as rec
from sector.meta.fileops import Owner
from sector.meta.records import DirRecord, FileRecord
from sector.meta.route import root_record

__all__ = ["MAX_NAMES", "add_child", "entry_delta", "remove_child", "remove_children"]

MAX_NAMES = 512  # entries in one remove_children (a frame of at most ~128 KiB of names)


def entry_delta(d: DirRecord, name: str) -> DirRecord:
    """The directory with only entry ``name``: merged into a full copy, it adds just that.

    Same attributes and version as ``d``, so the merge keeps the replica's attributes
    and joins the one entry; the cost stays O(1) on the wire however large ``d`` is.
    """
    return msgspec.structs.replace(d, children={name: d.children[name]})


async def add_child(svc: Owner, path: str, a: dict[str, Any]) -> Any:
    """``{name, kind[, at]}``: set this entry of the directory (``at``: a node linking a
    directory it made, at the directory's own stamp). ``{"v": the directory's version}``
    (``dirlinks`` keys on it). Only the entry is written, here and on the replicas."""
    name, kind = rec.check_name(_str(a, "name")), _str(a, "kind")
    async with svc.path_lock(path):
        d = await svc.read(path)
        if d is None and path == "/":
            d = root_record(svc.tick())
        if isinstance(d, FileRecord):
            raise NotADirectory(f"{path} is a file, not a directory")
        if not isinstance(d, DirRecord):
            raise NotFound(f"no such directory: {path}")
        at = rec.stamp_of(a["at"]) if "at" in a else svc.tick(d, name)
        new = rec.add_child(d, name, kind, at)
        staged = svc.stage(new, derived_from=d, changed=(name,))
    await svc.commit([staged], deltas=[entry_delta(new, name)])
    return {"v": list(d.v)}


def _str(a: dict[str, Any], name: str) -> str:
    v = a.get(name)
    if not isinstance(v, str):
        raise BadRequest(f"argument {name!r} must be a string")
    return v


def _names(obj: Any) -> list[str]:
    if (
        not isinstance(obj, list)
        or not 1 <= len(obj) <= MAX_NAMES
        or not all(isinstance(n, str) for n in obj)
    ):
        raise BadRequest(f"remove_children needs a list of 1 to {MAX_NAMES} names")
    return [rec.check_name(n) for n in dict.fromkeys(obj)]


async def remove_child(svc: Owner, path: str, a: dict[str, Any]) -> Any:
    """``{name}``: remove this entry of the directory (a "gone" entry stamped later than
    the one it buries); of a tombstone's shadow too, where an ``rm -r`` finishing on a
    child it had not seen buries it. A name not there changes nothing."""
    if not isinstance(n := a.get("name"), str):
        raise BadRequest("argument 'name' must be a string")
    name = rec.check_name(n)
    new: rec.Record
    delta: rec.Record
    async with svc.path_lock(path):
        d = await svc.read(path)
        if isinstance(d, DirRecord):
            if name not in d.children:
                return None
            dnew = rec.remove_child(d, name, svc.tick(d, name))
            new, delta = dnew, entry_delta(dnew, name)
        elif isinstance(d, rec.Gone) and name in d.shadow:
            svc.clock.observe(d.shadow[name].v)
            new = delta = rec.bury_shadow_entry(d, name, svc.tick(d))
        else:
            return None
        staged = svc.stage(new, derived_from=d, changed=(name,))
    await svc.commit([staged], deltas=[delta])
    return None


async def remove_children(svc: Owner, path: str, a: dict[str, Any]) -> Any:
    """``{names}``: remove these entries of the directory (each as ``remove_child``:
    a "gone" entry stamped later than the one it buries). Names it does not have, or
    a directory that is gone, change nothing. ``{"removed": n}``."""
    names = _names(a.get("names"))
    async with svc.path_lock(path):
        d = await svc.read(path)
        if not isinstance(d, DirRecord):
            return {"removed": 0}
        changed: dict[str, rec.Child] = {}
        for n in names:
            if n in d.children:
                # On a one-entry view: O(1) per name, not a copy of the directory each.
                one = msgspec.structs.replace(d, children={n: d.children[n]})
                changed[n] = rec.remove_child(one, n, svc.tick(d, n)).children[n]
        if not changed:
            return {"removed": 0}
        new = msgspec.structs.replace(d, children={**d.children, **changed})
        staged = svc.stage(new, derived_from=d, changed=changed)
    await svc.commit([staged], deltas=[msgspec.structs.replace(new, children=changed)])
    return {"removed": len(changed)}
