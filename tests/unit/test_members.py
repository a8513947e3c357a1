"""Gossip membership table (pure: time is passed in)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sector.errors import ConnectError, Timeout
from sector.node.members import Member, Members, members_from_wire
from sector.node.quorum import SLOW_GRACE, Quorum
from sector.routing.chord import ChordState, Peer


def member(i: int, hb: int = 0, inc: int = 1, state: str = "up") -> Member:
    return Member(
        id=f"{i:040x}",
        addr=f"127.0.0.1:{7000 + i}",
        host=f"h{i}",
        topology="/dc/r",
        pid=100 + i,
        incarnation=inc,
        hb=hb,
        state=state,
    )


def test_newer_heartbeat_replaces_and_older_does_not() -> None:
    t = Members(member(0))
    assert t.merge([member(1, hb=5)], now=0.0)
    t.merge([member(1, hb=3, state="left")], now=1.0)
    got = t.get(member(1).id)
    assert got is not None and got.hb == 5 and got.state == "up"


def test_silent_member_goes_down_after_dead_after() -> None:
    t = Members(member(0), dead_after=4.0)
    t.merge([member(1, hb=1)], now=10.0)
    assert [m.id for m in t.alive(now=13.9)] == [member(0).id, member(1).id]
    assert member(1).id not in {m.id for m in t.alive(now=14.1)}
    t.merge([member(1, hb=2)], now=15.0)
    assert member(1).id in {m.id for m in t.alive(now=15.0)}


def test_suspect_is_down_until_a_newer_heartbeat() -> None:
    t = Members(member(0))
    t.merge([member(1, hb=7)], now=0.0)
    t.suspect(member(1).id)
    assert t.state_of(t.get(member(1).id), 0.0) == "down"  # type: ignore[arg-type]
    t.merge([member(1, hb=7)], now=0.5)  # same heartbeat: still suspect
    assert t.state_of(t.get(member(1).id), 0.5) == "down"  # type: ignore[arg-type]
    t.merge([member(1, hb=8)], now=1.0)
    assert t.state_of(t.get(member(1).id), 1.0) == "up"  # type: ignore[arg-type]


def test_restart_with_new_incarnation_clears_suspicion_even_with_lower_hb() -> None:
    t = Members(member(0))
    t.merge([member(1, hb=500, inc=1)], now=0.0)
    t.suspect(member(1).id)
    t.merge([member(1, hb=1, inc=2)], now=1.0)
    assert t.state_of(t.get(member(1).id), 1.0) == "up"  # type: ignore[arg-type]


def test_own_entry_is_never_overwritten_by_gossip() -> None:
    t = Members(member(0, hb=3, inc=5))
    t.merge([member(0, hb=99, inc=4, state="left")], now=0.0)
    assert t.me.hb == 3 and t.me.state == "up" and t.me.incarnation == 5


def test_a_newer_looking_entry_of_our_own_makes_us_reannounce_above_it() -> None:
    # A stale or forged entry with our id and a high incarnation would otherwise beat
    # every heartbeat we send: we would look dead for ever.
    t = Members(member(0, hb=3, inc=5))
    t.merge([member(0, hb=0, inc=10**6, state="left")], now=0.0)
    assert t.me.state == "up" and t.me.incarnation == 10**6 + 1
    peer = Members(member(1))
    peer.merge([member(0, hb=0, inc=10**6, state="left")], now=0.0)
    peer.merge([t.update_self(1.0)], now=1.0)
    assert peer.state_of(peer.get(member(0).id), 1.0) == "up"  # type: ignore[arg-type]


def test_left_member_is_reported_left_and_forgotten_later() -> None:
    t = Members(member(0), forget_after=60.0)
    t.merge([member(1, hb=1, state="left")], now=0.0)
    assert dict((m.id, s) for m, s in t.view(1.0))[member(1).id] == "left"
    t.expire(now=61.0)
    assert t.get(member(1).id) is None


def test_wire_entries_are_validated() -> None:
    assert members_from_wire(
        [
            {
                "id": "a",
                "addr": "x:1",
                "host": "h",
                "topology": "",
                "pid": 1,
                "incarnation": 1,
                "hb": 0,
            }
        ]
    )
    with pytest.raises(ValueError):
        members_from_wire([{"id": 1}])
    with pytest.raises(ValueError):
        members_from_wire("garbage")


# --------------------------------------------------------------------------- partitions


def test_quorum_needs_a_strict_majority_of_the_members_that_have_not_left() -> None:
    t = Members(member(0), dead_after=4.0)
    t.merge([member(i, hb=1) for i in range(1, 5)], now=0.0)
    assert t.quorum(1.0) == (5, 5) and t.has_quorum(1.0)
    # Cut off from 3 of the 4 others: 2 of 5 reachable, no quorum.
    for i in (2, 3, 4):
        t.suspect(member(i).id)
    assert t.quorum(1.0) == (2, 5) and not t.has_quorum(1.0)
    # A member that left gracefully no longer counts: 2 of 4 is still no majority...
    t.merge([member(4, hb=2, state="left")], now=1.0)
    assert t.quorum(1.0) == (2, 4) and not t.has_quorum(1.0)
    # ...and a silent one is still a member, only down (it may be across a partition).
    t.merge([member(2, hb=5)], now=2.0)
    assert t.quorum(2.0) == (3, 4) and t.has_quorum(2.0)
    assert t.quorum(100.0) == (1, 4)


def test_down_members_are_remembered_far_longer_than_departed_ones() -> None:
    t = Members(member(0), forget_after=600.0, forget_down_after=86400.0)
    t.merge([member(1, hb=1), member(2, hb=1, state="left")], now=0.0)
    t.expire(now=1000.0)
    ids = {m.id for m in t.entries()}
    assert member(1).id in ids and member(2).id not in ids
    t.expire(now=90000.0)
    assert member(1).id not in {m.id for m in t.entries()}


def test_owner_of_is_the_successor_among_reachable_members() -> None:
    t = Members(member(10))
    t.merge([member(20, hb=1), member(30, hb=1)], now=0.0)
    assert t.owner_of(15, now=0.0) == (member(20).id, member(20).addr)
    assert t.owner_of(31, now=0.0) == (member(10).id, member(10).addr)  # wraps round
    t.suspect(member(20).id)
    assert t.owner_of(15, now=0.0) == (member(30).id, member(30).addr)


def test_a_loaded_table_starts_down_until_members_prove_alive() -> None:
    saved = [member(1, hb=7), member(2, hb=7), member(3, hb=1, state="left")]
    t = Members(member(0))
    t.load(saved, now=0.0)
    # A restarted node alone knows it is one of three, not a cluster of one.
    assert t.quorum(0.0) == (1, 3) and not t.has_quorum(0.0)
    t.merge([member(1, hb=8)], now=1.0)
    assert t.quorum(1.0) == (2, 3) and t.has_quorum(1.0)


def test_heard_within_is_a_recent_heartbeat_with_no_failure_since() -> None:
    t = Members(member(0))
    t.merge([member(1, hb=1)], now=10.0)
    assert t.heard_within(member(1).id, 2.0, now=11.5)
    assert not t.heard_within(member(1).id, 2.0, now=12.5)
    assert t.suspect(member(1).id)
    assert not t.suspect(member(1).id)  # already held down: not new
    assert not t.heard_within(member(1).id, 2.0, now=10.5)
    assert not t.heard_within(member(2).id, 2.0, now=10.5)  # never heard of


def quorum_of(t: Members, tmp_path: Path) -> Quorum:
    me = Peer(int(t.me_id, 16), t.me.addr)
    return Quorum(t, ChordState(me), lambda key: True, tmp_path)


def test_a_timeout_is_not_held_against_a_member_heard_from_just_now(tmp_path: Path) -> None:
    now = time.monotonic()
    t = Members(member(0))
    t.merge([member(1, hb=1), member(2, hb=1)], now=now)
    q = quorum_of(t, tmp_path)
    slow = Timeout("node.gossip to 127.0.0.1:7001 timed out after 2 s")
    assert not q.suspect(member(1).id, member(1).addr, slow)
    assert q.refusal() is None and t.state_of(t.get(member(1).id), now) == "up"  # type: ignore[arg-type]
    # A refused connection is a killed node: held down at once, heard from or not.
    gone = ConnectError("cannot connect to 127.0.0.1:7002: connection refused")
    assert q.suspect(member(2).id, member(2).addr, gone)
    assert t.state_of(t.get(member(2).id), now) == "down"  # type: ignore[arg-type]
    # A failure at an address the member no longer has says nothing of it.
    assert q.suspect(member(1).id, "127.0.0.1:9", gone)
    assert t.state_of(t.get(member(1).id), now) == "up"  # type: ignore[arg-type]


def test_a_timeout_holds_down_a_member_not_heard_from_within_the_grace(tmp_path: Path) -> None:
    t = Members(member(0))
    t.merge([member(1, hb=1)], now=time.monotonic() - SLOW_GRACE - 1.0)
    q = quorum_of(t, tmp_path)
    assert q.suspect(member(1).id, member(1).addr, Timeout("timed out"))
    assert t.state_of(t.get(member(1).id), time.monotonic()) == "down"  # type: ignore[arg-type]
