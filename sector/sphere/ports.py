"""What Sphere needs from the client that runs a job (the client package implements it).

The client builds ``AsyncSphere(self)`` / ``Sphere(self)`` and the driver calls back
into it: namespace operations (stat, ls, read, mkdir, mv, rm), one call to whichever
member answers (``_call``), and calls to a chosen node (``pool.call``). Protocols, as
``sector.meta.ring`` declares what metadata needs from routing: Sphere sits below the
client in the layers and never imports it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Caller(Protocol):
    """RPC to a node by address (the client's connection pool)."""

    async def call(self, addr: str, op: str, args: dict[str, Any], *, timeout: float) -> Any: ...


class JobClient(Protocol):
    """The async client, as a job's driver uses it."""

    @property
    def pool(self) -> Caller: ...

    # Any member of the cluster answers (the client tries its entry points in turn).
    async def _call(self, op: str, args: dict[str, Any]) -> Any: ...
    def whoami(self) -> dict[str, Any]: ...
    async def stat(self, path: str, *, verify: bool = False) -> dict[str, Any]: ...
    async def ls(self, path: str = "/") -> list[dict[str, Any]]: ...
    async def exists(self, path: str) -> bool: ...
    async def read(self, remote: str, offset: int = 0, length: int | None = None) -> bytes: ...
    async def mkdir(self, path: str, *, parents: bool = False) -> dict[str, Any] | None: ...
    async def rm(self, path: str, *, recursive: bool = False) -> int: ...
    async def mv(self, src: str, dst: str) -> dict[str, Any]: ...


class LoopClient(Protocol):
    """The sync client: an async one (``_aio``) run in a loop thread of its own."""

    @property
    def _loop(self) -> asyncio.AbstractEventLoop: ...
    @property
    def _aio(self) -> JobClient: ...
    def _run(self, coro: Coroutine[Any, Any, T]) -> T: ...
