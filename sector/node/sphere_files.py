"""A job's required files on this node (``required_files=[...]``; issue 14).

Before the first task of a job that requires files runs here, the node fetches each
of them once (not once per engine, not once per task) and lays them out in
``<job>/files/`` under the names the driver gave (``wire.Required``); every task of
the job waits for that and then runs in that directory (``sphere.required``).

- Fetched with ``SwarmService.fetch``: the replica blob where this node holds one, else
  the copy in the node's cache, fetched through the swarm if it is not there. When a
  thousand engines on many nodes start a job, the nodes form one swarm per file rather
  than each reading the replicas; the cached copy stays for the next job (an LRU under
  ``--cache-size``, never a replica, dropped when the file is replaced or removed).
- Each file is then *copied* into the job's directory (``copy_file_range``: in the
  kernel, a reflink where the file system has them), never hard-linked and never
  linked to: a UDF runs as the node's own user in the ``userns`` and ``none`` sandbox
  modes, and whatever it can reach it can chmod and write. A copy it corrupts is its
  own job's; the cache and the replicas are out of its reach. The copy also pins the
  version: the cached copy may be evicted or dropped (the file replaced) while the job
  runs, and its engines go on reading what they started with. Files are made 0444 and
  directories 0755, owned by the node: under the ``full`` sandbox (another uid) a UDF
  cannot change them at all (and the node can still remove them with the job).
- Every node fetches the version the driver resolved (``blob``): a file replaced while
  the job starts fails the job rather than giving its engines two versions.
- The fetch is the caller's: reading a required file needs the read right on it, as a
  get would (a private path stays private). Any failure here fails the job's tasks
  at once, not retryably (``RequiredError``): another node would fail the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import stat
from concurrent.futures import Executor
from pathlib import Path, PurePosixPath
from typing import Protocol

from sector.aio import gather_all
from sector.errors import BadRequest, SectorError
from sector.sphere.wire import Required
from sector.storage.blobs import check_blob_id, open_nofollow

__all__ = ["FileFetcher", "RequiredError", "check", "prepare"]

FETCH_AT_ONCE = 4  # required files fetched at once, per job and node


class FileFetcher(Protocol):
    """``SwarmService.fetch``: a Sector file as a local file of this node."""

    async def fetch(self, path: str, *, blob: str | None = None) -> Path: ...


class RequiredError(Exception):
    """A required file could not be had here: the job's tasks fail with this."""


def check(required: list[Required]) -> dict[str, str]:
    """A ``sphere.run``'s required entries, checked (BadRequest): names relative and
    clean, distinct, every file's directories listed before it, every file with a blob.
    Returns Sector path -> name (what the engine maps for ``seg.required``)."""
    names: dict[str, Required] = {}
    for r in required:
        p = PurePosixPath(r.name)
        if (
            p.is_absolute()
            or r.name != str(p)
            or any(part in ("", ".", "..") for part in p.parts)
            or "\0" in r.name
        ):
            raise BadRequest(f"required file name {r.name!r:.80} is not a clean relative path")
        if r.name in names:
            raise BadRequest(f"two required files are named {r.name!r:.80}")
        parent = str(p.parent)
        if parent != "." and not (parent in names and names[parent].dir):
            raise BadRequest(f"required file {r.name!r:.80}: its directory is not listed first")
        if not r.dir:
            check_blob_id(r.blob)
        names[r.name] = r
    return {r.path: r.name for r in required}


async def prepare(fetcher: FileFetcher, jdir: Path, required: list[Required], io: Executor) -> Path:
    """Fetch the job's required files and lay them out in ``<jdir>/files`` (module
    doc); its path. Raises ``RequiredError`` naming the file that failed."""
    final, tmp = jdir / "files", jdir / ".files"
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(io, _fresh, tmp)
    for r in required:
        if r.dir:
            (tmp / r.name).mkdir(exist_ok=True)
    sem = asyncio.Semaphore(FETCH_AT_ONCE)

    async def one(r: Required) -> None:
        async with sem:
            for last in (False, True):
                try:
                    local = await fetcher.fetch(r.path, blob=r.blob)
                    await loop.run_in_executor(io, _copy, local, tmp / r.name, r.size)
                    return
                except FileNotFoundError:
                    if last:  # evicted between the fetch and the copy, twice
                        raise RequiredError(f"required file {r.path}: its copy went away") from None
                except (SectorError, OSError) as exc:
                    raise RequiredError(f"required file {r.path}: {exc}") from None

    await gather_all(*(one(r) for r in required if not r.dir))
    await loop.run_in_executor(io, _seal, tmp, final)
    return final


def _fresh(d: Path) -> None:
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()


def _copy(src: Path, dst: Path, size: int) -> None:
    """``src``'s bytes into a new file ``dst``, in the kernel where it can."""
    with open(open_nofollow(str(src)), "rb") as f, open(dst, "xb") as g:
        done = 0
        with contextlib.suppress(OSError):  # EXDEV, ENOSYS, EINVAL...: by hand below
            while done < size:
                n = os.copy_file_range(f.fileno(), g.fileno(), size - done)
                if n == 0:
                    break
                done += n
        if done < size:
            f.seek(done)
            g.seek(done)
            shutil.copyfileobj(f, g, 1 << 20)
        got = os.fstat(g.fileno()).st_size
    if got != size:
        raise OSError(errno.EIO, f"copied {got} bytes of {size}")


def _seal(tmp: Path, final: Path) -> None:
    """Read-only for everyone (module doc), then in place under its final name."""
    for root, dirs, files in os.walk(tmp):
        for name in files:
            os.chmod(os.path.join(root, name), stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)
    os.chmod(tmp, 0o755)
    os.rename(tmp, final)
