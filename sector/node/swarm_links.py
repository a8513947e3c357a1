"""Pooled piece streams between nodes (issue 14): a node's ``swarm.piece`` requests to
a peer reuse a few long-lived bulk connections instead of a new connection (and on a
secure cluster a TLS handshake) per request.

- A *link* is one bulk connection opened with ``swarm.piece`` and ``keep`` set: the
  serving node answers that request, then reads the next request frame from the same
  connection, until it closes (``SwarmService._h_piece``).
- Requests are pipelined: a request's frame is written as soon as it is made, and
  its answer (a header frame, then the pieces' bytes) is read once the answers before
  it on the link have been read whole; so the serving node starts the next request
  the moment it has sent the last byte of the one before.
- At most ``PER_ADDR`` links per peer, each with at most ``PIPE`` requests in flight
  before another link is opened; beyond that the least busy link takes the request.
- A request that fails or is given up, mid-answer or queued, leaves the link in an
  unknown place: the link is closed, and the other requests on it fail with
  ``LinkReset`` (not the peer's fault: the caller asks those pieces again, and does
  not hold it against the peer). Links idle for ``IDLE`` seconds are closed (``sweep``). A reused link
  found closed before its answer's header (the serving node ended it, idle) fails
  its request with ``LinkReset`` too: asked again on a new link, a dead peer then
  fails to connect, a live one answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

from sector.errors import ConnectError, TransportError, from_wire
from sector.transport.bulk import BulkChannel
from sector.transport.rpc import RpcPool
from sector.wire import codec

PER_ADDR = 2
PIPE = 2
IDLE = 5.0  # seconds (well below the serving node's stall timeout on an idle link)
OP = "swarm.piece"


class LinkReset(ConnectError):
    """The link this request was queued on was closed by an earlier request on it."""


class Reply:
    """An answer being read: the caller sets ``whole`` once it has read all its pieces
    (a reply left part read closes its link)."""

    def __init__(self, chan: BulkChannel, head: Any) -> None:
        self.chan, self.head, self.whole = chan, head, False


class _Link:
    def __init__(self, chan: BulkChannel) -> None:
        self.chan = chan
        self.wlock = asyncio.Lock()
        self.tail: asyncio.Future[None] | None = None  # done when the last answer is read
        self.users = 0
        self.broken = False
        self.used = time.monotonic()
        self.ids = itertools.count(2)

    async def close(self) -> None:
        self.broken = True
        await self.chan.close()


class Links:
    """A node's piece links, by peer address (module doc)."""

    def __init__(self, pool: RpcPool, *, stall_timeout: float) -> None:
        self.pool = pool
        self.stall_timeout = stall_timeout
        self._links: dict[str, list[_Link]] = {}
        self._opening: dict[str, int] = {}
        self.opened = 0

    def _pick(self, addr: str) -> _Link | None:
        links = [k for k in self._links.get(addr, []) if not k.broken]
        self._links[addr] = links
        if not links:
            return None
        best = min(links, key=lambda k: k.users)
        if best.users < PIPE or len(links) + self._opening.get(addr, 0) >= PER_ADDR:
            return best
        return None

    @contextlib.asynccontextmanager
    async def request(self, addr: str, args: dict[str, Any]) -> AsyncIterator[Reply]:
        """Send a ``swarm.piece`` request to ``addr``; yields its answer's header and
        the channel the caller reads its pieces from (module doc)."""
        loop = asyncio.get_running_loop()
        args = {**args, "keep": True}
        link = self._pick(addr)
        reused = link is not None
        mine: asyncio.Future[None] = loop.create_future()
        if link is None:
            self._opening[addr] = self._opening.get(addr, 0) + 1
            try:
                chan = await self.pool.open_bulk(addr, OP, args, stall_timeout=self.stall_timeout)
            finally:
                self._opening[addr] -= 1
            link = _Link(chan)
            self.opened += 1
            self._links.setdefault(addr, []).append(link)
            prev, link.tail = None, mine
        else:
            async with link.wlock:
                if link.broken:
                    raise LinkReset(f"piece link to {addr} was closed")
                prev, link.tail = link.tail, mine
                try:
                    await link.chan.write(codec.request(next(link.ids), OP, args))
                except BaseException as exc:
                    mine.set_result(None)
                    await link.close()
                    if isinstance(exc, TransportError):
                        raise LinkReset(f"piece link to {addr} was closed: {exc}") from None
                    raise
        link.users += 1
        ok = False
        try:
            if prev is not None:
                await asyncio.shield(prev)
            if link.broken:
                raise LinkReset(f"piece link to {addr} was closed")
            try:
                head = await link.chan.read_frame()
            except TransportError as exc:
                if reused or link.broken:
                    raise LinkReset(f"piece link to {addr} was closed: {exc}") from None
                raise
            if head.e is not None:
                raise from_wire(head.e)  # (the serving node ends the link after an error)
            reply = Reply(link.chan, head.r)
            try:
                yield reply
            except TransportError as exc:
                if link.broken:  # closed here, by a request queued on it (cancelled)
                    raise LinkReset(f"piece link to {addr} was closed: {exc}") from None
                raise
            ok = reply.whole
        finally:
            link.users -= 1
            link.used = time.monotonic()
            if not ok:
                await link.close()
            if not mine.done():
                mine.set_result(None)

    async def sweep(self, now: float | None = None) -> None:
        """Close links idle for ``IDLE`` seconds."""
        now = time.monotonic() if now is None else now
        for addr, links in list(self._links.items()):
            for k in links:
                if k.users == 0 and now - k.used > IDLE:
                    await k.close()
            self._links[addr] = [k for k in links if not k.broken]
            if not self._links[addr]:
                del self._links[addr]

    async def close(self) -> None:
        for links in self._links.values():
            for k in links:
                await k.close()
        self._links.clear()
