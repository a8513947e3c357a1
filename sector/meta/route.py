"""The one route of metadata requests (``service.py`` rules): who serves a key, and the
forwarding of ``meta.op`` to it.

The ring's owner serves (range cache, else a lookup), unless the member view names
another live node as owner: then the ring has not converged (a join, a crash not yet
noticed, two rings after a heal) and that node is asked; it serves, routes on, or
refuses a write, by the same rule. A request forwarded ``MAX_HOPS`` times is served
where it is (a read; a write is refused there unless that node may own the key). An
entry keeps retrying for ``RETRY_WINDOW`` while the ring heals or converges.

A retried write may find its own earlier attempt applied: one that changed the record
here but missed its quorum, or whose answer was lost with its connection. Every write
but ``delete`` comes out the same when applied twice; a delete carries a ``token``
(made once per call, here) that its tombstone keeps, so its retry is answered as done
rather than as "no such file" for a file it removed itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from sector.errors import (
    BadRequest,
    ClusterError,
    SectorError,
    TransportError,
    Unavailable,
    UsageError,
)
from sector.ids import from_hex, key_id, to_hex
from sector.meta import records as rec
from sector.meta.batch import BATCH
from sector.meta.messages import MetaOp
from sector.meta.records import Record
from sector.meta.ring import Ring
from sector.routing.chord import Peer
from sector.routing.rangecache import RangeCache
from sector.wire.messages import typed

MAX_HOPS = 4
RETRY_WINDOW = 6.0  # seconds a routed request keeps trying through a crash
# A request a node forwarded for a client may be malformed (the client's fault, not
# the forwarder's): the owner answers it as a ``UsageError`` marked REFUSED, not as
# ``BadRequest``, which would close the node-to-node connection it came on and cancel
# every other request in flight there (the forwarder then took the owner for failed;
# a client looping a bad meta.op through a non-owner cost that node its quorum). The
# entry node raises it to its client as the ``BadRequest`` it is.
REFUSED = "refused"


def root_record(v: rec.Stamp) -> rec.DirRecord:
    return rec.DirRecord(path="/", v=v)


class Router:
    """``local(op, path, args)`` runs an owner-side op here; ``read(path)`` reads the
    record here and ``read_many(paths)`` many (all the service's)."""

    def __init__(
        self,
        ring: Ring,
        cache: RangeCache,
        *,
        local: Callable[[str, str, dict[str, Any]], Awaitable[Any]],
        read: Callable[[str], Awaitable[Record | None]],
        read_many: Callable[[list[str]], Awaitable[dict[str, Record | None]]],
    ) -> None:
        self.ring = ring
        self.cache = cache
        self.local = local
        self._read = read
        self._read_many = read_many

    def arc(self) -> list[Any]:
        pred = self.ring.predecessor()
        return [to_hex(pred.id) if pred else None, to_hex(self.ring.me.id), self.ring.me.addr]

    async def call(self, path: str, op: str, args: dict[str, Any] | None = None) -> Any:
        """Run owner-side ``op`` on the record of ``path``, wherever its owner is."""
        args = args or {}
        if op == "delete" and "token" not in args:
            args = {**args, "token": os.urandom(8).hex()}
        key = key_id(path)
        last: SectorError | None = None
        # Right after a crash, lookups may name the dead node until stabilization has
        # run (a second or two), and after a heal two rings take a few seconds to
        # merge: keep trying for a while, with the answers pinged, rather than fail a
        # request whose record is safe on the successors.
        deadline = time.monotonic() + RETRY_WINDOW
        attempt = 0
        while attempt == 0 or time.monotonic() < deadline:
            attempt += 1
            try:
                owner = await self.route(key, fresh=last is not None)
            except (TransportError, ClusterError) as exc:
                last = exc  # no route yet (the ring is still healing)
                await asyncio.sleep(min(0.05 * (1 << attempt), 0.5))
                continue
            if owner.id == self.ring.me.id:
                try:
                    return await self.local(op, path, args)
                except Unavailable as exc:
                    last = exc  # not ours to write yet, or no quorum: wait and re-route
            else:
                try:
                    rep = await self.ring.call(
                        owner.addr, "meta.op", {"path": path, "op": op, "args": args, "hops": 1}
                    )
                except TransportError as exc:
                    last = exc
                    self.cache.forget(owner.id)
                    self.ring.failed(owner, exc)
                except Unavailable as exc:
                    last = exc  # the owner could not reach a node it needed, or refused
                except UsageError as exc:
                    raise _unwrap(exc) from None
                else:
                    self.learn(rep.get("range"))
                    return rep.get("result")
            await asyncio.sleep(min(0.05 * (1 << attempt), 0.5))
        assert last is not None
        raise last

    def mine(self, key: int) -> bool:
        """The ring says this node owns key, and the member view does not say otherwise."""
        if not self.ring.responsible_for(key):
            return False
        hint = self.ring.owner_hint(key)
        return hint is None or hint.id == self.ring.me.id

    async def route(self, key: int, *, fresh: bool = False) -> Peer:
        """Who should serve key: the one route of reads and writes.

        The ring's owner (range cache, else a lookup; ``fresh`` skips the cache and
        pings the answer), unless the member view names another live node as owner:
        then the ring has not converged yet (a join, a crash not yet noticed, two rings
        after a heal), and the node the members name is asked; it serves, or routes on,
        or refuses a write, by the same rule.
        """
        if not fresh and (known := self.known_route(key)) is not None:
            return known
        me = self.ring.me
        hint = self.ring.owner_hint(key)
        if self.ring.responsible_for(key):
            return me if hint is None else hint
        owner = await self.ring.lookup(key, verify=fresh)  # (a cache hit returned above)
        if owner.id == me.id and hint is not None:
            return hint
        return owner

    def known_route(self, key: int) -> Peer | None:
        """``route``'s answer where it needs no lookup (this node, or a cached arc)."""
        me = self.ring.me
        hint = self.ring.owner_hint(key)
        if self.ring.responsible_for(key):
            return me if hint is None else hint
        hit = self.cache.find(key)
        if hit is None:
            return None
        return hint if hit[0] == me.id and hint is not None else Peer(hit[0], hit[1])

    async def get_many(self, paths: list[str]) -> dict[str, Record | None]:
        """The records of many paths, one ``get_many`` per owner (a listing's children:
        issue 17) rather than one routed call each. A path whose owner is not known
        without a lookup, or that its presumed owner says is not its own, is asked on
        its own (which teaches the range cache the owner's arc for the rest)."""
        out: dict[str, Record | None] = {}
        todo = list(dict.fromkeys(paths))
        while todo:
            groups: dict[tuple[int, str], list[str]] = {}
            alone: list[str] = []
            for p in todo:
                owner = self.known_route(key_id(p))
                if owner is None:
                    alone.append(p)
                else:
                    groups.setdefault((owner.id, owner.addr), []).append(p)
            if not groups:  # nothing routable from the cache: one routed call
                out[alone[0]] = await self.get(alone[0])
                todo = alone[1:]
                continue
            asked = await asyncio.gather(*(self._get_at(Peer(*o), g) for o, g in groups.items()))
            refused: list[str] = []
            for found in asked:
                for p, r in found.items():
                    if r is False:
                        refused.append(p)
                    else:
                        out[p] = r
            for p, r in zip(refused, await asyncio.gather(*map(self.get, refused)), strict=True):
                out[p] = r
            todo = alone  # routable now, most of them: the replies taught their arcs
        return out

    async def _get_at(
        self, owner: Peer, group: list[str]
    ) -> dict[str, Record | Literal[False] | None]:
        """``get_many`` at ``owner``, BATCH paths a call; False: ask that path's owner."""
        if owner.id == self.ring.me.id:  # routed here already: read, no second check
            here = await self._read_many(group)
            return {p: here[p] for p in group}
        out: dict[str, Record | Literal[False] | None] = {}
        for i in range(0, len(group), BATCH):
            part = group[i : i + BATCH]
            args = {"path": part[0], "op": "get_many", "args": {"paths": part}, "hops": MAX_HOPS}
            try:
                rep = await self.ring.call(owner.addr, "meta.op", args)
                got = rep.get("result") if isinstance(rep, dict) else None
            except SectorError:
                got = None
            if not isinstance(got, list) or len(got) != len(part):
                out.update((p, False) for p in part)
                continue
            self.learn(rep.get("range"))
            for p, obj in zip(part, got, strict=True):
                try:
                    out[p] = False if obj is False else rec.from_builtins(obj) if obj else None
                except SectorError:
                    out[p] = False  # malformed: asked again on its own
        return out

    async def get(self, path: str, *, brief: bool = False) -> Record | None:
        """The current record of a path (routed; no conversion when this node owns it).
        ``brief``: a directory owned elsewhere comes without its entries, for a caller
        that only asks what the path is (a put asking for its parent: the entries of
        a directory of thousands cost a create more than all the rest of it)."""
        if self.mine(key_id(path)):
            r = await self._read(path)
            if r is None and path == "/":
                return root_record((0, 0, ""))
            return r
        obj = await self.call(path, "get", {"brief": True} if brief else None)
        return rec.from_builtins(obj) if obj is not None else None

    def learn(self, arc: Any) -> None:
        if isinstance(arc, list) and len(arc) == 3:
            with contextlib.suppress(ValueError, TypeError):
                pred = from_hex(arc[0]) if arc[0] else None
                self.cache.learn(from_hex(arc[1]), str(arc[2]), pred)

    @typed(MetaOp)
    async def h_op(self, req: MetaOp) -> Any:
        path, op, args, hops = rec.normalize(req.path), req.name, req.args or {}, req.hops
        key = key_id(path)
        if hops < MAX_HOPS and not self.mine(key):
            peer = await self.route(key)
            if peer.id != self.ring.me.id:
                try:
                    return await self.ring.call(
                        peer.addr,
                        "meta.op",
                        {"path": path, "op": op, "args": args, "hops": hops + 1},
                    )
                except TransportError as exc:
                    self.cache.forget(peer.id)
                    self.ring.failed(peer, exc)
                    # fall through: a read is served here (merge rules reconcile); a
                    # write is refused by ``local`` unless this node may own the key
                except UsageError as exc:
                    raise _unwrap(exc) if hops == 0 else exc from None
        try:
            return {"result": await self.local(op, path, args), "range": self.arc()}
        except BadRequest as exc:
            if hops == 0:
                raise
            raise UsageError(exc.message, **{**exc.data, REFUSED: True}) from None


def _unwrap(exc: UsageError) -> SectorError:
    """The BadRequest an owner answered as REFUSED (see REFUSED), else ``exc`` itself."""
    if exc.data.get(REFUSED) is True:
        data = {k: v for k, v in exc.data.items() if k != REFUSED}
        return BadRequest(exc.message, **data)
    return exc
