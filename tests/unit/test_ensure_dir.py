"""``FsService.ensure_dir`` (mkdir -p, and a put's missing parents) takes back what it
made when it fails, and a directory it cannot take back because another call used it
meanwhile is linked into its parent rather than left out of the listing (an rm -r of
an ancestor would never see it, and its files would outlive their removal)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from sector.errors import DirectoryNotEmpty, NotFound, SectorError, Unavailable
from sector.meta import records as rec
from sector.node.fs import FsService


class Owners:
    """The owners' mkdir, add_child, remove_child and delete rules over a dict:
    path -> entries. ``fail_links`` adding an entry to them fails once each (a cut)."""

    def __init__(self, dirs: dict[str, set[str]], fail_links: set[str]) -> None:
        self.dirs = dirs
        self.fail_links = fail_links
        self.used: set[str] = set()  # directories another call puts into meanwhile

    async def call(self, path: str, op: str, args: dict[str, Any] | None = None) -> Any:
        a = args or {}
        if op == "mkdir":
            if path in self.dirs:
                return {"created": False}
            self.dirs[path] = set()
            return {"created": True}
        if op == "add_child":
            child = rec.join(path, a["name"])
            if child in self.fail_links:
                self.fail_links.discard(child)
                for d in self.used:  # another call's put lands in it meanwhile
                    self.dirs[d].add("f")
                raise Unavailable(f"cut off adding {child}")
            if path not in self.dirs:
                raise NotFound(path)
            self.dirs[path].add(a["name"])
            return None
        if op == "delete":
            if self.dirs[path]:
                raise DirectoryNotEmpty(path)
            del self.dirs[path]
            return {"old": None}
        if op == "remove_child":
            self.dirs.get(path, set()).discard(a["name"])
            return None
        raise AssertionError(op)


def ensure(owners: Owners, path: str) -> None:
    fs = FsService.__new__(FsService)
    fs.node = SimpleNamespace(meta=owners)
    asyncio.run(fs.ensure_dir(path, parents=True, exist_ok=True))


def test_a_failed_mkdir_p_takes_back_every_directory_it_made() -> None:
    owners = Owners({"/": {"t"}, "/t": set()}, fail_links={"/t/a"})
    with pytest.raises(SectorError):
        ensure(owners, "/t/a/b")
    assert owners.dirs == {"/": {"t"}, "/t": set()}


def test_a_made_directory_another_call_used_is_linked_not_left_unlisted() -> None:
    # mkdir -p /t/a/b makes b and a, fails to enter a into /t (a cut); meanwhile a put
    # into /t/a/b (another call, which found both made) lands: a and b stay, listed.
    owners = Owners({"/": {"t"}, "/t": set()}, fail_links={"/t/a"})
    owners.used = {"/t/a/b"}
    with pytest.raises(SectorError):
        ensure(owners, "/t/a/b")
    assert owners.dirs["/t/a/b"] == {"f"}
    assert owners.dirs["/t/a"] == {"b"}
    assert owners.dirs["/t"] == {"a"}  # linked by the take-back, once the cut healed
