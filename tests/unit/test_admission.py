"""The server's slot and input rules (``sector.transport.admission``), on their own."""

from __future__ import annotations

import pytest

from sector.transport.admission import SMALL, Admission, InputBudget, Refused


def slots(total: int = 10, per_source: int = 8, strangers: int = 4, per: int = 2) -> Admission:
    return Admission(
        total=total, per_source=per_source, strangers=strangers, strangers_per_source=per
    )


def test_strangers_of_one_address_are_refused_past_their_share() -> None:
    a = slots()
    assert a.admit("a1", "10.0.0.1") is None
    assert a.admit("a2", "10.0.0.1") is None
    with pytest.raises(Refused, match=r"2 unidentified connections from 10\.0\.0\.1"):
        a.admit("a3", "10.0.0.1")
    a.identified("a1")  # proved itself: no longer counts against the strangers' share
    assert a.admit("a3", "10.0.0.1") is None
    assert a.counts() == {"open": 3, "strangers": 2, "refused": 1, "evicted": 0}


def test_a_full_strangers_budget_evicts_the_oldest_of_the_busiest_address() -> None:
    a = slots(strangers=4, per=3)
    for i in range(3):
        a.admit(f"x{i}", "10.0.0.9")  # the flood: three from one address
    a.admit("y0", "10.0.0.2")
    # A newcomer finds room: the flood's oldest goes, not the other address's one.
    assert a.admit("user", "10.0.0.3") == "x0"
    assert not a.is_stranger("x0") and a.is_stranger("y0")
    assert a.admit("user2", "10.0.0.4") == "x1"
    assert a.counts()["strangers"] == 4 and a.evicted == 2
    a.release("x0")  # the evicted connection's own end: already gone, ignored
    assert len(a) == 4


def test_identified_connections_always_find_a_slot_while_strangers_hold_some() -> None:
    a = slots(total=4, strangers=2, per=2)
    a.admit("n1", "10.0.0.1")
    a.identified("n1")
    a.admit("n2", "10.0.0.1")
    a.identified("n2")
    a.admit("s1", "10.0.0.7")
    a.admit("s2", "10.0.0.7")
    # Every slot taken, two by strangers: the next one (a node, before its handshake)
    # still gets in, in place of the oldest stranger.
    assert a.admit("n3", "10.0.0.2") == "s1"
    a.identified("n3")
    assert a.admit("n4", "10.0.0.2") == "s2"
    a.identified("n4")
    with pytest.raises(Refused, match="all 4 connections are identified"):
        a.admit("n5", "10.0.0.2")


def test_the_per_address_limit_counts_identified_connections_too() -> None:
    a = slots(per_source=2, strangers=4, per=4)
    for k in ("a", "b"):
        a.admit(k, "10.0.0.1")
        a.identified(k)
    with pytest.raises(Refused, match=r"2 connections from 10\.0\.0\.1"):
        a.admit("c", "10.0.0.1")
    a.release("a")
    assert a.admit("c", "10.0.0.1") is None


def test_input_budget_per_peer_node_and_strangers() -> None:
    k = SMALL + 1  # a unit of frames too big to skip the node-wide budget
    b = InputBudget(per_peer=10 * k, node=15 * k, strangers=6 * k)
    assert b.fits("p", 100 * k, False)  # nothing reserved: any one frame goes through
    b.take("p", 8 * k, False)
    assert not b.fits("p", 3 * k, False)  # the peer's 10
    assert b.fits("q", 7 * k, False)
    b.take("q", 7 * k, False)
    assert not b.fits("r", k, False)  # the node's 15
    assert b.fits("r", SMALL, False)  # but a small frame of an identified peer goes in
    assert b.fits("r", 2 * k, True)  # strangers have a share of their own
    b.give_back("q", 7 * k, False)
    b.take("s", 5 * k, True)
    assert not b.fits("t", 2 * k, True)  # strangers' 6
    assert b.fits("t", 2 * k, False)  # an identified peer is not held by the strangers' share
    b.give_back("s", 5 * k, True)
    b.give_back("p", 8 * k, False)
    assert not b.used and b.total == 0 and b.by_strangers == 0
