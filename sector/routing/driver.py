"""The asyncio driver that runs a ``ChordState`` over RPC (thin: it decides nothing).

Owns the I/O of the ring: it answers the ring's RPC ops (``messages.py``: the wire
shapes, and ``serve``, each op's answer from the state), runs the periodic workers of
Chord §5.1 (stabilize, fix fingers, check predecessor) and the merge probe (chord.py
rule 8) as named tasks, and performs lookups. Each of those is a pure step object of
``steps.py`` that the driver executes (``_execute``): it sends the step's calls over
the RPC pool, turns replies into typed values and feeds replies or failures back. The
simulator (``sector.testing.chordsim``) executes the very same steps over its
in-process network, so what the simulation tests is this sequencing.

The merge probe looks successor(me + 1) up through random members that
``probe_targets`` names (the node's member table, including members last seen down),
so that two rings left by a partition join again.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from sector.aio import Every
from sector.errors import ClusterError, SectorError
from sector.ids import short
from sector.routing.chord import ChordState, Peer
from sector.routing.lookup import Lookup
from sector.routing.messages import MESSAGES, Message
from sector.routing.steps import (
    MAX_HOPS,
    PROBE_TRIES,
    CheckPredecessor,
    FixFinger,
    Join,
    Leave,
    MergeProbe,
    RunLookup,
    Stabilize,
    Step,
)

__all__ = ["ChordDriver"]

log = logging.getLogger("sector.routing")

T = TypeVar("T")


class RpcCaller(Protocol):
    """The part of ``sector.transport.rpc.RpcPool`` the driver uses."""

    async def call(
        self, addr: str, op: str, args: dict[str, Any], *, timeout: float | None = None
    ) -> Any: ...


Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class ChordDriver:
    """Runs one node's ring membership. ``await start()`` / ``await stop()``."""

    def __init__(
        self,
        state: ChordState,
        pool: RpcCaller,
        *,
        stabilize_interval: float = 0.5,
        fix_fingers_interval: float = 0.5,
        check_pred_interval: float = 1.0,
        rpc_timeout: float = 2.0,
        on_change: Callable[[], None] | None = None,
        merge_interval: float = 2.0,
        probe_targets: Callable[[], list[Peer]] | None = None,
    ) -> None:
        self.state = state
        self.pool = pool
        self.stabilize_interval = stabilize_interval
        self.fix_fingers_interval = fix_fingers_interval
        self.check_pred_interval = check_pred_interval
        self.rpc_timeout = rpc_timeout
        self.on_change = on_change
        self.merge_interval = merge_interval
        self.probe_targets = probe_targets
        self.merges = 0  # successors adopted from a merge probe (status)
        self.workers: list[Every] = []  # the maintenance steps, each a worker
        self._bootstrap: str | None = None
        self._seen = state.neighbours()

    # -- RPC handlers -----------------------------------------------------------------

    def handlers(self) -> dict[str, Handler]:
        return {kind.op: self._handler(kind) for kind in MESSAGES}

    def _handler(self, kind: type[Message]) -> Handler:
        async def handle(args: dict[str, Any]) -> Any:
            msg = kind.from_wire(args)  # BadRequest if malformed
            reply = msg.serve(self.state)
            if kind.mutates:
                self._changed()
            return kind.reply_to_wire(reply)  # type: ignore[arg-type]

        return handle

    # -- membership -------------------------------------------------------------------

    def create(self) -> None:
        """Start a new ring of one."""
        self.state.create()
        self._changed()

    async def join(self, bootstrap_addr: str) -> None:
        """Join the ring that bootstrap_addr belongs to (Chord §4.4, §5.1).

        Raises ClusterError if no live successor is found, and the bootstrap's
        TransportError if it cannot be reached."""
        step = Join(self.state, bootstrap_addr)
        try:
            await self._execute(step)
        finally:
            if step.joined:
                self._bootstrap = bootstrap_addr

    async def leave(self) -> None:
        """Graceful leave: stop, then hand our neighbours what they need (Chord §5.3)."""
        await self.stop()
        await self._execute(Leave(self.state))

    # -- workers ----------------------------------------------------------------------

    async def start(self) -> None:
        if self.workers:
            return
        self.workers = [
            Every(f"chord.{name}", step, every)
            for name, step, every in (
                ("stabilize", self.stabilize_once, self.stabilize_interval),
                ("fix-fingers", self.fix_finger_once, self.fix_fingers_interval),
                ("check-predecessor", self.check_predecessor_once, self.check_pred_interval),
                ("merge-probe", self.merge_probe_once, self.merge_interval),
            )
        ]
        for w in self.workers:
            await w.start()

    async def stop(self) -> None:
        workers, self.workers = self.workers, []
        for w in workers:
            await w.stop()

    async def stabilize_once(self) -> None:
        """Chord stabilize (``steps.Stabilize``); a node that lost every peer rejoins
        through the node it joined through."""
        await self._execute(Stabilize(self.state, rejoin_via=self._bootstrap))

    async def merge_probe_once(self) -> None:
        """Look successor(me + 1) up through a random known member (chord.py rule 8)."""
        if self.probe_targets is None:
            return
        me = self.state.me
        targets = [p for p in self.probe_targets() if p.id != me.id]
        if not targets:
            return
        starts = random.sample(targets, min(PROBE_TRIES, len(targets)))
        step = MergeProbe(self.state, starts, rejoin_via=self._bootstrap)
        try:
            await self._execute(step)
        finally:
            if step.adopted:
                self.merges += 1

    async def fix_finger_once(self) -> None:
        await self._execute(FixFinger(self.state))

    async def check_predecessor_once(self) -> None:
        await self._execute(CheckPredecessor(self.state))

    # -- lookups ----------------------------------------------------------------------

    async def lookup(self, key: int, *, verify: bool = False) -> tuple[Peer, int]:
        """(successor(key), hops). With verify, the answer is pinged first (one more
        round trip) and a dead answer is routed around; without, a just-crashed owner
        may be returned until stabilization catches up, and the caller finds out.
        Raises ClusterError if no answer was found within the hop budget.
        """
        lk = Lookup(key, self.state.next_hop(key), max_hops=MAX_HOPS)
        found = await self._run(lk, origin=True, verify=verify)
        if found is None:
            raise ClusterError(
                f"lookup of {short(key)} found no owner in {lk.hops} hops", hops=lk.hops
            )
        return found, lk.hops

    async def _run(self, lk: Lookup, *, origin: bool, verify: bool = True) -> Peer | None:
        """Drive lk over the network (``steps.RunLookup``)."""
        return await self._execute(RunLookup(self.state, lk, origin=origin, verify=verify))

    # -- the executor -----------------------------------------------------------------

    async def _execute(self, step: Step[T]) -> T | None:
        """Perform step's calls over RPC until it is done; its result.

        Each call's reply is parsed into the typed value the step expects (a malformed
        one is a ValueError); whatever the call or the parse raises is the step's to
        handle or to raise again. Listeners hear of a changed predecessor or successor
        list after every transition, before the next call goes out.
        """
        try:
            call = step.start()
            while call is not None:
                self._changed()
                msg = call.msg
                try:
                    raw = await self.pool.call(
                        call.addr, msg.op, msg.to_wire(), timeout=self.rpc_timeout
                    )
                    reply = msg.parse_reply(raw)
                except (SectorError, ValueError) as exc:
                    call = step.on_failure(exc)
                else:
                    call = step.on_reply(reply)
        finally:
            self._changed()
        return step.result

    # -- helpers ----------------------------------------------------------------------

    def _changed(self) -> None:
        """Call on_change if predecessor or successor list differ from last time."""
        now = self.state.neighbours()
        if now == self._seen:
            return
        self._seen = now
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:
                log.exception("on_change callback failed")
