"""One Sphere stage as its driver sees it: a pure state machine (STYLE habits 1, 2, 8).

The asyncio driver (``driver.py``) feeds ``JobMachine.handle(event, now)`` what happened
-- its loop woke, a node accepted or refused an attempt, a poll brought an outcome, a
node was lost -- and performs the actions it gets back: RPCs, a sleep, a failure.
Nothing here awaits, reads a clock or sends a message, as in dask's
``worker_state_machine``. The machine wraps the ``Scheduler`` (which attempt runs
where: locality, pull, retries, speculation) and owns what the scheduler does not: the
attempts in flight and when their node accepted them, each segment's winner and its
outcome, which node holds each bucket and which winners' parts sit there, and the
nodes the job lost.

Rules (reference/original-sector-sphere.md §3 "Fault tolerance", ``dcclient.cpp``
``checkSPE`` / ``checkBucket``, extended: the original failed the job when it lost a
node while buckets were in use):

1. ``Schedule`` starts what the scheduler says (``Start``) and names its next deadline
   (``Sleep``), unless the stage failed (``Abort``) or every segment has a winner
   (``StageDone``).
2. An attempt is in flight from its ``Start`` until its outcome, its node's loss, a
   poll that no longer lists it, or its cancel. An outcome of an attempt no longer in
   flight changes nothing: it was written off and runs again elsewhere.
3. A segment's first success wins; the scheduler's ``Cancel`` of its other attempt goes
   out as an action. With output to files, the winner's part is sealed at once
   (``CommitEarly``), overlapping the stage's other work.
4. Buckets: a winner's parts count as delivered to the node holding each bucket; a
   bucket whose node refused its part has that node probed (``Probe``). A lost node's
   buckets move to the survivors, round robin, and are fed again (``undelivered``):
   a part its mapper still holds (one it could not deliver) is resent.
5. A lost node's attempts fail; in modes files and buckets its winners' staged output
   died with it, so those segments run again. So do, with buckets, the segments that
   delivered a part to it: a mapper deletes a part once its bucket's node has it
   (``node/sphere_shuffle``), so the only copy died with that node (issue 13:
   intermediate data never sits on disk twice).
6. A node that no longer lists an attempt it accepted before the poll left has
   forgotten it (it restarted): the attempt fails.
7. The job's error: an outcome with a traceback replaces it, anything else keeps the
   first. A refused credential (``StartFailed`` "denied") or a failure outside the
   machine (``Failed``) is fatal: the next ``Schedule`` aborts.

``validate()`` checks these against the scheduler's own view (run after every step in
tests).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sector.sphere.schedule import Cancel, Scheduler, Start
from sector.sphere.wire import CommitItem, Outcome

__all__ = [
    "Abort",
    "Accepted",
    "Action",
    "Cancel",
    "CommitEarly",
    "Event",
    "Failed",
    "Finished",
    "JobMachine",
    "NodeLost",
    "Polled",
    "Probe",
    "Resent",
    "Schedule",
    "Sleep",
    "StageDone",
    "Start",
    "StartFailed",
    "Wake",
    "bucket_path",
    "part_path",
    "place_buckets",
]

LOG_LEN = 512  # events kept for debugging


# -- events (what happened) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Schedule:
    """The driver's loop woke: start what can start."""


@dataclass(frozen=True, slots=True)
class Accepted:
    """The attempt's node took its ``sphere.run``."""

    attempt: int


@dataclass(frozen=True, slots=True)
class StartFailed:
    """``sphere.run`` failed: the node is unreachable ("down"), refused the caller's
    credential ("denied": any node would say the same) or refused the attempt."""

    attempt: int
    error: str
    why: Literal["down", "denied", "refused"]


@dataclass(frozen=True, slots=True)
class Finished:
    """A poll of ``node`` brought an attempt's outcome."""

    node: str
    outcome: Outcome = field(hash=False)


@dataclass(frozen=True, slots=True)
class Polled:
    """A poll of ``node``, sent at ``sent``, came back listing ``alive`` as running (or
    just reported)."""

    node: str
    sent: float
    alive: frozenset[int]


@dataclass(frozen=True, slots=True)
class NodeLost:
    """The node stopped answering (polls, a start, a probe, a resend or a commit)."""

    node: str


@dataclass(frozen=True, slots=True)
class Resent:
    """``sphere.resend`` of the segment's winner asked for ``want`` (bucket -> node);
    the buckets in ``undelivered`` were not taken."""

    seg: int
    attempt: int
    want: Mapping[int, str] = field(hash=False)
    undelivered: frozenset[int]


@dataclass(frozen=True, slots=True)
class Failed:
    """The job fails for a reason outside the machine (a bug of the driver's, a reduce
    that raised, an error while committing)."""

    error: str
    traceback: str | None = None


Event = Schedule | Accepted | StartFailed | Finished | Polled | NodeLost | Resent | Failed


# -- actions (what the driver does) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sleep:
    """Sleep until ``until`` (the scheduler's next deadline), or an event if None."""

    until: float | None


@dataclass(frozen=True, slots=True)
class Wake:
    """The scheduler's state changed: run ``Schedule`` soon."""


@dataclass(frozen=True, slots=True)
class CommitEarly:
    """Seal the winner's output now (``sphere.commit`` of its part)."""

    seg: int
    attempt: int
    node: str


@dataclass(frozen=True, slots=True)
class Probe:
    """Is the node alive (``sphere.info``)? If not, feed ``NodeLost``."""

    node: str


@dataclass(frozen=True, slots=True)
class StageDone:
    """Every segment has a winner."""


@dataclass(frozen=True, slots=True)
class Abort:
    """The stage failed: raise ``JobFailed(message[, traceback=...])``."""

    message: str
    traceback: str | None = None


Action = Start | Cancel | Sleep | Wake | CommitEarly | Probe | StageDone | Abort


def part_path(stage: str, seg: int) -> str:
    return f"{stage}/part-{seg:05d}"


def bucket_path(stage: str, bucket: int) -> str:
    return f"{stage}/bucket-{bucket:05d}"


def place_buckets(job: str, nodes: Sequence[str], n: int) -> dict[int, str]:
    """Bucket i on the sorted nodes round robin, from an offset of the job's id (so
    jobs do not all start on one node)."""
    ordered = sorted(nodes)
    start = int(job[:8], 16) % len(ordered)
    return {b: ordered[(start + b) % len(ordered)] for b in range(n)}


class JobMachine:
    """The state of one stage and its transitions (see the module rules)."""

    def __init__(
        self,
        job: str,
        segments: Sequence[int],
        sched: Scheduler,
        addr: Mapping[str, str],
        *,
        mode: str,
        buckets: Mapping[int, str] | None = None,
        early: bool = False,
    ) -> None:
        self.job = job
        self.segments = list(segments)  # segment ids in stream order
        self.sched = sched
        self.addr = dict(addr)  # node id -> address, lost nodes too
        self.mode = mode
        self.early = early  # seal each winner's part at once (files mode with output)
        self.bucket_node: dict[int, str] = dict(buckets or {})
        self.lost: set[str] = set()
        self.running: dict[int, Start] = {}  # attempts in flight
        # attempt -> when its node accepted it: a poll sent before that cannot list it.
        self.accepted: dict[int, float] = {}
        self.winners: dict[int, tuple[int, str, Outcome]] = {}  # seg -> (attempt, node, outcome)
        self.delivered: dict[int, dict[int, str]] = {}  # seg -> bucket -> node holding its part
        self.touched: set[str] = set()  # nodes that may hold files of this job
        self.speculative = 0
        self.error: str | None = None
        self.traceback: str | None = None
        self.fatal = False
        self.log: collections.deque[tuple[float, str, str]] = collections.deque(maxlen=LOG_LEN)
        self._handlers: dict[type, Callable[[Any, float], list[Action]]] = {
            Schedule: self._schedule,
            Accepted: self._accepted,
            StartFailed: self._start_failed,
            Finished: self._finished,
            Polled: self._polled,
            NodeLost: self._node_lost,
            Resent: self._resent,
            Failed: self._failed,
        }

    def __repr__(self) -> str:
        return f"<JobMachine {self.job} {self.sched!r} {len(self.lost)} lost>"

    # -- the one entry point ----------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Action]:
        """Apply one event at time ``now``; the actions for the driver, in order."""
        return self._handlers[type(event)](event, now)

    # -- queries ----------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.sched.done

    def runs_on(self, node: str) -> bool:
        """Has the node attempts of this job in flight?"""
        return any(s.node == node for s in self.running.values())

    def busy_nodes(self) -> set[str]:
        return {s.node for s in self.running.values()}

    def live_nodes(self) -> list[str]:
        return sorted(n for n in self.addr if n not in self.lost)

    def ordered(self) -> list[Outcome]:
        """The winners' outcomes in segment order."""
        return [self.winners[s][2] for s in self.segments if s in self.winners]

    def undelivered(self) -> dict[int, dict[int, str]]:
        """Winners' parts not on their bucket's current node: seg -> bucket -> node."""
        todo: dict[int, dict[int, str]] = {}
        for seg, (_att, _nid, r) in self.winners.items():
            have = self.delivered.get(seg, {})
            for b in (int(x) for x in (r.get("parts") or {})):
                if have.get(b) != self.bucket_node[b]:
                    todo.setdefault(seg, {})[b] = self.bucket_node[b]
        return todo

    def bucket_items(self, stage: str) -> dict[str, list[CommitItem]]:
        """Per node, its buckets to commit: each the winners' parts in segment order."""
        items: dict[str, list[CommitItem]] = {}
        for b, nid in sorted(self.bucket_node.items()):
            atts = [
                self.winners[s][0]
                for s in self.segments
                if s in self.winners and str(b) in (self.winners[s][2].get("parts") or {})
            ]
            items.setdefault(nid, []).append(
                {"path": bucket_path(stage, b), "bucket": b, "attempts": atts}
            )
        return items

    def progress(self) -> dict[str, Any]:
        """The scheduler's progress, nodes by address."""
        p = self.sched.progress()
        p["speculative"] = self.speculative
        p["nodes"] = {self.addr.get(n, n): v for n, v in p["nodes"].items()}
        return p

    # -- transitions ------------------------------------------------------------------

    def _schedule(self, _e: Schedule, now: float) -> list[Action]:
        if self.fatal:
            return [Abort(f"job {self.job} failed: {self.error}")]
        if self.sched.error:
            return [Abort(f"job {self.job} failed: {self.sched.error}", self.traceback or "")]
        if self.sched.done:
            return [StageDone()]
        out: list[Action] = []
        for s in self.sched.schedule(now):
            self.running[s.attempt] = s
            self.touched.add(s.node)
            self.speculative += s.speculative
            self._log(now, "start", f"{s.attempt} seg {s.seg} on {s.node}")
            out.append(s)
        # Asked after the starts: they may have filled the last idle slot.
        out.append(Sleep(self.sched.wake_at(now)))
        return out

    def _accepted(self, e: Accepted, now: float) -> list[Action]:
        if e.attempt in self.running:
            self.accepted[e.attempt] = now
        return []

    def _start_failed(self, e: StartFailed, now: float) -> list[Action]:
        s = self._drop(e.attempt)
        if s is None:
            return []
        self._log(now, f"start {e.why}", f"{e.attempt}: {e.error}")
        where = self.addr[s.node]
        if e.why == "denied":
            # Another node would say the same: the job fails now, not after every retry.
            self.error = self.error or e.error
            self.fatal = True
            return [Wake()]
        self.sched.failed(e.attempt, now, f"{where}: {e.error}", retryable=True)
        if e.why == "down":
            return [Wake(), *self._lose(s.node, now)]
        return [Wake()]

    def _finished(self, e: Finished, now: float) -> list[Action]:
        r = e.outcome
        att = r["attempt"]
        s = self._drop(att)
        if s is None:
            return []  # written off meanwhile (its node was declared lost)
        if not r.get("ok"):
            if r.get("traceback"):
                self.traceback = str(r["traceback"])
                self.error = f"{r.get('error')}\n{self.traceback}"
            self._log(now, "failed", f"{att} seg {s.seg}: {r.get('error')}")
            self.sched.failed(
                att,
                now,
                f"{self.addr[e.node]}: {r.get('error')}",
                retryable=bool(r.get("retryable", True)),
            )
            return [Wake()]
        won, cancels = self.sched.succeeded(att, now)
        out: list[Action] = [Wake()]
        for c in cancels:
            self._drop(c.attempt)
            out.append(c)
        if not won:
            return out
        self._log(now, "won", f"{att} seg {s.seg} on {e.node}")
        self.winners[s.seg] = (att, e.node, r)
        if self.early:
            out.append(CommitEarly(s.seg, att, e.node))
        if self.mode != "buckets":
            return out
        parts = {int(b) for b in (r.get("parts") or {})}
        bad = {int(b) for b in r.get("undelivered") or []}
        self.delivered[s.seg] = {b: self.bucket_node[b] for b in parts - bad}
        # Whoever held those buckets did not take the part: is it still there?
        holders = dict.fromkeys(self.bucket_node[b] for b in sorted(bad))
        out += [Probe(n) for n in holders if n not in self.lost]
        return out

    def _polled(self, e: Polled, now: float) -> list[Action]:
        forgot = [
            att
            for att, s in self.running.items()
            if s.node == e.node
            # Not accepted when the poll left: its absence says nothing.
            and (took := self.accepted.get(att)) is not None
            and took <= e.sent
            and att not in e.alive
        ]
        for att in forgot:
            # The node does not know the attempt: it restarted and lost it.
            self._drop(att)
            self._log(now, "forgotten", f"{att} on {e.node}")
            self.sched.failed(att, now, f"{self.addr[e.node]} forgot the attempt")
        return [Wake()] if forgot else []

    def _node_lost(self, e: NodeLost, now: float) -> list[Action]:
        return self._lose(e.node, now)

    def _resent(self, e: Resent, now: float) -> list[Action]:
        win = self.winners.get(e.seg)
        if win is not None and win[0] == e.attempt:  # else reopened meanwhile
            got = {b: n for b, n in e.want.items() if b not in e.undelivered}
            if set(got.values()) & self.lost:
                # Delivered to a node lost while the resend ran: the part is gone.
                self._reopen([e.seg], now)
            else:
                self.delivered.setdefault(e.seg, {}).update(got)
        # The holders as they were asked, each once: losing the first moves buckets.
        holders = dict.fromkeys(e.want.get(b, self.bucket_node[b]) for b in sorted(e.undelivered))
        out: list[Action] = []
        for n in holders:
            out += self._lose(n, now)
        return out

    def _failed(self, e: Failed, now: float) -> list[Action]:
        if e.traceback is not None:
            self.traceback = e.traceback or None
        self.error = self.error or e.error
        self.fatal = True
        self._log(now, "fatal", e.error)
        return [Wake()]

    # -- helpers ----------------------------------------------------------------------

    def _lose(self, nid: str, now: float) -> list[Action]:
        if nid in self.lost:
            return []
        self.lost.add(nid)
        self._log(now, "lost", nid)
        for att in [a for a, s in self.running.items() if s.node == nid]:
            self._drop(att)
        self.sched.node_lost(nid, now)
        if self.mode in ("files", "buckets"):
            # Their staged output died with the node: those segments run again. So
            # did the parts delivered to it (their mappers deleted them).
            self._reopen(
                [
                    seg
                    for seg, (_a, n, _r) in self.winners.items()
                    if n == nid or nid in self.delivered.get(seg, {}).values()
                ],
                now,
            )
        live = self.live_nodes()
        if not live:
            return [Wake(), Abort(f"job {self.job}: every node was lost")]
        # Buckets it held move to the survivors; their parts are fed again.
        moved = [b for b, n in self.bucket_node.items() if n == nid]
        for i, b in enumerate(moved):
            self.bucket_node[b] = live[i % len(live)]
        return [Wake()]

    def _reopen(self, segs: list[int], now: float) -> None:
        for seg in segs:
            self.winners.pop(seg, None)
            self.delivered.pop(seg, None)
        self.sched.reopen(segs, now)

    def _drop(self, attempt: int) -> Start | None:
        self.accepted.pop(attempt, None)
        return self.running.pop(attempt, None)

    def _log(self, now: float, what: str, detail: str) -> None:
        self.log.append((now, what, detail))

    # -- invariants -------------------------------------------------------------------

    def validate(self) -> None:
        """Raise AssertionError if an invariant is broken (run after every step in tests)."""
        self.sched.validate()
        live = self.sched.live()
        if not self.fatal:  # a denied start leaves its attempt with the scheduler
            assert set(self.running) == set(live), "in flight here, not there (or back)"
        for att, s in self.running.items():
            assert live.get(att) == (s.seg, s.node), f"attempt {att} differs from its start"
            assert s.node not in self.lost, f"attempt {att} in flight on lost {s.node}"
            assert s.node in self.touched, f"attempt {att} on an untouched node"
        assert set(self.accepted) <= set(self.running), "accepted but not in flight"
        assert self.touched <= set(self.addr), "touched an unknown node"
        won = self.sched.winners()
        assert set(won) == set(self.winners), "winners differ from the scheduler's"
        for seg, (att, nid, r) in self.winners.items():
            assert won[seg] == att and r.get("attempt") == att, f"seg {seg}: wrong winner"
            assert nid in self.addr, f"seg {seg} won on unknown node {nid}"
            if self.mode in ("files", "buckets"):
                assert nid not in self.lost, f"seg {seg}'s output is on lost {nid}"
        assert self.speculative == self.sched.progress()["speculative"], "backups miscounted"
        assert sorted(self.bucket_node) == list(range(len(self.bucket_node))), "bucket ids"
        if self.live_nodes():
            for b, n in self.bucket_node.items():
                assert n in self.addr and n not in self.lost, f"bucket {b} on lost node {n}"
        if self.mode == "buckets":
            assert set(self.delivered) == set(self.winners), "delivered for a non-winner"
        else:
            assert not self.delivered and not self.bucket_node, "buckets outside bucket mode"
        for seg, have in self.delivered.items():
            parts = {int(b) for b in (self.winners[seg][2].get("parts") or {})}
            assert set(have) <= parts, f"seg {seg} delivered a part it never made"
            assert not set(have.values()) & self.lost, f"seg {seg}'s part is on a lost node"
        assert not self.fatal or self.error is not None, "fatal without an error"
        assert self.log.maxlen == LOG_LEN, "event log unbounded"
