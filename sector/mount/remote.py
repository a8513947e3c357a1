"""The mount's calls to the cluster, each bounded by a timeout.

A FUSE request that waits for ever hangs the program that made it (and ``ls`` of
the parent directory, and the shell): so every call here is cancelled after
``timeout`` seconds and fails with ``Timeout``, which the mount answers with EIO. A
put may take longer with the size of the file: it gets ``timeout`` plus the time the
bytes need at ``MIN_RATE``.

Reads of a busy file (``swarm.want``: at least two other readers now, or cached on
the local node) or of one of at least ``SWARM_MIN`` bytes go through the node on this
host (``swarm.get`` of the range): it fetches the file into its cache through the
swarm and sends each range as its pieces arrive, so ten hosts reading one file do not
all read its replicas. The choice is kept per file version for ``DECIDE_TTL``
seconds. A swarm read that fails or takes half the timeout falls back to the
replicas (the normal client's ranged reads, with fail-over between them), and the
file is read that way for ``DECIDE_TTL`` seconds; the whole read is still bounded by
``timeout`` (EIO past it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from sector.client.sync import Client
from sector.errors import SectorError

log = logging.getLogger("sector.mount")

MIN_RATE = 4 << 20  # bytes/s a put is allowed before it counts as hung
SWARM_MIN = 64 << 20  # a file this large is read through the local node's swarm
DECIDE_TTL = 10.0  # seconds a file's choice (swarm or replicas) is kept


class Remote:
    def __init__(self, client: Client, timeout: float, *, swarm_min: int = SWARM_MIN) -> None:
        self.client = client
        self.timeout = timeout
        self.swarm_min = swarm_min
        self._aio = client.aio
        self._via: dict[str, tuple[float, bool]] = {}  # blob -> (until, through the swarm)

    def _run(self, coro: Any, timeout: float | None = None) -> Any:
        return self.client.run(coro, timeout=timeout or self.timeout)

    def stat(self, path: str) -> dict[str, Any]:
        res: dict[str, Any] = self._run(self._aio.stat(path))
        return res

    def ls(self, path: str) -> list[dict[str, Any]]:
        res: list[dict[str, Any]] = self._run(self._aio.ls(path))
        return res

    def mkdir(self, path: str) -> None:
        self._run(self._aio.mkdir(path))

    def rm(self, path: str) -> None:
        self._run(self._aio.rm(path))

    def mv(self, src: str, dst: str) -> None:
        self._run(self._aio.mv(src, dst))

    def status(self) -> dict[str, Any]:
        res: dict[str, Any] = self._run(self._aio.status())
        return res

    def read_range(self, st: dict[str, Any], offset: int, length: int) -> bytes:
        res: bytes = self._run(self._read(st, offset, length))
        return res

    async def _read(self, st: dict[str, Any], offset: int, length: int) -> bytes:
        """(On the client's loop: ``_via`` is only touched there.)"""
        if await self._swarm(st):
            try:
                return await asyncio.wait_for(
                    self._aio.read_swarm(st, offset, length), self.timeout / 2
                )
            except (SectorError, TimeoutError) as exc:
                log.info("swarm read of %s failed (%s): reading the replicas", st["path"], exc)
                self._via[st["blob"]] = (time.monotonic() + DECIDE_TTL, False)
        return await self._aio.read_range(st, offset, length)

    async def _swarm(self, st: dict[str, Any]) -> bool:
        now = time.monotonic()
        blob = str(st["blob"])
        got = self._via.get(blob)
        if got is not None and got[0] > now:
            return got[1]
        if len(self._via) > 4096:
            self._via = {b: v for b, v in self._via.items() if v[0] > now}
        via = await self._aio.swarm_serves(st, large=self.swarm_min)
        self._via[blob] = (now + DECIDE_TTL, via)
        return via

    def put(self, local: Path, remote: str, size: int) -> dict[str, Any]:
        res: dict[str, Any] = self._run(
            self._aio.put(local, remote), self.timeout + size / MIN_RATE
        )
        return res
