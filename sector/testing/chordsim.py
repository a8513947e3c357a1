"""A seeded, in-process simulation of a Chord ring (FoundationDB-style, DESIGN §4).

Many nodes' pure ``ChordState`` machines share one process. The "network" is a direct
call into another node's state; a crashed or departed node is simply absent, and
calling it raises ``ConnectError`` just as the RPC pool would. ``partition`` splits the
nodes into groups that cannot reach each other (a call across groups fails exactly as
a call to a crashed node does) until ``heal``. Everything random comes from one
``random.Random(seed)``, and nodes act in rounds on a virtual clock, so a failing seed
replays exactly.

The node behaviour here mirrors ``sector.routing.driver.ChordDriver`` step for step
(stabilize, notify, fix one finger, check the predecessor, the merge probe, iterative
lookup with failure exclusion, graceful leave), minus the awaits. Keep the two in
step. The merge probe (rule 8 of ``chord.py``, ``merge_probe``) looks successor(me + 1)
up through a random member ever known, reachable or not, every ``merge_every`` rounds
(default 4: 2 s, the driver's ``merge_interval``); it is what joins the rings a healed
partition leaves behind, and it also repairs a side that the partition broke into
several rings (``tests/sim/test_chord_partition.py``).
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterable

from sector.errors import ConnectError
from sector.ids import BITS, MASK, distance, finger_start
from sector.routing.chord import ChordState, Peer
from sector.routing.lookup import Lookup

__all__ = ["ChordSim"]

PROBE_TRIES = 3  # as ChordDriver.merge_probe_once: members tried until one answers


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
        self.nodes: dict[int, ChordState] = {}  # live nodes only
        self._sorted: list[int] = []  # live ids, ascending: the oracle of the true ring
        self._bootstrap: dict[int, int] = {}  # node -> the node it joined through
        # Every id ever in the cluster, dead or alive, in order of arrival: the "known
        # members" a merge probe picks its first hop from.
        self._members: list[int] = []
        self._member_set: set[int] = set()
        # While partitioned: node id -> group index. Ids not listed (nodes not named in
        # partition()) are in group self._rest. Empty: no partition.
        self._group: dict[int, int] = {}
        self._rest = 0

    # -- the simulated network -------------------------------------------------------

    def rpc(self, caller: int, peer: Peer) -> ChordState:
        """The state of peer as seen by caller; ConnectError if peer crashed or left,
        or a partition separates the two."""
        st = self.nodes.get(peer.id)
        if st is None or not self._same_side(caller, peer.id):
            raise ConnectError(f"{peer} is unreachable", node=peer.addr)
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
            if pid not in self.nodes:
                return Peer(pid, f"sim-{pid:040x}"[:16])

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

    def _add(self, st: ChordState) -> None:
        self.nodes[st.me.id] = st
        bisect.insort(self._sorted, st.me.id)
        if st.me.id not in self._member_set:
            self._member_set.add(st.me.id)
            self._members.append(st.me.id)

    def _remove(self, node_id: int) -> None:
        del self.nodes[node_id]
        self._bootstrap.pop(node_id, None)
        del self._sorted[bisect.bisect_left(self._sorted, node_id)]

    # -- node behaviour (mirrors ChordDriver) -----------------------------------------

    def stabilize(self, st: ChordState, *, rejoin: bool = True) -> None:
        # As ChordDriver.stabilize_once: a dead successor is dropped and the next one
        # asked; an adopted closer successor is asked again at once (up to r times); a
        # node that lost every peer tries its bootstrap node again.
        me = st.me.id
        for _ in range(2 * self.r + 1):
            succ = st.successor
            if succ.id == me:
                st.on_stabilize(succ, st.predecessor, [])
                if st.successor.id == me:
                    break
                continue
            try:
                remote = self.rpc(me, succ)
            except ConnectError:
                st.peer_failed(succ.id)
                continue
            st.on_stabilize(succ, remote.predecessor, list(remote.successors))
            if st.successor.id == succ.id:
                break
        succ = st.successor
        if succ.id != me:
            try:
                self.rpc(me, succ).notify(st.me)
            except ConnectError:
                st.peer_failed(succ.id)
        elif rejoin and st.predecessor is None:
            boot = self._bootstrap.get(me)
            if boot is not None and self.reachable(me, boot):
                found = self._find_successor(st.me, boot)
                if found is not None:
                    st.join(found)
                    self.stabilize(st, rejoin=False)

    def check_predecessor(self, st: ChordState) -> None:
        # As the driver's ping: a predecessor we cannot reach counts as failed.
        pred = st.predecessor
        if pred is not None and not self.reachable(st.me.id, pred.id):
            st.peer_failed(pred.id)

    def fix_finger(self, st: ChordState) -> None:
        i, start = st.next_finger()
        found, _ = self.lookup(st, start)
        if found is not None and self.reachable(st.me.id, found.id):
            st.set_finger(i, found)

    def merge_probe(self, st: ChordState) -> bool:
        """Rule 8, as ChordDriver.merge_probe_once: look successor(me + 1) up through a
        random known member other than me (any node ever in the cluster, maybe dead or
        across a partition) the way a joiner looks up its own id, and offer the answer
        to ``on_merge_probe``; if adopted, stabilize at once. True if adopted."""
        me = st.me.id
        members = self._members
        if len(members) < 2:
            return False
        found = None
        for _ in range(PROBE_TRIES):
            i = self.rng.randrange(len(members) - 1)
            member = members[-1] if members[i] == me else members[i]  # uniform, never me
            if not self.reachable(me, member):
                continue  # the driver's call to it fails: it tries another
            lk = Lookup((me + 1) & MASK, (False, self.nodes[member].me), max_hops=self.max_hops)
            found, _ = self._run(st.me, None, lk, verify=True)
            if found is not None:
                break
        if found is None or not st.on_merge_probe(found):
            return False
        self.stabilize(st)
        return True

    def lookup(self, origin: ChordState, key: int) -> tuple[Peer | None, int]:
        """Iterative lookup from origin: (successor(key) or None, hops)."""
        lk = Lookup(key, origin.next_hop(key), max_hops=self.max_hops)
        return self._run(origin.me, origin, lk)

    def _run(
        self, caller: Peer, origin: ChordState | None, lk: Lookup, *, verify: bool = False
    ) -> tuple[Peer | None, int]:
        """Drive lk to the end from caller, as ChordDriver._run. origin None: a lookup
        made without our own table (a joiner's through its bootstrap, a merge probe's
        through a random member): it routes around caller, who may still be listed,
        and records no failures. With verify, an unreachable answer reopens it."""
        me = caller.id
        skip_me = origin is None
        while True:
            if lk.done:
                res = lk.result
                if skip_me and res is not None and res.id == me:
                    lk.on_failure(res)
                    continue
                if not verify or res is None or self.reachable(me, res.id):
                    break
                if origin is not None:
                    origin.peer_failed(res.id)
                lk.on_failure(res)
                continue
            nxt = lk.next_peer
            if nxt is None:
                if origin is None:  # no table of our own to fall back on
                    return None, lk.hops
                lk.restart(origin.next_hop(lk.key, lk.exclude))
                continue
            if skip_me and nxt.id == me:
                lk.on_failure(nxt)
                continue
            try:
                remote = self.rpc(me, nxt)
            except ConnectError:
                if origin is not None:
                    origin.peer_failed(nxt.id)
                lk.on_failure(nxt)
                continue
            lk.on_reply(*remote.next_hop(lk.key, lk.exclude))
        return lk.result, lk.hops

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
        boot = bootstrap if bootstrap is not None else self.random_live()
        if self._group:
            self._group[me.id] = self._group.get(boot, self._rest)
        found = self._find_successor(me, boot)
        if found is None:
            raise RuntimeError(f"join of {me} through {boot:x} found no live successor")
        st.join(found)
        self._add(st)
        self._bootstrap[me.id] = boot
        self.stabilize(st, rejoin=False)
        return st

    def _find_successor(self, me: Peer, boot: int) -> Peer | None:
        # The joiner asks the bootstrap node first, exactly like ChordDriver.join, and
        # checks that the answer is alive (the driver pings it).
        lk = Lookup(me.id, (False, self.nodes[boot].me), max_hops=self.max_hops)
        found, _ = self._run(me, None, lk, verify=True)
        return found

    def leave(self, node_id: int) -> None:
        """Graceful leave: tell predecessor and successor, then go."""
        st = self.nodes[node_id]
        pred, succs = st.leave_info()
        self._remove(node_id)
        told: set[int] = set()
        for nb in (pred, succs[0] if succs else None):
            if nb is None or nb.id in told or not self.reachable(node_id, nb.id):
                continue
            told.add(nb.id)
            self.nodes[nb.id].on_neighbour_leaving(st.me, pred, succs)

    def crash(self, node_id: int) -> None:
        self._remove(node_id)

    def safe_to_remove(self, node_id: int) -> bool:
        """Whether removing node_id keeps every other node with a live successor.

        This is the simulation's version of "never crash r consecutive successors":
        Chord (§5.2) only promises to repair the ring while each node still knows one
        live successor. A node left alone is fine only if it really is the last one.
        """
        if len(self.nodes) <= 2:
            return len(self.nodes) == 2
        for st in self.nodes.values():
            if st.me.id == node_id:
                continue
            if not any(s.id != node_id and s.id in self.nodes for s in st.successors):
                return False
        return True

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
        """A converged ring of n nodes in one go (the churn afterwards is the test).

        Joining 1,000 nodes one by one through the protocol costs many stabilization
        rounds; here predecessors and successor lists come from the oracle and every
        finger from a lookup through the simulated network. Fingers are filled level by
        level from the shortest up, so the lookups for level i already route over the
        shorter fingers of every node (a few hops each, not N / r along successors).
        """
        peers = [self.new_peer() for _ in range(n)]
        for p in peers:
            st = ChordState(p, succ_list_len=self.r)
            st.create()
            self._add(st)
        by_id = {p.id: p for p in peers}
        for nid, st in self.nodes.items():
            pred, succ = self.true_neighbours(nid)
            st.predecessor = by_id[pred] if pred is not None else None
            st.successors = [by_id[s] for s in succ]
            st.fingers[0] = st.successors[0] if st.successors else None
        for i in range(1, BITS):
            for st in self.nodes.values():
                prev = st.fingers[i - 1]
                if prev is not None and distance(st.me.id, prev.id) >= (1 << i):
                    st.fingers[i] = prev  # covered, as in ChordState.next_finger
                    continue
                found, _ = self.lookup(st, finger_start(st.me.id, i))
                if found is not None:
                    st.set_finger(i, found)

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
