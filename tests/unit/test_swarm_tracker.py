"""The swarm tracker's rules (``sector/swarm/tracker.py``) and a fetch's piece
schedule (``sector/swarm/schedule.py``), one behaviour at a time; then hypothesis
drives random event sequences and checks the invariants after each."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sector.swarm.schedule import Plan, bits_from, bits_to, lowest
from sector.swarm.tracker import Ref, Source, Tracker, common_prefix

B = "ab" * 16
H = [Ref(f"h{i}", f"10.0.0.{i}:1", f"/dc1/r{i}") for i in range(3)]
FULL = (1 << 8) - 1


def peer(i: int, topo: str = "") -> Ref:
    return Ref(f"p{i:04d}", f"10.1.0.{i}:1", topo)


def ids(srcs: list[Source]) -> list[str]:
    return [s.id for s in srcs]


def test_a_swarm_starts_from_its_holders() -> None:
    t = Tracker(degree=4, uploads=4)
    got = t.announce(B, 8, peer(1), 0, H, 0.0)
    assert sorted(ids(got)) == ["h0", "h1", "h2"]
    assert all(s.have is None and s.holder for s in got)
    t.validate()


def test_no_holder_serves_everyone_the_rest_are_pipelined() -> None:
    t = Tracker(degree=2, uploads=3)
    one = [H[0]]
    got = {}
    for i in range(20):
        got[i] = ids(t.announce(B, 8, peer(i), 0, one, 0.0))
        t.validate()
    assert sum("h0" in g for g in got.values()) == 3  # the holder's upload bound
    for i in range(3, 20):
        assert got[i], f"peer {i} got no source"
        # pointed at peers that joined before it (ahead of it, and fed)
        assert all(s < peer(i).id for s in got[i])
    assert max(t.swarms[B].load.values()) <= 3


def test_peers_with_pieces_come_before_holders_and_the_same_rack_first() -> None:
    t = Tracker(degree=2, uploads=8)
    t.announce(B, 8, peer(1, "/dc1/r1"), 0b1111, H, 0.0)
    t.announce(B, 8, peer(2, "/dc2/r1"), 0b1111, H, 0.0)
    t.announce(B, 8, peer(3, "/dc1/r2"), 0b1111, H, 0.0)
    got = t.announce(B, 8, peer(4, "/dc1/r1"), 0, H, 0.0)
    assert ids(got) == ["p0001", "p0003"]  # both have pieces; r1 first, then /dc1
    assert got[0].have == 0b1111
    assert common_prefix("/dc1/r1", "/dc1/r2") == 1 and common_prefix("", "/a") == 0


def test_sources_are_kept_while_useful_and_a_complete_peer_is_a_seed() -> None:
    t = Tracker(degree=2, uploads=8)
    t.announce(B, 8, peer(1), 0b0011, [], 0.0)
    first = ids(t.announce(B, 8, peer(2), 0, [], 0.0))
    assert first == ["p0001"]
    assert t.announce(B, 8, peer(2), 0b0001, [], 1.0) != []  # p1 still has piece 1
    assert t.announce(B, 8, peer(1), FULL, [], 1.0) == []  # done: no sources
    src = t.announce(B, 8, peer(2), 0b0011, [], 2.0)
    assert ids(src) == ["p0001"] and src[0].have is None  # a seed: every piece
    t.validate()


def test_failed_and_bad_sources_are_never_returned() -> None:
    t = Tracker(degree=4, uploads=8, fail_ttl=30.0, bad_ttl=100.0)
    t.announce(B, 8, peer(1), 0b1, H, 0.0)
    t.announce(B, 8, peer(2), 0b10, H, 0.0)
    got = t.announce(B, 8, peer(3), 0, H, 0.0, failed=["h0"], bad=["p0001"])
    assert "h0" not in ids(got) and "p0001" not in ids(got)
    for now in (1.0, 10.0, 29.0):
        assert "h0" not in ids(t.announce(B, 8, peer(3), 0, H, now))
    assert "h0" in ids(t.announce(B, 8, peer(4), 0, H, 31.0))  # its mark lapsed
    assert "p0001" not in ids(t.announce(B, 8, peer(5), 0, H, 50.0))
    t.validate()
    # a peer reported failed is forgotten, and is back with its next announce
    t.announce(B, 8, peer(6), 0, H, 51.0, failed=["p0002"])
    assert "p0002" not in t.swarms[B].peers
    t.announce(B, 8, peer(2), 0b10, H, 52.0)
    assert "p0002" in t.swarms[B].peers


def test_silent_peers_are_forgotten_seeds_later() -> None:
    t = Tracker(peer_ttl=10.0, seed_ttl=100.0)
    t.announce(B, 8, peer(1), 0b1, [], 0.0)
    t.announce(B, 8, peer(2), FULL, [], 0.0)
    # never given once silent past its timeout, even before expire() has run
    assert ids(t.announce(B, 8, peer(3), 0, [], 5.0)) == ["p0002", "p0001"]
    got = ids(t.announce(B, 8, peer(4), 0, [], 11.0))
    assert "p0002" in got and "p0001" not in got
    t.expire(11.0)
    assert "p0001" not in t.swarms[B].peers and "p0002" in t.swarms[B].peers
    t.expire(101.0)
    assert B not in t.swarms


def test_interest_counts_the_others_and_forget_names_the_fetchers() -> None:
    t = Tracker(interest_ttl=10.0)
    assert t.interest(B, "r1", 0.0) == 0
    assert t.interest(B, "r2", 1.0) == 1
    assert t.interest(B, "r1", 2.0) == 1  # itself not counted
    t.announce(B, 8, peer(1), 0, H, 2.0)  # a swarm made by interest takes its size
    assert t.interest(B, "r3", 3.0) == 3
    assert t.interest(B, "r4", 20.0) == 1  # the readers' window passed, the fetcher stays
    assert [r.id for r in t.forget(B)] == ["p0001"]
    assert B not in t.swarms and t.forget(B) == []


def test_bounds_give_holders_untracked() -> None:
    t = Tracker(max_swarms=1, max_peers=2, degree=2)
    t.announce(B, 8, peer(1), 0, H, 0.0)
    t.announce(B, 8, peer(2), 0, H, 0.0)
    got = t.announce(B, 8, peer(3), 0, H, 0.0)
    assert ids(got) == ["h0", "h1"] and "p0003" not in t.swarms[B].peers
    assert ids(t.announce("cd" * 16, 8, peer(1), 0, H, 0.0)) == ["h0", "h1"]
    assert len(t.swarms) == 1


def test_plan_asks_peers_first_holders_for_the_rest_and_never_twice() -> None:
    assert lowest(0b10110, 2, 5) == [1, 2]
    assert lowest(0b10110, 3, 5, start=3) == [4, 1, 2]
    assert bits_from(bits_to(0b1011, 12), 12) == 0b1011
    p = Plan(16, batch=4, per_source=1, window=16, start=8)
    p.set_sources([Source("h", "a", None, True), Source("p", "b", 0b1111_0000)])
    reqs = {r.source: r.pieces for r in p.next()}
    assert reqs == {"p": [4, 5, 6, 7], "h": [8, 9, 10, 11]}
    assert p.next() == []  # one request per source
    for i in reqs["p"]:
        p.got(i)
    p.finished("p")
    p.give_back(reqs["h"])  # the holder's request failed
    p.drop("h")
    assert not p.done and p.needs_sources()
    p.set_sources([Source("q", "c", None)])
    assert [r.pieces for r in p.next()] == [[0, 1, 2, 3]]
    p.lacks("q", [0, 1, 2, 3])
    p.give_back([0, 1, 2, 3])
    p.finished("q")
    assert [r.pieces for r in p.next()] == [[8, 9, 10, 11]]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["announce", "leave", "expire", "fail", "bad", "interest"]),
            st.integers(0, 11),
            st.integers(0, FULL),
            st.integers(0, 3),
        ),
        max_size=80,
    )
)
def test_invariants_hold_after_any_events(events: list[tuple[str, int, int, int]]) -> None:
    t = Tracker(degree=3, uploads=2, peer_ttl=5.0, seed_ttl=20.0, fail_ttl=4.0, bad_ttl=8.0)
    now = 0.0
    reported: dict[str, float] = {}  # id -> until when it must not be returned
    for kind, i, have, x in events:
        now += x * 0.7
        me = peer(i)
        if kind == "announce":
            got = t.announce(B, 8, me, have, H[: x + 1 if x < 3 else 3], now)
            assert me.id not in ids(got)
            assert all(reported.get(s, -1.0) <= now for s in ids(got)), (got, reported)
            assert len(got) <= 3
        elif kind == "leave":
            t.leave(B, me.id)
        elif kind == "expire":
            t.expire(now)
        elif kind == "fail":
            t.announce(B, 8, peer(11), 0, H, now, failed=[f"h{x % 3}"])
            reported[f"h{x % 3}"] = now + 4.0
        elif kind == "bad":
            t.announce(B, 8, peer(11), 0, H, now, bad=[me.id])
            if me.id != peer(11).id:
                reported[me.id] = now + 8.0
        else:
            t.interest(B, f"r{i}", now)
        t.validate()


def test_peers_fed_by_holders_get_stripes_of_the_file() -> None:
    t = Tracker(degree=2, uploads=2)
    for i in range(4):
        t.announce(B, 8, peer(i), 0, [H[0]], 0.0)
    # the holder serves two peers: they split the file; the others are not fed by it
    assert [t.stripe(B, peer(i).id) for i in range(4)] == [(0, 2), (1, 2), (0, 1), (0, 1)]
    t.leave(B, peer(0).id)
    assert t.stripe(B, peer(1).id) == (0, 1)
    t.validate()
    p = Plan(8, batch=8, per_source=2, window=8)
    p.set_stripe(1, 2)
    p.set_sources([Source("h", "a", None, True), Source("q", "b", 0b0000_0001)])
    reqs = {r.source: r.pieces for r in p.next()}
    assert reqs == {"q": [0], "h": [4, 5, 6, 7]}  # one request at a time from a holder
    for i in (0, 4, 5, 6, 7):
        p.got(i)
    p.finished("q")
    p.finished("h")
    # the stripe is in: the holder is asked for what no peer has (peers sending or not)
    p.set_sources([Source("h", "a", None, True), Source("q", "b", 0b0000_0010)])
    assert {r.source: r.pieces for r in p.next()} == {"q": [1], "h": [2, 3]}


def test_endgame_asks_the_last_pieces_in_flight_of_a_second_source() -> None:
    p = Plan(8, batch=2, per_source=1, window=8)
    p.set_sources([Source("a", "x", None), Source("b", "y", 0b0000_1111)])
    first = {r.source: r.pieces for r in p.next()}
    assert first == {"a": [0, 1], "b": [2, 3]}
    assert p.endgame(limit=8) == []  # pieces 4-7 are not asked yet: no endgame
    for i in first["b"]:
        p.got(i)
    p.finished("b")
    more = {r.source: r.pieces for r in p.next()}
    assert more == {}  # a has its one request in flight, b has nothing else
    p.finished("a")
    assert {r.source: r.pieces for r in p.next()} == {"a": [4, 5]}
    # missing now: 0, 1 (first request to a) and 4, 5, 6, 7 (the last in flight or
    # not asked): 6 and 7 are not in flight, so still no endgame
    assert p.endgame(limit=8) == []
    p.got(6)
    p.got(7)
    # every missing piece is in flight, all from a: b is asked for those it has
    dup = p.endgame(limit=8)
    assert [(r.source, r.pieces, r.dup) for r in dup] == [("b", [0, 1], True)]
    assert p.endgame(limit=8) == []  # asked twice at most
    p.got(0)  # the second copy came first
    p.give_back([1], dup=True)  # ... and the rest of it did not
    assert p.dup == 0 and p.in_flight >> 1 & 1  # piece 1 is still with a
    assert p.endgame(limit=2) == []  # too many left (1, 4, 5) for a limit of 2
    assert [r.pieces for r in p.endgame(limit=3)] == [[1]]


def test_front_is_the_end_of_the_run_a_reader_in_order_may_take() -> None:
    from sector.swarm.schedule import front

    assert front(0b0111, 0, 8) == 3
    assert front(0b0111, 3, 8) == 3
    assert front(0b1110, 0, 8) == 0
    assert front(0xFF, 2, 8) == 8
