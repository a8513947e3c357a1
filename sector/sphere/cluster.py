"""What a job learns of the cluster before it plans: the nodes that run engines, how
many each, and where each is (host and topology, as placement sees nodes).
"""

from __future__ import annotations

import asyncio
import contextlib

from sector.errors import SectorError
from sector.sphere import wire
from sector.sphere.ports import JobClient
from sector.storage.placement import Candidate

__all__ = ["cluster_engines"]


async def cluster_engines(
    c: JobClient,
) -> tuple[dict[str, tuple[str, int]], dict[str, Candidate]]:
    """Live nodes that run engines: ``{node id: (address, engines)}``, and where each
    is (host and topology, as placement sees nodes).

    From the entry node's member view (one cheap ping), then ``sphere.info`` of each
    node in parallel -- not ``status``, which walks every node's records.
    """
    info = await c._call("node.ping", {})
    topo = info.get("topology") or {}
    alive = [(str(i), str(a)) for i, a in info.get("ring", []) if str(i) in topo]
    out: dict[str, tuple[str, int]] = {}
    places: dict[str, Candidate] = {}

    async def one(nid: str, addr: str) -> None:
        with contextlib.suppress(SectorError):
            r = await c.pool.call(addr, wire.INFO, {}, timeout=5)
            out[nid] = (addr, max(1, int(r.get("engines", 1))))
            where = str(r.get("topology", topo.get(nid)) or "")
            places[nid] = Candidate(nid, addr, str(r.get("host") or ""), where, 0)

    await asyncio.gather(*(one(n, a) for n, a in alive))
    return out, places
