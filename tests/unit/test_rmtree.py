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
