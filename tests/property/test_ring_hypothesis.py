"""Hypothesis drives a small Chord ring through joins, leaves, crashes and stabilization.

Ids come from hypothesis, so it tries 0, 2**160-1, neighbours one apart and other
interval edge cases that random ids almost never hit. After every step each node's
``validate_state`` must hold and no live node may be cut off from the ring; after the
ring converges, every lookup from every node must find the true owner.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from sector.ids import MASK
from sector.routing.chord import Peer
from sector.testing.chordsim import ChordSim

MAX_NODES = 12
# Successor list lengths to try: short lists make losing every successor reachable (and
# forbidden by safe_to_remove); 8 is the default.
R_CHOICES = [2, 3, 8]
CONVERGE_ROUNDS = 40

# Plain random ids, and ids crowded around the ends of the ring and around each other.
ids = st.one_of(
    st.integers(0, MASK),
    st.integers(0, 64),
    st.integers(MASK - 64, MASK),
    st.sampled_from([1 << 159, (1 << 159) - 1, (1 << 159) + 1]),
)
index = st.integers(0, 10_000)


class RingMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._start(R_CHOICES[0])
        # True while nothing changed since the ring last converged: lookups must be exact.
        self.stable = False
        # A node whose last peer went away is legitimately alone (its successor list
        # still names the dead peer until it notices) until someone joins and it
        # learns of them; nobody_cut_off excuses it until then.
        self.alone_ok: set[int] = set()

    def _remove(self, victim: int, graceful: bool) -> None:
        if len(self.sim.nodes) == 2:
            self.alone_ok |= set(self.sim.nodes) - {victim}
        if graceful:
            self.sim.leave(victim)
        else:
            self.sim.crash(victim)
        self.stable = False

    def _start(self, r: int) -> None:
        self.sim = ChordSim(0, succ_list_len=r, fingers_per_round=2)
        self.sim.join(peer=Peer(1 << 100, "first"))

    @initialize(r=st.sampled_from(R_CHOICES))
    def choose_r(self, r: int) -> None:
        self._start(r)

    def _pick(self, i: int) -> int:
        ids_ = sorted(self.sim.nodes)
        return ids_[i % len(ids_)]

    @precondition(lambda self: len(self.sim.nodes) < MAX_NODES)
    @rule(nid=ids, boot=index)
    def join(self, nid: int, boot: int) -> None:
        if nid in self.sim.nodes:
            return
        self.sim.join(self._pick(boot), Peer(nid, f"n{nid:x}"))
        self.stable = False

    @precondition(lambda self: len(self.sim.nodes) > 1)
    @rule(i=index)
    def leave(self, i: int) -> None:
        victim = self._pick(i)
        if self.sim.safe_to_remove(victim):
            self._remove(victim, graceful=True)

    @precondition(lambda self: len(self.sim.nodes) > 1)
    @rule(i=index)
    def crash(self, i: int) -> None:
        victim = self._pick(i)
        if self.sim.safe_to_remove(victim):
            self._remove(victim, graceful=False)

    @rule(rounds=st.integers(1, 3))
    def stabilize(self, rounds: int) -> None:
        for _ in range(rounds):
            self.sim.round()

    @rule(origin=index, key=ids)
    def lookup(self, origin: int, key: int) -> None:
        found, hops = self.sim.lookup(self.sim.nodes[self._pick(origin)], key)
        # Mid-churn an answer may be stale, but a lookup always ends with one.
        assert found is not None
        assert hops <= self.sim.max_hops
        if self.stable:
            assert found.id == self.sim.true_successor(key)

    @rule()
    def converge(self) -> None:
        self.sim.run_until_converged(CONVERGE_ROUNDS)
        self.stable = True
        for st_ in list(self.sim.nodes.values()):
            for key in [st_.me.id - 1, st_.me.id, st_.me.id + 1, 0, MASK]:
                found, _ = self.sim.lookup(st_, key & MASK)
                assert found is not None
                assert found.id == self.sim.true_successor(key & MASK), (st_, key)

    @invariant()
    def states_valid(self) -> None:
        self.sim.validate_all()

    @invariant()
    def nobody_cut_off(self) -> None:
        if len(self.sim.nodes) < 2:
            return
        for nid, st_ in self.sim.nodes.items():
            if any(s.id in self.sim.nodes for s in st_.successors):
                self.alone_ok.discard(nid)
            else:
                assert nid in self.alone_ok, f"{st_} lost the ring"

    def teardown(self) -> None:
        # Whatever happened, enough stabilization repairs the ring.
        if self.sim.nodes:
            self.converge()


TestRing = RingMachine.TestCase
TestRing.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
