"""Records rule 7: an ``rm -r`` finishes on a child it did not see.

Thrash found files of a removed tree come back: the entry of a subdirectory was
acknowledged on two of its directory's three copies, a kill and a partition put both
out of reach, and the ``rm -r`` ran on the third copy, which did not list it. When the
copies merged again the tombstone carried the entry, live, in its shadow, and the
subtree lived on unlisted. The tombstone of a removed tree now says so (``Gone.tree``),
and its owner removes such a child's tree when a merge shows one.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from test_meta_service import OneNodeRing

from sector.errors import NotFound
from sector.meta import records as rec
from sector.meta.records import Child, DirRecord, FileRecord, Gone
from sector.meta.service import MetaService
from sector.meta.store import MetaStore
from sector.node.rmtree import finish


def _dir(path: str, v: rec.Stamp, **kids: tuple[rec.Stamp, str]) -> DirRecord:
    return DirRecord(path=path, v=v, children={n: Child(s, k) for n, (s, k) in kids.items()})


def test_a_live_entry_older_than_a_tree_removal_is_unseen_and_only_then() -> None:
    old = _dir("/t/a", (1, 0, "n"), x=((5, 0, "n"), "dir"), f=((6, 0, "n"), "gone"))
    tree = Gone(path="/t/a", v=(10, 0, "m"), tree=True)
    merged = rec.merge(tree, old)
    assert merged == rec.merge(old, tree)  # still a join
    assert isinstance(merged, Gone) and rec.unseen_children(merged) == {"x": "dir"}
    # An rmdir (not a tree removal) keeps rule 6: the entry waits for the directory.
    assert rec.unseen_children(rec.merge(Gone(path="/t/a", v=(10, 0, "m")), old)) == {}
    # A create *after* the removal raced it: it stays (rule 6), it is not finished on.
    late = _dir("/t/a", (1, 0, "n"), y=((11, 0, "n"), "file"))
    assert rec.unseen_children(rec.merge(tree, late)) == {}
    # Buried, the entry is no longer unseen, and an old copy merged again changes nothing.
    buried = rec.bury_shadow_entry(merged, "x", (12, 0, "m"))
    assert rec.unseen_children(buried) == {}
    assert rec.unseen_children(rec.merge(buried, old)) == {}
    assert rec.bury_shadow_entry(buried, "nope", (13, 0, "m")) is buried
    # The flag survives the wire and the disk.
    assert rec.decode(rec.encode(tree)) == tree
    assert rec.from_builtins(rec.to_builtins(tree)) == tree


def test_the_owner_is_told_when_a_merge_shows_a_child_an_rm_r_did_not_see(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        m = MetaService(MetaStore(str(tmp_path / "m.db")), OneNodeRing(), now=lambda: 1_000.0)
        told: list[str] = []
        m.on_unseen = told.append
        await m.start()
        await m.local("mkdir", "/a", {})
        await m.local("mkdir", "/b", {})
        await m.local("delete", "/a", {"tree": True})
        await m.local("delete", "/b", {})  # an rmdir
        ga, gb = m.store.get("/a"), m.store.get("/b")
        assert isinstance(ga, Gone) and ga.tree and isinstance(gb, Gone) and not gb.tree
        # A copy that lists a child at a stamp before the removals comes back (handoff).
        before = (ga.v[0] - 1, 0, "other")
        copies = [_dir(p, (0, 0, "o"), x=(before, "dir")) for p in ("/a", "/b")]
        await m._h_replicate({"records": [rec.to_builtins(c) for c in copies]})
        assert told == ["/a"]
        a = m.store.get("/a")
        assert isinstance(a, Gone) and rec.unseen_children(a) == {"x": "dir"}
        # The finisher buries the entry once the child's tree is gone: told no more.
        await m.local("remove_child", "/a", {"name": "x"})
        a = m.store.get("/a")
        assert isinstance(a, Gone) and a.tree and rec.unseen_children(a) == {}
        await m._h_replicate({"records": [rec.to_builtins(copies[0])]})
        assert told == ["/a"]
        await m.stop()
        m.store.close()

    asyncio.run(main())


def test_finish_removes_the_unseen_childs_tree_then_buries_its_entry() -> None:
    """``rmtree.finish``: each unseen child goes with everything under it (asking every
    copy, as rm -r does), then its shadow entry; an entry it did see is left alone."""
    v0, v1 = (1, 0, "n"), (9, 0, "n")
    f = FileRecord(path="/t/a/x/f", v=v0, size=1, checksum="c", blob="b" * 32, replicas=[], rf=1)
    records: dict[str, Any] = {
        "/t/a": Gone(
            path="/t/a",
            v=v1,
            tree=True,
            shadow={"x": Child(v0, "dir"), "old": Child(v0, "gone")},
        ),
        "/t/a/x": _dir("/t/a/x", v0, f=(v0, "file")),
        "/t/a/x/f": f,
    }
    calls: list[tuple[str, str]] = []

    class Ns:
        async def must_get(self, path: str) -> Any:
            raise AssertionError("finish looks up through the owner's get")

        async def call(self, path: str, op: str, args: dict[str, Any] | None = None) -> Any:
            calls.append((op, path))
            r = records.get(path)
            if op == "get":
                return rec.to_builtins(r) if r is not None else None
            if op == "delete":
                if not isinstance(r, FileRecord | DirRecord):
                    raise NotFound(path)
                if isinstance(r, DirRecord) and rec.live_children(r):
                    raise AssertionError(f"{path} removed before its children")
                records[path] = Gone(path=path, v=v1, tree=bool(args and args.get("tree")))
                return {"old": rec.to_builtins(r)}
            if op in ("remove_children", "remove_child"):
                names = (args or {}).get("names") or [(args or {})["name"]]
                if isinstance(r, DirRecord):
                    for n in names:
                        r = rec.remove_child(r, n, v1)
                elif isinstance(r, Gone):
                    for n in names:
                        r = rec.bury_shadow_entry(r, n, (10, 0, "n"))
                records[path] = r
                return None
            raise AssertionError(op)

        async def gather(self, coros: list[Any]) -> list[Any]:
            return [await c for c in coros]

        def spawn_delete(self, r: Any) -> None:
            pass

    assert asyncio.run(finish(Ns(), "/t/a")) == 2
    assert isinstance(records["/t/a/x/f"], Gone)
    x = records["/t/a/x"]
    assert isinstance(x, Gone) and x.tree  # its own removal is a tree removal too
    assert rec.unseen_children(records["/t/a"]) == {}
    assert calls[-1] == ("remove_child", "/t/a")  # the entry goes last
    assert asyncio.run(finish(Ns(), "/t/a")) == 0  # nothing more to do


@pytest.mark.parametrize("bad", [None, 3, "a/b"])
def test_remove_child_of_a_bad_name_is_refused(tmp_path: Path, bad: Any) -> None:
    from sector.errors import BadRequest, InvalidPath

    async def main() -> None:
        m = MetaService(MetaStore(str(tmp_path / "m.db")), OneNodeRing(), now=lambda: 1_000.0)
        await m.start()
        try:
            with pytest.raises((BadRequest, InvalidPath)):
                await m.local("remove_child", "/", {"name": bad})
        finally:
            await m.stop()
            m.store.close()

    asyncio.run(main())
