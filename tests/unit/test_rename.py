"""``node/rename.py``: a file's move never leaves a name on bytes that are gone, nor a
name on a version that a later write had replaced (the partition run's seed 2718 found
``mv`` making its new name point at a blob that an overwrite had already deleted)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from sector.errors import AlreadyExists, NotFound
from sector.meta import records as rec
from sector.meta.records import FileRecord, Record
from sector.node.rename import move_file


def record(path: str, blob: str) -> FileRecord:
    return FileRecord(
        path=path,
        v=(1, 0, "n"),
        size=3,
        checksum="c" * 64,
        blob=blob,
        replicas=[("n1", "h1"), ("n2", "h2")],
        rf=2,
        owner="",
        mode=0o644,
        ctime=0.0,
        mtime=0.0,
    )


class FakeMeta:
    """The owners' rules for the four ops a move uses, over a dict of paths."""

    def __init__(self, files: dict[str, FileRecord]) -> None:
        self.files = dict(files)
        self.entries = {rec.basename(p) for p in files}
        self.calls: list[tuple[str, str]] = []

    async def call(self, path: str, op: str, args: dict[str, Any] | None = None) -> Any:
        a = args or {}
        self.calls.append((op, path))
        if op == "put_file":
            old = self.files.get(path)
            self.files[path] = rec.from_builtins(a["record"])  # type: ignore[assignment]
            return {"old": rec.to_builtins(old) if old else None}
        if op == "add_child":
            self.entries.add(a["name"])
            return None
        if op == "remove_child":
            self.entries.discard(a["name"])
            return None
        if op == "delete":
            cur = self.files.get(path)
            if cur is None:
                raise NotFound(path)
            if "blob" in a and cur.blob != a["blob"]:
                raise AlreadyExists(f"{path} changed while it was being removed")
            del self.files[path]
            return {"old": rec.to_builtins(cur)}
        raise AssertionError(op)


class FakeFs:
    def __init__(self, meta: FakeMeta, holders: dict[str, set[str] | None]) -> None:
        self.meta = meta
        self.holders = holders  # address -> blobs it has (None: does not answer)
        self.aliases: list[tuple[str, str, str, bool]] = []
        self.deleted: list[tuple[str, str | None]] = []

    async def gather(self, coros: list[Any]) -> list[Any]:
        return list(await asyncio.gather(*coros))

    def alias(
        self, addr: str, blob: str, path: str, *, confirm: bool = False
    ) -> Coroutine[Any, Any, bool | None]:
        async def go() -> bool | None:
            has = self.holders[addr]
            if has is None:
                return None
            self.aliases.append((addr, blob, path, confirm))
            return blob in has

        return go()

    def spawn_delete(self, r: Record | None, keep: str | None = None) -> None:
        assert isinstance(r, FileRecord)
        self.deleted.append((r.blob, keep))

    async def listed(self, d: str, added: Any) -> None:
        pass  # the directory checks of dirlinks, tested in test_ensure_dir


def test_a_move_renames_and_deletes_the_copies_of_the_file_it_replaces() -> None:
    src, old = record("/a", "b1"), record("/b", "b0")
    meta = FakeMeta({"/a": src, "/b": old})
    fs = FakeFs(meta, {"h1": {"b1"}, "h2": {"b1"}})
    asyncio.run(move_file(fs, src, "/b"))
    assert "/a" not in meta.files and meta.files["/b"].blob == "b1"
    assert {(a, c) for a, _, _, c in fs.aliases} == {
        ("h1", False),
        ("h2", False),
        ("h1", True),
        ("h2", True),
    }
    assert fs.deleted == [("b0", "b1")]


def test_a_move_of_a_version_whose_bytes_are_gone_writes_nothing() -> None:
    """The version read was overwritten (and its blob deleted) before the move: every
    holder that answers says it has no such blob; nothing may point at it."""
    stale = record("/a", "b1")
    meta = FakeMeta({"/a": record("/a", "b2")})
    fs = FakeFs(meta, {"h1": {"b2"}, "h2": None})
    with pytest.raises(AlreadyExists, match="changed while it was being moved"):
        asyncio.run(move_file(fs, stale, "/c"))
    assert meta.calls == [] and set(meta.files) == {"/a"}
    # No holder answering at all is no evidence: the move goes on (the bytes are there
    # as far as anyone can tell, as before).
    fs = FakeFs(FakeMeta({"/a": stale}), {"h1": None, "h2": None})
    asyncio.run(move_file(fs, stale, "/c"))
    assert fs.meta.files["/c"].blob == "b1"


@pytest.mark.parametrize("change", ["overwritten", "removed"])
def test_a_move_whose_source_changed_meanwhile_is_taken_back(change: str) -> None:
    """The old path holds another version by the time the move deletes it (or none):
    the move did not happen, and its new name is taken back."""
    read = record("/a", "b1")
    now = {"/a": record("/a", "b2")} if change == "overwritten" else {}
    meta = FakeMeta(now)
    fs = FakeFs(meta, {"h1": {"b1", "b2"}, "h2": {"b1", "b2"}})
    err = AlreadyExists if change == "overwritten" else NotFound
    with pytest.raises(err, match="changed while it was being moved"):
        asyncio.run(move_file(fs, read, "/c"))
    assert "/c" not in meta.files and "c" not in meta.entries
    assert meta.files.get("/a") == now.get("/a")  # the later write stands
    assert fs.deleted == []

    # Moving onto an existing file: the file it replaced is put back.
    there = record("/d", "b0")
    meta = FakeMeta({**now, "/d": there})
    fs = FakeFs(meta, {"h1": {"b1"}, "h2": {"b1"}})
    with pytest.raises(err):
        asyncio.run(move_file(fs, read, "/d"))
    back = meta.files["/d"]
    assert (back.blob, back.checksum) == (there.blob, there.checksum)
    assert [tuple(h) for h in back.replicas] == [tuple(h) for h in there.replicas]
    assert fs.deleted == []
