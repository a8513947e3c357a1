"""The Sphere scheduler, one rule at a time (module docstring of sector/sphere/schedule.py).

Every scheduler here is wrapped in ``Checked``: validate() runs after every call.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from sector.sphere.schedule import LOG_LEN, Cancel, Scheduler, Start, Work


class Checked:
    """A Scheduler whose invariants are checked after every method call (STYLE habit 8)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("rng", random.Random(1))
        self.s = Scheduler(*args, **kwargs)
        self.s.validate()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.s, name)
        if not callable(attr):
            return attr

        def call(*a: Any, **k: Any) -> Any:
            out = attr(*a, **k)
            self.s.validate()
            return out

        return call


def W(i: int, *holders: str, size: int = 100) -> Work:
    return Work(i, tuple(holders), size)


def by_seg(starts: list[Start]) -> dict[int, Start]:
    return {s.seg: s for s in starts}


def run(sc: Checked, dur: Callable[[Start], float], now: float = 0.0) -> float:
    """Run to completion with every attempt succeeding after dur(start); return the end."""
    heap: list[tuple[float, int]] = []
    for s in sc.schedule(now):
        heapq.heappush(heap, (now + dur(s), s.attempt))
    starts = {}
    while heap:
        now, att = heapq.heappop(heap)
        sc.succeeded(att, now)
        for s in sc.schedule(now):
            starts[s.attempt] = s
            heapq.heappush(heap, (now + dur(s), s.attempt))
    assert sc.done
    return now


# -- rule 1: locality and pull ------------------------------------------------------


def test_each_segment_starts_on_a_holder_when_slots_allow() -> None:
    nodes = ["a", "b", "c", "d"]
    work = [W(i, nodes[i % 4], nodes[(i + 1) % 4]) for i in range(8)]
    for seed in range(20):  # greedy random picks strand a slot for some of these seeds
        sc = Checked(work, dict.fromkeys(nodes, 2), rng=random.Random(seed))
        starts = sc.schedule(0.0)
        assert len(starts) == 8
        assert all(s.local and s.node in work[s.seg].holders for s in starts)
        assert Counter(s.node for s in starts) == dict.fromkeys(nodes, 2)
        assert not any(s.speculative for s in starts)
        assert len({s.attempt for s in starts}) == 8
        assert sc.schedule(0.0) == []  # nothing idle


def test_local_placement_is_a_matching_not_first_come() -> None:
    # a holds s0 and s1, b holds only s1: whatever order they go in, both run locally.
    for seed in range(10):
        sc = Checked([W(0, "a"), W(1, "a", "b")], {"a": 1, "b": 1}, rng=random.Random(seed))
        assert {(s.seg, s.node, s.local) for s in sc.schedule(0.0)} == {
            (0, "a", True),
            (1, "b", True),
        }


def test_local_pick_starts_from_a_random_offset() -> None:
    work = [W(i, "a") for i in range(20)]
    firsts = {
        Checked(work, {"a": 1}, rng=random.Random(seed)).schedule(0.0)[0].seg for seed in range(10)
    }
    assert len(firsts) > 3  # not always the first segment of the queue: no convoys


def test_tasks_without_holders_run_anywhere_as_local() -> None:
    sc = Checked([W(i, size=0) for i in range(5)], {"a": 2, "b": 3})
    starts = sc.schedule(0.0)
    assert len(starts) == 5 and all(s.local for s in starts)


def test_pull_balances_a_node_with_twice_the_slots_does_twice_the_work() -> None:
    work = [W(i, "a", "b") for i in range(60)]
    sc = Checked(work, {"a": 2, "b": 1}, speculate=False)
    nodes: dict[int, str] = {}

    def dur(s: Start) -> float:
        nodes[s.seg] = s.node
        return 1.0

    end = run(sc, dur)
    per = Counter(nodes.values())
    assert per["a"] == 40 and per["b"] == 20
    assert end == pytest.approx(20.0)
    p = sc.progress()
    assert p["nodes"]["a"]["done"] == 40 and p["local_done"] == 60


def test_pull_balances_a_fast_and_a_slow_node() -> None:
    work = [W(i, "fast" if i % 2 else "slow") for i in range(40)]
    sc = Checked(work, {"fast": 1, "slow": 1}, speculate=False)
    done = Counter[str]()

    def dur(s: Start) -> float:
        done[s.node] += 1
        return 1.0 if s.node == "fast" else 3.0

    run(sc, dur)
    assert done["fast"] >= 2.5 * done["slow"]  # the fast node steals the slow one's share


# -- rule 2: data moves only when needed ---------------------------------------------


def test_no_remote_start_while_a_holder_has_an_idle_slot() -> None:
    sc = Checked([W(0, "a"), W(1, "a")], {"a": 2, "b": 1})
    starts = sc.schedule(0.0)
    assert {s.node for s in starts} == {"a"} and len(starts) == 2


def test_remote_start_when_every_holder_is_busy() -> None:
    sc = Checked([W(0, "a"), W(1, "a"), W(2, "a")], {"a": 1, "b": 1})
    starts = sc.schedule(0.0)
    assert sorted((s.node, s.local) for s in starts) == [("a", True), ("b", False)]


def test_remote_takes_the_nearest_segment() -> None:
    rack = {"a": 0, "b": 0, "c": 1, "x": 0}

    def distance(p: str, q: str) -> int:
        return 0 if p == q else 1 if rack[p] == rack[q] else 2

    work = [W(0, "c"), W(1, "c"), W(2, "a"), W(3, "a")]
    for seed in range(5):
        sc = Checked(work, {"a": 1, "c": 1, "x": 1}, distance=distance, rng=random.Random(seed))
        starts = by_seg(sc.schedule(0.0))
        stolen = [s for s in starts.values() if s.node == "x"]
        assert len(stolen) == 1 and stolen[0].seg in (2, 3)  # a is in x's rack, c is not


def test_remote_wait_holds_a_segment_for_its_busy_holder() -> None:
    sc = Checked([W(0, "a"), W(1, "a")], {"a": 1, "b": 1}, remote_wait=5.0)
    assert [s.node for s in sc.schedule(10.0)] == ["a"]
    assert sc.wake_at(10.0) == 15.0
    assert sc.schedule(14.9) == []
    s = sc.schedule(15.0)
    assert [(x.node, x.local) for x in s] == [("b", False)]


def test_remote_wait_counts_from_when_the_segment_became_pending() -> None:
    sc = Checked([W(0, "a"), W(1, "a")], {"a": 1, "b": 1}, remote_wait=5.0)
    (x,) = sc.schedule(0.0)
    sc.succeeded(x.attempt, 3.0)
    (y,) = sc.schedule(3.0)
    assert y.node == "a" and y.local
    sc.reopen([x.seg], 4.0)  # x's output was lost: pending since 4, not since 0
    assert sc.schedule(8.9) == [] and sc.wake_at(8.9) == 9.0
    assert [(s.seg, s.node, s.local) for s in sc.schedule(9.0)] == [(x.seg, "b", False)]


def test_remote_wait_does_not_hold_a_segment_its_holder_may_not_run() -> None:
    sc = Checked([W(0, "a"), W(1, "a")], {"a": 2, "b": 1}, remote_wait=5.0)
    first = by_seg(sc.schedule(0.0))
    sc.failed(first[0].attempt, 8.0, "disk hiccup")  # a is now excluded for seg 0
    assert [(s.seg, s.node) for s in sc.schedule(8.0)] == [(0, "b")]


def test_segment_whose_only_holder_is_gone_runs_remotely_at_once() -> None:
    sc = Checked([W(0, "gone")], {"b": 1}, remote_wait=100.0)
    assert [(s.node, s.local) for s in sc.schedule(0.0)] == [("b", False)]


# -- rule 3: retries ---------------------------------------------------------------


def test_failed_attempt_retries_on_another_node() -> None:
    sc = Checked([W(0, "a", "b")], {"a": 1, "b": 1})
    (s,) = sc.schedule(0.0)
    sc.failed(s.attempt, 1.0, "read error")
    (r,) = sc.schedule(1.0)
    assert r.node != s.node and r.attempt > s.attempt and r.local
    p = sc.progress()
    assert p["failed_attempts"] == 1 and p["nodes"][s.node]["failed"] == 1
    assert sc.error is None


def test_excluded_node_is_allowed_again_when_no_other_is_left() -> None:
    sc = Checked([W(0, "a")], {"a": 1})
    (s,) = sc.schedule(0.0)
    sc.failed(s.attempt, 1.0, "flaky")
    (r,) = sc.schedule(1.0)
    assert r.node == "a"


def test_max_attempts_fails_the_job_naming_segment_and_error() -> None:
    sc = Checked([W(7, "b")], {"a": 1, "b": 1, "c": 1}, max_attempts=3)
    for k in range(3):
        (s,) = sc.schedule(float(k))
        assert sc.error is None
        sc.failed(s.attempt, float(k) + 0.5, f"oops {k}")
    assert sc.error is not None and "segment 7" in sc.error and "oops 2" in sc.error
    assert sc.schedule(5.0) == []
    assert sc.wake_at(5.0) is None


def test_non_retryable_failure_fails_the_job_at_once() -> None:
    sc = Checked([W(0, "a"), W(1, "b")], {"a": 1, "b": 1})
    starts = by_seg(sc.schedule(0.0))
    sc.failed(starts[1].attempt, 1.0, "ZeroDivisionError in udf", retryable=False)
    assert sc.error is not None
    assert "segment 1" in sc.error and "ZeroDivisionError" in sc.error
    assert sc.schedule(1.0) == []
    # The other attempt may still report; that is recorded, the job stays failed.
    assert sc.succeeded(starts[0].attempt, 2.0) == (True, [])
    assert not sc.done and sc.error is not None


def test_late_and_unknown_reports() -> None:
    sc = Checked([W(0, "a")], {"a": 1})
    (s,) = sc.schedule(0.0)
    assert sc.succeeded(s.attempt, 1.0) == (True, [])
    assert sc.succeeded(s.attempt, 1.5) == (False, [])  # duplicate
    sc.failed(s.attempt, 2.0, "late")  # ignored
    assert sc.progress()["failed_attempts"] == 0 and sc.done
    with pytest.raises(ValueError, match="never started"):
        sc.succeeded(99, 2.0)


# -- rule 4: speculation -----------------------------------------------------------


def straggler_setup(**kw: Any) -> tuple[Checked, dict[int, Start]]:
    """a, b, c with one slot each and one segment each; a and b finish in 1s, c hangs."""
    work = [W(0, "a"), W(1, "b"), W(2, "c", "b")]
    sc = Checked(work, {"a": 1, "b": 1, "c": 1}, **kw)
    starts = by_seg(sc.schedule(0.0))
    assert sc.succeeded(starts[0].attempt, 1.0) == (True, [])
    assert sc.succeeded(starts[1].attempt, 1.0) == (True, [])
    return sc, starts


def test_a_straggler_gets_one_backup_which_wins_and_cancels_it() -> None:
    sc, starts = straggler_setup()
    assert sc.schedule(1.5) == []  # 1.5s < max(1, 2 x median 1s)
    assert sc.wake_at(1.5) == 2.0
    (b,) = sc.schedule(2.0)
    # Prefers a holder (b) to a non-holder (a), never the straggler's own node.
    assert (b.seg, b.node, b.local, b.speculative) == (2, "b", True, True)
    assert sc.schedule(3.0) == []  # only ONE backup
    assert sc.progress()["running"] == 1 and sc.progress()["speculative"] == 1
    won, cancels = sc.succeeded(b.attempt, 3.0)
    assert won and cancels == [Cancel(starts[2].attempt, "c")]
    assert sc.done and sc.progress()["speculative_won"] == 1
    assert sc.succeeded(starts[2].attempt, 20.0) == (False, [])  # the loser, late
    assert sc.progress()["nodes"]["c"]["done"] == 0


def test_original_can_still_win_against_its_backup() -> None:
    sc, starts = straggler_setup()
    (b,) = sc.schedule(2.5)
    assert sc.succeeded(starts[2].attempt, 2.6) == (True, [Cancel(b.attempt, b.node)])
    sc.failed(b.attempt, 2.7, "cancelled")  # the cancelled backup's report is ignored
    assert sc.done and sc.progress()["failed_attempts"] == 0


def test_backup_failing_leaves_the_original_running() -> None:
    sc, starts = straggler_setup()
    (b,) = sc.schedule(2.5)
    sc.failed(b.attempt, 2.6, "boom")
    assert sc.progress()["running"] == 1 and sc.schedule(10.0) == []  # one backup only
    assert sc.succeeded(starts[2].attempt, 11.0) == (True, [])


def test_no_speculation_while_work_is_pending_or_when_disabled_or_alone() -> None:
    sc, _ = straggler_setup(speculate=False)
    assert sc.schedule(100.0) == [] and sc.wake_at(100.0) is None
    sc = Checked([W(0, "a"), W(1, "a")], {"a": 1})
    (s,) = sc.schedule(0.0)
    sc.succeeded(s.attempt, 1.0)
    assert len(sc.schedule(1.0)) == 1
    assert sc.schedule(100.0) == []  # the only node: a backup never goes to its own node
    # spec_min bounds the threshold from below.
    sc, _ = straggler_setup(spec_min=10.0)
    assert sc.schedule(9.0) == [] and sc.wake_at(9.0) == 10.0


def test_longest_running_straggler_is_backed_up_first() -> None:
    sc = Checked([W(0, "a"), W(1, "b"), W(2, "c")], {"a": 1, "b": 1, "c": 1})
    starts = by_seg(sc.schedule(0.0))
    sc.failed(starts[1].attempt, 0.5, "x")  # b is excluded for seg 1; a and c are busy
    assert sc.schedule(0.5) == []
    sc.succeeded(starts[0].attempt, 1.0)
    (r,) = sc.schedule(1.0)
    assert (r.seg, r.node) == (1, "a")
    # Seg 2 (running since 0) and seg 1 (since 1) are both stragglers; one idle slot.
    (b,) = sc.schedule(10.0)
    assert (b.seg, b.node, b.speculative) == (2, "b", True)


# -- rule 5: lost nodes; reopen; holders -------------------------------------------


def test_node_lost_requeues_its_attempts_elsewhere() -> None:
    sc = Checked([W(0, "a"), W(1, "b")], {"a": 1, "b": 1})
    starts = by_seg(sc.schedule(0.0))
    assert sc.node_lost("a", 1.0) == [0]
    assert sc.node_lost("a", 1.0) == []  # already gone
    assert sc.succeeded(starts[0].attempt, 1.1) == (False, [])  # its report, late
    assert sc.schedule(1.1) == []  # b is busy
    sc.succeeded(starts[1].attempt, 2.0)
    (r,) = sc.schedule(2.0)
    assert (r.seg, r.node, r.local) == (0, "b", False)  # only holder gone: read remotely
    p = sc.progress()
    assert p["nodes"]["a"] == {"done": 0, "running": 0, "failed": 1, "slots": 0, "gone": True}
    sc.succeeded(r.attempt, 3.0)
    assert sc.done


def test_node_added_takes_work_and_a_lost_node_may_return() -> None:
    sc = Checked([W(i, "a") for i in range(4)], {"a": 1})
    sc.schedule(0.0)
    sc.node_added("b", 2)
    assert [s.node for s in sc.schedule(0.0)] == ["b", "b"]
    sc.node_lost("b", 1.0)
    sc.node_added("b", 1)
    assert not sc.progress()["nodes"]["b"]["gone"]
    with pytest.raises(ValueError):
        sc.node_added("c", -1)


def test_reopen_runs_a_done_segment_again_with_a_fresh_attempt() -> None:
    sc = Checked([W(0, "a"), W(1, "a")], {"a": 2})
    starts = by_seg(sc.schedule(0.0))
    for s in starts.values():
        sc.succeeded(s.attempt, 1.0)
    assert sc.done
    sc.reopen([0, 0], 2.0)
    assert not sc.done and sc.progress()["pending"] == 1
    (r,) = sc.schedule(2.0)
    assert r.seg == 0 and r.attempt > max(s.attempt for s in starts.values())
    sc.reopen([0], 2.5)  # running: left alone
    assert sc.progress()["running"] == 1
    assert sc.succeeded(starts[0].attempt, 3.0) == (False, [])  # the old winner
    assert sc.succeeded(r.attempt, 3.0) == (True, [])
    assert sc.done
    with pytest.raises(ValueError):
        sc.reopen([5], 4.0)


def test_holders_changed_moves_locality() -> None:
    sc = Checked([W(0, "a"), W(1, "a")], {"a": 1, "b": 1}, remote_wait=50.0)
    (s,) = sc.schedule(0.0)
    other = 1 - s.seg
    sc.holders_changed(other, ("b",))
    (r,) = sc.schedule(0.0)
    assert (r.seg, r.node, r.local) == (other, "b", True)


# -- reporting and invariants ------------------------------------------------------


def test_progress_counts() -> None:
    sc = Checked([W(0, "a", size=10), W(1, "b", size=30), W(2, "a", size=5)], {"a": 1, "b": 1})
    starts = by_seg(sc.schedule(0.0))
    sc.succeeded(starts[1].attempt, 1.0)
    p = sc.progress()
    assert (p["segments"], p["done"], p["running"], p["pending"]) == (3, 1, 1, 1)
    assert (p["bytes"], p["bytes_done"], p["local_done"]) == (45, 30, 1)
    assert p["nodes"]["a"] == {"done": 0, "running": 1, "failed": 0, "slots": 1, "gone": False}


def test_validate_catches_broken_state() -> None:
    sc = Scheduler([W(0, "a"), W(1, "a")], {"a": 1})
    sc.schedule(0.0)
    sc.validate()
    sc._busy["a"] = 2
    with pytest.raises(AssertionError, match="busy"):
        sc.validate()
    sc._busy["a"] = 1
    sc._pending[next(iter(sc._running))] = 0.0
    with pytest.raises(AssertionError, match="two states"):
        sc.validate()


def test_bad_construction() -> None:
    with pytest.raises(ValueError, match="twice"):
        Scheduler([W(0), W(0)], {"a": 1})
    with pytest.raises(ValueError):
        Scheduler([], {"a": 1}, max_attempts=0)
    assert Scheduler([], {}).done


def test_log_is_bounded() -> None:
    sc = Scheduler([W(i, "a") for i in range(LOG_LEN)], {"a": 4})
    t = 0.0
    while not sc.done:
        for s in sc.schedule(t):
            sc.succeeded(s.attempt, t + 1)
        t += 1
    assert len(sc.log) == LOG_LEN and sc.log[-1][1] == "won"
