"""The schedule of a read striped over replicas (``transport/spans.py``, issue 15):
every byte is written exactly once whatever the order of takes, writes, steals and
failures; a failed holder hands back only what it had not written; a faster holder
takes more; streams go to the nearest holders most."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sector.transport.spans import ALIGN, Plan, Span, allot

MIB = 1 << 20


def _cover(written: list[tuple[int, int]], size: int) -> None:
    """The written pieces tile [0, size): no byte twice, none missing."""
    pos = 0
    for at, k in sorted(written):
        assert at == pos, f"gap or overlap at {at} (expected {pos})"
        pos += k
    assert pos == size


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(0, 200 * MIB),
    holders=st.integers(1, 4),
    spans=st.integers(1, 8),
    ops=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 7), st.integers(1, 40)), max_size=200),
)
def test_every_byte_is_written_once_through_steals_and_failures(
    size: int, holders: int, spans: int, ops: list[tuple[int, int, int]]
) -> None:
    names = [f"h{i}" for i in range(holders)]
    plan = Plan(size, names, spans)
    active: list[tuple[str, Span]] = []
    written: list[tuple[int, int]] = []
    lost = 0  # bytes a failed stream had claimed: written, and kept

    def write(j: int, n: int) -> None:
        _, span = active[j]
        at, k = plan.claim(span, n)
        if k:
            written.append((at, k))
        if k < n or span.left == 0:  # cut short by a steal, or done
            active.pop(j)

    for kind, who, mib in ops:
        if kind == 0:  # a stream of holder `who` asks for work
            h = names[who % holders]
            span = plan.take(h)
            if span is not None:
                assert span.holder == h and span.left > 0
                assert span.start % ALIGN == 0 or span.start == span.pos
                active.append((h, span))
        elif kind == 1 and active:  # a stream receives some bytes
            write(who % len(active), mib * MIB // 3 + 1)
        elif kind == 2 and active and len(plan.live) > 1:  # a holder's stream breaks
            h, span = active.pop(who % len(active))
            before = span.left
            plan.failed(span, h)
            assert h not in plan.live and plan.take(h) is None
            assert span.holder is None and span.left == before  # only the rest is pending
            lost += before
            active = [(hh, s) for hh, s in active if s is not span]
    # The live holders finish the read: each stream writes its span out.
    for _ in range(10_000):
        if active:
            write(0, 64 * MIB)
            continue
        took = [plan.take(h) for h in list(plan.live)]
        active = [(s.holder, s) for s in took if s is not None and s.holder is not None]
        if not active:
            break
    assert plan.done and not plan.stuck
    _cover(written, size)
    assert sum(plan.served.values()) == size
    assert plan.refetched == lost


def test_a_failed_holders_unwritten_bytes_go_to_another_holder() -> None:
    plan = Plan(64 * MIB, ["near", "far"], 2)
    a, b = plan.take("near"), plan.take("far")
    assert a is not None and b is not None and (a.start, b.start) == (0, 32 * MIB)
    assert plan.claim(b, 10 * MIB) == (32 * MIB, 10 * MIB)
    plan.failed(b, "far")
    assert plan.refetched == 22 * MIB and plan.dead == ["far"]
    again = plan.take("near")
    assert again is b and (again.pos, again.end) == (42 * MIB, 64 * MIB)  # only the rest
    assert plan.take("far") is None


def test_every_holder_failing_leaves_the_plan_stuck() -> None:
    plan = Plan(64 * MIB, ["a", "b"], 2)
    sa, sb = plan.take("a"), plan.take("b")
    plan.failed(sa, "a")
    plan.failed(sb, "b")
    assert plan.stuck and not plan.done


def test_a_stream_that_ends_first_steals_half_of_the_longest_span_left() -> None:
    plan = Plan(128 * MIB, ["fast", "slow"], 2)
    fast, slow = plan.take("fast"), plan.take("slow")
    assert fast is not None and slow is not None
    plan.claim(fast, 64 * MIB)  # the fast holder's span is done
    plan.claim(slow, 4 * MIB)
    stolen = plan.take("fast")
    assert stolen is not None and stolen.holder == "fast"
    assert slow.end == stolen.start == 98 * MIB  # the back half of the 60 MiB left
    assert stolen.start % ALIGN == 0 and stolen.end == 128 * MIB
    # the slow stream's writer is cut at the new end: 30 MiB more, then nothing
    assert plan.claim(slow, 40 * MIB) == (68 * MIB, 30 * MIB)
    assert plan.claim(slow, 1) == (98 * MIB, 0)
    plan.claim(stolen, 30 * MIB)
    assert plan.done and plan.served == {"fast": 94 * MIB, "slow": 34 * MIB}


def test_no_steal_leaves_a_piece_under_the_minimum() -> None:
    plan = Plan(32 * MIB, ["a", "b"], 2, min_split=8 * MIB)
    sa, sb = plan.take("a"), plan.take("b")
    assert sa is not None and sb is not None
    plan.claim(sa, 16 * MIB)
    plan.claim(sb, 1 * MIB)  # 15 MiB left: under 2 x 8 MiB, not split
    assert plan.take("a") is None and not plan.done


def test_streams_go_to_the_nearest_holders_most_and_one_to_each() -> None:
    assert allot([0.01, 0.01, 0.01], 4) == [2, 1, 1]
    assert allot([0.01, 0.1, 0.2], 8) == [6, 1, 1]
    assert allot([0.05, 0.1], 6) == [4, 2]
    assert allot([0.0, 0.0001, 0.0], 3) == [1, 1, 1]  # loopback: all equally near
    assert allot([None, 0.02, 0.01], 4) == [1, 1, 2]  # unknown: as the farthest known
    assert allot([0.01, 0.02, 0.03], 2) == [1, 1, 1]  # at least one each
    assert allot([], 4) == []


def test_a_stopped_plan_gives_writers_nothing_more() -> None:
    plan = Plan(64 * MIB, ["a"], 2)
    span = plan.take("a")
    assert span is not None
    plan.claim(span, MIB)
    plan.stop()
    assert plan.claim(span, MIB) == (MIB, 0)
