"""The tracker of each busy file: who is fetching its blob, which pieces each has, and
whom each should fetch from (issue 14). Pure: no sockets, no clock (``now`` is given).

There is no central tracker: the node that owns a file's metadata record (routed by
path, as metadata requests are) keeps the swarms of that file's blobs, in memory. A
swarm lost with its node (a crash, a handoff) re-forms from the next announces.

Rules
-----
1. One swarm per blob id (a file replaced mid-swarm starts another swarm: no reader
   can be pointed at pieces of another version).
2. A *peer* is a node fetching the blob, or done with it (a *seed*, which serves from
   its cache). It announces its have-set; the announce of an unknown peer is its join.
   A peer silent for ``peer_ttl`` (a seed: ``seed_ttl``) is forgotten; one reported
   *failed* (unreachable) is forgotten at once and comes back with its next announce;
   one reported *bad* (it served a corrupt piece) is no source for ``bad_ttl``.
3. *Holders* (the record's replicas, named by the joiner) have every piece and never
   announce; a holder reported failed is left out for ``fail_ttl``.
4. A source ``s`` is *useful* to peer ``p`` when it has a piece ``p`` lacks (holders
   and seeds always do), or when ``s`` is *ahead* of ``p`` and *fed*: it has more
   pieces, or as many and joined earlier, and it has pieces or sources of its own. A
   peer pointed at one fetching ahead of it takes the pieces as they arrive there
   (pipelining, as in Kraken and Dragonfly). "Ahead" is a strict order, so the
   pipelined assignments never form a cycle.
5. Bounded degree: a peer gets at most ``degree`` sources, and a node (holders too)
   is a source of at most ``uploads`` peers at once. No holder serves everyone: the
   rest are pointed at peers fetching ahead of them, a tree of fan-out ``uploads``.
6. Choice, in tiers: peers (and seeds) with pieces ``p`` lacks; then holders; then
   pipelined peers. Holders move first while fewer than ``degree // 2`` peers have
   pieces ``p`` lacks (a swarm starts from its holders). Within a tier: the longest
   common topology prefix first (the same rack before the same data centre), then the
   least loaded, then the most pieces, then a hash of the pair (a spread that is the
   same on every run).
7. Stability: an announce keeps the sources that are still useful and chooses only
   for the free places. A refill looks at the holders and at most ``scan`` peers,
   taken round the swarm from where the last refill stopped: an announce costs
   O(degree + scan) however large the swarm, and over a few announces every peer is
   seen. (The best of a sample, not of all: in a swarm of thousands, the best of a
   few hundred is as good for the tree's shape.)
8. Stripes: the peers that have a holder among their sources are ranked by join
   order, and each is told its rank r of k: it takes the r-th k-th of the file from
   the holders first (``schedule.Plan``), so each piece leaves the holders about once
   and the peers have the rest to give each other (BitTorrent's super-seeding, decided
   here rather than guessed by each seed).
9. A peer silent past its timeout is never given as a source, even before ``expire``
   has run.
10. Bounds: at most ``max_swarms`` swarms and ``max_peers`` peers in one; beyond them a
   joiner is given holders only and is not tracked.

Rejected: tit-for-tat and random peer choice (BitTorrent): inside one cluster every
node is trusted to upload, and the cluster shapes the graph instead (issue 14).
"""

from __future__ import annotations

import heapq
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["Ref", "Source", "Tracker", "common_prefix"]


@dataclass(frozen=True, slots=True)
class Ref:
    """A node as the tracker names it."""

    id: str
    addr: str
    topology: str = ""


@dataclass(frozen=True, slots=True)
class Source:
    """A source given to a peer: ``have`` is its have-set (bit i = piece i), None for
    every piece (a holder or a seed)."""

    id: str
    addr: str
    have: int | None
    holder: bool = False


@dataclass(slots=True)
class _Peer:
    ref: Ref
    seq: int  # join order: "ahead" breaks ties by it
    have: int = 0
    count: int = 0
    seen: float = 0.0
    sources: list[str] = field(default_factory=list)
    complete: bool = False


@dataclass(slots=True)
class _Swarm:
    pieces: int
    full: int
    peers: dict[str, _Peer] = field(default_factory=dict)
    holders: dict[str, Ref] = field(default_factory=dict)
    load: Counter[str] = field(default_factory=Counter)  # source id -> peers it serves
    bad: dict[str, float] = field(default_factory=dict)  # id -> until
    failed: dict[str, float] = field(default_factory=dict)  # holder id -> until
    readers: dict[str, float] = field(default_factory=dict)  # reader key -> last seen
    seq: int = 0
    cursor: int = 0  # where the next refill's scan starts (rule 7)
    fed: set[str] = field(default_factory=set)  # peers with a holder source (rule 8)
    addrs: dict[str, Ref] = field(default_factory=dict)  # every node seen: cache drops


def common_prefix(a: str, b: str) -> int:
    """Leading topology segments two nodes share ("/dc1/r2", "/dc1/r3" -> 1)."""
    n = 0
    for x, y in zip(a.strip("/").split("/"), b.strip("/").split("/"), strict=False):
        if not x or x != y:
            break
        n += 1
    return n


class Tracker:
    """The swarms one node tracks (see the module rules)."""

    def __init__(
        self,
        *,
        degree: int = 4,
        uploads: int = 4,
        peer_ttl: float = 10.0,
        seed_ttl: float = 120.0,
        bad_ttl: float = 600.0,
        fail_ttl: float = 30.0,
        interest_ttl: float = 10.0,
        max_swarms: int = 4096,
        max_peers: int = 4096,
        scan: int = 256,
    ) -> None:
        if degree < 1 or uploads < 1:
            raise ValueError("degree and uploads must be at least 1")
        self.degree = degree
        self.uploads = uploads
        self.peer_ttl = peer_ttl
        self.seed_ttl = seed_ttl
        self.bad_ttl = bad_ttl
        self.fail_ttl = fail_ttl
        self.interest_ttl = interest_ttl
        self.max_swarms = max_swarms
        self.max_peers = max_peers
        self.scan = scan
        self.swarms: dict[str, _Swarm] = {}

    # ------------------------------------------------------------------ events

    def announce(
        self,
        blob: str,
        pieces: int,
        me: Ref,
        have: int,
        holders: Sequence[Ref],
        now: float,
        *,
        failed: Iterable[str] = (),
        bad: Iterable[str] = (),
    ) -> list[Source]:
        """Peer ``me`` has ``have`` (a bitset) of the blob's ``pieces``; ``failed``:
        sources it could not reach, ``bad``: sources that sent it a corrupt piece.
        Returns its sources (none once it is complete)."""
        sw = self.swarms.get(blob)
        if sw is not None and sw.pieces != pieces and not sw.peers:
            sw.pieces, sw.full = pieces, (1 << pieces) - 1  # made by ``interest``
        if sw is None or sw.pieces != pieces:
            if sw is None and len(self.swarms) >= self.max_swarms:
                return self._untracked(holders, me)
            sw = self.swarms[blob] = _Swarm(pieces, (1 << pieces) - 1)
        for h in holders:  # (only ever added to: a swarm lives for minutes, a holder
            if h.id != me.id:  # that lost its copy is reported failed by its fetchers)
                sw.holders[h.id] = h
            sw.addrs.setdefault(h.id, h)
        for nid in failed:
            self._fail(sw, nid, now)
        for nid in bad:
            if nid != me.id:
                sw.bad[nid] = now + self.bad_ttl
                self._unlist(sw, nid)
        p = sw.peers.get(me.id)
        if p is None:
            if len(sw.peers) >= self.max_peers:
                return self._untracked(holders, me)
            sw.seq += 1
            p = sw.peers[me.id] = _Peer(me, sw.seq)
        p.ref, p.seen = me, now
        sw.addrs[me.id] = me
        p.have = have & sw.full
        p.count = p.have.bit_count()
        p.complete = p.have == sw.full
        if p.complete:
            self._set_sources(sw, p, [])
            return []
        keep = [s for s in p.sources if self._useful(sw, p, s, now)]
        if len(keep) < self.degree:
            keep += self._choose(sw, p, keep, now)
        self._set_sources(sw, p, keep)
        return [self._source(sw, s) for s in p.sources]

    def leave(self, blob: str, peer: str) -> None:
        """A peer gave up (its fetch failed or was cancelled): no source any more."""
        sw = self.swarms.get(blob)
        if sw is not None and peer in sw.peers:
            self._remove(sw, peer)

    def interest(self, blob: str, reader: str, now: float) -> int:
        """A reader of the blob asks whether it is busy: how many *others* are reading
        or fetching it now (recent readers within ``interest_ttl``, and peers still
        fetching). The reader is remembered for the next one's answer."""
        sw = self.swarms.get(blob)
        if sw is None:
            if len(self.swarms) >= self.max_swarms:
                return 0
            sw = self.swarms[blob] = _Swarm(0, 0)
        others = sum(
            1 for k, t in sw.readers.items() if k != reader and now - t <= self.interest_ttl
        )
        if len(sw.readers) < self.max_peers:
            sw.readers[reader] = now
        return others + sum(1 for p in sw.peers.values() if not p.complete)

    def forget(self, blob: str) -> list[Ref]:
        """The blob is gone (its file replaced or removed): drop its swarm; returns the
        nodes that fetched it, whose caches should drop it too (holders excluded)."""
        sw = self.swarms.pop(blob, None)
        if sw is None:
            return []
        return [sw.addrs[i] for i in sw.peers if i in sw.addrs]

    def expire(self, now: float) -> None:
        """Forget silent peers, lapsed bad/failed marks, old readers, empty swarms."""
        for blob in list(self.swarms):
            sw = self.swarms[blob]
            for nid, p in list(sw.peers.items()):
                if self._silent(p, now):
                    self._remove(sw, nid)
            for marks in (sw.bad, sw.failed):
                for nid in [n for n, until in marks.items() if until <= now]:
                    del marks[nid]
            for k in [k for k, t in sw.readers.items() if now - t > self.interest_ttl]:
                del sw.readers[k]
            if not sw.peers and not sw.readers:
                del self.swarms[blob]

    # ------------------------------------------------------------------ queries

    def stripe(self, blob: str, nid: str) -> tuple[int, int]:
        """Rule 8: (rank, of) of peer ``nid`` among those fed by holders; (0, 1) for
        one that is not (its whole file is its stripe)."""
        sw = self.swarms.get(blob)
        if sw is None or nid not in sw.fed:
            return (0, 1)
        fed = sorted((sw.peers[i].seq, i) for i in sw.fed if i in sw.peers)
        return (next(r for r, (_, i) in enumerate(fed) if i == nid), len(fed))

    def peer(self, blob: str, nid: str) -> Ref | None:
        """The node ``nid`` as last seen in the blob's swarm (a peer or a holder)."""
        sw = self.swarms.get(blob)
        return None if sw is None else sw.addrs.get(nid)

    def status(self) -> dict[str, int]:
        return {
            "swarms": len(self.swarms),
            "peers": sum(len(sw.peers) for sw in self.swarms.values()),
        }

    def validate(self) -> None:
        """The invariants (tests run it after every step)."""
        for blob, sw in self.swarms.items():
            want: Counter[str] = Counter()
            for nid, p in sw.peers.items():
                assert len(p.sources) <= self.degree, (blob, nid, p.sources)
                assert len(set(p.sources)) == len(p.sources), (blob, nid)
                assert nid not in p.sources, (blob, nid)
                assert not (p.complete and p.sources), (blob, nid)
                assert p.count == p.have.bit_count() and p.have & ~sw.full == 0
                want.update(p.sources)
            assert +want == +sw.load, (blob, want, sw.load)
            fed = {i for i, p in sw.peers.items() if any(s in sw.holders for s in p.sources)}
            assert sw.fed == fed, (blob, sw.fed, fed)
            assert all(n <= self.uploads for n in sw.load.values()), (blob, sw.load)

    # ------------------------------------------------------------------ the rules

    def _untracked(self, holders: Sequence[Ref], me: Ref) -> list[Source]:
        """Rule 10: holders only, for a joiner beyond the bounds."""
        return [Source(h.id, h.addr, None, True) for h in holders if h.id != me.id][: self.degree]

    def _source(self, sw: _Swarm, nid: str) -> Source:
        h = sw.holders.get(nid)
        if h is not None:
            return Source(h.id, h.addr, None, True)
        q = sw.peers[nid]
        return Source(nid, q.ref.addr, None if q.complete else q.have)

    def _alive_holder(self, sw: _Swarm, nid: str, now: float) -> bool:
        return nid in sw.holders and sw.failed.get(nid, now) <= now

    def _useful(self, sw: _Swarm, p: _Peer, nid: str, now: float) -> bool:
        """Rule 4."""
        if sw.bad.get(nid, now) > now:
            return False
        if nid in sw.holders:
            return self._alive_holder(sw, nid, now)
        q = sw.peers.get(nid)
        if q is None or self._silent(q, now):
            return False
        return q.complete or bool(q.have & ~p.have) or (_ahead(q, p) and _fed(q))

    def _silent(self, q: _Peer, now: float) -> bool:
        """Rule 9."""
        return now - q.seen > (self.seed_ttl if q.complete else self.peer_ttl)

    def _choose(self, sw: _Swarm, p: _Peer, keep: list[str], now: float) -> list[str]:
        """Rule 6: up to ``degree - len(keep)`` new sources for ``p``."""
        taken = set(keep)
        taken.add(p.ref.id)
        rich: list[tuple[tuple[int, int, int, int, int], str]] = []
        other: list[tuple[tuple[int, int, int, int, int], str]] = []
        for nid in self._sample(sw):
            q = sw.peers[nid]
            if nid in taken or sw.load[nid] >= self.uploads or sw.bad.get(nid, now) > now:
                continue
            if self._silent(q, now):
                continue
            if q.complete or q.have & ~p.have:
                rich.append((self._key(0, p, nid, q.ref.topology, sw, q.count), nid))
            elif _ahead(q, p) and _fed(q):
                other.append((self._key(2, p, nid, q.ref.topology, sw, q.count), nid))
        holders_first = len(rich) < max(1, self.degree // 2)
        for nid, h in sw.holders.items():
            if nid in taken or sw.load[nid] >= self.uploads or not self._alive_holder(sw, nid, now):
                continue
            if sw.bad.get(nid, now) > now:
                continue
            tier = -1 if holders_first else 1
            other.append((self._key(tier, p, nid, h.topology, sw, sw.pieces), nid))
        want = self.degree - len(keep)
        best = heapq.nsmallest(want, rich + other)
        return [nid for _, nid in best]

    def _sample(self, sw: _Swarm) -> list[str]:
        """Rule 7: up to ``scan`` peers, round the swarm from the last refill's end."""
        ids = list(sw.peers)
        if len(ids) <= self.scan:
            return ids
        start = sw.cursor % len(ids)
        sw.cursor = start + self.scan
        return (ids[start:] + ids[:start])[: self.scan]

    def _key(
        self, tier: int, p: _Peer, nid: str, topology: str, sw: _Swarm, count: int
    ) -> tuple[int, int, int, int, int]:
        near = common_prefix(p.ref.topology, topology) if p.ref.topology and topology else 0
        spread = zlib.crc32(f"{p.ref.id}/{nid}".encode())
        return (tier, -near, sw.load[nid], -count, spread)

    def _set_sources(self, sw: _Swarm, p: _Peer, new: list[str]) -> None:
        for s in p.sources:
            sw.load[s] -= 1
            if sw.load[s] <= 0:
                del sw.load[s]
        p.sources = new
        sw.load.update(new)
        if any(s in sw.holders for s in new):
            sw.fed.add(p.ref.id)
        else:
            sw.fed.discard(p.ref.id)

    def _unlist(self, sw: _Swarm, nid: str) -> None:
        """No peer has ``nid`` as a source any more."""
        for q in sw.peers.values():
            if nid in q.sources:
                self._set_sources(sw, q, [s for s in q.sources if s != nid])

    def _remove(self, sw: _Swarm, nid: str) -> None:
        p = sw.peers.pop(nid)
        self._set_sources(sw, p, [])
        self._unlist(sw, nid)

    def _fail(self, sw: _Swarm, nid: str, now: float) -> None:
        """Rules 2-3: a node found unreachable."""
        if nid in sw.peers:
            self._remove(sw, nid)
        if nid in sw.holders:
            sw.failed[nid] = now + self.fail_ttl
            self._unlist(sw, nid)


def _ahead(q: _Peer, p: _Peer) -> bool:
    return (q.count, -q.seq) > (p.count, -p.seq)


def _fed(q: _Peer) -> bool:
    return q.count > 0 or bool(q.sources)
