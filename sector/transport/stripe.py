"""A large read split into byte ranges fetched over several bulk streams at once, from
one holder or several (issue 15).

On a long fat link one TCP stream's window is capped by what the host lets one socket
have, and after each loss it must grow again over many RTTs; several streams fill the
link sooner (``wan.py`` says when, README "WAN transfer" what was measured). With
several live replicas the streams go to several holders, nearest most. Each stream is
one connection kept open (``blob.get`` with ``keep``) that reads chunk after chunk of
the file from its holder, on a long path asking for the next before the current one
has arrived (``depth``), so its holder never waits for it; its congestion window is
never lost; which chunk is next is ``spans.Plan``'s (pure). Each chunk is received by
``bulk.recv`` into its own place in one file (``pwrite``); a holder whose stream fails
hands back the bytes it had not written, which another holder's streams read. The
chunks arrive out of order and from several holders, so the caller verifies what
came: each chunk's bytes are shown, as they are written, to what ``observe`` gives for
it (a piece check, in its stream's thread), or the whole file is hashed afterwards.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from sector.errors import ProtocolError, SectorError, TransportError
from sector.transport import bulk
from sector.transport.bulk import BulkChannel, Progress
from sector.transport.spans import ALIGN, MIN_CHUNK, Plan, Span

__all__ = ["ALIGN", "DEPTH", "Ranges", "fetch", "ranges"]

REPORT_STEP = 4 << 20  # bytes of a chunk between two progress reports
DEPTH = 2  # chunks a stream asks for at once by default: the one arriving and the next


class Ranges(Protocol):
    """How a stream asks a holder for byte ranges of the file (``blob.get`` with
    ``keep``): ``open`` a stream asking for the first, ``ask`` for another on it, and
    read the ``head`` of the next answer (the byte count that follows; the holder's
    error raised as it is)."""

    async def open(self, holder: str, offset: int, length: int) -> BulkChannel: ...

    async def ask(self, chan: BulkChannel, offset: int, length: int) -> None: ...

    async def head(self, chan: BulkChannel) -> int: ...


def ranges(size: int, streams: int) -> list[tuple[int, int]]:
    """``[(offset, length)]``: the first chunk of each of ``streams`` streams, in the
    order they ask (``Plan``): contiguous, boundaries on ``ALIGN``."""
    plan = Plan(size, ["-"], streams)
    got = [plan.take("-") for _ in range(streams)]
    return [(s.start, s.end - s.start) for s in got if s is not None] or [(0, 0)]


class _Cut(Exception):
    """The read was stopped (``Plan.stop``): the stream stops here (not an error)."""


class _Into:
    """A sink writing one span's bytes at their offsets of a file (``pwrite``), as far
    as the plan lets it; reports the read's progress every ``REPORT_STEP`` bytes."""

    def __init__(
        self,
        fd: int,
        plan: Plan,
        span: Span,
        report: Callable[[], None],
        wrote: Callable[[int], object] | None,
        feed: Callable[[memoryview], object] | None = None,
    ) -> None:
        self.fd, self.plan, self.span, self.report, self.wrote = fd, plan, span, report, wrote
        self.feed = feed
        self.unreported = 0

    def write(self, data: memoryview) -> None:
        at, k = self.plan.claim(self.span, len(data))
        view = data[:k]
        if self.feed is not None:
            self.feed(view)
        while view:
            n = os.pwrite(self.fd, view, at)
            at += n
            view = view[n:]
        if self.wrote is not None:
            self.wrote(k)
        self.unreported += k
        if self.unreported >= REPORT_STEP:
            self.unreported = 0
            self.report()
        if k < len(data):
            raise _Cut


async def fetch(
    reader: Ranges,
    size: int,
    fd: int,
    holders: Sequence[str],
    streams: Sequence[int],
    *,
    progress: Progress | None = None,
    wrote: Callable[[int], object] | None = None,
    min_chunk: int = MIN_CHUNK,
    depth: int = DEPTH,
    align: int = ALIGN,
    what: str = "read",
    observe: Callable[[int], Callable[[memoryview], object]] | None = None,
) -> Plan:
    """``size`` bytes into ``fd`` (at their offsets) over ``streams[i]`` streams to
    ``holders[i]`` at once; returns the plan (who served what, who failed). ``wrote(n)``
    is told of each write, from the streams' threads (a write-behind); ``min_chunk``:
    the least a chunk holds and ``depth`` how many a stream asks for at once
    (``wan.chunking``); ``align``: where chunks may start (a
    piece size lets each chunk's pieces be checked whole); ``observe(offset)``: what is
    shown, in order, the bytes of a chunk read from ``offset`` on. Raises
    ``TransportError`` if every holder failed first; the file's own errors (a full
    disk) as they are, after stopping the other streams."""
    total = sum(streams)
    plan = Plan(size, holders, total, min_chunk=min_chunk, align=align)
    loop = asyncio.get_running_loop()
    changed = [asyncio.Event()]  # set (and replaced) when a chunk ends or a holder fails
    errors: list[str] = []

    def report() -> None:
        if progress is not None:
            loop.call_soon_threadsafe(progress, plan.claimed(), size)

    def tell() -> None:
        changed[0].set()
        changed[0] = asyncio.Event()

    async def read(chan: BulkChannel, holder: str, span: Span, offset: int, length: int) -> None:
        n = await reader.head(chan)
        if n != length:
            raise ProtocolError(f"{what}: asked {holder} for {length} bytes at {offset}, got {n}")
        where = f"{what} (bytes {offset}..{offset + length} from {holder})"
        feed = observe(offset) if observe is not None else None
        sink = _Into(fd, plan, span, report, wrote, feed)
        await bulk.recv(chan, length, sink, executor=pool, what=where)

    async def stream(holder: str) -> None:
        chan: BulkChannel | None = None
        asked: list[tuple[Span, int, int]] = []  # asked for, in order: the first arrives next
        try:
            while True:
                ev = changed[0]
                while len(asked) < max(1, depth) and (span := plan.take(holder)) is not None:
                    asked.append((span, span.pos, span.left))
                    if chan is None:
                        chan = await reader.open(holder, span.pos, span.left)
                    else:
                        await reader.ask(chan, span.pos, span.left)
                if not asked:
                    if plan.done or holder not in plan.live:
                        return
                    await ev.wait()
                    continue
                assert chan is not None
                await read(chan, holder, *asked[0])
                asked.pop(0)
                report()
                tell()
        except _Cut:
            return
        except (SectorError, ConnectionError) as exc:
            errors.append(f"{holder}: {exc}")
            plan.failed([a[0] for a in asked], holder)
            report()
            tell()
        finally:
            if chan is not None:
                await chan.close()

    # A thread per stream: the default executor has too few (min(32, cores + 4)), and
    # a stream waiting for one would start late and finish alone.
    pool = ThreadPoolExecutor(max(1, total), thread_name_prefix="stripe")
    tasks = [
        asyncio.ensure_future(stream(h))
        for h, k in zip(holders, streams, strict=True)
        for _ in range(k)
    ]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        plan.stop()  # a writer still in its thread writes no more (the caller closes fd)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # ...and is waited for: a pwrite after the close could hit a reused descriptor.
        await asyncio.shield(asyncio.to_thread(pool.shutdown, True))
        raise
    pool.shutdown(wait=False)  # every stream ended: its thread is idle
    if not plan.done:
        raise TransportError(f"{what}: every holder failed ({'; '.join(errors)})")
    if progress is not None:
        progress(size, size)
    return plan
