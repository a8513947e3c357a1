"""Seeded discrete-event simulation of one Sphere stage driven by the pure Scheduler
(STYLE habit 10): a virtual clock, random segment durations, random failures, node
losses and returns, lost outputs reopened, and one very slow node. Every event is fed
to the scheduler exactly as the real driver would, including late reports of cancelled
or lost attempts, and validate() runs after each one.

Each seed replays exactly. When a seed fails, keep it in SEEDS as a regression test.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from dataclasses import dataclass, field

import pytest

from sector.sphere.schedule import Scheduler, Start, Work

SEEDS = [1, 2, 3, 20260523]
SEGMENTS = 200
NODES = 10
SLOTS = 2
RACK = 5  # nodes per rack


def distance(a: str, b: str) -> int:
    if a == b:
        return 0
    return 1 if int(a[1:]) // RACK == int(b[1:]) // RACK else 2


@dataclass
class Job:
    seed: int
    slow: float = 1.0  # how many times slower node n0 is
    fail_p: float = 0.0  # chance that an attempt fails (retryably)
    udf_bug_p: float = 0.0  # chance that an attempt fails for good
    losses: int = 0  # nodes lost during the run (each comes back later)
    reopens: int = 0  # times a done segment's output is lost
    speculate: bool = True
    replicas: int = 2
    end: float = 0.0
    wins: Counter[int] = field(default_factory=Counter)
    reopened: Counter[int] = field(default_factory=Counter)
    events: int = 0

    def run(self) -> Scheduler:
        rng = random.Random(self.seed)
        nodes = [f"n{i}" for i in range(NODES)]
        # Data spread evenly: the first replica round robin, the others at random.
        work = []
        base: dict[int, float] = {}
        for i in range(SEGMENTS):
            first = nodes[i % NODES]
            rest = rng.sample([n for n in nodes if n != first], self.replicas - 1)
            size = rng.randint(50, 150)
            work.append(Work(i, (first, *rest), size << 20))
            base[i] = size / 100
        sched = Scheduler(
            work,
            dict.fromkeys(nodes, SLOTS),
            distance=distance,
            speculate=self.speculate,
            rng=random.Random(self.seed + 1),
        )
        heap: list[tuple[float, int, str, object]] = []
        seq = 0

        def push(t: float, kind: str, data: object) -> None:
            nonlocal seq
            seq += 1
            heapq.heappush(heap, (t, seq, kind, data))

        starts: dict[int, Start] = {}
        dead: set[int] = set()  # attempts cancelled or on a lost node: their reports are late
        wakes: set[float] = set()
        live_nodes = set(nodes)

        def launch(now: float) -> None:
            for s in sched.schedule(now):
                assert s.node in live_nodes and s.attempt not in starts
                starts[s.attempt] = s
                d = base[s.seg] * rng.uniform(0.8, 1.25)
                d *= 1.0 if s.local else 1.5  # reading remotely costs
                d *= self.slow if s.node == "n0" else 1.0
                r = rng.random()
                outcome = "bug" if r < self.udf_bug_p else "fail" if r < self.fail_p else "ok"
                push(now + d, outcome, s.attempt)
            w = sched.wake_at(now)
            if w is not None and w not in wakes:
                wakes.add(w)
                push(w, "wake", None)

        for _ in range(self.losses):
            victim = rng.choice(nodes[1:])
            t = rng.uniform(1.0, 8.0)
            push(t, "lose", victim)
            push(t + rng.uniform(0.5, 3.0), "add", victim)
        for _ in range(self.reopens):
            push(rng.uniform(2.0, 10.0), "reopen", None)

        launch(0.0)
        sched.validate()
        now = 0.0
        while heap and not sched.done and sched.error is None:
            now, _, kind, data = heapq.heappop(heap)
            self.events += 1
            if kind in ("ok", "fail", "bug"):
                assert isinstance(data, int)
                att, s = data, starts[data]
                if kind == "ok":
                    won, cancels = sched.succeeded(att, now)
                    if att in dead:
                        assert (won, cancels) == (False, []), "a late report won"
                    else:
                        assert won, "a live attempt's success must win"
                        self.wins[s.seg] += 1
                        for c in cancels:
                            assert starts[c.attempt].seg == s.seg and c.node != s.node
                            dead.add(c.attempt)
                else:
                    sched.failed(att, now, f"{kind} on {s.node}", retryable=kind == "fail")
                dead.add(att)
            elif kind == "lose" and data in live_nodes:
                segs = sched.node_lost(str(data), now)
                live_nodes.discard(str(data))
                lost = [a for a, s in starts.items() if s.node == data and a not in dead]
                assert sorted(segs) == sorted(starts[a].seg for a in lost)
                dead.update(lost)
            elif kind == "add" and data not in live_nodes:
                sched.node_added(str(data), SLOTS)
                live_nodes.add(str(data))
            elif kind == "reopen":
                done = [i for i in range(SEGMENTS) if self.wins[i] > self.reopened[i]]
                if done:
                    seg = rng.choice(done)
                    sched.reopen([seg], now)
                    self.reopened[seg] += 1
            sched.validate()
            launch(now)
            sched.validate()
        self.end = now
        return sched


@pytest.mark.parametrize("seed", SEEDS)
def test_job_with_failures_losses_and_a_straggler_completes(seed: int) -> None:
    job = Job(seed, slow=10.0, fail_p=0.03, losses=3, reopens=5)
    sched = job.run()
    p = sched.progress()
    if sched.error is not None:
        # Only acceptable if some segment really used up its attempts.
        assert "failed 4 times" in sched.error, sched.error
    else:
        assert sched.done, f"seed {seed}: stuck with {p}"
        # Exactly one winner per segment (one more per time its output was lost).
        assert all(job.wins[i] == 1 + job.reopened[i] for i in range(SEGMENTS))
        assert p["failed_attempts"] > 0 and p["nodes"]["n0"]["done"] < SEGMENTS / NODES


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_hopeless_failures_exhaust_attempts_and_fail_the_job(seed: int) -> None:
    job = Job(seed, fail_p=0.5)
    sched = job.run()
    assert sched.error is not None and "failed 4 times" in sched.error, sched.error
    seg = int(sched.error.split()[1])
    assert job.wins[seg] == 0
    assert sched.schedule(job.end) == [] and sched.wake_at(job.end) is None


@pytest.mark.parametrize("seed", SEEDS)
def test_a_udf_bug_fails_the_job_promptly(seed: int) -> None:
    job = Job(seed, udf_bug_p=0.01)
    sched = job.run()
    assert sched.error is not None and "not retryable" in sched.error
    assert sched.schedule(job.end + 100.0) == []


@pytest.mark.parametrize("seed", SEEDS)
def test_locality_is_high_when_data_is_spread_evenly(seed: int) -> None:
    sched = Job(seed).run()
    p = sched.progress()
    assert sched.done and p["failed_attempts"] == 0
    assert p["local_done"] >= 0.9 * SEGMENTS, p


@pytest.mark.parametrize("seed", SEEDS)
def test_a_ten_times_slower_node_costs_little_with_speculation(seed: int) -> None:
    base = Job(seed)
    base.run()
    slow = Job(seed, slow=10.0)
    sched = slow.run()
    assert sched.done
    assert slow.end <= 2.0 * base.end, (slow.end, base.end)
    # ... and speculation is what keeps it so: without it the tail is far longer.
    nospec = Job(seed, slow=10.0, speculate=False)
    nospec.run()
    assert slow.end < nospec.end, (slow.end, nospec.end)
    assert sched.progress()["speculative_won"] > 0
