"""Topology-aware replica placement (pure policy: no I/O, no randomness).

Rules
-----
1. Every node has a topology path such as ``/dc1/rack2`` ("" = unknown) and a host. The
   distance of two nodes is how far up that tree (with the host as its last level) one
   must go to find a common ancestor: 0 same host, 1 same rack, 2 same data centre, 3
   different data centres (deeper trees go on counting). A node of unknown topology is
   ``FAR`` from every other host: we cannot prove it shares a rack, so it is the safe
   place for a spare copy and never the "near" one.
2. Never two copies on one host, counting the copies that already exist: a host that
   dies must not take two copies with it. (A node without a host name counts as a host
   of its own.) A single-machine cluster must therefore give its nodes distinct hosts,
   e.g. their addresses, or it gets one copy per file.
3. Nodes with less than ``size + min_free`` bytes free are skipped.
4. The first copy goes nearest the writer (its own node when it is one); each further
   copy goes where the minimum distance to the copies chosen so far (and the existing
   ones) is largest: a rack, then a data centre, is lost with at most one copy when the
   cluster is wide enough (as HDFS does, but by a general rule rather than fixed slots).
5. Ties go to the node with the lowest hash of (seed, node id): rendezvous hashing, so
   with the file path as seed, files spread evenly over equally good nodes, the choice
   is the same on every node, and adding a node moves few choices. Then more free space.
6. ``choose`` returns at most ``r - len(existing)`` new nodes, fewer when the cluster
   cannot hold more: the caller reports or queues the under-replication.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["FAR", "Candidate", "choose", "topo_distance"]

FAR = 1 << 16
"""The distance to or from a node of unknown topology (on another host)."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """A node that may hold a copy, as placement sees it."""

    node_id: str  # hex
    addr: str
    host: str
    topology: str  # "/dc/rack", "" = unknown
    free: int  # bytes


def _host(c: Candidate) -> str:
    # Node ids are hex and carry no '\0': a hostless node cannot equal a named host.
    return c.host if c.host else "\0" + c.node_id


def _levels(topology: str) -> list[str]:
    return [p for p in topology.split("/") if p]


def topo_distance(a: Candidate, b: Candidate) -> int:
    """0 same host, 1 same rack, 2 same dc, ...; FAR if either topology is unknown."""
    if _host(a) == _host(b):
        return 0
    la, lb = _levels(a.topology), _levels(b.topology)
    if not la or not lb:
        return FAR
    common = 0
    for x, y in zip(la, lb, strict=False):
        if x != y:
            break
        common += 1
    # +1 for the host level, on which they differ.
    return max(len(la), len(lb)) - common + 1


def _rank(seed: str, node_id: str) -> int:
    digest = hashlib.blake2b(f"{seed}\0{node_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def choose(
    candidates: Sequence[Candidate],
    r: int,
    *,
    size: int,
    writer: Candidate | None = None,
    existing: Sequence[Candidate] = (),
    seed: str = "",
    min_free: int = 0,
) -> list[Candidate]:
    """Up to ``r - len(existing)`` new nodes for copies of a file (see the rules above)."""
    want = r - len(existing)
    if want <= 0:
        return []
    used_hosts = {_host(c) for c in existing}
    used_ids = {c.node_id for c in existing}
    pool: dict[str, Candidate] = {}
    for c in candidates:
        if c.free < size + min_free or c.node_id in used_ids or _host(c) in used_hosts:
            continue
        pool.setdefault(c.node_id, c)  # a node listed twice counts once
    rank = {nid: _rank(seed, nid) for nid in pool}

    # Minimum distance of each candidate to the copies placed so far, kept up to date
    # as copies are added: O(r * n) in all rather than O(r^2 * n).
    spread: dict[str, int] | None = None
    if existing:
        spread = {nid: min(topo_distance(c, e) for e in existing) for nid, c in pool.items()}

    out: list[Candidate] = []
    while len(out) < want and pool:
        if spread is not None:
            far = spread
            best = min(pool.values(), key=lambda c: (-far[c.node_id], rank[c.node_id], -c.free))
        elif writer is not None:
            w = writer
            best = min(pool.values(), key=lambda c: (topo_distance(w, c), rank[c.node_id], -c.free))
        else:
            best = min(pool.values(), key=lambda c: (rank[c.node_id], -c.free))
        out.append(best)
        host = _host(best)
        pool = {nid: c for nid, c in pool.items() if _host(c) != host}
        if spread is None:
            spread = {nid: topo_distance(c, best) for nid, c in pool.items()}
        else:
            spread = {nid: min(spread[nid], topo_distance(c, best)) for nid, c in pool.items()}
    return out
