"""A large read split into byte ranges fetched over several bulk streams at once, from
one holder or several (issue 15).

On a long fat link one TCP stream's window is capped by what the host lets one socket
have, and after each loss it must grow again over many RTTs; several streams fill the
link sooner (``wan.py`` says when, README "WAN transfer" what was measured). With
several live replicas the streams go to several holders, nearest most, and a stream
that ends its span takes over half of the longest one left (``spans.Plan``: the
schedule, pure). Each span is received by ``bulk.recv`` into its own place in one file
(``pwrite``); a holder whose stream fails hands back only the bytes it had not
written, which another holder's stream reads. The spans arrive out of order and from
several holders, so the caller verifies what came: each span's bytes are shown, as
they are written, to what ``observe`` gives for the span (a piece check, in its
stream's thread), or the whole file is hashed afterwards.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from sector.errors import ProtocolError, SectorError, TransportError
from sector.transport import bulk
from sector.transport.bulk import BulkChannel, Progress
from sector.transport.spans import ALIGN, MIN_SPLIT, Plan, Span

__all__ = ["ALIGN", "OpenRange", "fetch", "ranges"]

REPORT_STEP = 4 << 20  # bytes of a span between two progress reports

# Opens a read of ``length`` bytes from ``offset`` at a holder: the stream and the size
# it announces.
OpenRange = Callable[[str, int, int], Awaitable[tuple[BulkChannel, int]]]


def ranges(size: int, streams: int) -> list[tuple[int, int]]:
    """``[(offset, length)]``: the spans a read of ``size`` bytes over ``streams``
    streams starts with (``Plan``): contiguous, about equal, boundaries on ``ALIGN``."""
    if size <= 0:
        return [(0, 0)]
    return [(s.start, s.end - s.start) for s in Plan(size, ["-"], streams).spans]


class _Cut(Exception):
    """The span was cut short by a steal: its stream stops here (not an error)."""


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
    open_range: OpenRange,
    size: int,
    fd: int,
    holders: Sequence[str],
    streams: Sequence[int],
    *,
    progress: Progress | None = None,
    wrote: Callable[[int], object] | None = None,
    min_split: int = MIN_SPLIT,
    what: str = "read",
    observe: Callable[[int], Callable[[memoryview], object]] | None = None,
) -> Plan:
    """``size`` bytes into ``fd`` (at their offsets) over ``streams[i]`` streams to
    ``holders[i]`` at once; returns the plan (who served what, who failed). ``wrote(n)``
    is told of each write, from the streams' threads (a write-behind); ``min_split``: the
    least a steal leaves each side (``wan.split_for``); ``observe(offset)``: what is
    shown, in order, the bytes of a span read from ``offset`` on. Raises
    ``TransportError`` if every holder failed first; the file's own errors (a full
    disk) as they are, after stopping the other streams."""
    plan = Plan(size, holders, sum(streams), min_split=min_split)
    loop = asyncio.get_running_loop()
    changed = [asyncio.Event()]  # set (and replaced) when a span ends or a holder fails
    errors: list[str] = []

    def report() -> None:
        if progress is not None:
            loop.call_soon_threadsafe(progress, plan.claimed(), size)

    def tell() -> None:
        changed[0].set()
        changed[0] = asyncio.Event()

    async def one(holder: str, span: Span) -> None:
        offset, length = span.pos, span.left
        chan, n = await open_range(holder, offset, length)
        try:
            if n != length:
                raise ProtocolError(
                    f"{what}: asked {holder} for {length} bytes at {offset}, got {n}"
                )
            where = f"{what} (bytes {offset}..{offset + length} from {holder})"
            feed = observe(offset) if observe is not None else None
            sink = _Into(fd, plan, span, report, wrote, feed)
            try:
                await bulk.recv(chan, length, sink, executor=pool, what=where)
            except _Cut:
                pass
        finally:
            await chan.close()

    async def stream(holder: str) -> None:
        while True:
            ev = changed[0]
            span = plan.take(holder)
            if span is None:
                if plan.done or holder not in plan.live:
                    return
                await ev.wait()
                continue
            try:
                await one(holder, span)
            except (SectorError, ConnectionError) as exc:
                errors.append(f"{holder}: {exc}")
                plan.failed(span, holder)
                return
            finally:
                report()
                tell()

    # A thread per stream: the default executor has too few (min(32, cores + 4)), and
    # a stream waiting for one would start late and finish alone.
    pool = ThreadPoolExecutor(max(1, sum(streams)), thread_name_prefix="stripe")
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
