"""The mount's calls to the cluster, each bounded by a timeout.

A FUSE request that waits for ever hangs the program that made it (and ``ls`` of
the parent directory, and the shell): so every call here is cancelled after
``timeout`` seconds and fails with ``Timeout``, which the mount answers with EIO. A
put may take longer with the size of the file: it gets ``timeout`` plus the time the
bytes need at ``MIN_RATE``. Reads go through the normal client (its ranged reads, with
fail-over between replicas); a swarm of readers can later take its place here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sector.client.sync import Client

MIN_RATE = 4 << 20  # bytes/s a put is allowed before it counts as hung


class Remote:
    def __init__(self, client: Client, timeout: float) -> None:
        self.client = client
        self.timeout = timeout
        self._aio = client.aio

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
        res: bytes = self._run(self._aio.read_range(st, offset, length))
        return res

    def put(self, local: Path, remote: str, size: int) -> dict[str, Any]:
        res: dict[str, Any] = self._run(
            self._aio.put(local, remote), self.timeout + size / MIN_RATE
        )
        return res
