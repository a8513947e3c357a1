"""``FsService.ensure_dir`` (mkdir -p, and a put's missing parents) takes back what it
made when it fails, and a directory it cannot take back because another call used it
meanwhile is linked into its parent rather than left out of the listing (an rm -r of
an ancestor would never see it, and its files would outlive their removal). One that
can be neither removed nor linked at the time (its owner cut off too: thrash found a
put -r's files come back after an rm -r that way) is settled in the background: linked
at its own stamp once the cut heals, or, if its parent was removed with its tree
meanwhile, removed as that rm -r would have removed it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from sector.errors import DirectoryNotEmpty, NotFound, SectorError, Unavailable
from sector.meta import records as rec
from sector.meta.records import DirRecord, Gone
from sector.node import dirlinks, rmtree
from sector.node.fs import FsService


class Owners:
    """The owners' mkdir, add_child, remove_child and delete rules over a dict:
    path -> entries. ``fail_links`` adding an entry to them fails once each (a cut)."""

    def __init__(
        self, dirs: dict[str, set[str]], fail_links: set[str], fail_deletes: int = 0
    ) -> None:
        self.dirs = dirs
        self.fail_links = fail_links
        self.fail_deletes = fail_deletes  # deletes that fail (a cut) before one works
        self.used: set[str] = set()  # directories another call puts into meanwhile
        self.stamps: dict[str, rec.Stamp] = {}  # path -> its record's v
        self.gone: dict[str, Gone] = {}  # tombstones
        self.links: list[tuple[str, str, Any]] = []  # (dir, name, at) of each entry added

    async def get(self, path: str, *, brief: bool = False) -> Any:
        if path in self.gone:
            return self.gone[path]
        if path not in self.dirs:
            return None
        kids = {
            n: rec.Child((1, 0, "n"), "dir" if rec.join(path, n) in self.dirs else "file")
            for n in self.dirs[path]
        }
        return DirRecord(path=path, v=self.stamps.get(path, (1, 0, "n")), children=kids)

    async def call(self, path: str, op: str, args: dict[str, Any] | None = None) -> Any:
        a = args or {}
        if op == "mkdir":
            if path in self.dirs:
                return {"created": False}
            self.dirs[path] = set()
            self.stamps[path] = (100 + len(self.stamps), 0, "n")
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
            self.links.append((path, a["name"], a.get("at")))
            return {"v": list(self.stamps.get(path, (1, 0, "n")))}
        if op == "delete":
            if self.fail_deletes:
                self.fail_deletes -= 1
                raise Unavailable(f"cut off removing {path}")
            if self.dirs[path]:
                raise DirectoryNotEmpty(path)
            del self.dirs[path]
            return {"old": None}
        if op == "remove_child":
            self.dirs.get(path, set()).discard(a["name"])
            return None
        raise AssertionError(op)


def service(owners: Owners) -> FsService:
    fs = FsService.__new__(FsService)
    fs.node = SimpleNamespace(meta=owners)
    fs._bg = set()
    fs.links = dirlinks.Links(fs)
    return fs


def ensure(owners: Owners, path: str, meanwhile: Any = None, fs: FsService | None = None) -> None:
    """mkdir -p ``path``, then ``meanwhile()`` (what happens before the background
    settling runs), then the settling to its end."""

    ns = fs or service(owners)

    async def run() -> None:
        try:
            await ns.ensure_dir(path, parents=True, exist_ok=True)
        finally:
            if meanwhile is not None:
                meanwhile()
            while ns._bg:
                await asyncio.gather(*ns._bg)

    asyncio.run(run())


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


def test_a_made_directory_neither_removed_nor_linked_is_linked_at_its_own_stamp_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As above, and the take-back's delete of b fails too (its owner is cut off as
    # well): b stays, unlisted, while the put into it is acknowledged, and a, empty,
    # is taken back. Once the cut heals b is linked, at the stamp its record was made
    # with, into a made again.
    monkeypatch.setattr(dirlinks, "SETTLE_FIRST", 0.01)
    owners = Owners({"/": {"t"}, "/t": set()}, fail_links={"/t/a"}, fail_deletes=1)
    owners.used = {"/t/a/b"}
    with pytest.raises(SectorError):
        ensure(owners, "/t/a/b")
    assert owners.dirs["/t/a/b"] == {"f"}
    assert owners.dirs["/t/a"] == {"b"}
    assert owners.dirs["/t"] == {"a"}
    assert ("/t/a", "b", list(owners.stamps["/t/a/b"])) in owners.links


def test_an_unlinked_made_directory_goes_with_a_parent_removed_with_its_tree_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As above, but before the cut heals an rm -r of /t runs (it cannot see b, nor a,
    # which the take-back removed as empty): the settling of b finds its parent
    # missing and /t a tree tombstone newer than b, and removes b's tree, as that
    # rm -r would have; /t is not made again.
    monkeypatch.setattr(dirlinks, "SETTLE_FIRST", 0.01)
    removed: list[str] = []

    async def remove(ns: Any, path: str, *, recursive: bool) -> int:
        assert recursive
        removed.append(path)
        return 1

    monkeypatch.setattr(rmtree, "remove", remove)
    owners = Owners({"/": {"t"}, "/t": set()}, fail_links={"/t/a"}, fail_deletes=1)
    owners.used = {"/t/a/b"}

    def rm_r_of_t() -> None:
        del owners.dirs["/t"]
        owners.gone["/t"] = Gone(path="/t", v=(10**6, 0, "n"), tree=True)

    with pytest.raises(SectorError):
        ensure(owners, "/t/a/b", meanwhile=rm_r_of_t)
    assert removed == ["/t/a/b"]
    assert "/t" not in owners.dirs


def test_a_made_directory_left_empty_is_removed_once_the_cut_heals(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dirlinks, "SETTLE_FIRST", 0.01)
    owners = Owners({"/": {"t"}, "/t": set()}, fail_links={"/t/a"}, fail_deletes=2)
    with pytest.raises(SectorError):
        ensure(owners, "/t/a")
    assert owners.dirs == {"/": {"t"}, "/t": set()}


def test_a_directory_made_and_never_entered_is_entered_by_the_next_call_into_it() -> None:
    # The node making /t/a was killed between its two steps: a's record is there, /t
    # does not list it. A mkdir -p into a (as a put into it) enters it, at a's stamp.
    owners = Owners({"/": {"t"}, "/t": set(), "/t/a": set()}, fail_links=set())
    owners.stamps["/t/a"] = (7, 0, "dead")
    fs = service(owners)
    ensure(owners, "/t/a/b", fs=fs)
    assert owners.dirs["/t/a"] == {"b"}
    assert owners.dirs["/t"] == {"a"}
    assert ("/t", "a", [7, 0, "dead"]) in owners.links
    # Known listed now: the next call into a looks nothing up.
    before = len(owners.links)
    ensure(owners, "/t/a/c", fs=fs)
    assert owners.links[before:] == [("/t/a", "c", None)]


def test_a_call_into_a_directory_whose_ancestor_was_removed_with_its_tree_fails_and_it_goes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    removed: list[str] = []

    async def remove(ns: Any, path: str, *, recursive: bool) -> int:
        removed.append(path)
        return 1

    monkeypatch.setattr(rmtree, "remove", remove)
    # An rm -r of /t ran after /t/a was made, and did not see it (never entered).
    owners = Owners({"/": set(), "/t/a": set()}, fail_links=set())
    owners.stamps["/t/a"] = (7, 0, "dead")
    owners.gone["/t"] = Gone(path="/t", v=(9, 0, "n"), tree=True)
    with pytest.raises(NotFound):
        ensure(owners, "/t/a/b")
    assert removed == ["/t/a"]
    assert "/t" not in owners.dirs
