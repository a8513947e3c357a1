"""The repair decisions (pure): what is good, dead or bad, how many copies to make,
where, what to trim, and that a record never loses a good copy."""

from __future__ import annotations

from sector.storage.placement import Candidate
from sector.storage.repair_policy import after_copy, plan, targets

GB = 1 << 30


def node(name: str, rack: str = "", free: int = 100 * GB) -> Candidate:
    return Candidate(node_id=name, addr=f"{name}:7000", host=name, topology=rack, free=free)


def live(*names: str) -> dict[str, Candidate]:
    return {n: node(n) for n in names}


def reps(*names: str) -> list[tuple[str, str]]:
    return [(n, f"{n}:7000") for n in names]


def test_a_file_at_its_target_needs_nothing() -> None:
    p = plan(reps("a", "b", "c"), 3, live("a", "b", "c", "d"))
    assert p.ok and p.need == 0 and p.keep() == reps("a", "b", "c")


def test_a_dead_holder_means_one_new_copy_never_on_a_listed_node() -> None:
    up = live("a", "b", "d", "e")
    p = plan(reps("a", "b", "c"), 3, up)
    assert p.good == reps("a", "b") and p.dead == reps("c") and p.need == 1
    new = targets(p, reps("a", "b", "c"), up | {"c": node("c")}, size=10, seed="x")
    assert len(new) == 1 and new[0].node_id in {"d", "e"}


def test_dead_holders_are_dropped_only_once_rf_good_copies_exist() -> None:
    p = plan(reps("a", "b", "c"), 3, live("a", "d"))
    # One copy made of two needed: the dead ones stay listed (they may come back).
    replicas, delete = after_copy(p, reps("d"))
    assert replicas == reps("a", "d", "b", "c") and delete == []
    replicas, delete = after_copy(p, reps("d", "e"))
    assert replicas == reps("a", "d", "e") and delete == []


def test_nothing_copied_keeps_the_record_as_it_was() -> None:
    p = plan(reps("a", "b", "c"), 3, live("a"))
    replicas, _ = after_copy(p, [])
    assert sorted(replicas) == sorted(reps("a", "b", "c"))


def test_a_bad_copy_is_replaced_then_deleted_but_never_the_last_one() -> None:
    up = live("a", "b", "c", "d")
    p = plan(reps("a", "b", "c"), 3, up, bad={"b"})
    assert p.bad == reps("b") and p.need == 1 and not p.ok
    replicas, delete = after_copy(p, reps("d"))
    assert replicas == reps("a", "c", "d") and delete == reps("b")
    only = plan(reps("b"), 3, up, bad={"b"})
    assert only.good == [] and after_copy(only, [])[0] == reps("b")


def test_a_bad_copy_is_remade_in_place_only_when_no_other_node_can_take_it() -> None:
    # Rule 2b. Three nodes at rf 3: the bad copy's own node is the only place left.
    up = live("a", "b", "c")
    p = plan(reps("a", "b", "c"), 3, up, bad={"b"})
    new = targets(p, reps("a", "b", "c"), up, size=10, seed="x")
    assert [c.node_id for c in new] == ["b"]
    replicas, _ = after_copy(p, reps("b"))
    assert sorted(replicas) == sorted(reps("a", "b", "c"))
    # A fourth node up: the copy goes there, never back onto the bad node.
    up4 = live("a", "b", "c", "d")
    p4 = plan(reps("a", "b", "c"), 3, up4, bad={"b"})
    assert [c.node_id for c in targets(p4, reps("a", "b", "c"), up4, size=10, seed="x")] == ["d"]


def test_extra_copies_are_trimmed_keeping_the_spread() -> None:
    up = {
        "a": node("a", "/dc1/r1"),
        "b": node("b", "/dc1/r1"),
        "c": node("c", "/dc1/r2"),
        "d": node("d", "/dc2/r1"),
    }
    p = plan(reps("a", "b", "c", "d"), 3, up, seed="blob")
    assert len(p.trim) == 1 and p.trim[0][0] in {"a", "b"}  # one of the same-rack pair
    assert len(p.keep()) == 3 and p.need == 0
    p2 = plan(reps("a", "b", "c", "d"), 1, up, seed="blob")
    assert len(p2.keep()) == 1 and len(p2.trim) == 3


def test_a_restarted_node_is_found_at_its_new_address() -> None:
    up = {"a": node("a"), "b": Candidate("b", "b:9999", "b", "", 100 * GB), "c": node("c")}
    p = plan(reps("a", "b", "c"), 3, up)
    assert p.ok and p.good[1] == ("b", "b:9999")
    assert p.keep()[1] == ("b", "b:9999")


def test_duplicates_count_once() -> None:
    p = plan(reps("a", "a", "b"), 3, live("a", "b", "c"))
    assert p.good == reps("a", "b") and p.need == 1


def test_no_target_fits_when_every_node_is_full() -> None:
    up = {"a": node("a"), "b": node("b"), "d": node("d", free=10)}
    p = plan(reps("a", "b", "c"), 3, up)
    assert targets(p, reps("a", "b", "c"), up, size=1000, seed="x") == []


def test_a_draining_copy_is_a_source_not_a_copy_and_is_dropped_once_replaced() -> None:
    up = live("a", "b", "c", "d", "e")
    p = plan(reps("a", "b", "c"), 3, up, draining={"c"})
    assert not p.ok and p.need == 1 and p.moving == reps("c")
    assert p.sources == reps("a", "b", "c")
    # Never a target: the draining node, nor one already listed.
    t = targets(p, reps("a", "b", "c"), up, size=1, seed="s", draining={"c", "d"})
    assert [c.node_id for c in t] == ["e"]
    replicas, delete = after_copy(p, reps("e"))
    assert replicas == reps("a", "b", "e") and delete == reps("c")
    # No copy made yet: the moving copy stays listed (never fewer copies).
    replicas, delete = after_copy(p, [])
    assert replicas == reps("a", "b", "c") and delete == []


def test_the_last_copy_on_a_draining_node_still_feeds_the_repair() -> None:
    p = plan(reps("c"), 2, live("a", "b", "c"), draining={"c"})
    assert p.good == [] and p.sources == reps("c") and p.need == 2
