"""The sequencing of Chord's periodic and membership steps, as pure objects (no I/O).

Owns *what a node asks whom, in which order, and what it does with each answer* for
every multi-message step of the protocol: stabilize, join, fix a finger, check the
predecessor, the merge probe (rule 8 of ``chord.py``), graceful leave, and driving an
iterative lookup (``RunLookup`` around ``lookup.Lookup``). The rules for the state
itself stay in ``chord.py``; every change goes through its transition methods.

A step is used like ``Lookup``: it names the next remote call, takes the reply or the
failure, and says what to call next, until done::

    call = step.start()                     # a Call(addr, msg), or None: done
    while call is not None:
        try:
            reply = <send call.msg to call.addr>   # typed, as msg.serve() returns it
        except (SectorError, ValueError) as exc:   # unreachable, error reply, malformed
            call = step.on_failure(exc)
        else:
            call = step.on_reply(reply)
    step.result

Failures are the exceptions the call raised: ``TransportError`` (the peer is
unreachable: every step treats it as Chord §5.2 says), another ``SectorError`` (it
answered with an error) or ``ValueError`` (a malformed reply). A failure a step does not
handle is raised again out of ``on_failure``, exactly where the driver's await used to
raise it, so an executor need not know which failures matter to which step.

Two executors run these same objects: ``driver.ChordDriver`` over RPC (it converts
messages to and from the wire) and ``sector.testing.chordsim.ChordSim`` over its
in-process network (``serve`` on the target's state, partitions as ConnectError). The
simulation therefore tests the production sequencing, not a copy of it.

Why generators inside: each step's body is written as straight-line code that
``yield``s a ``Call`` where it needs an answer (``yield from`` composes them: a join
runs a lookup and then a stabilize; a stabilize that lost every peer runs a join).
Hand-written state enums were the alternative: a state per point where a step waits,
the loop counters and partial results carried between them by hand, and the order of
the protocol, which is what a reader checks against the paper, lost among them. The
generator is private: outside, a step is an object with ``start``/``on_reply``/
``on_failure``, and ``yield from`` of another step's ``_run`` is for this module only.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Generator, Iterable
from typing import Any, Generic, NamedTuple, TypeVar

from sector.errors import ClusterError, SectorError, TransportError
from sector.ids import MASK
from sector.routing.chord import ChordState, Peer
from sector.routing.lookup import Lookup
from sector.routing.messages import GetState, Leaving, Message, NextHop, NodeState, Notify, Ping

__all__ = [
    "MAX_HOPS",
    "PROBE_TRIES",
    "Call",
    "CheckPredecessor",
    "FixFinger",
    "Join",
    "Leave",
    "MergeProbe",
    "RunLookup",
    "Stabilize",
    "Step",
]

log = logging.getLogger("sector.routing")

MAX_HOPS = 64  # hop budget of every lookup a step makes
PROBE_TRIES = 3  # members a merge probe tries until one answers

T = TypeVar("T")
_PING = Ping()
_GET_STATE = GetState()


class Call(NamedTuple):
    """The instruction a step gives: send ``msg`` to the node at ``addr``.

    A named tuple rather than a frozen dataclass: a lookup makes one per hop, and the
    simulator makes millions (a tuple is built three times faster)."""

    addr: str
    msg: Message


Script = Generator[Call, Any, T]


class Step(Generic[T]):
    """Base of the steps: ``start`` it, feed it outcomes until ``done``, read ``result``."""

    __slots__ = ("_gen", "done", "next_call", "result")

    def __init__(self) -> None:
        self.done = False
        self.result: T | None = None
        self.next_call: Call | None = None
        self._gen: Script[T] | None = None

    def __repr__(self) -> str:
        state = f"result={self.result}" if self.done else f"next={self.next_call}"
        return f"<{type(self).__name__} {state}>"

    def _run(self) -> Script[T]:
        raise NotImplementedError

    def start(self) -> Call | None:
        """Begin: the first call to make, or None if the step finished without one."""
        if self._gen is not None:
            raise RuntimeError(f"{self!r} already started")
        self._gen = self._run()
        return self.on_reply(None)

    def on_reply(self, reply: Any) -> Call | None:
        """The typed reply to ``next_call``; returns the next call (None: done)."""
        return self._advance(lambda gen: gen.send(reply))

    def on_failure(self, exc: BaseException) -> Call | None:
        """``next_call`` raised exc; returns the next call, or raises exc again if this
        step does not handle that kind of failure."""
        return self._advance(lambda gen: gen.throw(exc))

    def _advance(self, resume: Callable[[Script[T]], Call]) -> Call | None:
        """Resume the step's body (with a reply or a failure) up to its next call."""
        gen = self._gen
        if gen is None or self.done:
            raise RuntimeError(f"{self!r} is not waiting on a call")
        try:
            call = resume(gen)
        except StopIteration as stop:
            self.done, self.result, self.next_call = True, stop.value, None
            return None
        except BaseException:
            self.done, self.next_call = True, None
            raise
        self.next_call = call
        return call


class RunLookup(Step[Peer | None]):
    """Drive ``lk`` over the network until it has an answer; result: the answer, or None.

    origin=True: a lookup of our own, started from ``state.next_hop``; a peer that does
    not answer is recorded as failed in our state, and a lookup left with no hop to
    back up to restarts from our table. origin=False (a joiner's lookup through its
    bootstrap node, a merge probe's through a random member): we have no table to fall
    back on, failures are not ours to record, and an answer that is us (the ring still
    lists us, after a restart) is routed around: we want whoever follows us.
    verify: the answer is pinged first and, if dead, routed around.
    """

    __slots__ = ("lk", "origin", "state", "verify")

    def __init__(self, state: ChordState, lk: Lookup, *, origin: bool, verify: bool = True) -> None:
        super().__init__()
        self.state, self.lk, self.origin, self.verify = state, lk, origin, verify

    def _run(self) -> Script[Peer | None]:
        st, lk, origin = self.state, self.lk, self.origin
        me = st.me
        msg = NextHop(lk.key, lk.exclude)
        while True:
            if lk.done:
                res = lk.result
                if res is not None and res.id == me.id and not origin:
                    lk.on_failure(res)
                    continue
                if not self.verify or res is None or res.id == me.id:
                    return res
                try:
                    who: Peer | None = yield Call(res.addr, _PING)
                except (SectorError, ValueError):
                    who = None  # dead, or something else answers at its address
                if who is not None and who.id == res.id:
                    return res
                if origin:
                    st.peer_failed(res)
                lk.on_failure(res)
                continue
            nxt = lk.next_peer
            if nxt is None:
                if not origin:
                    return None
                lk.restart(st.next_hop(lk.key, lk.exclude))
                continue
            if nxt.id == me.id:
                if origin:
                    lk.on_reply(*st.next_hop(lk.key, lk.exclude))
                else:
                    lk.on_failure(nxt)  # joining: our own table is empty, skip us
                continue
            if msg.exclude is not lk.exclude:
                msg = NextHop(lk.key, lk.exclude)
            try:
                done, peer = yield Call(nxt.addr, msg)
            except TransportError:
                if origin:
                    st.peer_failed(nxt)
                lk.on_failure(nxt)
                continue
            except (SectorError, ValueError) as exc:
                # Alive but answering nonsense: route around it without declaring it dead.
                log.warning("bad chord.next_hop reply from %s: %s", nxt, exc)
                lk.on_failure(nxt)
                continue
            lk.on_reply(done, peer)


class Stabilize(Step[None]):
    """Chord stabilize (§5.1): fix our successor list from our successor, then notify it.

    A successor that does not answer is dropped and the next one asked. A closer
    successor adopted from its answer is asked again at once rather than a round later
    (up to 2r+1 questions), so a node that many joiners passed by walks back to its
    true successor in one round instead of one hop per round. A node left with nobody
    (no successor, no predecessor) joins again through ``rejoin_via`` if given (the
    node it first joined through, which may be back); the stabilize inside a join
    never does, so a join cannot recurse.
    """

    __slots__ = ("max_hops", "rejoin_via", "state")

    def __init__(
        self, state: ChordState, *, rejoin_via: str | None = None, max_hops: int = MAX_HOPS
    ) -> None:
        super().__init__()
        self.state, self.rejoin_via, self.max_hops = state, rejoin_via, max_hops

    def _run(self) -> Script[None]:
        st = self.state
        me = st.me
        for _ in range(2 * st.r + 1):
            succ = st.successor
            if succ.id == me.id:
                st.on_stabilize(me, st.predecessor, [])
                if st.successor.id == me.id:
                    break
                continue
            try:
                reply: NodeState = yield Call(succ.addr, _GET_STATE)
                if reply.me is not None and reply.me.id != succ.id:
                    # Another node now answers at that address: ours is gone.
                    raise ValueError(f"{succ.addr} is now {reply.me}")
            except TransportError:
                st.peer_failed(succ)
                continue
            except (SectorError, ValueError) as exc:
                log.warning("bad chord.state reply from %s: %s", succ, exc)
                st.peer_failed(succ)
                continue
            st.on_stabilize(succ, reply.pred, reply.successors)
            if st.successor.id == succ.id:
                break
        succ = st.successor
        if succ.id != me.id:
            try:
                yield Call(succ.addr, Notify(me))
            except TransportError:
                st.peer_failed(succ)
        elif st.predecessor is None and self.rejoin_via is not None:
            # We lost every peer we knew: try the bootstrap node again (it may be back).
            try:
                yield from Join(st, self.rejoin_via, max_hops=self.max_hops)._run()
            except SectorError as exc:
                log.debug("rejoin via %s failed: %s", self.rejoin_via, exc)


class Join(Step[Peer]):
    """Join the ring that ``bootstrap_addr`` belongs to (Chord §4.4, §5.1); result: the
    successor found. Raises ClusterError (from ``on_failure``/``on_reply``) if the
    bootstrap answers nonsense or no live successor is found, and the bootstrap's own
    failure if it cannot be reached.

    The bootstrap is known by address only; a ping tells us its id, so the lookup of our
    own id can treat it as its first hop and route around it like any other. The
    answer is pinged (a crashed successor that the ring still lists is skipped), then
    one stabilize weaves us in.
    """

    __slots__ = ("bootstrap_addr", "joined", "max_hops", "state")

    def __init__(self, state: ChordState, bootstrap_addr: str, *, max_hops: int = MAX_HOPS) -> None:
        super().__init__()
        self.state, self.bootstrap_addr, self.max_hops = state, bootstrap_addr, max_hops
        self.joined = False  # the state has taken the successor found (join may go on)

    def _run(self) -> Script[Peer]:
        st, addr = self.state, self.bootstrap_addr
        me = st.me
        boot = yield Call(addr, _PING)
        if boot is None:
            raise ClusterError(f"join via {addr}: bad ping reply", node=addr)
        lk = Lookup(me.id, (False, boot), max_hops=self.max_hops)
        found = yield from RunLookup(st, lk, origin=False)._run()
        if found is None:
            raise ClusterError(
                f"join via {addr}: no live successor found in {lk.hops} hops",
                node=addr,
                hops=lk.hops,
            )
        st.join(found)
        self.joined = True
        yield from Stabilize(st, max_hops=self.max_hops)._run()
        log.info("%s joined via %s; successor %s", me, addr, st.successor)
        return found


class FixFinger(Step[None]):
    """Chord fix_fingers (§5.1): refresh the next finger that needs a lookup."""

    __slots__ = ("max_hops", "state")

    def __init__(self, state: ChordState, *, max_hops: int = MAX_HOPS) -> None:
        super().__init__()
        self.state, self.max_hops = state, max_hops

    def _run(self) -> Script[None]:
        st = self.state
        i, start = st.next_finger()
        lk = Lookup(start, st.next_hop(start), max_hops=self.max_hops)
        peer = yield from RunLookup(st, lk, origin=True, verify=False)._run()
        if peer is None:
            log.debug("finger %d lookup found no owner in %d hops", i, lk.hops)
            return
        st.set_finger(i, peer)


class CheckPredecessor(Step[None]):
    """Chord check_predecessor (§5.1): a predecessor that does not answer is dropped."""

    __slots__ = ("state",)

    def __init__(self, state: ChordState) -> None:
        super().__init__()
        self.state = state

    def _run(self) -> Script[None]:
        pred = self.state.predecessor
        if pred is None:
            return
        try:
            who: Peer | None = yield Call(pred.addr, _PING)
        except TransportError:
            self.state.peer_failed(pred)
            return
        except (SectorError, ValueError) as exc:
            who = None  # an error answer: whatever listens there is not a chord node
            log.debug("check_predecessor: %s answered %s", pred, exc)
        if who is None or who.id != pred.id:
            # Something else answers at that address now (its port was reused): ours
            # is gone. Only the node's own id proves it alive, as stabilize checks.
            self.state.peer_failed(pred)


class MergeProbe(Step[bool]):
    """Rule 8 of ``chord.py``: look successor(me + 1) up through members that ``starts``
    names (the first PROBE_TRIES of them, until one answers) and offer the answer to
    ``on_merge_probe``; if adopted, stabilize at once. Result: whether it was adopted.

    ``starts`` is consumed lazily and must not name us. It is random members the node
    knows, including those last seen down: during a partition most of those we know
    may be out of reach (a small side knows the whole cluster), and after a heal the
    one that answers from the other side is what joins the rings.
    """

    __slots__ = ("adopted", "max_hops", "rejoin_via", "starts", "state")

    def __init__(
        self,
        state: ChordState,
        starts: Iterable[Peer],
        *,
        rejoin_via: str | None = None,
        max_hops: int = MAX_HOPS,
    ) -> None:
        super().__init__()
        self.state, self.starts, self.rejoin_via = state, starts, rejoin_via
        self.max_hops = max_hops
        self.adopted = False  # set as soon as the answer is taken (before the stabilize)

    def _run(self) -> Script[bool]:
        st = self.state
        found = None
        for start in itertools.islice(self.starts, PROBE_TRIES):
            lk = Lookup((st.me.id + 1) & MASK, (False, start), max_hops=self.max_hops)
            try:
                found = yield from RunLookup(st, lk, origin=False)._run()
            except SectorError as exc:
                log.debug("merge probe through %s failed: %s", start, exc)
                continue
            if found is not None:
                break
        if found is None or not st.on_merge_probe(found):
            return False
        self.adopted = True
        log.info("%s: a merge probe found successor %s", st.me, found)
        yield from Stabilize(st, rejoin_via=self.rejoin_via, max_hops=self.max_hops)._run()
        return True


class Leave(Step[None]):
    """Graceful leave (§5.3): hand predecessor and successor what they need, so neither
    waits for a timeout. Best effort: a neighbour we cannot tell finds out by its own
    timeouts."""

    __slots__ = ("state",)

    def __init__(self, state: ChordState) -> None:
        super().__init__()
        self.state = state

    def _run(self) -> Script[None]:
        st = self.state
        pred, succs = st.leave_info()
        msg = Leaving(st.me, pred, succs)
        told: set[int] = set()
        for nb in (pred, succs[0] if succs else None):
            if nb is None or nb.id in told:
                continue
            told.add(nb.id)
            try:
                yield Call(nb.addr, msg)
            except SectorError as exc:
                log.info("could not tell %s that we leave: %s", nb, exc)
