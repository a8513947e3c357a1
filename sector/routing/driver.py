"""The asyncio driver that runs a ``ChordState`` over RPC (thin: all rules live in chord.py).

It does three things: answers the ring's RPC ops from the state, runs the periodic
workers of Chord §5.1 (stabilize, fix fingers, check predecessor) as named tasks, and
performs iterative lookups (``lookup.py``) over the network. Every remote outcome goes
back into the state: an unreachable peer becomes ``state.peer_failed``.

RPC ops (args -> result; ids travel as 40-digit hex, peers as ``[id_hex, addr]``):

    chord.next_hop  {key, exclude: [id]}        -> [done, peer]
    chord.state     {}                          -> {me, pred, successors}
    chord.notify    {peer}                      -> adopted: bool
    chord.ping      {}                          -> me
    chord.leaving   {peer, pred, successors}    -> None

A fourth worker, the merge probe (chord.py rule 8), looks successor(me + 1) up through
a random member that ``probe_targets`` names (the node's member table, including
members last seen down), so that two rings left by a partition join again.

``sector.testing.chordsim`` performs the same steps synchronously; keep them in step.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from sector.aio import cancel_and_wait
from sector.errors import BadRequest, ClusterError, SectorError, TransportError
from sector.ids import MASK, short, to_hex
from sector.routing.chord import ChordState, Peer, parse_id
from sector.routing.lookup import Lookup

__all__ = ["ChordDriver"]

log = logging.getLogger("sector.routing")

# A lookup may carry this many excluded ids; more is a malformed (or hostile) request.
MAX_EXCLUDE = 256
MAX_HOPS = 64
PROBE_TRIES = 3  # members a merge probe tries until one answers


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
        self._tasks: list[asyncio.Task[None]] = []
        self._bootstrap: str | None = None
        self._joining = False
        self._seen = state.neighbours()

    # -- RPC handlers -----------------------------------------------------------------

    def handlers(self) -> dict[str, Handler]:
        return {
            "chord.next_hop": self._h_next_hop,
            "chord.state": self._h_state,
            "chord.notify": self._h_notify,
            "chord.ping": self._h_ping,
            "chord.leaving": self._h_leaving,
        }

    async def _h_next_hop(self, args: dict[str, Any]) -> list[Any]:
        key = _id_arg(args, "key")
        raw = args.get("exclude", [])
        if not isinstance(raw, list) or len(raw) > MAX_EXCLUDE:
            raise BadRequest(f"exclude must be a list of at most {MAX_EXCLUDE} ids")
        exclude = frozenset(_parse_id(x, "exclude") for x in raw)
        done, peer = self.state.next_hop(key, exclude)
        return [done, peer.to_wire()]

    async def _h_state(self, args: dict[str, Any]) -> dict[str, Any]:
        st = self.state
        return {
            "me": st.me.to_wire(),
            "pred": st.predecessor.to_wire() if st.predecessor else None,
            "successors": [p.to_wire() for p in st.successors],
        }

    async def _h_notify(self, args: dict[str, Any]) -> bool:
        peer = _peer_arg(args, "peer")
        changed = self.state.notify(peer)
        self._changed()
        return changed

    async def _h_ping(self, args: dict[str, Any]) -> list[Any]:
        return self.state.me.to_wire()

    async def _h_leaving(self, args: dict[str, Any]) -> None:
        leaving = _peer_arg(args, "peer")
        pred = _opt_peer_arg(args, "pred")
        succs = _peers_arg(args, "successors")
        self.state.on_neighbour_leaving(leaving, pred, succs)
        self._changed()

    # -- membership -------------------------------------------------------------------

    def create(self) -> None:
        """Start a new ring of one."""
        self.state.create()
        self._changed()

    async def join(self, bootstrap_addr: str) -> None:
        """Join the ring that bootstrap_addr belongs to (Chord §4.4, §5.1)."""
        me = self.state.me
        # The bootstrap is known by address only; ping tells us its id, so the lookup can
        # treat it as its first hop and route around it like any other.
        try:
            boot = Peer.from_wire(await self._call(bootstrap_addr, "chord.ping", {}))
        except ValueError as exc:
            raise ClusterError(f"join via {bootstrap_addr}: bad ping reply: {exc}") from None
        lk = Lookup(me.id, (False, boot), max_hops=MAX_HOPS)
        found = await self._run(lk, origin=False)
        if found is None:
            raise ClusterError(
                f"join via {bootstrap_addr}: no live successor found in {lk.hops} hops",
                node=bootstrap_addr,
                hops=lk.hops,
            )
        self.state.join(found)
        self._bootstrap = bootstrap_addr
        self._changed()
        self._joining = True
        try:
            await self.stabilize_once()
        finally:
            self._joining = False
        log.info("%s joined via %s; successor %s", me, bootstrap_addr, self.state.successor)

    async def leave(self) -> None:
        """Graceful leave: stop, then hand our neighbours what they need (Chord §5.3)."""
        await self.stop()
        st = self.state
        pred, succs = st.leave_info()
        msg = {
            "peer": st.me.to_wire(),
            "pred": pred.to_wire() if pred else None,
            "successors": [p.to_wire() for p in succs],
        }
        told: set[int] = set()
        for nb in (pred, succs[0] if succs else None):
            if nb is None or nb.id in told:
                continue
            told.add(nb.id)
            try:
                await self._call(nb.addr, "chord.leaving", msg)
            except SectorError as exc:
                # Best effort: a neighbour we cannot tell finds out by its timeouts.
                log.info("could not tell %s that we leave: %s", nb, exc)

    # -- workers ----------------------------------------------------------------------

    async def start(self) -> None:
        if self._tasks:
            return
        tag = short(self.state.me.id)
        for name, step, every in (
            ("stabilize", self.stabilize_once, self.stabilize_interval),
            ("fix-fingers", self.fix_finger_once, self.fix_fingers_interval),
            ("check-predecessor", self.check_predecessor_once, self.check_pred_interval),
            ("merge-probe", self.merge_probe_once, self.merge_interval),
        ):
            self._tasks.append(
                asyncio.create_task(self._every(name, step, every), name=f"chord.{name}[{tag}]")
            )

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(tasks)

    async def _every(self, name: str, step: Callable[[], Awaitable[None]], every: float) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception:
                # A worker that dies silently leaves the ring to rot; log and go on.
                log.exception("chord %s step failed on %s", name, self.state.me)

    async def stabilize_once(self) -> None:
        """Chord stabilize: fix our successor list from our successor, then notify it.

        A successor that does not answer is dropped and the next one asked. A closer
        successor adopted from its answer is asked again at once rather than a round
        later, so a node that many joiners passed by walks back to its true successor
        in one round instead of one hop per round.
        """
        st = self.state
        me = st.me
        r = st.r
        for _ in range(2 * r + 1):
            succ = st.successor
            if succ.id == me.id:
                st.on_stabilize(me, st.predecessor, [])
                if st.successor.id == me.id:
                    break
                continue
            try:
                reply = await self._call(succ.addr, "chord.state", {})
                who, pred, succs = _parse_state(reply)
                if who is not None and who.id != succ.id:
                    # Another node now answers at that address: ours is gone.
                    raise ValueError(f"{succ.addr} is now {who}")
            except TransportError:
                st.peer_failed(succ.id)
                continue
            except (SectorError, ValueError) as exc:
                log.warning("bad chord.state reply from %s: %s", succ, exc)
                st.peer_failed(succ.id)
                continue
            st.on_stabilize(succ, pred, succs)
            if st.successor.id == succ.id:
                break
        self._changed()
        succ = st.successor
        if succ.id != me.id:
            try:
                await self._call(succ.addr, "chord.notify", {"peer": me.to_wire()})
            except TransportError:
                st.peer_failed(succ.id)
                self._changed()
        elif st.predecessor is None and self._bootstrap is not None and not self._joining:
            await self._rejoin()

    async def _rejoin(self) -> None:
        """We lost every peer we knew: try the bootstrap node again (it may be back)."""
        assert self._bootstrap is not None
        try:
            await self.join(self._bootstrap)
        except SectorError as exc:
            log.debug("rejoin via %s failed: %s", self._bootstrap, exc)

    async def merge_probe_once(self) -> None:
        """Look successor(me + 1) up through a random known member (chord.py rule 8)."""
        if self.probe_targets is None:
            return
        st = self.state
        targets = [p for p in self.probe_targets() if p.id != st.me.id]
        if not targets:
            return
        found = None
        # Up to PROBE_TRIES members, until one answers: during a partition most of
        # those we know may be out of reach (a small side knows the whole cluster).
        for start in random.sample(targets, min(PROBE_TRIES, len(targets))):
            lk = Lookup((st.me.id + 1) & MASK, (False, start), max_hops=MAX_HOPS)
            try:
                found = await self._run(lk, origin=False)
            except SectorError as exc:
                log.debug("merge probe through %s failed: %s", start, exc)
                continue
            if found is not None:
                break
        if found is not None and st.on_merge_probe(found):
            self.merges += 1
            log.info("%s: a merge probe found successor %s", st.me, found)
            self._changed()
            await self.stabilize_once()

    async def fix_finger_once(self) -> None:
        i, start = self.state.next_finger()
        try:
            peer, _ = await self.lookup(start)
        except ClusterError as exc:
            log.debug("finger %d lookup failed: %s", i, exc)
            return
        self.state.set_finger(i, peer)

    async def check_predecessor_once(self) -> None:
        pred = self.state.predecessor
        if pred is None:
            return
        try:
            await self._call(pred.addr, "chord.ping", {})
        except TransportError:
            self.state.peer_failed(pred.id)
            self._changed()

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
        """Drive lk over the network. origin=False (joining): we have no table of our
        own to fall back on, and failures are not ours to record."""
        st = self.state
        me = st.me
        while True:
            if lk.done:
                res = lk.result
                if res is not None and res.id == me.id and not origin:
                    # Joining, and the ring still lists us (we restarted before it
                    # noticed): we want whoever follows us, so route around ourselves.
                    lk.on_failure(res)
                    continue
                if not verify or res is None or res.id == me.id:
                    return res
                try:
                    await self._call(res.addr, "chord.ping", {})
                    return res
                except TransportError:
                    self._failed(res, origin)
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
            args = {"key": to_hex(lk.key), "exclude": [to_hex(x) for x in lk.exclude]}
            try:
                reply = await self._call(nxt.addr, "chord.next_hop", args)
                done, peer = _parse_next_hop(reply)
            except TransportError:
                self._failed(nxt, origin)
                lk.on_failure(nxt)
                continue
            except (SectorError, ValueError) as exc:
                # Alive but answering nonsense: route around it without declaring it dead.
                log.warning("bad chord.next_hop reply from %s: %s", nxt, exc)
                lk.on_failure(nxt)
                continue
            lk.on_reply(done, peer)

    # -- helpers ----------------------------------------------------------------------

    async def _call(self, addr: str, op: str, args: dict[str, Any]) -> Any:
        return await self.pool.call(addr, op, args, timeout=self.rpc_timeout)

    def _failed(self, peer: Peer, origin: bool) -> None:
        if origin:
            self.state.peer_failed(peer.id)
            self._changed()

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


# -- argument and reply parsing (every node validates every message) -----------------


def _parse_id(x: Any, what: str) -> int:
    try:
        return parse_id(x)
    except ValueError as exc:
        raise BadRequest(f"{what}: {exc}") from None


def _id_arg(args: dict[str, Any], name: str) -> int:
    if name not in args:
        raise BadRequest(f"missing argument {name!r}")
    return _parse_id(args[name], name)


def _peer_arg(args: dict[str, Any], name: str) -> Peer:
    peer = _opt_peer_arg(args, name)
    if peer is None:
        raise BadRequest(f"missing argument {name!r}")
    return peer


def _opt_peer_arg(args: dict[str, Any], name: str) -> Peer | None:
    x = args.get(name)
    if x is None:
        return None
    try:
        return Peer.from_wire(x)
    except ValueError as exc:
        raise BadRequest(f"{name}: {exc}") from None


def _peers_arg(args: dict[str, Any], name: str) -> list[Peer]:
    x = args.get(name, [])
    if not isinstance(x, list) or len(x) > MAX_EXCLUDE:
        raise BadRequest(f"{name} must be a list of peers")
    try:
        return [Peer.from_wire(p) for p in x]
    except ValueError as exc:
        raise BadRequest(f"{name}: {exc}") from None


def _parse_next_hop(reply: Any) -> tuple[bool, Peer]:
    if not isinstance(reply, list | tuple) or len(reply) != 2 or not isinstance(reply[0], bool):
        raise ValueError(f"malformed next_hop reply {reply!r:.80}")
    return reply[0], Peer.from_wire(reply[1])


def _parse_state(reply: Any) -> tuple[Peer | None, Peer | None, list[Peer]]:
    """(who answered, its predecessor, its successors) from a chord.state reply."""
    if not isinstance(reply, dict) or not isinstance(reply.get("successors"), list):
        raise ValueError(f"malformed chord.state reply {reply!r:.80}")
    who = reply.get("me")
    pred = reply.get("pred")
    return (
        Peer.from_wire(who) if who is not None else None,
        Peer.from_wire(pred) if pred is not None else None,
        [Peer.from_wire(p) for p in reply["successors"][:MAX_EXCLUDE]],
    )
