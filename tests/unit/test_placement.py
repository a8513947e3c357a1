"""Replica placement: topology distance, spread over racks, hosts, free space, balance."""

from __future__ import annotations

from collections import Counter

import pytest

from sector.storage.placement import FAR, Candidate, choose, topo_distance

GB = 1 << 30


def node(name: str, host: str, topology: str, free: int = 100 * GB) -> Candidate:
    return Candidate(node_id=name, addr=f"{host}:7000", host=host, topology=topology, free=free)


def rack(c: Candidate) -> str:
    return c.topology


# 3 racks x 2 hosts in one data centre.
CLUSTER = [node(f"n{r}{h}", f"h{r}{h}", f"/dc1/r{r}") for r in range(1, 4) for h in range(1, 3)]
BY_NAME = {c.node_id: c for c in CLUSTER}


def test_topo_distance() -> None:
    a = node("a", "ha", "/dc1/r1")
    assert topo_distance(a, node("a2", "ha", "/dc1/r1")) == 0  # same host
    assert topo_distance(a, node("b", "hb", "/dc1/r1")) == 1  # same rack
    assert topo_distance(a, node("c", "hc", "/dc1/r2")) == 2  # same dc
    assert topo_distance(a, node("d", "hd", "/dc2/r1")) == 3  # other dc
    assert topo_distance(a, node("e", "he", "/eu/dc1/r1")) == 4  # other region, deeper tree
    assert topo_distance(a, node("f", "hf", "")) == FAR  # unknown = far
    assert topo_distance(node("g", "hg", ""), node("h", "hh", "")) == FAR
    assert topo_distance(node("g", "hg", ""), node("g2", "hg", "")) == 0
    # Hostless nodes are hosts of their own.
    assert topo_distance(node("x", "", "/dc1/r1"), node("y", "", "/dc1/r1")) == 1
    assert topo_distance(a, node("b", "hb", "/dc1/r1")) == topo_distance(
        node("b", "hb", "/dc1/r1"), a
    )


@pytest.mark.parametrize("seed", [f"/file{i}" for i in range(50)])
def test_three_copies_go_to_three_racks(seed: str) -> None:
    got = choose(CLUSTER, 3, size=GB, seed=seed)
    assert len(got) == 3
    assert len({rack(c) for c in got}) == 3
    assert len({c.host for c in got}) == 3


def test_first_copy_is_the_writers_own_node() -> None:
    for w in CLUSTER:
        for i in range(20):
            got = choose(CLUSTER, 3, size=GB, writer=w, seed=f"/f{i}")
            assert got[0] == w
            assert {rack(c) for c in got} == {"/dc1/r1", "/dc1/r2", "/dc1/r3"}


def test_first_copy_near_a_writer_that_is_not_a_node_or_is_full() -> None:
    client = Candidate("client", "", "h21", "/dc1/r2", 0)  # a client on a node's host
    assert choose(CLUSTER, 1, size=GB, writer=client)[0].node_id == "n21"
    full = [
        node(c.node_id, c.host, c.topology, free=0) if c.node_id == "n21" else c for c in CLUSTER
    ]
    got = choose(full, 3, size=GB, writer=BY_NAME["n21"], seed="/x")
    assert got[0].node_id == "n22"  # same rack, other host
    assert len({rack(c) for c in got}) == 3


def test_further_copies_maximise_distance_across_data_centres() -> None:
    nodes = [
        node("a1", "a1", "/dc1/r1"),
        node("a2", "a2", "/dc1/r1"),
        node("b1", "b1", "/dc1/r2"),
        node("c1", "c1", "/dc2/r1"),
    ]
    got = choose(nodes, 3, size=1, writer=nodes[0], seed="s")
    assert [c.node_id for c in got] == ["a1", "c1", "b1"]


def test_never_two_copies_on_one_host() -> None:
    # Two hosts with three nodes each: at most two copies, whatever r is.
    nodes = [node(f"{h}{i}", h, "/dc1/r1") for h in ("x", "y") for i in range(3)]
    for i in range(50):
        got = choose(nodes, 3, size=1, seed=str(i))
        assert len(got) == 2 and len({c.host for c in got}) == 2
    # Nor on the host of an existing copy.
    got = choose(nodes, 3, size=1, existing=[nodes[0]])
    assert [c.host for c in got] == ["y"]


def test_existing_copies_count() -> None:
    existing = [BY_NAME["n11"], BY_NAME["n21"]]
    got = choose(CLUSTER, 3, size=GB, existing=existing, seed="/a")
    assert len(got) == 1 and rack(got[0]) == "/dc1/r3"
    assert choose(CLUSTER, 2, size=GB, existing=existing) == []
    assert choose(CLUSTER, 0, size=GB) == []


def test_full_nodes_are_skipped() -> None:
    nodes = [
        node(c.node_id, c.host, c.topology, free=GB if c.topology == "/dc1/r1" else 10 * GB)
        for c in CLUSTER
    ]
    for i in range(30):
        got = choose(nodes, 3, size=2 * GB, seed=str(i))
        assert {rack(c) for c in got} == {"/dc1/r2", "/dc1/r3"}  # rack 1 is too full
        assert len(got) == 3 and len({c.host for c in got}) == 3
    # min_free keeps a reserve on every node.
    assert choose(nodes, 3, size=GB, min_free=9 * GB + 1) == []
    assert len(choose(nodes, 3, size=GB, min_free=9 * GB)) == 3


def test_fewer_copies_when_the_cluster_is_small() -> None:
    assert len(choose(CLUSTER[:2], 3, size=1)) == 2
    assert choose([], 3, size=1) == []


def test_deterministic_and_independent_of_candidate_order() -> None:
    for i in range(20):
        a = choose(CLUSTER, 3, size=1, seed=f"/f{i}")
        b = choose(list(reversed(CLUSTER)), 3, size=1, seed=f"/f{i}")
        assert a == b


def test_even_spread_over_1000_seeds() -> None:
    counts: Counter[str] = Counter()
    for i in range(1000):
        for c in choose(CLUSTER, 3, size=1, seed=f"/data/file{i}"):
            counts[c.node_id] += 1
    # One copy per rack per file: each host of a rack expects 500 of the 1000.
    assert set(counts) == set(BY_NAME)
    assert all(430 <= n <= 570 for n in counts.values()), counts


def test_even_spread_with_unknown_topology() -> None:
    nodes = [node(f"u{i}", f"hu{i}", "") for i in range(6)]
    counts: Counter[str] = Counter()
    for i in range(1000):
        for c in choose(nodes, 2, size=1, seed=f"/data/file{i}"):
            counts[c.node_id] += 1
    assert all(280 <= n <= 390 for n in counts.values()), counts  # 333 expected


def test_duplicate_candidates_count_once() -> None:
    got = choose([CLUSTER[0], CLUSTER[0], CLUSTER[2]], 3, size=1)
    assert sorted(c.node_id for c in got) == ["n11", "n21"]
