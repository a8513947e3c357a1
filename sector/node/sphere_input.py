"""A segment's input on this node: the local replica of its file, or a verified copy.

The data waits for the task: the driver places an attempt on a node holding its
file, which then reads its local replica. When none is here (every holder busy, or
the holder lost) the node fetches a copy from a holder into ``<sphere>/cache/``,
checks it against the record's checksum, and keeps it there: later segments of that
file (of any job) read it too, until the node restarts. Concurrent attempts needing
one file share one fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from sector.errors import NotFound, SectorError
from sector.node import bulkfile
from sector.storage.blobs import BlobStore, checksum_file
from sector.storage.messages import Get
from sector.storage.transfer import open_get
from sector.transport.rpc import RpcPool

__all__ = ["SegmentInput"]


class SegmentInput:
    def __init__(self, blobs: BlobStore, pool: RpcPool, cache: Path, io: Executor) -> None:
        self.blobs = blobs
        self.pool = pool
        self.cache = cache
        self.io = io
        self._fetching: dict[str, asyncio.Future[Path]] = {}

    async def local_copy(self, src: dict[str, Any]) -> Path:
        """The path of a local replica, or of a verified copy fetched from a holder.

        ``src``: {blob, checksum, holders, local?}, checked by the ``sphere.run``
        handler (``local``: whether the file's record lists this node)."""
        blob = src["blob"]
        if src.get("local", True) and self.blobs.exists(blob):
            return self.blobs.path(blob)
        fut = self._fetching.get(blob)
        if fut is None:
            fut = asyncio.ensure_future(self._fetch(src))
            self._fetching[blob] = fut
            fut.add_done_callback(lambda _f: self._fetching.pop(blob, None))
        return await asyncio.shield(fut)

    async def _fetch(self, src: dict[str, Any]) -> Path:
        self.cache.mkdir(parents=True, exist_ok=True)
        dst = self.cache / src["blob"]
        if dst.exists():
            return dst
        loop = asyncio.get_running_loop()
        errors = []
        for addr in src["holders"]:
            tmp = dst.with_suffix(".part")
            try:
                chan, size = await open_get(self.pool, addr, Get(blob=src["blob"]))
                try:
                    await bulkfile.recv_file(chan, size, tmp, self.io)
                finally:
                    await chan.close()
                if isinstance(src["checksum"], str):
                    got = await loop.run_in_executor(self.io, checksum_file, tmp)
                    if got != src["checksum"]:
                        raise SectorError(f"copy at {addr} does not match its checksum")
                tmp.replace(dst)
                return dst
            except (SectorError, OSError) as exc:
                errors.append(f"{addr}: {exc}")
                with contextlib.suppress(OSError):
                    tmp.unlink()
        raise NotFound(f"no holder served blob {src['blob']} ({'; '.join(errors) or 'none'})")
