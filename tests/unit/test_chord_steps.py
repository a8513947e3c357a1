"""The pure steps of ``sector.routing.steps`` driven by hand, and the wire shapes of
``sector.routing.messages`` (what other versions of a node speak)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from sector.errors import BadRequest, ClusterError, ConnectError
from sector.ids import finger_start, to_hex
from sector.routing.chord import ChordState
from sector.routing.messages import GetState, Leaving, NextHop, NodeState, Notify, Ping
from sector.routing.steps import (
    Call,
    CheckPredecessor,
    FixFinger,
    Join,
    Leave,
    MergeProbe,
    Stabilize,
)
from sector.testing.chordsim import peer as P
from sector.testing.chordsim import ring_state

# -- steps: the protocol's sequencing, driven by hand (no network) ------------------------


def test_stabilize_step_walks_back_to_a_closer_successor_then_notifies() -> None:
    st = ring_state(10, [10, 30, 40, 50])  # successors 30, 40, 50
    step = Stabilize(st)
    assert step.start() == Call("h30:1", GetState())
    # 30's predecessor is 20, which we did not know: adopted and asked at once.
    assert step.on_reply(NodeState(P(30), P(20), [P(40), P(50)])) == Call("h20:1", GetState())
    assert [p.id for p in st.successors] == [20, 30, 40]
    assert step.on_reply(NodeState(P(20), P(10), [P(30), P(40)])) == Call("h20:1", Notify(P(10)))
    assert step.on_reply(True) is None
    assert step.done and step.result is None
    with pytest.raises(RuntimeError):
        step.on_reply(True)  # done: nobody to hear from


def test_stabilize_step_failures() -> None:
    st = ring_state(10, [10, 30, 40, 50])
    step = Stabilize(st)
    step.start()
    # 30 is unreachable: dropped, and 40 asked in its place.
    assert step.on_failure(ConnectError("down", node="h30:1")) == Call("h40:1", GetState())
    # 40 answers, but another node now lives at its address: dropped as well.
    assert step.on_reply(NodeState(P(41), None, [])) == Call("h50:1", GetState())
    assert step.on_reply(NodeState(P(50), None, [P(10)])) == Call("h50:1", Notify(P(10)))
    # A failure the step does not handle (the notify answered with an error) is
    # raised again, as the driver's await used to raise it.
    with pytest.raises(BadRequest):
        step.on_failure(BadRequest("no"))
    assert step.done and [p.id for p in st.successors] == [50]


def test_join_step_pings_looks_up_and_stabilizes() -> None:
    st = ChordState(P(25), succ_list_len=3)
    step = Join(st, "boot:1")
    assert step.start() == Call("boot:1", Ping())
    # The bootstrap (id 10) is the lookup's first hop for our own id.
    assert step.on_reply(P(10)) == Call("h10:1", NextHop(25))
    assert step.on_reply((True, P(30))) == Call("h30:1", Ping())  # the answer is verified
    assert step.on_reply(P(30)) == Call("h30:1", GetState())
    assert st.successor == P(30) and step.joined
    assert step.on_reply(NodeState(P(30), P(20), [P(40)])) == Call("h30:1", Notify(P(25)))
    assert step.on_reply(True) is None
    assert step.result == P(30)

    bad = Join(ChordState(P(25)), "boot:1")
    bad.start()
    with pytest.raises(ClusterError):
        bad.on_reply(None)  # the bootstrap's ping reply named no peer


def test_fix_finger_check_predecessor_and_leave_steps() -> None:
    st = ring_state(0, [0, 2**100, 2**150])
    step = FixFinger(st)
    start = finger_start(0, 101)
    assert step.start() == Call(P(2**100).addr, NextHop(start))
    assert step.on_reply((True, P(2**150))) is None
    assert st.fingers[101] == P(2**150)

    check = CheckPredecessor(st)
    assert check.start() == Call(P(2**150).addr, Ping())
    assert check.on_failure(ConnectError("down")) is None
    assert st.predecessor is None

    # The predecessor's port now belongs to another process: an answer that does not
    # name the predecessor, or an error answer, does not prove it alive.
    for answer in (P(2**120), None, BadRequest("unknown operation 'chord.ping'")):
        st.notify(P(2**150))
        check = CheckPredecessor(st)
        check.start()
        if isinstance(answer, Exception):
            assert check.on_failure(answer) is None
        else:
            assert check.on_reply(answer) is None
        assert st.predecessor is None, answer
    st.notify(P(2**150))
    check = CheckPredecessor(st)
    check.start()
    assert check.on_reply(P(2**150)) is None
    assert st.predecessor == P(2**150)

    leave = Leave(ring_state(20, [10, 20, 30]))
    msg = Leaving(P(20), P(10), [P(30), P(10)])
    assert leave.start() == Call("h10:1", msg)
    assert leave.on_failure(ConnectError("down")) == Call("h30:1", msg)  # best effort
    assert leave.on_reply(None) is None


def test_merge_probe_step_tries_members_until_one_answers() -> None:
    st = ring_state(10, [10, 40])  # successor 40
    step = MergeProbe(st, [P(100), P(200), P(300), P(400)])
    assert step.start() == Call("h100:1", NextHop(11))
    assert step.on_failure(ConnectError("down")) == Call("h200:1", NextHop(11))
    assert step.on_reply((True, P(20))) == Call("h20:1", Ping())
    # 20 lies between us and 40: adopted, then a stabilize at once.
    assert step.on_reply(P(20)) == Call("h20:1", GetState())
    assert step.adopted and st.successor == P(20)
    step.on_reply(NodeState(P(20), None, [P(40)]))
    assert step.on_reply(True) is None and step.result is True

    none = MergeProbe(ring_state(10, [10, 40]), [P(100), P(200), P(300), P(400)])
    call = none.start()
    for _ in range(3):  # PROBE_TRIES members at most
        assert call is not None
        call = none.on_failure(ConnectError("down"))
    assert call is None and none.result is False


# -- messages: the wire shapes other versions speak ---------------------------------------


def test_messages_keep_their_wire_shapes() -> None:
    a, b = P(1), P(2)
    cases: list[tuple[Any, dict[str, Any], Any, Any]] = [
        (
            NextHop(5, frozenset({7})),
            {"key": to_hex(5), "exclude": [to_hex(7)]},
            (True, b),
            [True, b.to_wire()],
        ),
        (
            GetState(),
            {},
            NodeState(a, b, [b]),
            {"me": a.to_wire(), "pred": b.to_wire(), "successors": [b.to_wire()]},
        ),
        (Notify(a), {"peer": a.to_wire()}, True, True),
        (Ping(), {}, a, a.to_wire()),
        (
            Leaving(a, None, [b]),
            {"peer": a.to_wire(), "pred": None, "successors": [b.to_wire()]},
            None,
            None,
        ),
    ]
    assert [type(m).op for m, *_ in cases] == [
        "chord.next_hop",
        "chord.state",
        "chord.notify",
        "chord.ping",
        "chord.leaving",
    ]
    for msg, wire, reply, wire_reply in cases:
        assert msg.to_wire() == wire
        assert type(msg).from_wire(wire) == msg
        assert msg.reply_to_wire(reply) == wire_reply
        assert msg.parse_reply(msgspec.msgpack.decode(msgspec.msgpack.encode(wire_reply))) == reply
    assert Ping.parse_reply("nonsense") is None  # any answer means "alive"
    with pytest.raises(ValueError):
        GetState.parse_reply({"successors": "x"})
