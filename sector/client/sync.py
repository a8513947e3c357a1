"""The sync client: the async client driven by a private event loop in a thread.

One loop thread per ``Client`` keeps the pooled connections alive between calls, so
a script making many small calls does not reconnect each time (the cost of
``asyncio.run`` per call). File objects from ``open`` read through it in ranges.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import os
import threading
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from sector.client import many
from sector.client.aio import LS_PAGE, AsyncClient, Progress
from sector.errors import IsADirectory, Timeout, UsageError

if TYPE_CHECKING:
    from sector.sphere.api import Sphere

T = TypeVar("T")
READ_AHEAD = 4 << 20


class Client:
    """``with sector.connect() as c: c.put("a.bin", "/data/a.bin")``."""

    def __init__(
        self,
        address: str | None = None,
        *,
        timeout: float = 60.0,
        token: str | None = None,
        anonymous: bool = False,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="sector-client", daemon=True
        )
        self._thread.start()
        try:
            self._aio = self._run(self._make(address, timeout, token, anonymous))
            self._run(self._aio.connect())
        except BaseException:
            self.close()
            raise

    @functools.cached_property
    def sphere(self) -> Sphere:
        """Sphere jobs: ``c.sphere.run(udf, input=...)`` (made on first use, as the
        async client's: its numpy import is not for every command)."""
        from sector.sphere.api import Sphere

        return Sphere(self)

    async def _make(
        self, address: str | None, timeout: float, token: str | None, anonymous: bool
    ) -> AsyncClient:
        return AsyncClient(address, timeout=timeout, token=token, anonymous=anonymous)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result()
        except BaseException:
            # Ctrl-C (or any interruption of the caller): cancel the coroutine in the
            # loop and let it run its cleanup (temp files, sockets) before we go on.
            if not fut.done():
                fut.cancel()
                with contextlib.suppress(BaseException):
                    fut.result(timeout=5)
            raise

    def run(self, coro: Coroutine[Any, Any, T], *, timeout: float | None = None) -> T:
        """Run a coroutine of :attr:`aio` on this client's loop and wait for it.

        With ``timeout`` the coroutine is cancelled after that many seconds and
        ``Timeout`` raised: how a caller that must never hang (the FUSE mount) bounds
        every call, whatever the network does."""
        if timeout is None:
            return self._run(coro)
        return self._run(_bounded(coro, timeout))

    @property
    def aio(self) -> AsyncClient:
        """The async client this one drives (its coroutines go to :meth:`run`)."""
        return self._aio

    @property
    def address(self) -> str:
        return self._aio.address

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        aio = getattr(self, "_aio", None)
        if aio is not None and self._loop.is_running():
            with contextlib.suppress(Timeout):  # closing never waits long on a stuck peer
                self._run(_bounded(aio.close(), 10.0))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def put(
        self,
        local: str | os.PathLike[str],
        remote: str,
        *,
        replicas: int | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        return self._run(self._aio.put(local, remote, replicas=replicas, progress=progress))

    def get(
        self, remote: str, local: str | os.PathLike[str], *, progress: Progress | None = None
    ) -> dict[str, Any]:
        return self._run(self._aio.get(remote, local, progress=progress))

    def put_many(
        self,
        items: list[tuple[str, str]],
        *,
        replicas: int | None = None,
        concurrency: int = many.CONCURRENCY,
        on_done: many.OnDone | None = None,
    ) -> many.Batch:
        """Many uploads at once (``AsyncClient.put_many``); ``on_done`` runs on the
        client's loop thread."""
        return self._run(
            self._aio.put_many(items, replicas=replicas, concurrency=concurrency, on_done=on_done)
        )

    def get_many(
        self,
        items: list[tuple[str, str]],
        *,
        concurrency: int = many.CONCURRENCY,
        on_done: many.OnDone | None = None,
    ) -> many.Batch:
        return self._run(self._aio.get_many(items, concurrency=concurrency, on_done=on_done))

    def mkdir_many(self, paths: list[str], *, concurrency: int = many.CONCURRENCY) -> many.Batch:
        """``mkdir -p`` of many directories, a level at a time."""
        return self._run(many.mkdir_many(self._aio, paths, concurrency=concurrency))

    def read(self, remote: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._run(self._aio.read(remote, offset, length))

    def ls(self, path: str = "/") -> list[dict[str, Any]]:
        return self._run(self._aio.ls(path))

    def ls_page(
        self,
        path: str = "/",
        *,
        after: str | None = None,
        limit: int = LS_PAGE,
        detail: bool = True,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of a directory's entries and the cursor of the next (``AsyncClient``)."""
        return self._run(self._aio.ls_page(path, after=after, limit=limit, detail=detail))

    def stat(self, path: str, *, verify: bool = False) -> dict[str, Any]:
        return self._run(self._aio.stat(path, verify=verify))

    def exists(self, path: str) -> bool:
        return self._run(self._aio.exists(path))

    def mkdir(self, path: str, *, parents: bool = False) -> dict[str, Any] | None:
        return self._run(self._aio.mkdir(path, parents=parents))

    def rm(self, path: str, *, recursive: bool = False) -> int:
        return self._run(self._aio.rm(path, recursive=recursive))

    def mv(self, src: str, dst: str) -> dict[str, Any]:
        return self._run(self._aio.mv(src, dst))

    def status(self) -> dict[str, Any]:
        return self._run(self._aio.status())

    def whoami(self) -> dict[str, Any]:
        return self._aio.whoami()

    def policy(self) -> dict[str, Any]:
        return self._run(self._aio.policy())

    def put_policy(self, signed: str) -> dict[str, Any]:
        return self._run(self._aio.put_policy(signed))

    def drain(self, address: str, *, cancel: bool = False) -> dict[str, Any]:
        return self._run(self._aio.drain(address, cancel=cancel))

    def distribute(
        self, paths: list[str], *, to: str = "all", progress: Progress | None = None
    ) -> dict[str, Any]:
        """Every node (or those under topology prefix ``to``) fetches these files into
        its cache through the swarm (``sector distribute``)."""
        return self._run(self._aio.distribute(paths, to=to, progress=progress))

    def setrf(self, path: str, rf: int) -> dict[str, Any]:
        return self._run(self._aio.setrf(path, rf))

    def open(self, remote: str, mode: str = "rb") -> io.BufferedReader:
        """A read-only binary file object over a Sector file."""
        if mode not in ("rb", "r"):
            raise UsageError("only mode 'rb' is supported (files are write-once; use put)")
        st = self.stat(remote)
        if st["type"] == "dir":
            raise IsADirectory(f"{st['path']} is a directory")
        return io.BufferedReader(_RemoteRaw(self, st), buffer_size=READ_AHEAD)


async def _bounded(coro: Coroutine[Any, Any, T], timeout: float) -> T:
    try:
        return await asyncio.wait_for(coro, timeout)
    except TimeoutError:
        raise Timeout(f"no answer from the cluster within {timeout:g} s") from None


class _RemoteRaw(io.RawIOBase):
    def __init__(self, client: Client, st: dict[str, Any]) -> None:
        self._c = client
        self._st = st
        self._pos = 0
        self.name = st["path"]

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._st["size"]}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, b: Any) -> int:
        n = min(len(b), max(0, self._st["size"] - self._pos))
        if n == 0:
            return 0
        data = self._c._run(self._c._aio.read_range(self._st, self._pos, n))
        b[: len(data)] = data
        self._pos += len(data)
        return len(data)


def connect(
    address: str | None = None,
    *,
    timeout: float = 60.0,
    token: str | None = None,
    anonymous: bool = False,
) -> Client:
    """A sync client; ``address`` defaults to SECTOR_CLUSTER, then the local cluster.

    On a secure cluster the client presents ``token``, else ``SECTOR_TOKEN``, else the
    credential ``sector login`` stored for that cluster; ``anonymous=True``: none."""
    return Client(address, timeout=timeout, token=token, anonymous=anonymous)
