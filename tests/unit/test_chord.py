"""ChordState, Lookup and ChordDriver, one rule at a time (small ids, readable rings)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from sector.errors import BadRequest, ClusterError, ConnectError
from sector.ids import BITS, MASK, finger_start, to_hex
from sector.routing.chord import ChordState, Peer
from sector.routing.driver import ChordDriver
from sector.routing.lookup import Lookup
from sector.testing.chordsim import peer as P
from sector.testing.chordsim import ring_state

# -- Peer ---------------------------------------------------------------------------


def test_peer_wire_round_trip() -> None:
    p = Peer(MASK, "10.0.0.1:7000")
    w = p.to_wire()
    assert w == ["f" * 40, "10.0.0.1:7000"]
    assert Peer.from_wire(w) == p
    assert Peer.from_wire(tuple(w)) == p
    assert Peer.from_wire(msgspec.msgpack.decode(msgspec.msgpack.encode(w))) == p
    with pytest.raises(AttributeError):
        p.id = 2  # type: ignore[misc]
    assert {p, Peer(MASK, "10.0.0.1:7000")} == {p}


@pytest.mark.parametrize(
    "bad",
    [
        None,
        "x",
        [],
        ["0" * 40],
        ["0" * 40, "a:1", "extra"],
        [1, "a:1"],
        ["0" * 40, 5],
        ["0" * 39, "a:1"],
        ["z" * 40, "a:1"],
        ["-" + "0" * 39, "a:1"],
        ["0x" + "0" * 38, "a:1"],
        ["0_" + "0" * 38, "a:1"],
        ["0" * 40, ""],
        {"id": "0" * 40, "addr": "a:1"},
    ],
)
def test_peer_from_wire_rejects(bad: Any) -> None:
    with pytest.raises(ValueError):
        Peer.from_wire(bad)


# -- a ring of one, and how it grows ------------------------------------------------------


def test_ring_of_one_owns_everything() -> None:
    st = ChordState(P(50))
    st.create()
    st.validate_state()
    assert st.successor == P(50)
    for key in (0, 49, 50, 51, MASK):
        assert st.next_hop(key) == (True, P(50))
        assert st.responsible_for(key)
    assert st.replica_peers(3) == [P(50)]
    assert st.known_peers() == []
    st.join(P(50))  # a lookup of our own id through a ring that still lists us
    assert st.successors == []
    with pytest.raises(ValueError):
        ChordState(P(1), succ_list_len=1)


def test_two_nodes_form_a_ring_by_stabilize_and_notify() -> None:
    a, b = ChordState(P(10)), ChordState(P(20))
    a.create()
    b.join(P(10))
    assert b.successor == P(10)
    # b stabilizes: a has no predecessor; b notifies a.
    b.on_stabilize(a.me, a.predecessor, list(a.successors))
    assert a.notify(b.me) is True
    assert a.predecessor == P(20)
    # a stabilizes against itself (ring of one): its predecessor becomes its successor.
    a.on_stabilize(a.me, a.predecessor, [])
    assert a.successor == P(20)
    assert b.notify(a.me) is True
    for st in (a, b):
        st.validate_state()
    assert b.predecessor == P(10) and b.successors == [P(10)]
    assert a.responsible_for(10) and not a.responsible_for(15) and b.responsible_for(15)


# -- next_hop -----------------------------------------------------------------------------


def test_a_joined_node_serves_nothing_until_it_learns_its_predecessor() -> None:
    a, b = ChordState(P(10)), ChordState(P(20))
    a.create()
    assert a.serves(5) and a.serves(15)  # alone: every key is its own
    b.join(P(10))
    # Chord's rule says b (no predecessor) owns every key; it must not answer for any
    # until stabilization names its predecessor.
    assert b.responsible_for(5) and not b.serves(5) and not b.serves(15)
    b.on_stabilize(a.me, a.predecessor, list(a.successors))
    a.notify(b.me)
    a.on_stabilize(a.me, a.predecessor, [])
    b.notify(a.me)
    assert b.serves(15) and not b.serves(5) and a.serves(5)


def test_next_hop_done_when_key_in_me_succ_or_own_id() -> None:
    st = ring_state(10, [10, 20, 30, 40])
    assert st.next_hop(11) == (True, P(20))
    assert st.next_hop(20) == (True, P(20))
    assert st.next_hop(10) == (True, P(10))
    assert st.next_hop(MASK + 16) == (True, P(20))  # keys are taken mod 2**160


def test_next_hop_uses_closest_preceding_of_successors_and_fingers() -> None:
    st = ring_state(10, [10, 20, 30, 40, 50, 60], r=2)  # successors 20, 30
    assert st.next_hop(45) == (False, P(30))
    st.set_finger(100, P(40))
    assert st.next_hop(45) == (False, P(40))
    assert st.next_hop(40) == (False, P(30))  # 40 itself does not precede key 40
    # wraparound: key 5 lies before me; the predecessor 60 is the closest preceding node
    assert st.next_hop(5) == (False, P(60))


def test_next_hop_skips_excluded() -> None:
    st = ring_state(10, [10, 20, 30, 40, 50])
    # successor 20 failed: 30 becomes the answer for keys up to 30
    assert st.next_hop(15, frozenset({20})) == (True, P(30))
    assert st.next_hop(45, frozenset({40})) == (False, P(30))
    # everything excluded: we are the best answer
    assert st.next_hop(45, frozenset({20, 30, 40, 50})) == (True, P(10))


# -- stabilize / notify -------------------------------------------------------------------


def test_on_stabilize_adopts_closer_predecessor_of_successor() -> None:
    st = ring_state(10, [10, 30, 40, 50], r=3)
    st.on_stabilize(P(30), P(20), [P(40), P(50)])
    assert [p.id for p in st.successors] == [20, 30, 40]
    st.validate_state()


def test_on_stabilize_ignores_predecessor_outside_me_succ() -> None:
    st = ring_state(10, [10, 30, 40, 50])
    st.on_stabilize(P(30), P(5), [P(40), P(50)])
    assert [p.id for p in st.successors] == [30, 40, 50]
    st.on_stabilize(P(30), P(10), [P(40)])  # we are its predecessor: fine
    assert [p.id for p in st.successors] == [30, 40]


def test_on_stabilize_cuts_at_wrap_past_me_and_at_r() -> None:
    st = ring_state(10, [10, 20, 30])
    st.on_stabilize(P(20), P(10), [P(30), P(10), P(20)])
    assert [p.id for p in st.successors] == [20, 30]
    st = ring_state(10, [10, 20], r=2)
    st.on_stabilize(P(20), None, [P(30), P(40), P(50)])
    assert [p.id for p in st.successors] == [20, 30]


def test_on_stabilize_stops_at_unordered_or_duplicate_entries() -> None:
    st = ring_state(10, [10, 20], r=8)
    st.on_stabilize(P(20), None, [P(40), P(30), P(50)])
    assert [p.id for p in st.successors] == [20, 40]
    st.on_stabilize(P(20), None, [P(20), P(30)])
    assert [p.id for p in st.successors] == [20]


def test_notify_rules() -> None:
    st = ChordState(P(50))
    st.create()
    assert st.notify(P(50)) is False  # never our own predecessor
    assert st.notify(P(10)) is True
    assert st.notify(P(10)) is False  # no change
    assert st.notify(P(5)) is False  # farther away
    assert st.notify(P(30)) is True
    assert st.predecessor == P(30)
    # wraparound: predecessor MASK precedes 50 more closely than 30? no: 30 is closer
    assert st.notify(P(MASK)) is False
    # The predecessor restarted on another port: its notify moves it to the new address.
    moved = Peer(30, "h30:2")
    assert st.notify(moved) is True
    assert st.predecessor is not None and st.predecessor.addr == "h30:2"
    assert st.notify(moved) is False


# -- failures -----------------------------------------------------------------------------


def test_peer_failed_drops_everywhere() -> None:
    st = ring_state(10, [10, 20, 30, 40])
    st.set_finger(5, P(20))
    st.set_finger(150, P(30))
    st.peer_failed(P(20))
    assert [p.id for p in st.successors] == [30, 40]
    assert P(20) not in st.fingers
    st.peer_failed(P(40))
    assert st.predecessor is None
    st.peer_failed(P(10))  # ourselves: ignored
    st.validate_state()


def test_peer_failed_at_an_old_address_keeps_the_node_at_its_new_one() -> None:
    st = ring_state(10, [10, 20, 30, 40])
    st.set_finger(5, P(20))  # a finger learnt before 20 restarted on another port
    moved = Peer(20, "h20:2")
    st.on_stabilize(P(30), moved, [P(40)])  # 30 tells us of 20 at its new address
    assert st.successors[0] == moved
    st.peer_failed(P(20))  # a lookup through the stale finger fails
    assert st.successors[0] == moved and st.fingers[5] is None
    st.notify(Peer(40, "h40:1"))
    st.peer_failed(Peer(40, "h40:9"))  # not the address we know: nothing to forget
    assert st.predecessor == P(40)


def test_losing_every_successor_falls_back_on_nearest_finger() -> None:
    st = ring_state(10, [10, 20, 30, 40, 50], r=2)  # successors 20, 30
    st.set_finger(140, P(40))
    st.peer_failed(P(20))
    st.peer_failed(P(30))
    assert st.successors == [P(40)]


def test_losing_everything_leaves_a_ring_of_one() -> None:
    st = ring_state(10, [10, 20])
    st.peer_failed(P(20))
    assert st.successors == [] and st.predecessor is None
    assert st.next_hop(15) == (True, P(10))


# -- fingers ------------------------------------------------------------------------------


def test_next_finger_skips_covered_fingers() -> None:
    me = 0
    st = ring_state(me, [0, 2**100, 2**150])
    i, start = st.next_finger()
    # fingers 0..100 are covered by the successor at 2**100; 101 needs a lookup
    assert (i, start) == (101, finger_start(me, 101))
    assert all(st.fingers[j] == P(2**100) for j in range(101))
    st.set_finger(101, P(2**150))
    i, _ = st.next_finger()
    assert i == 151
    st.set_finger(151, P(0))  # the lookup wrapped round to us: no finger
    assert st.fingers[151] is None
    # ... and then no node lies in [me + 2**151, me): fingers above 151 need no
    # lookup; the next cycle starts over and finger 151 itself is probed again.
    st.fingers[155] = P(2**150)  # stale
    i, _ = st.next_finger()
    assert i == 101
    assert st.fingers[155] is None
    st.set_finger(101, P(2**150))
    assert st.next_finger()[0] == 151
    st.set_finger(151, P(2**155))  # a node arrived there: the upper fingers count again
    assert st.next_finger()[0] == 156
    st.validate_state()


def test_next_finger_round_robin_then_ring_of_one_probes_only_finger_one() -> None:
    st = ChordState(P(0))
    st.create()
    seen = [st.next_finger()[0] for _ in range(BITS + 1)]
    # nothing known: every finger needs a lookup, in order, then round again
    assert seen[0] == 1 and seen[BITS - 2] == BITS - 1 and seen[BITS - 1] == 1
    st.set_finger(1, P(0))  # every lookup comes back to us
    assert [st.next_finger()[0] for _ in range(3)] == [1, 1, 1]


def test_set_finger_range() -> None:
    with pytest.raises(ValueError):
        ChordState(P(0)).set_finger(BITS, P(1))


# -- leave --------------------------------------------------------------------------------


def test_graceful_leave_splices_out() -> None:
    ids = [10, 20, 30, 40, 50]
    pred, leaving, succ = (ring_state(i, ids) for i in (10, 20, 30))
    info = leaving.leave_info()
    assert info == (P(10), [P(30), P(40), P(50)])
    pred.on_neighbour_leaving(leaving.me, *info)
    succ.on_neighbour_leaving(leaving.me, *info)
    assert [p.id for p in pred.successors] == [30, 40, 50]
    assert succ.predecessor == P(10)
    pred.validate_state()
    succ.validate_state()


def test_leave_with_a_stale_list_keeps_our_live_successors() -> None:
    # Found by hypothesis: the leaver had not stabilized since 20 and 30 left, so its
    # list names them; merging by ring order pushed our live successor 90 out.
    st = ring_state(10, [10, 50, 90, 95, 99], r=3)  # successors 50, 90, 95
    st.on_neighbour_leaving(P(50), P(10), [P(20), P(30), P(90)])
    assert [p.id for p in st.successors] == [90, 95]
    st.on_neighbour_leaving(P(90), P(10), [P(95), P(99), P(5)])
    assert [p.id for p in st.successors] == [95, 99, 5]


def test_leave_of_a_two_ring_leaves_one() -> None:
    a, b = ring_state(10, [10, 20]), ring_state(20, [10, 20])
    a.on_neighbour_leaving(b.me, *b.leave_info())
    assert a.predecessor is None and a.successors == []


# -- ownership ----------------------------------------------------------------------------


def test_responsible_for_and_replicas() -> None:
    st = ring_state(30, [10, 20, 30, 40, 50])
    assert st.responsible_for(25) and st.responsible_for(30)
    assert not st.responsible_for(20) and not st.responsible_for(31)
    assert st.replica_peers(3) == [P(30), P(40), P(50)]
    assert st.replica_peers(1) == [P(30)]
    st.set_finger(150, P(10))
    assert {p.id for p in st.known_peers()} == {10, 20, 40, 50}


@pytest.mark.parametrize(
    "attr, value",
    [
        ("successors", [P(30), P(20)]),  # out of ring order
        ("successors", [P(20), P(10)]),  # contains me
        ("successors", [P(20), P(20)]),  # duplicate
        ("predecessor", P(10)),
        ("fingers", [P(10)] * BITS),
        ("fingers", [None] * 3),
    ],
)
def test_validate_state_catches_broken_invariants(attr: str, value: Any) -> None:
    st = ring_state(10, [10, 20, 30])
    setattr(st, attr, value)
    with pytest.raises(AssertionError):
        st.validate_state()


def test_event_log_is_bounded() -> None:
    st = ChordState(P(0))
    for i in range(1000):
        assert st.notify(P(MASK - 1000 + i))
    assert len(st.events) == st.events.maxlen


# -- Lookup -------------------------------------------------------------------------------


def test_lookup_follows_hops() -> None:
    lk = Lookup(5, (True, P(7)))
    assert lk.done and lk.result == P(7) and lk.hops == 0 and not lk.failed
    lk = Lookup(100, (False, P(10)))
    assert lk.next_peer == P(10)
    lk.on_reply(False, P(50))
    assert lk.next_peer == P(50)
    lk.on_reply(True, P(120))
    assert lk.done and lk.result == P(120) and lk.hops == 2


def test_lookup_failure_backs_up_and_excludes() -> None:
    lk = Lookup(100, (False, P(10)))
    lk.on_reply(False, P(50))
    lk.on_failure(P(50))
    assert lk.exclude == {50}
    assert lk.next_peer == P(10)  # ask it again, with 50 excluded
    lk.on_reply(False, P(40))
    lk.on_reply(True, P(120))
    assert lk.result == P(120) and lk.hops == 4


def test_lookup_failure_of_first_hop_needs_origin() -> None:
    lk = Lookup(100, (False, P(10)))
    lk.on_failure(P(10))
    assert lk.needs_origin and lk.next_peer is None
    lk.restart((False, P(20)))
    assert lk.next_peer == P(20)
    with pytest.raises(RuntimeError):
        lk.restart((False, P(20)))
    with pytest.raises(ValueError):
        lk.on_failure(P(11))  # not the peer it waits on


def test_lookup_rejects_answers_without_progress() -> None:
    lk = Lookup(100, (False, P(50)))
    lk.on_reply(False, P(40))  # backwards: treated as a failure of 50
    assert lk.exclude == {50} and lk.needs_origin
    lk.restart((False, P(60)))
    lk.on_reply(False, P(120))  # past the key
    assert 60 in lk.exclude


def test_lookup_dead_result_reopens() -> None:
    lk = Lookup(100, (False, P(10)))
    lk.on_reply(True, P(120))
    lk.on_failure(P(120))
    assert not lk.done and lk.next_peer == P(10) and lk.exclude == {120}
    lk.on_reply(True, P(130))
    assert lk.result == P(130)
    with pytest.raises(RuntimeError):
        lk.on_reply(True, P(130))  # done: nobody to hear from


def test_lookup_hop_budget() -> None:
    lk = Lookup(MASK, (False, P(1)), max_hops=3)
    for i in range(2, 5):
        lk.on_reply(False, P(i))
    assert lk.done and lk.failed and lk.hops == 3


# -- the driver over an in-process fake network --------------------------------------------


class FakeNet:
    """addr -> handler table; dead addrs raise ConnectError. Messages go through msgpack."""

    def __init__(self) -> None:
        self.handlers: dict[str, dict[str, Callable[..., Any]]] = {}
        self.dead: set[str] = set()
        self.calls: list[tuple[str, str]] = []

    async def call(
        self, addr: str, op: str, args: dict[str, Any], *, timeout: float | None = None
    ) -> Any:
        self.calls.append((addr, op))
        if addr in self.dead or addr not in self.handlers:
            raise ConnectError(f"cannot connect to {addr}", node=addr)
        wire = msgspec.msgpack.decode(msgspec.msgpack.encode(args))
        result = await self.handlers[addr][op](wire)
        return msgspec.msgpack.decode(msgspec.msgpack.encode(result))


def make_driver(net: FakeNet, i: int, changes: list[int] | None = None) -> ChordDriver:
    st = ChordState(P(i), succ_list_len=3)
    cb = (lambda: changes.append(i)) if changes is not None else None
    d = ChordDriver(st, net, on_change=cb)
    net.handlers[st.me.addr] = d.handlers()
    return d


async def settle(drivers: list[ChordDriver], rounds: int = 6) -> None:
    for _ in range(rounds):
        for d in drivers:
            await d.check_predecessor_once()
            await d.stabilize_once()
            for _ in range(4):
                await d.fix_finger_once()


async def small_ring(net: FakeNet, ids: list[int]) -> list[ChordDriver]:
    drivers = [make_driver(net, i) for i in ids]
    drivers[0].create()
    for d in drivers[1:]:
        await d.join(drivers[0].state.me.addr)
    await settle(drivers)
    return drivers


def true_succ(ids: list[int], key: int) -> int:
    s = sorted(ids)
    return next((i for i in s if i >= key), s[0])


def test_driver_ring_join_lookup_crash_leave() -> None:
    async def main() -> None:
        net = FakeNet()
        changes: list[int] = []
        ids = [k << 150 for k in (1, 100, 200, 300, 400, 500, 600)]
        drivers = [make_driver(net, i, changes) for i in ids]
        drivers[0].create()
        for d in drivers[1:]:
            await d.join(drivers[0].state.me.addr)
        await settle(drivers)
        for d in drivers:
            d.state.validate_state()
            for key in (0, ids[2], ids[2] + 1, MASK, ids[5] - 1):
                peer, hops = await d.lookup(key)
                assert peer.id == true_succ(ids, key)
                assert hops <= len(ids)
        assert changes  # the metadata layer heard about it

        # crash one node: its neighbours notice through stabilize / check_predecessor
        dead = drivers.pop(3)
        net.dead.add(dead.state.me.addr)
        live = [d.state.me.id for d in drivers]
        await settle(drivers)
        for d in drivers:
            peer, _ = await d.lookup(dead.state.me.id)
            assert peer.id == true_succ(live, dead.state.me.id)
            assert dead.state.me not in d.state.successors

        # graceful leave: neighbours are spliced at once, without a stabilize round
        leaving = drivers.pop(1)
        await leaving.leave()
        net.dead.add(leaving.state.me.addr)
        pred = drivers[0].state
        succ = drivers[1].state
        assert pred.successor == succ.me
        assert succ.predecessor == pred.me

    asyncio.run(main())


def test_driver_join_routes_around_a_dead_successor() -> None:
    async def main() -> None:
        net = FakeNet()
        drivers = await small_ring(net, [10 << 150, 20 << 150, 30 << 150])
        net.dead.add(drivers[1].state.me.addr)  # crashed, the ring has not noticed yet
        new = make_driver(net, 15 << 150)
        await new.join(drivers[0].state.me.addr)
        assert new.state.successor.id == 30 << 150
        with pytest.raises(ConnectError):
            await make_driver(net, 5).join("nowhere:1")

    asyncio.run(main())


def test_driver_lookup_verify_skips_dead_owner() -> None:
    async def main() -> None:
        net = FakeNet()
        drivers = await small_ring(net, [10 << 150, 20 << 150, 30 << 150])
        net.dead.add(drivers[2].state.me.addr)
        peer, _ = await drivers[0].lookup(25 << 150)
        assert peer.id == 30 << 150  # not verified: stale but cheap
        peer, _ = await drivers[1].lookup(25 << 150, verify=True)
        assert peer.id == 10 << 150

    asyncio.run(main())


def test_driver_handlers_validate_arguments() -> None:
    async def main() -> None:
        d = make_driver(FakeNet(), 7)
        d.create()
        h = d.handlers()
        assert set(h) == {
            "chord.next_hop",
            "chord.state",
            "chord.notify",
            "chord.ping",
            "chord.leaving",
        }
        assert await h["chord.next_hop"]({"key": to_hex(9), "exclude": []}) == [
            True,
            P(7).to_wire(),
        ]
        for bad in (
            {},
            {"key": 9},
            {"key": "zz"},
            {"key": to_hex(9), "exclude": "x"},
            {"key": to_hex(9), "exclude": [1]},
            {"key": to_hex(9), "exclude": [to_hex(1)] * 1000},
        ):
            with pytest.raises(BadRequest):
                await h["chord.next_hop"](bad)
        with pytest.raises(BadRequest):
            await h["chord.notify"]({"peer": ["nothex", "a:1"]})
        with pytest.raises(BadRequest):
            await h["chord.notify"]({})
        with pytest.raises(BadRequest):
            await h["chord.leaving"]({"peer": P(1).to_wire(), "successors": [[1, 2]]})
        assert await h["chord.notify"]({"peer": P(3).to_wire()}) is True
        state = await h["chord.state"]({})
        # a ring of one takes its first notifier as successor too
        want = {"me": P(7).to_wire(), "pred": P(3).to_wire(), "successors": [P(3).to_wire()]}
        assert state == want
        assert await h["chord.ping"]({}) == P(7).to_wire()

    asyncio.run(main())


def test_driver_lookup_budget_raises_cluster_error() -> None:
    async def main() -> None:
        net = FakeNet()
        d = make_driver(net, 10)
        d.create()

        calls = 0

        async def liar(args: dict[str, Any]) -> list[Any]:
            # always "progress" by one id, all at one address: a lookup that never ends
            nonlocal calls
            calls += 1
            return [False, Peer(20 + calls, "h20:1").to_wire()]

        d.state.successors = [P(20)]
        net.handlers["h20:1"] = {"chord.next_hop": liar}
        with pytest.raises(ClusterError):
            await d.lookup(10**6)

    asyncio.run(main())


def test_driver_workers_start_and_stop() -> None:
    async def main() -> None:
        d = make_driver(FakeNet(), 1)
        d.create()
        await d.start()
        names = sorted(
            t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("chord.")
        )
        assert [n.split("[")[0] for n in names] == [
            "chord.check-predecessor",
            "chord.fix-fingers",
            "chord.merge-probe",
            "chord.stabilize",
        ]
        await d.stop()
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("chord.")]

    asyncio.run(main())


# -- ring merge (rule 8) ------------------------------------------------------------------


def test_on_merge_probe_adopts_only_a_closer_successor() -> None:
    st = ring_state(10, [10, 30, 40, 50])  # r = 3: successors 30, 40, 50
    assert st.on_merge_probe(P(10)) is False  # ourselves
    assert st.on_merge_probe(P(30)) is False  # our successor already
    assert st.on_merge_probe(P(40)) is False  # beyond it
    assert st.on_merge_probe(P(5)) is False  # behind us (all the way round)
    assert [p.id for p in st.successors] == [30, 40, 50]
    assert st.on_merge_probe(P(20)) is True  # a successor we did not know
    assert [p.id for p in st.successors] == [20, 30, 40]  # cut at r, still clockwise
    assert st.on_merge_probe(P(15)) is True
    assert [p.id for p in st.successors] == [15, 20, 30]
    assert st.predecessor == P(50)  # untouched: stabilize/notify take it from here
    st.validate_state()


def test_on_merge_probe_across_the_wrap_and_in_a_ring_of_one() -> None:
    st = ring_state(50, [10, 50], r=2)  # successor 10, across the top of the ring
    assert st.on_merge_probe(P(30)) is False
    assert st.on_merge_probe(P(MASK)) is True
    assert st.on_merge_probe(P(5)) is False  # beyond the new successor MASK
    assert [p.id for p in st.successors] == [MASK, 10]
    st.validate_state()

    alone = ChordState(P(50), succ_list_len=2)
    alone.create()
    assert alone.on_merge_probe(P(50)) is False
    assert alone.on_merge_probe(P(10)) is True  # a ring of one takes anyone
    assert alone.successors == [P(10)]
    assert alone.on_merge_probe(P(20)) is False  # 20 lies beyond 10 seen from 50
    assert alone.on_merge_probe(P(5)) is True  # 5 does not: it wraps to before 10
    assert alone.on_merge_probe(P(MASK)) is True
    assert alone.successors == [P(MASK), P(5)]  # r = 2: 10 falls off the end
    alone.validate_state()
