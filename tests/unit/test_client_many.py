"""``client/many.py``: many files at once, bounded, each failing on its own (issue 17)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from sector.client import many
from sector.errors import AlreadyExists, NoSpace


class Fake:
    """An async client that takes a little while per call and counts how many overlap."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.calls: list[tuple[str, Any]] = []

    async def _busy(self, what: str, arg: Any) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)
        self.calls.append((what, arg))
        await asyncio.sleep(0.001)
        self.now -= 1

    async def put(
        self,
        local: str | os.PathLike[str],
        remote: str,
        *,
        replicas: int | None = None,
        into_dir: bool = True,
    ) -> dict[str, Any]:
        assert into_dir is False  # a tree's targets are spelled out
        await self._busy("put", remote)
        if remote.endswith("bad"):
            raise NoSpace(f"no room for {remote}")
        return {"path": remote, "size": 1, "rf": replicas}

    async def get(self, remote: str, local: str | os.PathLike[str]) -> dict[str, Any]:
        await self._busy("get", remote)
        if remote.endswith("bad"):
            raise OSError(28, "No space left on device", os.fspath(local))
        return {"path": remote}

    async def mkdir(self, path: str, *, parents: bool = False) -> dict[str, Any] | None:
        await self._busy("mkdir", path)
        if path == "/a/exists":
            raise AlreadyExists(path)
        return {"path": path}


def test_put_many_is_bounded_keeps_order_and_fails_per_file() -> None:
    c = Fake()
    items = [(f"l{i}", f"/r/{'bad' if i == 7 else i}") for i in range(100)]
    seen: list[tuple[str, bool]] = []

    def on_done(src: str, dst: str, res: Any, exc: BaseException | None) -> None:
        seen.append((dst, exc is None))

    b = asyncio.run(many.put_many(c, items, replicas=2, concurrency=8, on_done=on_done))
    assert c.peak == 8  # 8 in flight, never more
    assert [r["path"] for r in b.done] == [dst for _, dst in items if dst != "/r/bad"]
    assert all(r["rf"] == 2 for r in b.done)
    assert [(f.source, f.target, type(f.error)) for f in b.failed] == [("l7", "/r/bad", NoSpace)]
    assert len(seen) == 100 and ("/r/bad", False) in seen


def test_get_many_reports_a_local_error_as_that_files_failure() -> None:
    c = Fake()
    b = asyncio.run(many.get_many(c, [("/x", "x"), ("/bad", "y")], concurrency=32))
    assert [r["path"] for r in b.done] == ["/x"]
    assert b.failed[0].target == "y" and isinstance(b.failed[0].error, OSError)
    assert c.peak == 2  # no more workers than items


def test_mkdir_many_makes_parents_first_and_takes_existing_as_done() -> None:
    c = Fake()
    paths = ["/a/b/c", "/a", "/a/exists", "/a/b", "/a/b2", "a//b/c"]
    b = asyncio.run(many.mkdir_many(c, paths, concurrency=4))
    assert not b.failed and len(b.done) == 5  # "a//b/c" is "/a/b/c" again
    order = [p for what, p in c.calls if what == "mkdir"]
    depth = [p.count("/") for p in order]
    assert depth == sorted(depth)  # a level at a time, parents first
