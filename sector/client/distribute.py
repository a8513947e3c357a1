"""``sector distribute``: every node of the cluster (or of a topology prefix) fetches
files into its cache through the swarm (issue 14), ahead of the jobs that will read
them.

Each chosen node is given the whole list as one job (``swarm.fetch``) and polled for
its progress (``swarm.job``) until it is done, all nodes at once: the swarm forms
between them by itself, since they fetch the same blobs at the same moment. A node
that fails (down, a file it could not fetch) is reported in its row; the others go on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

from sector.errors import IsADirectory, SectorError, UsageError
from sector.meta import records as rec
from sector.swarm.messages import MAX_FETCH
from sector.transport.rpc import RpcPool


class AsyncClient(Protocol):
    """What a distribution needs of ``AsyncClient``."""

    pool: RpcPool

    async def stat(self, path: str, *, verify: bool = ...) -> dict[str, Any]: ...
    async def ls(self, path: str = ...) -> list[dict[str, Any]]: ...
    async def _call(self, op: str, args: dict[str, Any]) -> Any: ...


POLL = 0.25  # seconds between two progress polls of one node


async def distribute(
    c: AsyncClient,
    paths: list[str],
    *,
    to: str = "all",
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    files = await _files(c, paths)
    nodes = await _nodes(c, to)
    total = sum(size for _, size in files) * len(nodes)
    done: dict[str, int] = {}
    names = [p for p, _ in files]

    async def one(addr: str) -> dict[str, Any]:
        t0 = time.monotonic()
        row: dict[str, Any] = {"address": addr, "files": 0, "bytes": 0, "fetched": 0}
        try:
            job = await c.pool.call(addr, "swarm.fetch", {"paths": names})
            while True:
                st = await c.pool.call(addr, "swarm.job", {"job": job["job"]})
                done[addr] = int(st["progress"])
                if progress is not None:
                    progress(min(total, sum(done.values())), total)
                if st["state"] == "done":
                    break
                await asyncio.sleep(POLL)
        except (SectorError, KeyError, TypeError) as exc:
            return {**row, "seconds": round(time.monotonic() - t0, 3), "error": str(exc)}
        errors = st.get("errors") or []
        return {
            **row,
            "files": st["files"],
            "bytes": st["bytes"],
            "fetched": st["fetched"],
            "seconds": st["seconds"],
            "error": "; ".join(errors) if errors else None,
        }

    rows = await asyncio.gather(*(one(addr) for addr in nodes))
    return {"files": names, "nodes": sorted(rows, key=lambda r: r["address"])}


async def _files(c: AsyncClient, paths: list[str]) -> list[tuple[str, int]]:
    """The files named, a directory's every file under it; (path, size)."""
    out: dict[str, int] = {}
    todo = [rec.normalize(p) for p in paths]
    while todo:
        p = todo.pop()
        st = await c.stat(p)
        if st["type"] == "file":
            out[st["path"]] = int(st["size"])
        else:
            for e in await c.ls(p):
                if e["type"] == "dir":
                    todo.append(e["path"])
                else:
                    out[e["path"]] = int(e["size"])
        if len(out) > MAX_FETCH:
            raise UsageError(f"more than {MAX_FETCH} files to distribute: name fewer")
    if not out:
        raise IsADirectory(f"no files under {', '.join(paths)}")
    return sorted(out.items())


async def _nodes(c: AsyncClient, to: str) -> list[str]:
    """Addresses of the live nodes ``to`` names: "all", or a topology prefix."""
    info = await c._call("node.ping", {})
    topo: dict[str, str] = info.get("topology") or {}
    prefix = to.rstrip("/")
    out = []
    for nid, addr in info.get("ring") or []:
        t = topo.get(nid)
        if t is None:
            continue  # draining, or not seen up
        if to == "all" or t == prefix or t.startswith(prefix + "/"):
            out.append(str(addr))
    if not out:
        raise UsageError(f"no node up matches {to!r} (use all, or a prefix such as /dc1)")
    return out
