"""``node/rmtree.py``'s ``Reaper``: the blobs of removed files go to their holders in
batches (issue 17)."""

from __future__ import annotations

import asyncio
from typing import Any

from sector.node.rmtree import Reaper


def test_reaper_sends_many_blobs_to_a_holder_in_few_requests() -> None:
    """rm -r's blob deletes (``node/rmtree.Reaper``): one request per holder carries
    every blob queued while the previous one was out; none is left unsent."""
    sent: list[tuple[str, list[str], list[str]]] = []

    async def call(addr: str, op: str, args: dict[str, Any], timeout: float) -> int:
        assert op == "blob.delete"
        sent.append((addr, args["blobs"], args["paths"]))
        await asyncio.sleep(0.01)
        return len(args["blobs"])

    async def main() -> None:
        tasks: list[asyncio.Task[None]] = []
        r = Reaper(call, lambda coro: tasks.append(asyncio.ensure_future(coro)))
        blobs = [f"{i:032x}" for i in range(300)]
        for i, b in enumerate(blobs):
            for addr in ("h1", "h2"):
                r.add(addr, b, f"/d/f{i}")
            if i % 100 == 99:
                await asyncio.sleep(0)  # the first request goes out with what is queued
        while any(not t.done() for t in tasks):
            await asyncio.gather(*tasks)
        for addr in ("h1", "h2"):
            mine = [s for s in sent if s[0] == addr]
            assert 1 < len(mine) <= 4  # batches, not one request per blob
            assert [b for s in mine for b in s[1]] == blobs
            assert [p for s in mine for p in s[2]] == [f"/d/f{i}" for i in range(300)]
        r.add("h1", "f" * 32, "/late")  # a holder idle again: sent at once
        await asyncio.gather(*tasks)
        assert sent[-1] == ("h1", ["f" * 32], ["/late"])

    asyncio.run(main())


def test_rm_r_asks_every_copy_before_dropping_a_child_its_owner_does_not_know() -> None:
    """A child whose owner answers "no such path" (a new owner without every record
    yet) is looked up in every copy (``get`` with ``merge``) and removed as found; only
    a child no copy holds is dropped as a dangling entry. Thrash found the subtree of
    such a child left behind, unlisted, by an rm -r that dropped its entry."""
    from sector.errors import NotFound
    from sector.meta import records as rec
    from sector.meta.records import DirRecord, FileRecord
    from sector.node.rmtree import remove

    def d(path: str, **kids: str) -> DirRecord:
        return DirRecord(
            path=path,
            v=(1, 0, "n"),
            children={k: rec.Child(kind=v, v=(1, 0, "n")) for k, v in kids.items()},
        )

    f = FileRecord(
        path="/t/x/f", v=(1, 0, "n"), size=1, checksum="c", blob="b" * 32, replicas=[], rf=1
    )
    owner: dict[str, DirRecord] = {"/t": d("/t", x="dir", gone="dir"), "/t/x": d("/t/x", f="file")}
    copies: dict[str, FileRecord | DirRecord] = {
        **owner,
        "/t/x/f": f,
    }  # the owner of /t/x/f does not know it
    del owner["/t/x"]  # ... nor does the owner of /t/x
    calls: list[tuple[str, str, Any]] = []

    class Ns:
        async def must_get(self, path: str) -> Any:
            if path not in owner:
                raise NotFound(path)
            return owner[path]

        async def call(self, path: str, op: str, args: dict[str, Any] | None = None) -> Any:
            calls.append((op, path, args))
            if op == "get":
                assert args == {"merge": True}
                r = copies.get(path)
                return rec.to_builtins(r) if r else None
            if op == "delete":
                r = copies.pop(path, None)
                if r is None:
                    raise NotFound(path)
                return {"old": rec.to_builtins(r)}
            return None

        async def gather(self, coros: list[Any]) -> list[Any]:
            return list(await asyncio.gather(*coros))

        def spawn_delete(self, r: Any) -> None:
            pass

    n = asyncio.run(remove(Ns(), "/t", recursive=True))
    assert n == 3  # /t/x/f, /t/x and /t; "gone" was dangling
    assert copies == {}
    assert ("get", "/t/gone", {"merge": True}) in calls
