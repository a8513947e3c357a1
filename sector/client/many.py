"""Many files at once: ``put_many``, ``get_many`` and ``mkdir_many`` (issue 17).

A tree of small files is bound by round trips, not bytes: one file at a time, a
4 KiB put waits on its plan, its chain of replicas and its commit (each durable on
its nodes) before the next one starts, and the cluster idles between them. These
keep up to ``concurrency`` files in flight on the one client (its pooled connections
and its event loop), so the owners' group commits and the replicas' batches fill.

Each file succeeds or fails on its own: a failure is handed to ``on_done`` and kept
in the ``Batch`` with its paths, and the others go on. Nothing is retried here (the
client's calls already fail over between entry nodes). Directories are made a level
at a time, parents before children, the members of one level at once.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sector.errors import AlreadyExists, SectorError

__all__ = [
    "CONCURRENCY",
    "Batch",
    "Failure",
    "OnDone",
    "get_many",
    "ls_all",
    "mkdir_many",
    "put_many",
]

CONCURRENCY = 32  # files in flight: enough to fill the owners' group commits

# Called once per item as it finishes (on the client's event loop): the source, the
# target, the result (None on failure) and the error (None on success).
OnDone = Callable[[str, str, dict[str, Any] | None, BaseException | None], None]


class AsyncClient(Protocol):
    """What these need of ``AsyncClient``."""

    async def put(
        self,
        local: str | os.PathLike[str],
        remote: str,
        *,
        replicas: int | None = ...,
        into_dir: bool = ...,
    ) -> dict[str, Any]: ...
    async def get(self, remote: str, local: str | os.PathLike[str]) -> dict[str, Any]: ...
    async def mkdir(self, path: str, *, parents: bool = ...) -> dict[str, Any] | None: ...
    async def ls_page(
        self, path: str = ..., *, after: str | None = ..., limit: int = ...
    ) -> tuple[list[dict[str, Any]], str | None]: ...


@dataclass(frozen=True)
class Failure:
    """One item that failed: where from, where to, and why."""

    source: str
    target: str
    error: BaseException


@dataclass
class Batch:
    """What a ``*_many`` call did: the results of the items that succeeded (in the
    order given) and the items that failed."""

    done: list[dict[str, Any]] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)


async def _run(
    items: Sequence[tuple[str, str]],
    one: Callable[[str, str], Awaitable[dict[str, Any]]],
    concurrency: int,
    on_done: OnDone | None,
) -> Batch:
    """``one(source, target)`` for every item, ``concurrency`` at a time.

    A fixed set of workers takes items off a shared iterator (no task per item, so a
    tree of a million files costs no more memory than one of a hundred). Errors a
    user can act on (``SectorError``, ``OSError``) fail their item only; anything
    else is a bug and ends the call.
    """
    results: list[dict[str, Any] | None] = [None] * len(items)
    failed: list[tuple[int, Failure]] = []
    todo = iter(enumerate(items))

    async def worker() -> None:
        for i, (src, dst) in todo:
            try:
                res = await one(src, dst)
            except (SectorError, OSError) as exc:
                failed.append((i, Failure(src, dst, exc)))
                if on_done is not None:
                    on_done(src, dst, None, exc)
                continue
            results[i] = res
            if on_done is not None:
                on_done(src, dst, res, None)

    n = max(1, min(concurrency, len(items)))
    await asyncio.gather(*(worker() for _ in range(n)))
    return Batch(
        done=[r for r in results if r is not None],
        failed=[f for _, f in sorted(failed, key=lambda x: x[0])],
    )


async def put_many(
    client: AsyncClient,
    items: Iterable[tuple[str | os.PathLike[str], str]],
    *,
    replicas: int | None = None,
    concurrency: int = CONCURRENCY,
    on_done: OnDone | None = None,
) -> Batch:
    """Upload (local file, remote path) pairs, ``concurrency`` at a time. A remote
    path is the file's own path (never "into" a directory: a tree's targets are
    spelled out); missing parents are made by the cluster as for ``put``."""
    pairs = [(os.fspath(a), b) for a, b in items]

    async def one(src: str, dst: str) -> dict[str, Any]:
        return await client.put(src, dst, replicas=replicas, into_dir=False)

    return await _run(pairs, one, concurrency, on_done)


async def get_many(
    client: AsyncClient,
    items: Iterable[tuple[str, str | os.PathLike[str]]],
    *,
    concurrency: int = CONCURRENCY,
    on_done: OnDone | None = None,
) -> Batch:
    """Download (remote path, local file) pairs, ``concurrency`` at a time; the local
    directories must exist."""
    pairs = [(a, os.fspath(b)) for a, b in items]

    async def one(src: str, dst: str) -> dict[str, Any]:
        return await client.get(src, dst)

    return await _run(pairs, one, concurrency, on_done)


async def mkdir_many(
    client: AsyncClient, paths: Iterable[str], *, concurrency: int = CONCURRENCY
) -> Batch:
    """``mkdir -p`` of many directories: by depth, each level's at once (a parent is
    made before its children, so no two calls race to make the same parent). One
    that exists already is a success."""
    by_depth: dict[int, list[str]] = {}
    for p in dict.fromkeys(posixpath.normpath("/" + p.lstrip("/")) for p in paths):
        by_depth.setdefault(p.count("/"), []).append(p)

    async def one(path: str, _: str) -> dict[str, Any]:
        try:
            await client.mkdir(path, parents=True)
        except AlreadyExists:
            pass  # mkdir -p semantics
        return {"path": path}

    out = Batch()
    for depth in sorted(by_depth):
        level = await _run([(p, p) for p in by_depth[depth]], one, concurrency, None)
        out.done += level.done
        out.failed += level.failed
    return out


async def ls_all(c: AsyncClient, path: str) -> list[dict[str, Any]]:
    """Every entry of a directory, asked a page at a time (``fs.ls`` with ``limit``):
    no reply carries a whole huge directory."""
    out: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        entries, after = await c.ls_page(path, after=after)
        out += entries
        if after is None:
            return out
