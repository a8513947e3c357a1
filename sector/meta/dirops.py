"""Owner-side operations on directory records beyond ``service.py``'s own: one made
(``mkdir``), an entry set (``add_child``) or removed (``remove_child``, also from the
shadow a tombstone carries, records rule 7), and the entries of many children removed
in one update (``remove_children``), which a recursive rm makes once per directory
instead of once per child (issue 17).

They follow the service's rules through its ``Owner`` steps (``fileops.Owner``): read,
compute and stage with no await in between, then commit (durable on a majority of the
record's copies) before the answer. An entry change is staged as a delta (the
directory's attributes and the changed entries alone): it is what travels to the
replicas, what each merges (in place, in a large directory: ``service.stage``) and
what the store writes (``entries.py``), so a create costs the same in a directory of
a million entries as in an empty one.
"""

from __future__ import annotations

from typing import Any

import msgspec

from sector.errors import AlreadyExists, BadRequest, NotADirectory, NotFound
from sector.meta import records as rec
from sector.meta.fileops import Owner
from sector.meta.records import DirRecord, FileRecord
from sector.meta.route import root_record

__all__ = ["MAX_NAMES", "add_child", "mkdir", "remove_child", "remove_children"]

MAX_NAMES = 512  # entries in one remove_children (a frame of at most ~128 KiB of names)


async def mkdir(svc: Owner, path: str, a: dict[str, Any]) -> Any:
    """``{rf?}``: make the directory (over nothing or a tombstone, whose shadow entries
    it then holds). ``{"created": False}`` if it is one already."""
    async with svc.path_lock(path):
        old = await svc.read(path)
        if isinstance(old, DirRecord) or path == "/":
            return {"created": False}
        if isinstance(old, FileRecord):
            raise AlreadyExists(f"{path} exists and is a file")
        now, rf = svc.now(), a.get("rf", 0)
        rf = rf if isinstance(rf, int) else 0
        staged = svc.stage(DirRecord(path, svc.tick(old), rf=rf, ctime=now, mtime=now))
    await svc.commit([staged])
    return {"created": True}


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
        # The one entry, merged in (in place in a large directory: service.stage).
        delta = rec.entry(d, name, kind, at)
        staged = svc.stage(delta, changed=(name,))
    await svc.commit([staged], deltas=[delta])
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
    delta: rec.Record
    async with svc.path_lock(path):
        d = await svc.read(path)
        if isinstance(d, DirRecord):
            if name not in d.children:
                return None
            delta = rec.entry(d, name, "gone", svc.tick(d, name))
            staged = svc.stage(delta, changed=(name,))
        elif isinstance(d, rec.Gone) and name in d.shadow:
            svc.clock.observe(d.shadow[name].v)
            delta = rec.bury_shadow_entry(d, name, svc.tick(d))
            staged = svc.stage(delta, derived_from=d)
        else:
            return None
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
        delta = msgspec.structs.replace(d, children=changed)
        staged = svc.stage(delta, changed=changed)
    await svc.commit([staged], deltas=[delta])
    return {"removed": len(changed)}
