"""A swarm fetch's piece schedule: which pieces to ask of which source, and what came
of it (issue 14). Pure: the fetch driver (``node/swarm_fetch``) performs the requests
and feeds the outcomes back.

Rules
-----
1. Sets of pieces are ints (bit i = piece i): a have-set of 2048 pieces is one int, and
   "what may I ask of s" is ``s.have & ~have & ~in_flight``, no loop over pieces.
2. A piece is in flight from one source at a time (no duplicate requests, so two
   copies never race for its place in the file); a request that fails gives its
   pieces back.
3. Each peer source has at most ``per_source`` requests in flight, a holder
   ``per_holder`` (1), each of at most ``batch`` pieces, and the fetch at most
   ``window`` pieces in flight in all. Few at a time from a holder: a holder's uplink
   is the swarm's bottleneck, and pieces sent one after the other are each done (and
   passed on by their fetcher) sooner than pieces sent side by side. (A driver whose
   requests to one source are served in turn on one stream, pipelined, may allow two:
   the second is then queued, not sent side by side, and the stream never idles.)
4. Peers (other fetchers and seeds) are asked first, holders (the record's replicas)
   after them, so holders serve what no peer can. From a peer the lowest pieces it
   has (a follower takes the pieces of a peer ahead of it as they arrive: a
   pipeline). From a holder, the pieces of this fetch's *stripe* first: the tracker
   gives each of the k fetchers fed by holders a rank r, and its stripe is the r-th of
   k equal runs of the file. So each piece leaves the holders about once, and the
   fetchers have the rest to give each other (BitTorrent's super-seeding, decided by
   the tracker). Once its stripe is in, a fetch asks holders only for pieces none of
   its peer sources has (even while peers are sending it others: the fetchers fed by
   holders were otherwise the last to finish, their peers slower than the holders'
   idle uplinks; 10 nodes on loopback, 64 MiB, uploads capped at 8 MB/s: the last
   fetch at 1.44-1.64x the time of one copy at that rate, now 1.09-1.18x). Measured
   on loopback, 64 MiB to 4 nodes with uploads capped at 16 MB/s: without stripes the
   holder sent 164 MiB and the distribution took 2.6x the time of one copy at that
   rate; with them 84-92 MiB and 1.3-1.5x (256 MiB at 32 MB/s: 1.17x).
5. A source that did not have what it was asked (its have-set was older than its
   cache) loses those bits until the tracker's next word about it.
6. Endgame (``endgame``): once every missing piece is in flight and at most
   ``limit`` are, each is asked once more of another source that has it (an idle
   one first), BitTorrent's endgame mode: one slow or dying source then no longer
   sets the end of the fetch. The first verified copy counts (``got``); the driver
   writes a copy only over a piece not yet had, and drops the other at the end.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sector.swarm.tracker import Source

__all__ = ["Plan", "Request", "bits_from", "bits_to", "front", "lowest"]


def bits_to(bits: int, n: int) -> bytes:
    """A have-set as bytes for the wire (little-endian: bit i = piece i)."""
    return bits.to_bytes((n + 7) // 8, "little")


def bits_from(data: bytes, n: int) -> int:
    """A have-set from the wire, cut to ``n`` pieces."""
    return int.from_bytes(data, "little") & ((1 << n) - 1)


def lowest(x: int, k: int, n: int, start: int = 0) -> list[int]:
    """The first ``k`` set bits of ``x`` (``n`` bits wide) from bit ``start`` on,
    wrapping around."""
    if start:
        x = ((x >> start) | (x << (n - start))) & ((1 << n) - 1)
    out: list[int] = []
    while x and len(out) < k:
        low = x & -x
        out.append((low.bit_length() - 1 + start) % n)
        x ^= low
    return out


def front(have: int, start: int, n: int) -> int:
    """The first piece at or after ``start`` that ``have`` lacks (``n`` if none): the
    end of the run of pieces a reader in order may take now."""
    gap = ~have >> start  # its lowest set bit: the first missing piece from start on
    return min(n, start + (gap & -gap).bit_length() - 1)


@dataclass(slots=True)
class _Src:
    id: str
    addr: str
    have: int
    holder: bool
    busy: int = 0  # requests in flight


@dataclass(frozen=True, slots=True)
class Request:
    """Ask ``source`` (at ``addr``) for these pieces (``dup``: a second copy, rule 6)."""

    source: str
    addr: str
    pieces: list[int]
    dup: bool = False


class Plan:
    """The schedule of one fetch of a blob of ``pieces`` pieces (module rules)."""

    def __init__(
        self,
        pieces: int,
        *,
        batch: int,
        per_source: int = 2,
        per_holder: int = 1,
        window: int = 64,
        start: int = 0,
    ) -> None:
        """``start``: where the holders' pieces are taken from until the tracker gives
        a stripe."""
        self.n = pieces
        self.full = (1 << pieces) - 1
        self.batch = max(1, batch)
        self.per_source = max(1, per_source)
        self.per_holder = max(1, per_holder)
        self.window = max(self.batch, window)
        self.stripe = self.full  # pieces this fetch takes from holders first (rule 4)
        self.start = 0
        if pieces:
            self.set_stripe(0, 1, start)
        self.have = 0
        self.in_flight = 0
        self.dup = 0  # pieces asked a second time (rule 6)
        self.asked: dict[int, str] = {}  # piece in flight -> the source asked first
        self.sources: dict[str, _Src] = {}

    @property
    def done(self) -> bool:
        return self.have == self.full

    @property
    def count(self) -> int:
        return self.have.bit_count()

    def idle(self) -> bool:
        """Nothing in flight."""
        return self.in_flight == 0

    def set_sources(self, sources: Iterable[Source]) -> None:
        """The tracker's latest word: these sources, with these have-sets. A source
        left out keeps its requests in flight (they end on their own)."""
        new: dict[str, _Src] = {}
        for s in sources:
            old = self.sources.get(s.id)
            have = self.full if s.have is None else s.have & self.full
            new[s.id] = _Src(s.id, s.addr, have, s.holder, old.busy if old else 0)
        self.sources = new

    def set_stripe(self, rank: int, of: int, start: int | None = None) -> None:
        """This fetch is the ``rank``-th of ``of`` fed by holders (rule 4)."""
        n = self.n
        if not n:
            return
        of = max(1, of)
        rank = min(max(0, rank), of - 1)
        lo, hi = rank * n // of, (rank + 1) * n // of
        self.stripe = ((1 << (hi - lo)) - 1) << lo if of > 1 else self.full
        self.start = (start if start is not None else lo) % n

    def next(self) -> list[Request]:
        """Requests to start now (rules 2-4)."""
        out: list[Request] = []
        peers = 0
        for s in self.sources.values():
            if not s.holder:
                peers |= s.have
        for s in sorted(self.sources.values(), key=lambda s: (s.holder, s.busy, s.id)):
            while s.busy < (self.per_holder if s.holder else self.per_source):
                room = self.window - self.in_flight.bit_count()
                avail = s.have & ~self.have & ~self.in_flight
                if room <= 0 or not avail:
                    break
                k = min(self.batch, room)
                if s.holder:
                    mine = avail & self.stripe
                    # the stripe first, until it is all in; then what no peer has
                    stripe_in = not self.stripe & ~self.have
                    want = avail & ~peers if stripe_in else (mine & ~peers) or mine
                    if not want:
                        break
                    picks = lowest(want, k, self.n, self.start)
                else:
                    picks = lowest(avail, k, self.n)
                for i in picks:
                    self.in_flight |= 1 << i
                    self.asked[i] = s.id
                s.busy += 1
                out.append(Request(s.id, s.addr, picks))
        return out

    def endgame(self, limit: int) -> list[Request]:
        """Second requests for the last pieces in flight (rule 6)."""
        left = self.full & ~self.have
        if not left or left & ~self.in_flight or left.bit_count() > limit:
            return []
        want = left & ~self.dup
        out: list[Request] = []
        for s in sorted(self.sources.values(), key=lambda s: (s.busy, s.holder, s.id)):
            if not want:
                break
            if s.busy > self.per_source:  # (one more than a source's usual share)
                continue
            picks = [i for i in lowest(s.have & want, self.n, self.n) if self.asked.get(i) != s.id]
            picks = picks[: self.batch]
            if not picks:
                continue
            for i in picks:
                self.dup |= 1 << i
                want &= ~(1 << i)
            s.busy += 1
            out.append(Request(s.id, s.addr, picks, dup=True))
        return out

    def got(self, piece: int) -> None:
        """A piece arrived and was verified."""
        bit = 1 << piece
        self.have |= bit
        self.in_flight &= ~bit
        self.dup &= ~bit
        self.asked.pop(piece, None)

    def give_back(self, pieces: Iterable[int], *, dup: bool = False) -> None:
        """Pieces of a request that did not arrive (or arrived corrupt): asked again
        (those of a second request, ``dup``: may be asked a second time again)."""
        for i in pieces:
            if dup:
                self.dup &= ~(1 << i)
            else:
                self.in_flight &= ~(1 << i)
                self.asked.pop(i, None)

    def lacks(self, source: str, pieces: Iterable[int]) -> None:
        """Rule 5."""
        s = self.sources.get(source)
        if s is not None:
            for i in pieces:
                s.have &= ~(1 << i)

    def finished(self, source: str) -> None:
        """A request to ``source`` ended (whatever came of it)."""
        s = self.sources.get(source)
        if s is not None and s.busy > 0:
            s.busy -= 1

    def drop(self, source: str) -> None:
        """A source failed or sent a corrupt piece: asked nothing more."""
        self.sources.pop(source, None)

    def needs_sources(self) -> bool:
        """No source has anything this fetch lacks and may ask for now."""
        want = self.full & ~self.have & ~self.in_flight
        return not any(s.have & want for s in self.sources.values())
