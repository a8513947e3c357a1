"""Which segment attempt runs where, for one Sphere stage: a pure state machine.

A stage's job state machine (``machine.py``) keeps one ``Scheduler``, reports engines
(slots per node) and outcomes, and hands the ``Start`` / ``Cancel`` instructions it gets
back to the driver (``driver.py``), which performs them. Nothing here awaits or reads a clock: ``now`` is passed in
and randomness comes from the ``random.Random`` given to the constructor, so one seed
replays a whole job (STYLE habits 1, 2, 10).

Rules (Gu & Grossman, "Sector and Sphere", 2009, §3; the original's
``client/dcclient.cpp``; reference/original-sector-sphere.md §3 "Scheduling"):

1. Locality and pull (``prepareSPEJobQueue`` / ``checkSPE``). Nothing is pushed ahead
   of time: an idle slot pulls one pending segment, so a fast node pulls more and the
   load balances itself. An idle slot on node n takes a pending segment n holds, then
   one with no input (generator tasks run anywhere). Candidates are scanned from a
   random offset so engines holding the same data do not convoy. Several idle slots are
   filled together as a bipartite matching, not first come first served (see
   ``_match_local``).
2. Data moves only when it must. A slot with nothing local takes the nearest pending
   segment (``distance`` to its closest holder; the driver passes
   ``topology_distance``, placement's own measure, so "near" means one thing to where
   copies go and to where segments run) only if every usable holder is busy or
   it has none (all gone or excluded). With ``remote_wait`` > 0 such a segment must also
   have been pending that long (delay scheduling: a holder is likely to free up, and
   reading locally is cheaper than moving data). All local work is placed, across all
   nodes, before any steal, so "every holder is busy" holds whenever a steal happens.
3. Retries. A failed retryable attempt puts its segment back to pending and excludes
   that node for it, unless every live node is excluded (then all are allowed again: a
   flaky node beats none). ``max_attempts`` failed attempts of one segment fail the
   job (``error``); a non-retryable failure (the UDF raised) fails it at once, as
   running it elsewhere would raise again. (The original went on with the segment
   marked failed; a silently missing part of the output is worse.)
4. Speculation (the original had none: ``m_iAvgRunTime`` was computed, never used).
   Only when nothing is pending and a slot is idle, a running attempt whose elapsed
   time is at least max(spec_min, spec_factor x median duration of the winning
   attempts so far) gets ONE backup on another node (an idle holder if any, else the
   nearest; never its own node), longest-running first. The first to succeed wins; the
   other comes back as a ``Cancel``, and its late report is a no-op. The median is of
   whole durations, not per byte: segments are cut to similar sizes, tasks have none.
5. A lost node's running attempts fail retryably (counting towards max_attempts, like
   the original's retries) and its slots go. Segments it held, even alone, still run
   elsewhere: holders are a preference; the driver can read another replica.
6. Once ``error`` is set, ``schedule`` returns nothing; the driver fails the job.

Every segment is exactly one of pending, running (one or two live attempts) or done
(it has a winner); ``reopen`` sends a done segment whose output was lost back to
pending. ``validate()`` checks this and the slot accounting (STYLE habit 8).
"""

from __future__ import annotations

import bisect
import collections
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sector.storage.placement import Candidate, topo_distance

__all__ = ["Cancel", "Scheduler", "Start", "Work", "topology_distance"]

# How many (now, what, detail) entries the debugging log keeps.
LOG_LEN = 512


@dataclass(frozen=True, slots=True)
class Work:
    """One segment as the scheduler sees it."""

    id: int
    holders: tuple[str, ...]  # node ids holding its data; empty: runs anywhere (tasks)
    size: int  # bytes; for progress only


@dataclass(frozen=True, slots=True)
class Start:
    """Instruction: start attempt ``attempt`` (unique in the job) of ``seg`` on ``node``."""

    attempt: int
    seg: int
    node: str
    local: bool  # no input crosses the network: node holds the data, or there is none
    speculative: bool


@dataclass(frozen=True, slots=True)
class Cancel:
    """Instruction: the segment was won elsewhere; this attempt is moot (the driver
    sends ``sphere.cancel``: the node kills the engine running it)."""

    attempt: int
    node: str


@dataclass(slots=True)
class _Attempt:
    id: int
    seg: int
    node: str
    start: float
    local: bool
    speculative: bool


def _rotated(pool: dict[int, None], rng: random.Random) -> list[int]:
    """A pool's segments starting from a random offset (rule 1: no convoys)."""
    items = list(pool)
    k = rng.randrange(len(items)) if items else 0
    return items[k:] + items[:k]


def _same_or_not(a: str, b: str) -> int:
    return 0 if a == b else 1


def topology_distance(places: Mapping[str, Candidate]) -> Callable[[str, str], int]:
    """A ``distance`` for the scheduler: placement's ``topo_distance`` of the nodes as
    ``places`` describes them (host and topology path). A node missing from it is of
    unknown topology on a host of its own: FAR from every other node."""

    def where(n: str) -> Candidate:
        return places.get(n) or Candidate(node_id=n, addr="", host="", topology="", free=0)

    return lambda a, b: topo_distance(where(a), where(b))


class Scheduler:
    """The segment states of one stage and their transitions (see the module rules)."""

    def __init__(
        self,
        work: Sequence[Work],
        engines: Mapping[str, int],
        *,
        distance: Callable[[str, str], int] | None = None,
        max_attempts: int = 4,
        speculate: bool = True,
        spec_factor: float = 2.0,
        spec_min: float = 1.0,
        rng: random.Random | None = None,
        remote_wait: float = 0.0,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if spec_factor <= 0 or spec_min < 0 or remote_wait < 0:
            raise ValueError("spec_factor must be > 0, spec_min and remote_wait >= 0")
        self.max_attempts = max_attempts
        self.speculate = speculate
        self.spec_factor = spec_factor
        self.spec_min = spec_min
        self.remote_wait = remote_wait
        self._distance = distance or _same_or_not
        # A fixed default seed: the same job schedules the same way unless told otherwise.
        self._rng = rng if rng is not None else random.Random(0)
        self._work: dict[int, Work] = {}
        self._holders: dict[int, tuple[str, ...]] = {}
        for w in work:
            if w.id in self._work:
                raise ValueError(f"segment id {w.id} appears twice")
            self._work[w.id] = w
            self._holders[w.id] = tuple(dict.fromkeys(w.holders))
        self._slots: dict[str, int] = {}  # live node -> slots
        self._busy: dict[str, int] = {}  # live node -> running attempts
        self._gone: set[str] = set()
        self._stats: dict[str, dict[str, int]] = {}  # node -> {"done", "failed"}
        self._t0: float | None = None  # the first schedule() time: "job start"
        self._now = 0.0
        self.log: collections.deque[tuple[float, str, str]] = collections.deque(maxlen=LOG_LEN)
        for node, slots in engines.items():
            self.node_added(node, slots)
        # Segment states. pending: seg -> when it became pending (None: at job start).
        self._pending: dict[int, float | None] = {}
        self._running: dict[int, list[int]] = {}  # seg -> live attempt ids (1 or 2)
        self._winner: dict[int, _Attempt] = {}
        self._live: dict[int, _Attempt] = {}
        # Pending segments by holder (a gone holder keeps its pool: its segments still
        # rank by distance to it) and those with no input; dicts as ordered sets.
        self._by_holder: dict[str, dict[int, None]] = {}
        self._anywhere: dict[int, None] = {}
        self._failures: dict[int, int] = {}
        self._excluded: dict[int, set[str]] = {}
        self._backed_up: set[int] = set()  # running segments that had their one backup
        self._durations: list[float] = []  # of winning attempts, kept sorted
        self._next_attempt = 0
        self._n_failed = self._n_spec = self._n_spec_won = 0
        self._error: str | None = None
        for seg in self._work:
            self._make_pending(seg, None)

    def __repr__(self) -> str:
        return (
            f"<Scheduler {len(self._winner)}/{len(self._work)} done, {len(self._running)} "
            f"running, {len(self._pending)} pending, {len(self._slots)} nodes>"
        )

    # -- state ------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """Every segment has succeeded."""
        return len(self._winner) == len(self._work)

    @property
    def error(self) -> str | None:
        """Why the job must fail, or None."""
        return self._error

    # -- scheduling -------------------------------------------------------------------

    def schedule(self, now: float) -> list[Start]:
        """Fill every idle slot that sensibly can be filled (rules 1, 2, 4, 6)."""
        self._tick(now)
        if self._error is not None or self.done:
            return []
        out: list[Start] = []
        nodes = [n for n in self._slots if self._idle(n)]
        # Nodes take turns one slot at a time, in a random order, so no node is always
        # first to grab segments that several nodes hold.
        self._rng.shuffle(nodes)
        self._match_local(nodes, now, out)
        self._fill(nodes, self._pick_anywhere, out)
        self._fill(nodes, self._pick_remote, out)
        if self.speculate and not self._pending:
            self._speculate(now, out)
        return out

    def wake_at(self, now: float) -> float | None:
        """The earliest later time at which ``schedule`` could start something with no
        event in between (a remote_wait running out, an attempt becoming a straggler);
        None if only an event can. A hint for the driver's timer; a call too early is
        harmless."""
        if self._error is not None or self.done or not any(map(self._idle, self._slots)):
            return None
        times: list[float] = []
        if self._pending:
            if self.remote_wait > 0:
                t0 = now if self._t0 is None else self._t0
                for seg, since in self._pending.items():
                    if self._holders[seg]:
                        times.append((t0 if since is None else since) + self.remote_wait)
        elif self.speculate and self._durations:
            thr = self._threshold()
            for seg, ids in self._running.items():
                if len(ids) == 1 and seg not in self._backed_up:
                    times.append(self._live[ids[0]].start + thr)
        return min((t for t in times if t > now), default=None)

    def _fill(self, nodes: list[str], pick: Callable[[str], int | None], out: list[Start]) -> None:
        active = nodes
        while active and self._pending:
            again = []
            for n in active:
                seg = pick(n) if self._idle(n) else None
                if seg is not None:
                    out.append(self._start(seg, n, self._now, speculative=False))
                    if self._idle(n):
                        again.append(n)
            active = again

    def _match_local(self, nodes: list[str], now: float, out: list[Start]) -> None:
        """Rule 1 for every idle slot at once, as a bipartite matching of idle slots to
        pending segments their node holds (augmenting paths, Kuhn). Greedy picks can
        strand a slot: with a holding s1 and s2 and b holding only s1, a taking s1 first
        leaves b to read remotely although both could run locally."""
        want = {n: self._slots[n] - self._busy[n] for n in nodes}
        cands: dict[str, list[int]] = {}
        for n in nodes:
            pool = self._by_holder.get(n)
            cands[n] = [s for s in _rotated(pool, self._rng) if self._allowed(s, n)] if pool else []
        owner: dict[int, str] = {}  # seg -> node it is matched to

        def augment(n: str, seen: set[int], depth: int) -> bool:
            # A free candidate first (the common case), then try to re-route an owner.
            for s in cands[n]:
                if s not in owner:
                    owner[s] = n
                    return True
            for s in cands[n]:
                if s not in seen and depth > 0 and owner[s] != n:
                    seen.add(s)
                    if augment(owner[s], seen, depth - 1):
                        owner[s] = n
                        return True
            return False

        # Nodes take turns one slot at a time, so a shortage is shared, not suffered by
        # whoever came last. Depth bound: no recursion limit; long chains are rare.
        active = [n for n in nodes if want[n] > 0 and cands[n]]
        while active:
            again = []
            for n in active:
                if augment(n, set(), 32):
                    want[n] -= 1
                    if want[n] > 0:
                        again.append(n)
            active = again
        for s, n in owner.items():
            out.append(self._start(s, n, now, speculative=False))

    def _pick_anywhere(self, n: str) -> int | None:
        return next((s for s in _rotated(self._anywhere, self._rng) if self._allowed(s, n)), None)

    def _pick_remote(self, n: str) -> int | None:
        now = self._now

        def ok(s: int) -> bool:
            if not self._allowed(s, n):
                return False
            usable = [h for h in self._holders[s] if self._slots.get(h) and self._allowed(s, h)]
            if not usable:
                return True  # no live holder: nothing to wait for
            if any(self._idle(h) for h in usable):
                return False
            since = self._pending[s]
            t0 = self._t0 if self._t0 is not None else now
            return now - (t0 if since is None else since) >= self.remote_wait

        # Visit holders' pools nearest first (shuffled before a stable sort, so ties go in
        # a random order): the first acceptable segment found is one of the nearest.
        order = [h for h, pool in self._by_holder.items() if h != n and pool]
        self._rng.shuffle(order)
        order.sort(key=lambda h: self._distance(n, h))
        for h in order:
            for seg in _rotated(self._by_holder[h], self._rng):
                if ok(seg):
                    return seg
        return None

    def _speculate(self, now: float, out: list[Start]) -> None:
        if not self._durations:
            return
        thr = self._threshold()
        slow = [
            self._live[ids[0]]
            for seg, ids in self._running.items()
            if len(ids) == 1 and seg not in self._backed_up
        ]
        slow = sorted((a for a in slow if now - a.start >= thr), key=lambda a: (a.start, a.id))
        for a in slow:
            idle = [n for n in self._slots if self._idle(n)]
            if not idle:
                return
            cands = [n for n in idle if n != a.node and self._allowed(a.seg, n)]
            if not cands:
                continue
            holders = self._holders[a.seg]
            self._rng.shuffle(cands)
            cands.sort(key=lambda n: (n not in holders, self._nearness(a.seg, n)))
            out.append(self._start(a.seg, cands[0], now, speculative=True))

    # -- outcomes ---------------------------------------------------------------------

    def succeeded(self, attempt: int, now: float) -> tuple[bool, list[Cancel]]:
        """Attempt finished well. (True, cancels) if it won its segment; (False, []) for a
        late report (it lost, was cancelled, or its node was declared lost)."""
        self._tick(now)
        a = self._live.get(attempt)
        if a is None:
            self._check_issued(attempt)
            self._log("late", f"attempt {attempt} succeeded after it stopped counting")
            return False, []
        self._finish(a)
        cancels = []
        for other in list(self._running.get(a.seg, ())):
            o = self._live[other]
            self._finish(o)
            cancels.append(Cancel(o.id, o.node))
        self._winner[a.seg] = a
        bisect.insort(self._durations, now - a.start)
        self._stats[a.node]["done"] += 1
        if a.speculative:
            self._n_spec_won += 1
        self._log("won", f"seg {a.seg} attempt {a.id} on {a.node} in {now - a.start:.3g}s")
        return True, cancels

    def failed(self, attempt: int, now: float, error: str, *, retryable: bool = True) -> None:
        """Attempt failed (rule 3). A report for an attempt no longer live is ignored."""
        self._tick(now)
        a = self._live.get(attempt)
        if a is None:
            self._check_issued(attempt)
            self._log("late", f"attempt {attempt} failed after it stopped counting: {error}")
            return
        self._finish(a)
        seg = a.seg
        n = self._failures[seg] = self._failures.get(seg, 0) + 1
        self._n_failed += 1
        self._stats[a.node]["failed"] += 1
        self._excluded.setdefault(seg, set()).add(a.node)
        if seg not in self._running:  # no backup still going
            self._make_pending(seg, now)
        self._log("failed", f"seg {seg} attempt {a.id} on {a.node} ({n}x): {error}")
        if self._error is not None:
            return
        if not retryable:
            self._error = f"segment {seg} failed on {a.node}: {error} (not retryable)"
        elif n >= self.max_attempts:
            self._error = f"segment {seg} failed {n} times, last on {a.node}: {error}"
        if self._error is not None:
            self._log("error", self._error)

    def node_lost(self, node: str, now: float) -> list[int]:
        """Node gone (rule 5): its attempts fail, its slots go. Returns their segments."""
        self._tick(now)
        if node not in self._slots:
            return []
        lost = sorted((a for a in self._live.values() if a.node == node), key=lambda a: a.id)
        for a in lost:
            self.failed(a.id, now, f"node {node} lost")
        del self._slots[node], self._busy[node]
        self._gone.add(node)
        self._log("lost", f"{node}: {len(lost)} attempts failed")
        return [a.seg for a in lost]

    def node_added(self, node: str, slots: int) -> None:
        """A node joins the job, or changes its slot count (not below what it runs)."""
        if not isinstance(slots, int) or slots < 0:
            raise ValueError(f"slots must be an int >= 0, got {slots!r}")
        if slots < self._busy.get(node, 0):
            raise ValueError(f"{node} runs {self._busy[node]} attempts, cannot cut to {slots}")
        self._slots[node] = slots
        self._busy.setdefault(node, 0)
        self._gone.discard(node)
        self._stats.setdefault(node, {"done": 0, "failed": 0})
        self._log("node", f"{node}: {slots} slots")

    def reopen(self, segs: Iterable[int], now: float) -> None:
        """Done segments whose output was lost run again; others are left alone (a
        pending or running one will produce its output anyway)."""
        self._tick(now)
        for seg in segs:
            if seg not in self._work:
                raise ValueError(f"unknown segment {seg}")
            if self._winner.pop(seg, None) is not None:
                self._make_pending(seg, now)
                self._log("reopen", f"seg {seg}")

    def holders_changed(self, seg: int, holders: tuple[str, ...]) -> None:
        """The segment's data now lives on these nodes."""
        if seg not in self._work:
            raise ValueError(f"unknown segment {seg}")
        pending = seg in self._pending
        if pending:
            self._unpool(seg)
        self._holders[seg] = tuple(dict.fromkeys(holders))
        if pending:
            self._pool(seg)

    # -- reporting --------------------------------------------------------------------

    def live(self) -> dict[int, tuple[int, str]]:
        """The live attempts: attempt -> (segment, node)."""
        return {i: (a.seg, a.node) for i, a in self._live.items()}

    def winners(self) -> dict[int, int]:
        """The done segments: segment -> its winning attempt."""
        return {s: a.id for s, a in self._winner.items()}

    def progress(self) -> dict[str, Any]:
        nodes = {
            n: dict(
                st, running=self._busy.get(n, 0), slots=self._slots.get(n, 0), gone=n in self._gone
            )
            for n, st in sorted(self._stats.items())
        }
        return {
            "segments": len(self._work),
            "done": len(self._winner),
            "running": len(self._running),
            "pending": len(self._pending),
            "failed_attempts": self._n_failed,
            "speculative": self._n_spec,
            "speculative_won": self._n_spec_won,
            "local_done": sum(a.local for a in self._winner.values()),
            "bytes": sum(w.size for w in self._work.values()),
            "bytes_done": sum(self._work[s].size for s in self._winner),
            "error": self._error,
            "nodes": nodes,
        }

    def validate(self) -> None:
        """Raise AssertionError if an invariant is broken (run after every step in tests)."""
        segs = set(self._work)
        pend, run, done = set(self._pending), set(self._running), set(self._winner)
        assert not (pend & run or pend & done or run & done), "a segment in two states"
        assert pend | run | done == segs, "a segment in no state (or an unknown one)"
        per_node: collections.Counter[str] = collections.Counter()
        for seg, ids in self._running.items():
            assert 1 <= len(ids) <= 2, f"seg {seg} has {len(ids)} live attempts"
            atts = [self._live[i] for i in ids]
            assert all(a.seg == seg for a in atts), f"seg {seg} lists a stranger's attempt"
            assert len({a.node for a in atts}) == len(atts), f"seg {seg} twice on one node"
            if len(ids) == 2:
                assert seg in self._backed_up, f"seg {seg} has two attempts without a backup"
        assert sum(map(len, self._running.values())) == len(self._live), "orphan attempt"
        for a in self._live.values():
            assert a.node in self._slots, f"attempt {a.id} runs on gone node {a.node}"
            assert 0 <= a.id < self._next_attempt, f"attempt {a.id} never issued"
            per_node[a.node] += 1
        assert set(self._busy) == set(self._slots), "busy and slots disagree on nodes"
        assert not (self._gone & set(self._slots)), "a node both live and gone"
        for n, k in self._slots.items():
            assert self._busy[n] == per_node[n], f"{n}: busy count {self._busy[n]} is wrong"
            assert per_node[n] <= k, f"{n} runs {per_node[n]} attempts on {k} slots"
        for seg, a in self._winner.items():
            assert a.seg == seg and a.id not in self._live, f"seg {seg}: bad winner"
        assert self._backed_up <= run, "backup mark on a segment not running"
        pooled = 0
        for h, pool in self._by_holder.items():
            for s in pool:
                assert s in self._pending and h in self._holders[s], f"seg {s} stale in {h}"
            pooled += len(pool)
        for s in self._anywhere:
            assert s in self._pending and not self._holders[s], f"seg {s} stale in anywhere"
        want = sum(len(self._holders[s]) or 1 for s in self._pending)
        assert pooled + len(self._anywhere) == want, "a pending segment missing from a pool"
        if self._error is None:
            assert all(f < self.max_attempts for f in self._failures.values()), "error unset"
        d = self._durations
        assert all(d[i] <= d[i + 1] for i in range(len(d) - 1)), "durations unsorted"
        assert self.log.maxlen == LOG_LEN, "event log unbounded"

    # -- helpers ----------------------------------------------------------------------

    def _idle(self, n: str) -> bool:
        return self._busy[n] < self._slots[n]

    def _allowed(self, seg: int, n: str) -> bool:
        """n may run seg: not excluded for it, or every live node is (rule 3)."""
        ex = self._excluded.get(seg)
        if not ex or n not in ex:
            return True
        return all(m in ex for m, k in self._slots.items() if k > 0)

    def _nearness(self, seg: int, n: str) -> int:
        return min((self._distance(n, h) for h in self._holders[seg]), default=0)

    def _threshold(self) -> float:
        d = self._durations
        k = len(d)
        median = d[k // 2] if k % 2 else (d[k // 2 - 1] + d[k // 2]) / 2
        return max(self.spec_min, self.spec_factor * median)

    def _start(self, seg: int, node: str, now: float, *, speculative: bool) -> Start:
        if speculative:
            self._backed_up.add(seg)
            self._n_spec += 1
        else:
            del self._pending[seg]
            self._unpool(seg)
        aid = self._next_attempt
        self._next_attempt += 1
        holders = self._holders[seg]
        local = node in holders or not holders
        self._live[aid] = _Attempt(aid, seg, node, now, local, speculative)
        self._running.setdefault(seg, []).append(aid)
        self._busy[node] += 1
        kind = "backup" if speculative else "local" if local else "remote"
        self._log("start", f"seg {seg} attempt {aid} on {node} ({kind})")
        return Start(aid, seg, node, local, speculative)

    def _finish(self, a: _Attempt) -> None:
        del self._live[a.id]
        ids = self._running[a.seg]
        ids.remove(a.id)
        if not ids:
            del self._running[a.seg]
            self._backed_up.discard(a.seg)
        self._busy[a.node] -= 1

    def _make_pending(self, seg: int, since: float | None) -> None:
        self._pending[seg] = since
        self._pool(seg)

    def _pool(self, seg: int) -> None:
        holders = self._holders[seg]
        if not holders:
            self._anywhere[seg] = None
        for h in holders:
            self._by_holder.setdefault(h, {})[seg] = None

    def _unpool(self, seg: int) -> None:
        self._anywhere.pop(seg, None)
        for h in self._holders[seg]:
            self._by_holder[h].pop(seg, None)

    def _check_issued(self, attempt: int) -> None:
        if not 0 <= attempt < self._next_attempt:
            raise ValueError(f"attempt {attempt} was never started")

    def _tick(self, now: float) -> None:
        if self._t0 is None:
            self._t0 = now
        self._now = now

    def _log(self, what: str, detail: str) -> None:
        self.log.append((self._now, what, detail))
