"""A large read split into byte ranges fetched over several bulk streams at once.

On a long fat link one TCP stream's window is capped by what the host lets one socket
have, and after each loss it must grow again over many RTTs; several streams fill the
link sooner (``wan.py`` says when, README "WAN transfer" what was measured). Each
range is received by ``bulk.recv`` into its own place in one file (``pwrite``); the
caller verifies the whole file's checksum afterwards, since the ranges arrive out of
order. A range that fails fails the read (the caller fails over to another replica).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from sector.errors import ProtocolError
from sector.transport import bulk
from sector.transport.bulk import BulkChannel, Progress

ALIGN = 1 << 20  # range boundaries fall on MiB multiples (page-aligned writes)

# Opens a read of ``length`` bytes from ``offset``: the stream and the size it announces.
OpenRange = Callable[[int, int], Awaitable[tuple[BulkChannel, int]]]


def ranges(size: int, streams: int) -> list[tuple[int, int]]:
    """``[(offset, length)]``: ``size`` bytes in at most ``streams`` contiguous ranges
    of about equal length, boundaries on ``ALIGN``; every byte in exactly one."""
    if size <= 0:
        return [(0, 0)]
    step = -(-size // max(1, streams))
    step = -(-step // ALIGN) * ALIGN
    return [(off, min(step, size - off)) for off in range(0, size, step)]


class _At:
    """A sink writing at a moving offset of a file descriptor (``pwrite``)."""

    def __init__(self, fd: int, offset: int) -> None:
        self.fd, self.pos = fd, offset

    def write(self, data: memoryview) -> None:
        while data:
            n = os.pwrite(self.fd, data, self.pos)
            self.pos += n
            data = data[n:]


async def fetch(
    open_range: OpenRange,
    size: int,
    fd: int,
    streams: int,
    *,
    progress: Progress | None = None,
    what: str = "read",
) -> int:
    """``size`` bytes into ``fd`` (at their offsets) over ``streams`` streams at once;
    returns the number of streams used. The first failure cancels the others."""
    parts = ranges(size, streams)
    done = [0] * len(parts)

    async def one(i: int, offset: int, length: int) -> None:
        def report(got: int, _total: int) -> None:
            done[i] = got
            if progress is not None:
                progress(sum(done), size)

        chan, n = await open_range(offset, length)
        try:
            if n != length:
                raise ProtocolError(f"{what}: asked for {length} bytes at {offset}, got {n}")
            where = f"{what} (bytes {offset}..{offset + length})"
            sink = _At(fd, offset)
            await bulk.recv(chan, length, sink, executor=pool, progress=report, what=where)
        finally:
            await chan.close()

    # A thread per stream: the default executor has too few (min(32, cores + 4)), and
    # a stream waiting for one would start late and finish alone.
    pool = ThreadPoolExecutor(len(parts), thread_name_prefix="stripe")
    tasks = [asyncio.ensure_future(one(i, off, n)) for i, (off, n) in enumerate(parts)]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    finally:
        pool.shutdown(wait=False)
    return len(parts)
