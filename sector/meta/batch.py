"""Group commit and batched replication for the metadata shard: ``Batcher`` coalesces
records for one sink (the disk committer, or one replica peer) so that under load one
fsync or one RPC serves many updates (see ``service.py``'s rules).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping

from sector.aio import cancel_and_wait
from sector.meta import records as rec
from sector.meta.records import Record

BATCH = 512  # records per flush, per RPC


class Batcher:
    """Coalesces records into batches for one sink (a disk commit, or one replica peer).

    Records of one path in a batch are merged into one (merge is a join, so this holds
    for whole records and for deltas alike). Callers wait for the flush
    that contains their record; a failed flush fails its callers, never the node. This
    is group commit: under load, one fsync (or one RPC) serves many updates.
    """

    def __init__(
        self,
        name: str,
        flush: Callable[[list[Record], dict[str, set[str]]], Awaitable[None]],
        *,
        join: bool = True,
    ) -> None:
        self.name = name
        self._flush = flush
        self._join = join
        self._pending: dict[str, Record] = {}
        # Per pending path, the names of the directory entries its submitters changed
        # (``submit``'s ``changed``), for the flush: united, as the records are.
        self._changed: dict[str, set[str]] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    @property
    def idle(self) -> bool:
        return not self._pending and not self._waiters

    async def stop(self) -> None:
        await cancel_and_wait([self._task])

    def submit(
        self, records: Iterable[Record], changed: Mapping[str, Collection[str]] | None = None
    ) -> asyncio.Future[None]:
        """Queue records for the next flush; the future is done when it is.
        ``changed``: per path, names of directory entries the record changed (the
        store writes only those, ``entries.py``)."""
        if self._task is None:
            self.start()
        for path, names in (changed or {}).items():
            self._changed.setdefault(path, set()).update(names)
        for r in records:
            if self._join:
                # A join, not a replace: records may be deltas (one directory entry).
                self._pending[r.path] = rec.merge(self._pending.get(r.path), r)
            else:
                # Staged records are cumulative: the later one carries the earlier.
                self._pending[r.path] = r
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._wake.set()
        return fut

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = list(self._pending.values()), {}
            changed, self._changed = self._changed, {}
            waiters, self._waiters = self._waiters, []
            if not waiters:
                continue
            try:
                for i in range(0, len(batch), BATCH):
                    await self._flush(batch[i : i + BATCH], changed)
            except Exception as exc:
                # A record staged since holds what failed (merged over it): the entries
                # this flush was to write go with that record's flush.
                for path, names in changed.items():
                    if path in self._pending:
                        self._changed.setdefault(path, set()).update(names)
                for fut in waiters:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
