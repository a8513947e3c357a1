"""A seeded, in-process simulation of a Chord ring (FoundationDB-style, DESIGN §4).

Many nodes' pure ``ChordState`` machines share one process. The "network" is a direct
call into another node's state; a crashed or departed node is simply absent, and
calling it raises ``ConnectError`` just as the RPC pool would. ``partition`` splits the
nodes into groups that cannot reach each other (a call across groups fails exactly as
a call to a crashed node does) until ``heal``. Everything random comes from one
``random.Random(seed)``, and nodes act in rounds on a virtual clock, so a failing seed
replays exactly.

Node behaviour is not written here: every node runs the step objects of
``sector.routing.steps`` (stabilize, join, fix a finger, check the predecessor, the
merge probe, lookups, graceful leave), the very objects ``ChordDriver`` runs over RPC.
``execute`` is this simulator's executor: it delivers each call a step makes to the
target's state (``serve`` of ``sector.routing.messages``, typed, no wire encoding) or
fails it with ConnectError. What the simulation exercises is thus the production
sequencing; only the pacing is the simulator's own (``round``). The merge probe (rule 8
of ``chord.py``) looks successor(me + 1) up through a random member ever known,
reachable or not, every ``merge_every`` rounds (default 4: 2 s, the driver's
``merge_interval``); it is what joins the rings a healed partition leaves behind, and it
also repairs a side that the partition broke into several rings
(``tests/sim/test_chord_partition.py``).
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterable, Iterator
from typing import TypeVar

from sector.errors import ClusterError, ConnectError
from sector.ids import BITS, MASK, finger_start
from sector.routing.chord import ChordState, Peer
from sector.routing.lookup import Lookup
from sector.routing.steps import (
    CheckPredecessor,
    FixFinger,
    Join,
    Leave,
    MergeProbe,
    RunLookup,
    Stabilize,
    Step,
)

__all__ = ["ChordSim"]

T = TypeVar("T")


def peer(i: int) -> Peer:
    """A peer of id ``i`` with a made-up address (unit tests of the ring)."""
    return Peer(i, f"h{i}:1")


def ring_state(me: int, ids: list[int], r: int = 3) -> ChordState:
    """The converged state of node ``me`` in a ring of ``ids`` (no fingers)."""
    ids = sorted(ids)
    j = ids.index(me)
    st = ChordState(peer(me), succ_list_len=r)
    st.create()
    n = len(ids)
    st.successors = [peer(ids[(j + k) % n]) for k in range(1, min(r, n - 1) + 1)]
    st.predecessor = peer(ids[j - 1]) if n > 1 else None
    st.validate_state()
    return st


class ChordSim:
    """A ring of simulated nodes driven in rounds.

    ``round()`` lets every live node (in a random order) check its predecessor,
    stabilize, run a merge probe every ``merge_every`` rounds (0: never) and refresh
    ``fingers_per_round`` fingers; the virtual clock advances by ``round_seconds``.
    Churn helpers (``join``, ``leave``, ``crash``) and ``partition``/``heal`` act at
    once.
    """

    def __init__(
        self,
        seed: int,
        *,
        succ_list_len: int = 8,
        fingers_per_round: int = 3,
        round_seconds: float = 0.5,
        max_hops: int = 64,
        merge_every: int = 4,
    ) -> None:
        if merge_every < 0:
            raise ValueError("merge_every must be >= 0 (0 disables merge probes)")
        self.seed = seed
        self.rng = random.Random(seed)
        self.r = succ_list_len
        self.fingers_per_round = fingers_per_round
        self.round_seconds = round_seconds
        self.max_hops = max_hops
        self.merge_every = merge_every
        self.now = 0.0
        self.rounds = 0
        self.calls = 0  # remote calls the steps made (answered or failed)
        self.nodes: dict[int, ChordState] = {}  # live nodes only
        self._by_addr: dict[str, ChordState] = {}  # the same, by address: the network
        self._sorted: list[int] = []  # live ids, ascending: the oracle of the true ring
        self._bootstrap: dict[int, str] = {}  # node -> address of the node it joined through
        # Every peer ever in the cluster, dead or alive, in order of arrival: the "known
        # members" a merge probe picks its first hop from.
        self._members: list[Peer] = []
        self._member_set: set[int] = set()
        # While partitioned: node id -> group index. Ids not listed (nodes not named in
        # partition()) are in group self._rest. Empty: no partition.
        self._group: dict[int, int] = {}
        self._rest = 0
        # safe_to_remove's index: which live nodes list each id as a successor, and the
        # live nodes that have no live successor at all. Kept lazily: whatever may have
        # changed a node's list, or the liveness of an entry in it, marks it stale
        # (execute: the caller and every receiver of a message that ``mutates``; a node
        # added or removed: it and the nodes that list it), and the next check re-reads
        # only the stale ones. O(r) a check instead of O(N), which 100,000 nodes need.
        self._listed_by: dict[int, set[int]] = {}
        self._indexed: dict[int, tuple[int, ...]] = {}
        self._orphans: set[int] = set()
        self._stale: set[int] = set()

    # -- the simulated network -------------------------------------------------------

    def rpc(self, caller: int, addr: str) -> ChordState:
        """The state of the node at addr as seen by caller; ConnectError, as the RPC
        pool raises it, if that node crashed or left or a partition separates the two."""
        st = self._by_addr.get(addr)
        if st is None or not self._same_side(caller, st.me.id):
            raise ConnectError(f"{addr} is unreachable", node=addr)
        return st

    def alive(self, peer_id: int) -> bool:
        return peer_id in self.nodes

    def reachable(self, caller: int, peer_id: int) -> bool:
        """Whether a call from caller to peer_id would be answered."""
        return peer_id in self.nodes and self._same_side(caller, peer_id)

    def _same_side(self, a: int, b: int) -> bool:
        g = self._group
        return not g or g.get(a, self._rest) == g.get(b, self._rest)

    def partition(self, groups: list[set[int]]) -> list[set[int]]:
        """Cut the network into groups that cannot reach each other (replacing any
        earlier partition). Live nodes named in no group form one more group; a node
        that joins later is on its bootstrap node's side. Returns every group, that
        last one included if not empty."""
        named: set[int] = set()
        self._group = {}
        for k, grp in enumerate(groups):
            if grp & named:
                raise ValueError("a node is in two groups")
            named |= grp
            for nid in grp:
                self._group[nid] = k
        self._rest = len(groups)
        rest = set(self.nodes) - named
        return [set(g) for g in groups] + ([rest] if rest else [])

    def heal(self) -> None:
        """End the partition: every live node can reach every other again."""
        self._group = {}
        self._rest = 0

    def new_peer(self) -> Peer:
        while True:
            pid = self.rng.getrandbits(BITS)
            addr = f"sim-{pid:040x}"[:16]
            if pid not in self.nodes and addr not in self._by_addr:
                return Peer(pid, addr)

    # -- oracle ----------------------------------------------------------------------

    # With group (a set of node ids, e.g. one of partition()'s), the oracle answers for
    # the ring the live nodes of that group alone should form; None: the whole ring.

    def _ring(self, group: Iterable[int] | None) -> list[int]:
        if group is None:
            return self._sorted
        return sorted(nid for nid in group if nid in self.nodes)

    def true_successor(self, key: int, group: Iterable[int] | None = None) -> int:
        """The id of the live node (of group) that owns key."""
        ids = self._ring(group)
        i = bisect.bisect_left(ids, key & MASK)
        return ids[i % len(ids)]

    def true_neighbours(
        self, node_id: int, group: Iterable[int] | None = None
    ) -> tuple[int | None, list[int]]:
        """(predecessor id, successor ids) of a live node in the true ring (of group)."""
        return self._neighbours_in(self._ring(group), node_id)

    def _neighbours_in(self, ids: list[int], node_id: int) -> tuple[int | None, list[int]]:
        n = len(ids)
        j = bisect.bisect_left(ids, node_id)
        succ = [ids[(j + k) % n] for k in range(1, min(self.r, n - 1) + 1)]
        pred = ids[(j - 1) % n] if n > 1 else None
        return pred, succ

    def _add(self, st: ChordState, *, sort: bool = True) -> None:
        if st.me.addr in self._by_addr:
            raise ValueError(f"address {st.me.addr} is taken")
        self.nodes[st.me.id] = st
        self._stale.add(st.me.id)
        self._stale |= self._listed_by.get(st.me.id, frozenset())
        self._by_addr[st.me.addr] = st
        if sort:
            bisect.insort(self._sorted, st.me.id)
        else:
            self._sorted.append(st.me.id)  # the caller sorts once at the end
        if st.me.id not in self._member_set:
            self._member_set.add(st.me.id)
            self._members.append(st.me)

    def _remove(self, node_id: int) -> None:
        st = self.nodes.pop(node_id)
        self._stale.add(node_id)
        self._stale |= self._listed_by.get(node_id, frozenset())
        del self._by_addr[st.me.addr]
        self._bootstrap.pop(node_id, None)
        del self._sorted[bisect.bisect_left(self._sorted, node_id)]

    # -- node behaviour: the driver's steps, executed on the simulated network ----------

    def execute(self, caller: int, step: Step[T]) -> T | None:
        """Run step for the node caller until done, as ``ChordDriver._execute`` does
        over RPC; its result. A call to a node that crashed, left or is across a
        partition fails with ConnectError; any other is answered by ``serve`` on the
        target's state, at once."""
        stale = self._stale
        stale.add(caller)
        call = step.start()
        while call is not None:
            self.calls += 1
            try:
                target = self.rpc(caller, call.addr)
            except ConnectError as exc:
                call = step.on_failure(exc)
            else:
                msg = call.msg
                if msg.mutates:
                    stale.add(target.me.id)
                call = step.on_reply(msg.serve(target))
        return step.result

    def stabilize(self, st: ChordState, *, rejoin: bool = True) -> None:
        """``steps.Stabilize``; with rejoin, a node that lost every peer joins again
        through the node it joined through (as the driver does)."""
        via = self._bootstrap.get(st.me.id) if rejoin else None
        self.execute(st.me.id, Stabilize(st, rejoin_via=via, max_hops=self.max_hops))

    def check_predecessor(self, st: ChordState) -> None:
        self.execute(st.me.id, CheckPredecessor(st))

    def fix_finger(self, st: ChordState) -> None:
        self.execute(st.me.id, FixFinger(st, max_hops=self.max_hops))

    def merge_probe(self, st: ChordState) -> bool:
        """``steps.MergeProbe`` through random members ever known other than me (maybe
        dead or across a partition: the driver's member table keeps those too), drawn
        one at a time as the probe asks for them; True if a successor was adopted."""
        me = st.me.id
        starts = self._probe_starts(me) if len(self._members) >= 2 else iter(())
        via = self._bootstrap.get(me)
        step = MergeProbe(st, starts, rejoin_via=via, max_hops=self.max_hops)
        self.execute(me, step)
        return step.adopted

    def _probe_starts(self, me: int) -> Iterator[Peer]:
        members = self._members
        while True:
            i = self.rng.randrange(len(members) - 1)
            yield members[-1] if members[i].id == me else members[i]  # uniform, never me

    def lookup(self, origin: ChordState, key: int) -> tuple[Peer | None, int]:
        """Iterative lookup from origin, as ``ChordDriver.lookup``: (successor(key) or
        None, hops)."""
        lk = Lookup(key, origin.next_hop(key), max_hops=self.max_hops)
        found = self.execute(origin.me.id, RunLookup(origin, lk, origin=True, verify=False))
        return found, lk.hops

    # -- churn ------------------------------------------------------------------------

    def create(self) -> ChordState:
        """The first node of a fresh ring."""
        st = ChordState(self.new_peer(), succ_list_len=self.r)
        st.create()
        self._add(st)
        return st

    def join(self, bootstrap: int | None = None, peer: Peer | None = None) -> ChordState:
        """A new node joins through a live bootstrap node (random if not given). During
        a partition it lands on the bootstrap node's side."""
        me = peer or self.new_peer()
        st = ChordState(me, succ_list_len=self.r)
        if not self.nodes:
            st.create()
            self._add(st)
            return st
        boot = self.nodes[bootstrap if bootstrap is not None else self.random_live()].me
        if self._group:
            self._group[me.id] = self._group.get(boot.id, self._rest)
        try:
            self.execute(me.id, Join(st, boot.addr, max_hops=self.max_hops))
        except ClusterError as exc:
            raise RuntimeError(f"join of {me} through {boot}: {exc}") from None
        self._add(st)
        self._bootstrap[me.id] = boot.addr
        return st

    def leave(self, node_id: int) -> None:
        """Graceful leave: go, telling predecessor and successor (``steps.Leave``)."""
        st = self.nodes[node_id]
        self._remove(node_id)
        self.execute(node_id, Leave(st))

    def crash(self, node_id: int) -> None:
        self._remove(node_id)

    def safe_to_remove(self, node_id: int) -> bool:
        """Whether removing node_id keeps every other node with a live successor.

        This is the simulation's version of "never crash r consecutive successors":
        Chord (§5.2) only promises to repair the ring while each node still knows one
        live successor. A node left alone is fine only if it really is the last one.
        """
        nodes = self.nodes
        if len(nodes) <= 2:
            return len(nodes) == 2
        self._reindex()
        if any(o != node_id for o in self._orphans):
            return False  # someone has no live successor already
        for x in self._listed_by.get(node_id, ()):
            st = nodes[x]
            if not any(s.id != node_id and s.id in nodes for s in st.successors):
                return False
        return True

    def _reindex(self) -> None:
        """Bring safe_to_remove's index up to date for the stale nodes."""
        stale, self._stale = self._stale, set()
        nodes, listed_by, indexed = self.nodes, self._listed_by, self._indexed
        for x in stale:
            for sid in indexed.pop(x, ()):
                listers = listed_by[sid]
                listers.discard(x)
                if not listers:
                    del listed_by[sid]
            st = nodes.get(x)
            if st is None:
                self._orphans.discard(x)
                continue
            ids = indexed[x] = tuple(s.id for s in st.successors)
            for sid in ids:
                listed_by.setdefault(sid, set()).add(x)
            if any(sid in nodes for sid in ids):
                self._orphans.discard(x)
            else:
                self._orphans.add(x)

    def random_live(self) -> int:
        return self._sorted[self.rng.randrange(len(self._sorted))]

    # -- rounds and convergence -------------------------------------------------------

    def round(self) -> None:
        order = list(self.nodes)
        self.rng.shuffle(order)
        for nid in order:
            st = self.nodes.get(nid)
            if st is None:
                continue
            self.check_predecessor(st)
            self.stabilize(st)
            # Each node probes once every merge_every rounds, in a phase of its own.
            if self.merge_every and (self.rounds + nid) % self.merge_every == 0:
                self.merge_probe(st)
            for _ in range(self.fingers_per_round):
                self.fix_finger(st)
        self.rounds += 1
        self.now += self.round_seconds

    def converged(self, group: Iterable[int] | None = None) -> bool:
        """Every node has the true predecessor and successor list, and no dead finger.

        With group (node ids): only its live nodes are checked, against the ring they
        alone form, and a finger outside the group counts as dead. True for every
        group of a partition means each side has settled into a ring of its own.
        """
        ids = self._ring(group)
        inside = set(ids)
        for nid in ids:
            st = self.nodes[nid]
            pred, succ = self._neighbours_in(ids, nid)
            if (st.predecessor.id if st.predecessor else None) != pred:
                return False
            if [s.id for s in st.successors] != succ:
                return False
            if any(f is not None and f.id not in inside for f in st.fingers):
                return False
        return True

    def run_until_converged(
        self, max_rounds: int, groups: Iterable[Iterable[int] | None] = (None,)
    ) -> int:
        """Run rounds until converged (every one of groups; default the whole ring);
        the number of rounds run. Raises if it never is."""
        todo = [None if g is None else set(g) for g in groups]
        for n in range(max_rounds + 1):
            if all(self.converged(g) for g in todo):
                return n
            if n < max_rounds:
                self.round()
        raise AssertionError(f"seed {self.seed}: not converged after {max_rounds} rounds")

    def validate_all(self) -> None:
        for st in self.nodes.values():
            st.validate_state()

    # -- bulk set-up ------------------------------------------------------------------

    def build(self, n: int) -> None:
        """A converged ring of n nodes in one go: set-up, not protocol (the churn
        afterwards is the test).

        Joining 10,000 nodes one by one through the protocol costs many stabilization
        rounds. Here predecessors, successor lists and fingers come from the oracle:
        the state each node would hold once the ring has converged, and exactly what
        ``ChordState.next_finger``/``set_finger`` would leave after one full cycle of
        correct lookups (covered fingers copied, none at or above the first finger whose
        successor is the node itself, ``_fingers_to_me`` set there). 100,000 nodes take
        seconds; the lookups this replaced took minutes.
        """
        nodes = self.nodes
        for _ in range(n):
            st = ChordState(self.new_peer(), succ_list_len=self.r)
            st.create()
            self._add(st, sort=False)
        self._sorted.sort()
        ids = self._sorted
        size = len(ids)
        for j, nid in enumerate(ids):
            st = nodes[nid]
            st.predecessor = nodes[ids[j - 1]].me if size > 1 else None
            st.successors = [
                nodes[ids[(j + k) % size]].me for k in range(1, min(self.r, size - 1) + 1)
            ]
            self._fill_fingers(st, ids)

    def _fill_fingers(self, st: ChordState, ids: list[int]) -> None:
        """Every finger of st from the oracle ring ids (see build)."""
        me = st.me.id
        fingers = st.fingers
        fingers[0] = st.successors[0] if st.successors else None
        i = 1
        while i < BITS:
            prev = fingers[i - 1]
            if prev is not None:
                # prev covers fingers i .. top (their start lies at or before prev).
                end = min(((prev.id - me) & MASK).bit_length(), BITS)
                if end > i:
                    fingers[i:end] = [prev] * (end - i)
                    i = end
                    continue
            owner = ids[bisect.bisect_left(ids, finger_start(me, i)) % len(ids)]
            st.set_finger(i, self.nodes[owner].me)
            if owner == me:
                break  # none in [me + 2**i, me): no finger above this one either
            i += 1

    def grow(self, n: int, *, batch: int = 1, rounds_per_batch: int = 2) -> None:
        """Grow to n live nodes by protocol joins, stabilizing between batches."""
        if not self.nodes:
            self.create()
        while len(self.nodes) < n:
            for _ in range(min(batch, n - len(self.nodes))):
                self.join()
            for _ in range(rounds_per_batch):
                self.round()

    def lookup_stats(
        self, keys: Iterable[int], origins: Iterable[int]
    ) -> tuple[int, int, list[int]]:
        """(correct answers, total, hop counts) for lookups of keys from origins."""
        ok = total = 0
        hops: list[int] = []
        for key, origin in zip(keys, origins, strict=True):
            found, h = self.lookup(self.nodes[origin], key)
            total += 1
            hops.append(h)
            if found is not None and found.id == self.true_successor(key):
                ok += 1
        return ok, total, hops
