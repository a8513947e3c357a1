"""One topology distance (issue 10): the scheduler's "near" is placement's.

The driver hands the scheduler ``schedule.topology_distance`` of the nodes' hosts and
topology paths (``tests/integration/test_sphere_cancel.py`` checks that wiring on real
nodes). Here: it equals ``placement.topo_distance`` on every pair of any topology, and
a remote steal goes where placement's measure says is nearest.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from sector.sphere.schedule import Scheduler, Work, topology_distance
from sector.storage.placement import FAR, Candidate, topo_distance

NODES = [f"n{i}" for i in range(6)]
HOSTS = st.sampled_from(["", "h1", "h2", "h3"])
# Odd spellings too: placement ignores empty levels, the old driver closure did not.
PATHS = st.sampled_from(
    ["", "/", "/dc1", "/dc1/r1", "/dc1/r2", "/dc2/r1", "/eu/dc1/r1", "dc1/r1", "/dc1/r1/"]
)


def unknown(n: str) -> Candidate:
    return Candidate(node_id=n, addr="", host="", topology="", free=0)


@settings(deadline=None, max_examples=300)
@given(st.dictionaries(st.sampled_from(NODES), st.tuples(HOSTS, PATHS)))
def test_scheduler_distance_is_placements(layout: dict[str, tuple[str, str]]) -> None:
    places = {n: Candidate(n, f"{n}:1", h, p, 0) for n, (h, p) in layout.items()}
    distance = topology_distance(places)
    everyone = [*NODES, "stranger"]  # nodes not in places: unknown topology, own host
    for a in everyone:
        for b in everyone:
            want = topo_distance(places.get(a) or unknown(a), places.get(b) or unknown(b))
            assert distance(a, b) == want, (a, b, layout)
            assert distance(a, b) == distance(b, a)
        assert distance(a, a) == 0


def steal_from(places: dict[str, Candidate], seed: int) -> int:
    """The segment idle node x takes when neither holder can run (no slots): segment 0
    is held by a, 1 by b."""
    sched = Scheduler(
        [Work(0, ("a",), 1), Work(1, ("b",), 1)],
        {"x": 1, "a": 0, "b": 0},
        distance=topology_distance(places),
        rng=random.Random(seed),
    )
    (start,) = sched.schedule(0.0)
    assert start.node == "x" and not start.local
    return start.seg


def test_steal_prefers_the_same_host_then_a_known_place_over_an_unknown_one() -> None:
    x = Candidate("x", "", "box", "/dc1/r1", 0)
    # a on x's host, b in x's rack: the host is nearer (the old closure had both at 1).
    same_host = {"x": x, "a": Candidate("a", "", "box", "/dc1/r1", 0)}
    same_host["b"] = Candidate("b", "", "hb", "/dc1/r1", 0)
    # a of unknown topology, b in another data centre: unknown is FAR (the old closure
    # had both at 3).
    unknown_place = {"x": x, "a": Candidate("a", "", "ha", "", 0)}
    unknown_place["b"] = Candidate("b", "", "hb", "/dc2/r1", 0)
    assert topology_distance(unknown_place)("x", "a") == FAR
    for seed in range(20):  # ties would go either way: no seed may pick the other
        assert steal_from(same_host, seed) == 0
        assert steal_from(unknown_place, seed) == 1
