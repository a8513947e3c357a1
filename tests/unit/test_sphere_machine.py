"""The job state machine of a Sphere stage (module docstring of sector/sphere/machine.py).

Every machine here is driven through ``feed``, which runs ``validate()`` after each
event; the last test throws random event sequences at it (hypothesis).
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from sector.security import guard
from sector.sphere import wire
from sector.sphere.machine import (
    Abort,
    Accepted,
    Action,
    Cancel,
    CommitEarly,
    Event,
    Failed,
    Finished,
    JobMachine,
    NodeLost,
    Polled,
    Probe,
    Resent,
    Schedule,
    Sleep,
    StageDone,
    Start,
    StartFailed,
    Wake,
    bucket_path,
    part_path,
    place_buckets,
)
from sector.sphere.schedule import Scheduler, Work

JOB = "0123456789abcdef"
SLOW = [HealthCheck.too_slow]
NODES = ("n0", "n1", "n2")


def machine(
    segs: int = 3,
    *,
    mode: str = "client",
    nodes: tuple[str, ...] = NODES,
    slots: int = 1,
    buckets: int = 0,
    early: bool = False,
    holders: bool = False,
    **kw: Any,
) -> JobMachine:
    kw.setdefault("rng", random.Random(1))
    kw.setdefault("spec_min", 10.0)
    work = [Work(i, (nodes[i % len(nodes)],) if holders else (), 100) for i in range(segs)]
    sched = Scheduler(work, dict.fromkeys(nodes, slots), **kw)
    m = JobMachine(
        JOB,
        list(range(segs)),
        sched,
        {n: f"10.0.0.{i}:9000" for i, n in enumerate(nodes)},
        mode=mode,
        buckets=place_buckets(JOB, nodes, buckets),
        early=early,
    )
    m.validate()
    return m


def feed(m: JobMachine, event: Event, now: float = 0.0) -> list[Action]:
    out = m.handle(event, now)
    m.validate()
    return out


def starts(actions: list[Action]) -> list[Start]:
    return [a for a in actions if isinstance(a, Start)]


def ok(attempt: int, **more: Any) -> Any:
    """A successful outcome (``wire.Outcome``)."""
    return {"attempt": attempt, "ok": True, "records_out": 1, **more}


def run_all(m: JobMachine, now: float = 0.0) -> list[Start]:
    """Start everything, accept it and let it succeed; the starts."""
    out = starts(feed(m, Schedule(), now))
    for s in out:
        feed(m, Accepted(s.attempt), now)
    for s in out:
        feed(m, Finished(s.node, ok(s.attempt)), now + 1)
    return out


# ---------------------------------------------------------------- the happy path


def test_schedule_starts_then_stage_done_with_results_in_segment_order() -> None:
    m = machine(3)
    acts = feed(m, Schedule())
    got = starts(acts)
    assert len(got) == 3 and isinstance(acts[-1], Sleep) and acts[-1].until is None
    assert m.touched == set(NODES) and all(m.runs_on(n) for n in NODES)
    for s in reversed(got):
        feed(m, Accepted(s.attempt))
        assert feed(m, Finished(s.node, ok(s.attempt, data=b"%d" % s.seg)), 1.0) == [Wake()]
    assert feed(m, Schedule(), 2.0) == [StageDone()]
    assert [r["data"] for r in m.ordered()] == [b"0", b"1", b"2"]
    assert m.progress()["done"] == 3 and set(m.progress()["nodes"]) == {
        f"10.0.0.{i}:9000" for i in range(3)
    }


def test_an_outcome_of_an_attempt_written_off_changes_nothing() -> None:
    m = machine(1, nodes=("n0", "n1"))
    (s,) = starts(feed(m, Schedule()))
    feed(m, NodeLost(s.node), 1.0)
    assert feed(m, Finished(s.node, ok(s.attempt)), 2.0) == []
    assert not m.winners and not m.done


def test_sleep_names_the_schedulers_next_deadline() -> None:
    m = machine(2, nodes=("n0", "n1", "n2"), spec_min=5.0)
    a, _b = starts(feed(m, Schedule(), 0.0))
    feed(m, Finished(a.node, ok(a.attempt)), 1.0)
    acts = feed(m, Schedule(), 1.0)
    # b runs alone, one engine idle: its backup is due at start + max(5, 2 x 1 s).
    assert acts == [Sleep(5.0)]


# ---------------------------------------------------------------- speculation


def test_a_backups_loser_is_cancelled_and_its_late_outcome_ignored() -> None:
    m = machine(2, spec_min=1.0)
    a, b = starts(feed(m, Schedule(), 0.0))
    feed(m, Finished(a.node, ok(a.attempt)), 0.1)  # a measure of a segment's time
    (backup,) = starts(feed(m, Schedule(), 5.0))
    assert backup.seg == b.seg and backup.speculative and backup.node != b.node
    assert m.speculative == 1
    acts = feed(m, Finished(backup.node, ok(backup.attempt)), 6.0)
    assert Cancel(b.attempt, b.node) in acts
    assert b.attempt not in m.running
    assert feed(m, Finished(b.node, ok(b.attempt)), 7.0) == []
    assert m.winners[b.seg][0] == backup.attempt


# ---------------------------------------------------------------- files


def test_files_mode_seals_each_winner_at_once() -> None:
    m = machine(2, mode="files", early=True)
    a, _b = starts(feed(m, Schedule()))
    acts = feed(m, Finished(a.node, ok(a.attempt)), 1.0)
    assert CommitEarly(a.seg, a.attempt, a.node) in acts
    assert part_path("/.sphere/_/j", 7) == "/.sphere/_/j/part-00007"


def test_a_lost_node_takes_its_winners_output_with_it_in_files_mode() -> None:
    m = machine(3, mode="files")
    run_all(m)
    assert m.done
    victim = m.winners[1][1]
    feed(m, NodeLost(victim), 2.0)
    assert 1 not in m.winners and not m.done
    again = starts(feed(m, Schedule(), 3.0))
    assert [s.seg for s in again] == [1] and again[0].node != victim


def test_a_lost_node_keeps_its_winners_when_output_came_back_to_the_client() -> None:
    m = machine(3, mode="client")
    run_all(m)
    feed(m, NodeLost(m.winners[1][1]), 2.0)
    assert m.done and len(m.winners) == 3


# ---------------------------------------------------------------- buckets


def test_buckets_undelivered_part_probes_its_holder_then_moves_and_is_resent() -> None:
    m = machine(1, mode="buckets", buckets=2, holders=True)
    assert m.bucket_node == {0: "n1", 1: "n2"}  # the job's offset: 0x01234567 % 3
    (s,) = starts(feed(m, Schedule()))
    assert s.node == "n0"  # the holder
    out = ok(s.attempt, parts={"0": 10, "1": 10}, undelivered=[1])
    assert Probe("n2") in feed(m, Finished(s.node, out), 1.0)
    assert m.delivered[0] == {0: "n1"}
    feed(m, NodeLost("n2"), 2.0)
    assert m.bucket_node == {0: "n1", 1: "n0"} and m.undelivered() == {0: {1: "n0"}}
    feed(m, Resent(0, s.attempt, {1: "n0"}, frozenset()), 3.0)
    assert m.undelivered() == {}
    items = m.bucket_items("/st")
    assert items == {
        "n0": [{"path": bucket_path("/st", 1), "bucket": 1, "attempts": [s.attempt]}],
        "n1": [{"path": "/st/bucket-00000", "bucket": 0, "attempts": [s.attempt]}],
    }


def test_a_resend_refused_loses_the_node_it_was_sent_to_only() -> None:
    m = machine(1, mode="buckets", buckets=2, nodes=("n0", "n1", "n2", "n3"))
    (s,) = starts(feed(m, Schedule()))
    feed(m, Finished(s.node, ok(s.attempt, parts={"0": 1, "1": 1})), 1.0)
    target = next(n for n in ("n0", "n1", "n2", "n3") if n != s.node)
    feed(m, Resent(0, s.attempt, {0: target, 1: target}, frozenset({0, 1})), 2.0)
    assert m.lost == {target}  # once: the buckets it held moved, their new nodes stay


def test_losing_a_bucket_node_reruns_the_segments_that_delivered_to_it() -> None:
    """A mapper deletes a part once its bucket's node has it: when that node is lost,
    the segments whose parts it held run again (their parts exist nowhere else); a
    segment that delivered nothing there keeps its winner."""
    m = machine(3, mode="buckets", buckets=3, holders=True)
    assert m.bucket_node == {0: "n1", 1: "n2", 2: "n0"}
    got = {s.seg: s for s in starts(feed(m, Schedule()))}
    feed(m, Finished("n0", ok(got[0].attempt, parts={"0": 5, "1": 5})), 1.0)  # n1, n2
    feed(m, Finished("n1", ok(got[1].attempt, parts={"1": 5})), 1.0)  # n2 only
    feed(m, Finished("n2", ok(got[2].attempt, parts={"2": 5})), 1.0)  # n0 only
    feed(m, NodeLost("n1"), 2.0)
    # seg 0 delivered to n1 and seg 1 ran there; seg 2 neither.
    assert set(m.winners) == {2}
    assert m.undelivered() == {}  # nothing to resend: what n1 held is re-made
    again = {s.seg for s in starts(feed(m, Schedule(), 3.0))}
    assert again == {0, 1}


def test_a_resend_answered_after_its_target_was_lost_reruns_the_segment() -> None:
    m = machine(1, mode="buckets", buckets=2, nodes=("n0", "n1", "n2", "n3"))
    (s,) = starts(feed(m, Schedule()))
    out = ok(s.attempt, parts={"0": 1, "1": 1}, undelivered=[0, 1])
    feed(m, Finished(s.node, out), 1.0)
    target = next(n for n in ("n0", "n1", "n2", "n3") if n not in (s.node, *m.bucket_node.values()))
    want = dict.fromkeys((0, 1), target)
    feed(m, NodeLost(target), 2.0)  # while the resend to it ran
    feed(m, Resent(0, s.attempt, want, frozenset()), 3.0)
    assert 0 not in m.winners and [x.seg for x in starts(feed(m, Schedule(), 4.0))] == [0]


def test_buckets_are_placed_round_robin_from_the_jobs_offset() -> None:
    got = place_buckets("00000001ffff", ["b", "a", "c"], 4)
    assert got == {0: "b", 1: "c", 2: "a", 3: "b"}


# ---------------------------------------------------------------- failures


def test_a_forgotten_attempt_fails_only_if_accepted_before_the_poll_left() -> None:
    m = machine(2, nodes=("n0",), slots=2)
    a, b = starts(feed(m, Schedule(), 0.0))
    feed(m, Accepted(a.attempt), 1.0)
    feed(m, Accepted(b.attempt), 3.0)
    acts = feed(m, Polled("n0", 2.0, frozenset()), 4.0)
    assert acts == [Wake()]
    assert a.attempt not in m.running and b.attempt in m.running
    assert "forgot" in m.sched.log[-1][2]


def test_a_start_the_node_could_not_take_is_retried_and_a_dead_node_is_lost() -> None:
    m = machine(2, nodes=("n0", "n1"))
    a, b = starts(feed(m, Schedule()))
    feed(m, StartFailed(a.attempt, "busy", "refused"), 1.0)
    assert a.node not in m.lost and m.progress()["failed_attempts"] == 1
    acts = feed(m, StartFailed(b.attempt, "connection refused", "down"), 1.0)
    assert Wake() in acts and m.lost == {b.node}


def test_a_denied_start_fails_the_job_at_the_next_schedule() -> None:
    m = machine(2)
    a, _b = starts(feed(m, Schedule()))
    feed(m, StartFailed(a.attempt, "bob may not compute", "denied"), 1.0)
    assert m.fatal
    assert feed(m, Schedule(), 1.0) == [Abort(f"job {JOB} failed: bob may not compute")]


def test_a_udf_that_raised_fails_the_job_with_its_traceback() -> None:
    m = machine(1)
    (s,) = starts(feed(m, Schedule()))
    bad: wire.Outcome = {
        "attempt": s.attempt,
        "error": "boom",
        "traceback": "TB",
        "retryable": False,
    }
    feed(m, Finished(s.node, bad), 1.0)
    assert m.error == "boom\nTB"
    (abort,) = feed(m, Schedule(), 1.0)
    assert isinstance(abort, Abort) and abort.traceback == "TB" and "not retryable" in abort.message


def test_losing_every_node_aborts() -> None:
    m = machine(2, nodes=("n0", "n1"), mode="files")
    feed(m, NodeLost("n0"), 1.0)
    acts = feed(m, NodeLost("n1"), 1.0)
    assert acts[-1] == Abort(f"job {JOB}: every node was lost")
    assert feed(m, NodeLost("n1"), 1.0) == []  # once


def test_failed_keeps_the_first_error_and_is_fatal() -> None:
    m = machine(1)
    feed(m, Failed("internal error: KeyError: 3"))
    feed(m, Failed("later"))
    assert m.error == "internal error: KeyError: 3"
    assert feed(m, Schedule()) == [Abort(f"job {JOB} failed: internal error: KeyError: 3")]


def test_the_staging_area_is_the_one_security_guards() -> None:
    assert wire.STAGING == guard.STAGING
    assert wire.staging_owner(None) == "_" and wire.staging_owner("ann") == "ann"


def test_poll_replies_keep_only_well_formed_outcomes() -> None:
    reply = {"done": [{"attempt": 1}, {"attempt": "x"}, 7, {"ok": True}], "running": [2, 3]}
    assert wire.outcomes(reply) == [{"attempt": 1}]
    assert wire.alive(reply) == {2, 3}
    assert wire.outcomes(None) == [] and wire.alive({}) == set()


# ---------------------------------------------------------------- random sequences


# Slow to generate on a busy machine: not a reason to fail.
@settings(max_examples=200, stateful_step_count=50, deadline=None, suppress_health_check=SLOW)
class RandomJob(RuleBasedStateMachine):
    """Any order of the events a driver can feed; ``validate()`` after every one. The
    events that end a job (a denied start, a UDF that raised, the last node lost, a
    driver's bug) are rarer than the others, so most runs go on long enough to see
    backups, cancels, lost buckets and resends."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.issued: list[Start] = []
        self.won: set[tuple[int, int]] = set()  # (seg, attempt) of every winner seen

    @initialize(
        mode=st.sampled_from(["client", "files", "buckets", "none"]),
        nodes=st.integers(1, 4),
        slots=st.integers(1, 2),
        segs=st.integers(1, 5),
        buckets=st.integers(1, 4),
        holders=st.booleans(),
        seed=st.integers(0, 2**16),
    )
    def plan(
        self, mode: str, nodes: int, slots: int, segs: int, buckets: int, holders: bool, seed: int
    ) -> None:
        self.m = machine(
            segs,
            mode=mode,
            nodes=tuple(f"n{i}" for i in range(nodes)),
            slots=slots,
            buckets=buckets if mode == "buckets" else 0,
            early=mode == "files",
            holders=holders,
            rng=random.Random(seed),
            spec_min=0.0,
            spec_factor=0.5,
            max_attempts=6,
        )

    def going(self) -> bool:
        return not (self.m.fatal or self.m.sched.error or self.m.lost == set(self.m.addr))

    def _feed(self, e: Event) -> list[Action]:
        acts = self.m.handle(e, self.now)
        self.m.validate()
        for a in acts:
            event(type(a).__name__)
            if isinstance(a, Abort):
                event(f"Abort: {a.message.split(': ', 1)[1][:24]}")
            if isinstance(a, Start):
                assert a.attempt in self.m.running and a.node not in self.m.lost
                self.issued.append(a)
            elif isinstance(a, Cancel):
                assert a.attempt not in self.m.running
            elif isinstance(a, Probe):
                assert a.node in self.m.addr
            elif isinstance(a, CommitEarly):
                assert self.m.winners[a.seg][0] == a.attempt
        self.won |= {(seg, att) for seg, (att, _n, _r) in self.m.winners.items()}
        return acts

    def _running(self, data: st.DataObject) -> Start:
        return data.draw(st.sampled_from(sorted(self.m.running.values(), key=lambda s: s.attempt)))

    @rule(dt=st.floats(0, 3))
    def schedule(self, dt: float) -> None:
        self.now += dt
        acts = self._feed(Schedule())
        if self.m.fatal or self.m.sched.error:
            assert len(acts) == 1 and isinstance(acts[0], Abort)
        elif self.m.done:
            assert acts == [StageDone()]

    @precondition(lambda self: self.going() and self.issued)
    @rule(data=st.data())
    def accept(self, data: st.DataObject) -> None:
        """Mostly a running attempt; now and then one written off as its start ran."""
        if self.m.running and data.draw(st.integers(0, 5)) != 3:
            self._feed(Accepted(self._running(data).attempt))
        else:
            self._feed(Accepted(data.draw(st.sampled_from(self.issued)).attempt))

    @precondition(lambda self: self.going() and self.m.running)
    @rule(data=st.data(), why=st.integers(0, 19))
    def start_fails(self, data: st.DataObject, why: int) -> None:
        s = self._running(data)
        # Hypothesis favours the ends of a range: the rare cases sit in the middle.
        if why == 7:
            self._feed(StartFailed(s.attempt, "no", "denied"))
        elif 8 < why < 13 and len(self.m.live_nodes()) > 1:
            self._feed(StartFailed(s.attempt, "no", "down"))
        else:
            self._feed(StartFailed(s.attempt, "no", "refused"))

    @precondition(lambda self: self.going() and self.m.running)
    @rule(data=st.data(), bad=st.sets(st.integers(0, 3), max_size=2))
    def succeed(self, data: st.DataObject, bad: set[int]) -> None:
        s = self._running(data)
        n = len(self.m.bucket_node)
        out = ok(s.attempt)
        if n:
            out["parts"] = {str(b): 1 for b in range(n) if (s.seg + b) % 2 == 0 or b == 0}
            out["undelivered"] = sorted(b for b in bad if b < n)
        self._feed(Finished(s.node, out))

    @precondition(lambda self: self.going() and self.m.running)
    @rule(data=st.data(), fatal=st.integers(0, 9), tb=st.booleans())
    def fail(self, data: st.DataObject, fatal: int, tb: bool) -> None:
        s = self._running(data)
        out: wire.Outcome = {"attempt": s.attempt, "error": "x", "retryable": fatal != 7}
        if tb:
            out["traceback"] = "TB"
        self._feed(Finished(s.node, out))

    @precondition(lambda self: self.going() and self.issued)
    @rule(data=st.data())
    def late(self, data: st.DataObject) -> None:
        s = data.draw(st.sampled_from(self.issued))
        self._feed(Finished(s.node, ok(s.attempt)))

    @precondition(going)
    @rule(data=st.data(), back=st.floats(0, 2))
    def poll(self, data: st.DataObject, back: float) -> None:
        node = data.draw(st.sampled_from(sorted(self.m.addr)))
        mine = sorted(a for a, s in self.m.running.items() if s.node == node)
        alive = set(mine)
        if mine and data.draw(st.integers(0, 5)) == 3:  # now and then, a restarted node
            alive = data.draw(st.sets(st.sampled_from(mine)))
        self._feed(Polled(node, self.now - back, frozenset(alive)))

    @precondition(going)
    @rule(data=st.data())
    def lose(self, data: st.DataObject) -> None:
        live = self.m.live_nodes()
        if len(live) > 1 or data.draw(st.integers(0, 9)) == 7:
            self._feed(NodeLost(data.draw(st.sampled_from(live))))

    @precondition(lambda self: self.going() and self.m.undelivered())
    @rule(data=st.data())
    def resend(self, data: st.DataObject) -> None:
        seg, want = data.draw(st.sampled_from(sorted(self.m.undelivered().items())))
        bad = data.draw(st.sets(st.sampled_from(sorted(want))))
        self._feed(Resent(seg, self.m.winners[seg][0], want, frozenset(bad)))

    def stale(self) -> list[tuple[int, int]]:
        return sorted(w for w in self.won if self.m.winners.get(w[0], (None,))[0] != w[1])

    @precondition(lambda self: self.going() and self.m.bucket_node and self.stale())
    @rule(data=st.data(), refused=st.booleans())
    def stale_resend(self, data: st.DataObject, refused: bool) -> None:
        """A resend's answer for a winner that lost its place while the call ran."""
        seg, att = data.draw(st.sampled_from(self.stale()))
        want = {b: n for b, n in self.m.bucket_node.items() if (seg + b) % 2 == 0 or b == 0}
        self._feed(Resent(seg, att, want, frozenset(want) if refused else frozenset()))

    @precondition(going)
    @rule(coin=st.integers(0, 59))
    def internal_error(self, coin: int) -> None:
        if coin == 37:
            self._feed(Failed("internal error"))

    @invariant()
    def valid(self) -> None:
        self.m.validate()


TestRandomJob = RandomJob.TestCase


@pytest.mark.parametrize("mode", ["files", "buckets"])
def test_a_job_survives_losing_nodes_until_one_is_left(mode: str) -> None:
    m = machine(6, mode=mode, buckets=3 if mode == "buckets" else 0, holders=True)
    now = 0.0
    for victim in ("n0", "n1"):
        for s in starts(feed(m, Schedule(), now)):
            out = (
                ok(s.attempt, parts={"0": 1, "1": 1, "2": 1})
                if mode == "buckets"
                else ok(s.attempt)
            )
            feed(m, Finished(s.node, out), now + 1)
        feed(m, NodeLost(victim), now + 2)
        now += 3
    while not m.done:
        for s in starts(feed(m, Schedule(), now)):
            feed(m, Finished(s.node, ok(s.attempt, parts={"0": 1, "1": 1, "2": 1})), now + 1)
        now += 2
    assert {n for _a, n, _r in m.winners.values()} == {"n2"}
    assert set(m.bucket_node.values()) <= {"n2"}
