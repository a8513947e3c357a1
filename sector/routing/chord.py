"""The Chord ring state of one node: a pure state machine (no I/O, no clock).

Rules (Stoica et al., "Chord: A Scalable Peer-to-peer Lookup Service for Internet
Applications", SIGCOMM 2001; section numbers refer to that paper):

1. Ring and ownership (§4.2). Ids and keys share one 160-bit ring. Key k belongs to
   successor(k), the first node whose id is equal to or follows k. A node owns the
   keys in (predecessor, me]. With no predecessor known it claims everything: right
   for a ring of one, an over-claim for a fresh joiner until its predecessor notifies
   it (one stabilize round), which callers acting on ownership must allow for.
2. Routing (§4.3). ``next_hop(key)`` answers "done: my successor owns it" when key is in
   (me, successor]; otherwise it names the known node that most closely precedes key
   (fingers, successor list and predecessor all count). Every hop therefore strictly
   shrinks the clockwise distance to the key, so a lookup cannot loop; with correct
   fingers each hop halves it: O(log N) hops, ½·log2 N on average (§6).
3. Joining (§4.4, §5.1). A node learns its successor by a lookup of its own id
   through any member, sets predecessor = nil, and is woven in by stabilization.
4. Stabilization (§5.1). Periodically a node asks its successor s for s's predecessor
   x and successor list; if x lies in (me, s) then x becomes the successor. The
   successor list is then rebuilt as [x?, s] + s's list, cut at r entries and at the
   first entry that would wrap past me. Then the node notifies its successor, which
   adopts it as predecessor if it lies in (predecessor, successor). One addition: a
   ring of one also takes its first notifier as successor (see ``notify``).
5. Fingers (§5.1 fix_fingers). Finger i is successor(me + 2**i), refreshed round robin
   by a lookup. Fingers the previous finger already covers (it lies at or beyond this
   finger's start) are copied without a lookup, and fingers above one whose lookup
   came back to us are cleared without one: in a ring of N nodes only about log2 N of
   the 160 fingers are distinct, so a cycle costs ~log N lookups instead of 160.
6. Failures (§5.2). Each node keeps r successors. A peer that does not answer is
   dropped everywhere (successors, fingers, predecessor) and the next successor takes
   over; a lookup routes around it by excluding it. Correctness only needs every node
   to keep one live successor, which fails only if r consecutive nodes die together.
   If the whole list is lost we fall back on the nearest live finger or the
   predecessor rather than declaring ourselves alone, so the ring can still repair.
7. Voluntary departure (§5.3). A leaving node hands its predecessor its successor
   list and its successor its predecessor, so neither waits for a timeout.
8. Merging rings. A partition leaves each side a consistent ring of its own, and rule
   4 never looks outside it (disjoint rings are a known Chord state: the ToN 2003
   paper discusses them, and Zave's analysis shows plain Chord never leaves them). Every node therefore looks up
   successor(me + 1) now and then through a random member it knows (also one it last
   saw down); an answer between it and its successor is a successor it did not know
   (``on_merge_probe``). Repeated on every node, this joins the rings again.

Which remote calls a step makes, and in what order, is ``steps.py`` (also pure); the
driver (``driver.py``) and the simulator (``sector.testing.chordsim``) both execute
those steps and feed the outcomes back through these methods; nothing here awaits.
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass
from typing import Any

from sector.ids import (
    BITS,
    MASK,
    between,
    between_right,
    distance,
    finger_start,
    short,
    to_hex,
)

__all__ = ["ChordState", "Peer", "parse_id"]

# How many (what, detail) entries the debugging log keeps per node.
EVENT_LOG_LEN = 128


_HEX40 = re.compile(r"[0-9a-fA-F]{40}")


def parse_id(s: Any) -> int:
    """A 40-digit hex id from the wire; ValueError otherwise.

    Stricter than ``ids.from_hex``: ``int(s, 16)`` also takes "-1", "+…", "0x…" and
    "1_0", none of which a well-behaved peer sends.
    """
    if not isinstance(s, str) or _HEX40.fullmatch(s) is None:
        raise ValueError(f"not a 40-digit hex id: {s!r:.80}")
    return int(s, 16)


@dataclass(frozen=True, slots=True)
class Peer:
    """A node on the ring: its 160-bit id and the "host:port" it answers RPC on."""

    id: int
    addr: str

    def to_wire(self) -> list[Any]:
        return [to_hex(self.id), self.addr]

    @classmethod
    def from_wire(cls, x: Any) -> Peer:
        """Parse ``[id_hex40, addr]``; raises ValueError on any other shape or type."""
        if not isinstance(x, list | tuple) or len(x) != 2:
            raise ValueError(f"a peer is [id_hex, addr], got {x!r:.80}")
        hid, addr = x
        if not isinstance(hid, str) or not isinstance(addr, str):
            raise ValueError(f"a peer is [id_hex, addr] of strings, got {x!r:.80}")
        if not addr or len(addr) > 300:
            raise ValueError(f"bad peer address {addr!r:.80}")
        return cls(parse_id(hid), addr)

    def __str__(self) -> str:
        return f"{short(self.id)}@{self.addr}"


class ChordState:
    """Predecessor, successor list and finger table of one node, and their transitions."""

    def __init__(self, me: Peer, *, succ_list_len: int = 8) -> None:
        if succ_list_len < 2:
            # With r = 1 a node that adopts a dead predecessor-of-successor (stabilize
            # cannot tell it is dead) evicts its only live successor and is cut off;
            # hypothesis finds that in a few seconds. Chord's guarantees start at r = 2.
            raise ValueError("succ_list_len must be at least 2")
        self.me = me
        self.r = succ_list_len
        self.predecessor: Peer | None = None
        # Clockwise from me, strictly ordered, never containing me. Empty = ring of one.
        self.successors: list[Peer] = []
        self.fingers: list[Peer | None] = [None] * BITS
        self._finger_cursor = 0
        # Lowest finger index whose lookup returned me (BITS: none); see next_finger.
        self._fingers_to_me = BITS
        self.events: collections.deque[tuple[str, str]] = collections.deque(maxlen=EVENT_LOG_LEN)

    def __repr__(self) -> str:
        pred = self.predecessor
        return (
            f"<ChordState {self.me} pred={pred} "
            f"succ=[{', '.join(short(s.id) for s in self.successors)}]>"
        )

    # -- membership -------------------------------------------------------------------

    def create(self) -> None:
        """Start a new ring with only this node in it."""
        self.predecessor = None
        self.successors = []
        self.fingers = [None] * BITS
        self._fingers_to_me = BITS
        self._log("create", "")

    def join(self, successor: Peer) -> None:
        """Enter a ring knowing only our successor (found by a lookup of our id)."""
        self.predecessor = None
        self.successors = [] if successor.id == self.me.id else [successor]
        self.fingers = [None] * BITS
        self._fingers_to_me = BITS
        self._log("join", str(successor))

    @property
    def successor(self) -> Peer:
        return self.successors[0] if self.successors else self.me

    def neighbours(self) -> tuple[Peer | None, tuple[Peer, ...]]:
        """A comparable snapshot of predecessor and successor list (for change detection)."""
        return self.predecessor, tuple(self.successors)

    # -- routing ----------------------------------------------------------------------

    def next_hop(self, key: int, exclude: frozenset[int] = frozenset()) -> tuple[bool, Peer]:
        """One step of a lookup for key, ignoring the peers in exclude (known failed).

        (True, s): s is successor(key) as far as we know. (False, n): ask n next; n is
        the known node closest before key, so the remaining distance strictly shrinks.
        """
        me = self.me
        key &= MASK
        if key == me.id:
            # Whoever is asked is alive, and successor(me) is me: no need to route round.
            return True, me
        succ = me
        for s in self.successors:
            if s.id not in exclude:
                succ = s
                break
        if between_right(key, me.id, succ.id):
            return True, succ
        best = self._closest_preceding(key, exclude)
        if best is not None:
            return False, best
        # Cannot happen with a live successor (it precedes key, else we returned above);
        # only reached when everything we know is excluded: we are the best answer.
        return True, succ

    def _closest_preceding(self, key: int, exclude: frozenset[int]) -> Peer | None:
        """The known peer with the largest clockwise distance from me that is < key."""
        me_id = self.me.id
        dkey = (key - me_id) & MASK
        best: Peer | None = None
        best_d = 0
        last: Peer | None = None
        # Fingers repeat in long runs (all low fingers equal the successor); the identity
        # check skips a run cheaply. Scanning all of them, rather than stopping at the
        # first hit from the top as the paper's closest_preceding_finger does, keeps the
        # answer right when churn leaves the table out of order.
        for f in self.fingers:
            if f is None or f is last:
                continue
            last = f
            d = (f.id - me_id) & MASK
            if best_d < d < dkey and f.id not in exclude:
                best, best_d = f, d
        for s in self.successors:
            d = (s.id - me_id) & MASK
            if best_d < d < dkey and s.id not in exclude:
                best, best_d = s, d
        p = self.predecessor
        if p is not None:
            d = (p.id - me_id) & MASK
            if best_d < d < dkey and p.id not in exclude:
                best = p
        return best

    def responsible_for(self, key: int) -> bool:
        """Whether key lies in (predecessor, me], i.e. this node owns it."""
        if self.predecessor is None:
            return True
        return between_right(key & MASK, self.predecessor.id, self.me.id)

    def serves(self, key: int) -> bool:
        """Whether this node answers for ``key`` now: ``responsible_for``, except that a
        node with successors but no predecessor yet answers for nothing.

        Chord's rule makes a node with no known predecessor own every key. Right after a
        join that is false for all but a sliver of the ring: until stabilization tells
        it its predecessor, requests are routed on (to the previous owner, who still has
        the records) rather than answered from an empty shard. A node alone serves all.
        """
        if self.predecessor is None and any(p.id != self.me.id for p in self.successors):
            return False
        return self.responsible_for(key)

    def replica_peers(self, k: int) -> list[Peer]:
        """Where the replicas of my keys go: me and my first k-1 successors."""
        return [self.me, *self.successors[: max(k - 1, 0)]]

    def known_peers(self) -> list[Peer]:
        """Every distinct peer in the routing state (not me), predecessor first."""
        seen: dict[int, Peer] = {}
        if self.predecessor is not None:
            seen[self.predecessor.id] = self.predecessor
        for p in self.successors:
            seen.setdefault(p.id, p)
        for f in self.fingers:
            if f is not None:
                seen.setdefault(f.id, f)
        seen.pop(self.me.id, None)
        return list(seen.values())

    # -- stabilization ----------------------------------------------------------------

    def on_stabilize(self, succ: Peer, succ_pred: Peer | None, succ_successors: list[Peer]) -> None:
        """Apply what our successor told us about its predecessor and successor list.

        ``succ`` may be me (ring of one): then succ_pred is our own predecessor, and a
        predecessor that is not me becomes our successor, which is how a ring of one
        grows into a ring of two.
        """
        me_id = self.me.id
        head: list[Peer] = [] if succ.id == me_id else [succ]
        if (
            succ_pred is not None
            and succ_pred.id != me_id
            and succ_pred.id != succ.id
            and between(succ_pred.id, me_id, succ.id)
        ):
            head.insert(0, succ_pred)
        new: list[Peer] = []
        last = me_id
        for p in (*head, *succ_successors):
            # Keep the list strictly clockwise from me: stop at the first entry that is
            # not after the previous one, which is where the list wraps past me (or
            # where a confused peer sent an unordered list).
            if len(new) >= self.r or not between(p.id, last, me_id):
                break
            new.append(p)
            last = p.id
        self._set_successors(new, "stabilize")

    def notify(self, candidate: Peer) -> bool:
        """candidate thinks it may be our predecessor; True if we adopted it."""
        if candidate.id == self.me.id:
            return False
        pred = self.predecessor
        if pred is not None and pred.id == candidate.id:
            if pred.addr == candidate.addr:
                return False
            # The same node at a new address (it restarted on another port): a node is
            # the authority on its own address, and the old one answers no more.
            self.predecessor = candidate
            self._log("predecessor", f"{candidate} (moved)")
            return True
        if pred is not None and not between(candidate.id, pred.id, self.me.id):
            return False
        self.predecessor = candidate
        self._log("predecessor", f"{candidate} (notify)")
        if not self.successors:
            # A ring of one learns its first peer here. §5.1 waits for our next
            # stabilize to take it as successor; taking it now closes the two-node ring
            # at once and means no live node is ever without a successor for a round.
            self._set_successors([candidate], "notify")
        return True

    def peer_failed(self, peer: Peer) -> None:
        """peer did not answer at its address: forget it everywhere.

        A failure is a fact about one address: an entry with the same id at another
        address is that node restarted on a new port (learnt since from itself or from
        others) and stays. Forgetting by id alone let every lookup through a stale
        finger knock the restarted node out of the tables again."""
        if peer.id == self.me.id:
            return
        dropped = False
        if self.predecessor == peer:
            self.predecessor = None
            dropped = True
        for i, f in enumerate(self.fingers):
            if f == peer:
                self.fingers[i] = None
                dropped = True
        if peer in self.successors:
            self._set_successors([s for s in self.successors if s != peer], "failed")
            dropped = True
        if dropped:
            self._log("failed", str(peer))
        if not self.successors:
            self._refill_successor()

    def _refill_successor(self) -> None:
        """With no successor left, take the nearest peer we still know (see rule 6)."""
        known = [p for p in self.fingers if p is not None]
        if self.predecessor is not None:
            known.append(self.predecessor)
        if known:
            nearest = min(known, key=lambda p: distance(self.me.id, p.id))
            self._set_successors([nearest], "refill")

    # -- ring merge (rule 8) ------------------------------------------------------------

    def on_merge_probe(self, found: Peer) -> bool:
        """Apply the answer of a lookup of successor(me + 1) made through a random
        known member, which may live in another ring; True if we took it as successor.

        After a partition heals, each side has settled into a consistent ring of its
        own, and stabilization alone never joins them: every node asks only its own
        successor. The remedy: look our own id up now and then through a node we knew. If
        the answer lies between us and our successor, it is a closer successor we did
        not know: adopting it weaves the two rings together one link at a time, and
        stabilization/notify do the rest (the answer's old predecessor learns of us
        through it). An answer that is us or beyond our successor changes nothing.
        """
        if found.id == self.me.id:
            return False
        if self.successors and not between(found.id, self.me.id, self.successors[0].id):
            return False
        # found precedes every entry of the list, so the list stays strictly clockwise.
        self._set_successors([found, *self.successors][: self.r], "merge")
        return True

    # -- fingers ----------------------------------------------------------------------

    def next_finger(self) -> tuple[int, int]:
        """The next finger to refresh by a lookup: (index, start key).

        Fingers that the previous finger covers are filled in on the way (rule 5).
        Fingers above the lowest one whose lookup came back to us are cleared without a
        lookup: if successor(me + 2**k) is me, no node lies in [me + 2**k, me), so the
        same holds for every larger k (finger k itself is still looked up each cycle,
        which notices a node arriving there). In a small or lopsided ring this cuts a
        cycle from ~160 lookups to a handful. If nothing needs a lookup the last index
        looked at is returned, so the caller always has something useful to do.
        """
        me_id = self.me.id
        i = self._finger_cursor
        for _ in range(BITS):
            i = self._finger_cursor
            self._finger_cursor = (i + 1) % BITS
            if i == 0:
                # Finger 0 is successor(me + 1): our successor, no lookup needed.
                self.fingers[0] = self.successors[0] if self.successors else None
                continue
            prev = self.fingers[i - 1]
            if prev is not None and distance(me_id, prev.id) >= (1 << i):
                self.fingers[i] = prev
                if i >= self._fingers_to_me:
                    self._fingers_to_me = BITS  # a node lies past it after all
                continue
            if i > self._fingers_to_me:
                self.fingers[i] = None
                continue
            return i, finger_start(me_id, i)
        return i, finger_start(me_id, i)

    def set_finger(self, i: int, peer: Peer) -> None:
        """Record the lookup result for finger i (a result equal to me means "none")."""
        if not 0 <= i < BITS:
            raise ValueError(f"finger index {i} out of range")
        if peer.id == self.me.id:
            self.fingers[i] = None
            self._fingers_to_me = min(self._fingers_to_me, i)
        else:
            self.fingers[i] = peer
            if i >= self._fingers_to_me:
                self._fingers_to_me = BITS

    # -- graceful leave ---------------------------------------------------------------

    def leave_info(self) -> tuple[Peer | None, list[Peer]]:
        """What our neighbours need when we leave: our predecessor and successor list."""
        return self.predecessor, list(self.successors)

    def on_neighbour_leaving(
        self, leaving: Peer, its_pred: Peer | None, its_successors: list[Peer]
    ) -> None:
        """leaving says goodbye; splice it out using the state it handed us."""
        me_id = self.me.id
        if leaving.id == me_id:
            return
        if self.predecessor is not None and self.predecessor.id == leaving.id:
            # Its predecessor is now ours (it will confirm by notify on its next round).
            ok = its_pred is not None and its_pred.id not in (me_id, leaving.id)
            self.predecessor = its_pred if ok else None
            self._log("predecessor", f"{self.predecessor} (neighbour left)")
        for i, f in enumerate(self.fingers):
            if f is not None and f.id == leaving.id:
                self.fingers[i] = None
        if any(s.id == leaving.id for s in self.successors):
            # Keep our own entries and only extend the tail from its list. Its list
            # may be staler than ours (it may not have stabilized since others left),
            # and merging by ring order could push our live entries out for its dead
            # ones; the pessimistic merge costs at most a stabilize round of list length.
            own = [s for s in self.successors if s.id != leaving.id]
            last = own[-1].id if own else me_id
            for p in its_successors:
                if len(own) >= self.r:
                    break
                if p.id != leaving.id and between(p.id, last, me_id):
                    own.append(p)
                    last = p.id
            self._set_successors(own, "neighbour left")
            if not self.successors:
                self._refill_successor()

    # -- invariants -------------------------------------------------------------------

    def validate_state(self) -> None:
        """Raise AssertionError if a local invariant is broken (run after every step)."""
        me_id = self.me.id
        assert 0 <= me_id <= MASK, "own id off the ring"
        assert len(self.successors) <= self.r, "successor list longer than r"
        last = me_id
        for s in self.successors:
            assert isinstance(s, Peer), f"successor {s!r} is not a Peer"
            assert 0 <= s.id <= MASK, "successor id off the ring"
            assert s.id != me_id, "successor list contains me"
            assert between(s.id, last, me_id), "successor list not strictly clockwise"
            last = s.id
        if self.predecessor is not None:
            assert isinstance(self.predecessor, Peer)
            assert self.predecessor.id != me_id, "predecessor is me"
            assert 0 <= self.predecessor.id <= MASK, "predecessor id off the ring"
        assert len(self.fingers) == BITS, "finger table has the wrong size"
        for f in self.fingers:
            assert f is None or (isinstance(f, Peer) and f.id != me_id), "bad finger"
        assert 0 <= self._finger_cursor < BITS, "finger cursor out of range"
        assert 0 <= self._fingers_to_me <= BITS, "finger bound out of range"
        assert self.events.maxlen == EVENT_LOG_LEN, "event log unbounded"

    # -- helpers ----------------------------------------------------------------------

    def _set_successors(self, new: list[Peer], why: str) -> None:
        old_head = self.successors[0] if self.successors else None
        self.successors = new
        head = new[0] if new else None
        if head != old_head:
            self._log("successor", f"{head} ({why})")

    def _log(self, what: str, detail: str) -> None:
        self.events.append((what, detail))
