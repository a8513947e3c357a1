"""The schedule of a read striped over replicas (``transport/spans.py``, issue 15):
every byte is written exactly once whatever the order of takes, writes and failures;
a failed holder hands back only what it had not written; chunks shrink towards the
end; a faster holder takes more; streams go to the nearest holders most."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sector.transport.spans import ALIGN, MAX_CHUNK, Plan, Span, allot

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
    streams=st.integers(1, 8),
    ops=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 7), st.integers(1, 40)), max_size=200),
)
def test_every_byte_is_written_once_through_takes_and_failures(
    size: int, holders: int, streams: int, ops: list[tuple[int, int, int]]
) -> None:
    names = [f"h{i}" for i in range(holders)]
    plan = Plan(size, names, streams)
    active: list[tuple[str, Span]] = []  # chunks asked for, not yet written whole
    written: list[tuple[int, int]] = []
    lost = 0  # bytes failed streams had asked for and not written: read again

    def write(j: int, n: int) -> None:
        _, span = active[j]
        at, k = plan.claim(span, n)
        assert k == min(n, span.left + k)  # a chunk is never cut short
        if k:
            written.append((at, k))
        if span.left == 0:
            active.pop(j)

    for kind, who, mib in ops:
        if kind == 0:  # a stream of holder `who` asks for a chunk
            h = names[who % holders]
            span = plan.take(h)
            if span is not None:
                assert span.holder == h and span.left > 0
                assert span.start % ALIGN == 0
                active.append((h, span))
        elif kind == 1 and active:  # a chunk receives some bytes
            write(who % len(active), mib * MIB // 3 + 1)
        elif kind == 2 and active and len(plan.live) > 1:  # a holder's stream breaks
            h = active[who % len(active)][0]
            mine = [sp for hh, sp in active if hh == h]
            before = [(sp.pos, sp.left) for sp in mine]
            plan.failed(mine, h)
            assert h not in plan.live and plan.take(h) is None
            for sp, (pos, left) in zip(mine, before, strict=True):
                assert sp.holder is None and (sp.pos, sp.left) == (pos, left)  # the rest
            lost += sum(left for _, left in before)
            active = [(hh, sp) for hh, sp in active if hh != h]
    # The live holders finish the read.
    for _ in range(10_000):
        if active:
            write(0, 64 * MIB)
            continue
        took = [plan.take(h) for h in list(plan.live)]
        active = [(sp.holder, sp) for sp in took if sp is not None and sp.holder is not None]
        if not active:
            break
    assert plan.done and not plan.stuck
    _cover(written, size)
    assert sum(plan.served.values()) == size
    assert plan.refetched == lost


def test_a_failed_holders_unwritten_bytes_go_to_another_holder() -> None:
    plan = Plan(64 * MIB, ["near", "far"], 2)
    a, b, b2 = plan.take("near"), plan.take("far"), plan.take("far")
    assert a is not None and b is not None and b2 is not None
    # a share of what is left each time: 64 / (2 x 2), then 48 / 4, then 36 / 4
    assert [(x.start, x.end) for x in (a, b, b2)] == [
        (0, 16 * MIB),
        (16 * MIB, 28 * MIB),
        (28 * MIB, 37 * MIB),
    ]
    assert plan.claim(b, 10 * MIB) == (16 * MIB, 10 * MIB)
    plan.failed([b, b2], "far")  # its current chunk and the one it had asked for
    assert plan.refetched == 2 * MIB + 9 * MIB and plan.dead == ["far"]
    again = plan.take("near")
    assert again is b and (again.pos, again.end) == (26 * MIB, 28 * MIB)  # only the rest
    assert plan.take("near") is b2
    assert plan.take("far") is None


def test_every_holder_failing_leaves_the_plan_stuck() -> None:
    plan = Plan(64 * MIB, ["a", "b"], 2)
    sa, sb = plan.take("a"), plan.take("b")
    assert sa is not None and sb is not None
    plan.failed([sa], "a")
    plan.failed([sb], "b")
    assert plan.stuck and not plan.done


def test_chunks_shrink_towards_the_end_and_none_is_under_the_minimum() -> None:
    plan = Plan(1 << 30, ["h"], 4, min_chunk=8 * MIB)
    sizes = []
    while (sp := plan.take("h")) is not None:
        sizes.append(sp.end - sp.start)
        assert sp.start % ALIGN == 0
    assert sum(sizes) == 1 << 30
    assert sizes[0] == 128 * MIB  # a share of what is left: 1 GiB / (2 x 4 streams)
    assert sizes == sorted(sizes, reverse=True)  # never growing
    assert all(n >= 8 * MIB for n in sizes[:-1]) and sizes[-1] <= 8 * MIB
    assert plan.chunk_len(3 * MIB) == 3 * MIB  # the last: what is left
    big = Plan(64 << 30, ["h"], 1)
    assert big.chunk_len(64 << 30) == MAX_CHUNK


def test_a_faster_holder_takes_more_chunks() -> None:
    """Each stream comes back for a chunk when it has written one: the holder that
    writes three times as fast reads about three times the bytes."""
    plan = Plan(512 * MIB, ["fast", "slow"], 2)
    cur = {h: plan.take(h) for h in ("fast", "slow")}
    while not plan.done:
        for h, rate in (("fast", 3), ("slow", 1)):
            sp = cur[h]
            if sp is None:
                continue
            plan.claim(sp, rate * MIB)
            if sp.left == 0:
                cur[h] = plan.take(h)
    assert plan.served["fast"] > 2.3 * plan.served["slow"], plan.served


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
