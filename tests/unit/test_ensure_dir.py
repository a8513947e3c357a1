"""``FsService.ensure_dir`` (mkdir -p, and a put's missing parents) links every level
it enters up to one that was already listed: a directory that another call made and
failed to link is linked by the next call that uses it (thrash found a subtree under
such a directory outlive an ``rm -r`` of its tree)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from sector.errors import NotFound
from sector.meta import records as rec
from sector.node.fs import FsService


class Owners:
    """The owners' mkdir and add_child rules over a dict: path -> entries (None: a
    file)."""

    def __init__(self, dirs: dict[str, set[str]]) -> None:
        self.dirs = dirs
        self.writes: list[tuple[str, str]] = []

    async def call(self, path: str, op: str, args: dict[str, Any] | None = None) -> Any:
        a = args or {}
        if op == "mkdir":
            if path in self.dirs:
                return {"created": False}
            self.dirs[path] = set()
            self.writes.append(("mkdir", path))
            return {"created": True}
        if op == "add_child":
            if path not in self.dirs:
                raise NotFound(path)
            if a["name"] in self.dirs[path]:
                return {"existed": True}
            self.dirs[path].add(a["name"])
            self.writes.append(("add_child", rec.join(path, a["name"])))
            return {"existed": False}
        raise AssertionError(op)


def ensure(owners: Owners, path: str) -> None:
    fs = FsService.__new__(FsService)
    fs.node = SimpleNamespace(meta=owners)
    asyncio.run(fs.ensure_dir(path, parents=True, exist_ok=True))


def listed(owners: Owners, path: str) -> bool:
    """Whether every level of path is an entry of its parent, up to "/"."""
    while path != "/":
        if rec.basename(path) not in owners.dirs.get(rec.parent(path), set()):
            return False
        path = rec.parent(path)
    return True


def test_a_level_made_but_never_linked_by_another_call_is_linked() -> None:
    # /t/s2 exists (a racing mkdir -p made it, then failed to enter it into /t).
    owners = Owners({"/": {"t"}, "/t": set(), "/t/s2": set()})
    ensure(owners, "/t/s2/x0")
    assert listed(owners, "/t/s2/x0")
    assert ("add_child", "/t/s2") in owners.writes


def test_linking_stops_at_the_first_entry_already_there_and_writes_nothing_more() -> None:
    owners = Owners({"/": {"t"}, "/t": {"a"}, "/t/a": set()})
    ensure(owners, "/t/a/b/c")
    assert listed(owners, "/t/a/b/c")
    # b and c made and entered; a's entry in /t was there: no write above it.
    assert owners.writes == [
        ("mkdir", "/t/a/b/c"),
        ("mkdir", "/t/a/b"),
        ("add_child", "/t/a/b"),
        ("add_child", "/t/a/b/c"),
    ]
    before = list(owners.writes)
    ensure(owners, "/t/a/b/c")  # all there: reads only
    assert owners.writes == before
