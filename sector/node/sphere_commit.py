"""Sphere's commit on this node: a job's staged output becomes Sector files.

- A commit is checked whole before any file is made (``plan``): every item's path
  lies under the job's staging directory (the driver renames it into place, so
  output never lands elsewhere in the namespace), paths are distinct, and every part
  an item needs is here. A bad commit stores nothing.
- A file is its parts in segment order: a bucket's parts from the winning attempts,
  or one attempt's output. With a reduce, the job's reduce UDF runs over a bucket's
  parts in an engine and its output is the file. One part is sealed as it is (a link,
  no copy); several are joined in the kernel (``bulkfile.concat``).
- Each file is then made through the put protocol from this node (``node/put.py``,
  ``put_local``): the first copy stays here, where the next stage reads it.
- A reduce's output goes to ``<job>/reduce/``, the one directory of the job its UDF
  may write (sealed by ``adopt``, which follows no symlink); the node's own joins go to
  ``<job>/commit/``, which no UDF can write.
- Reduces run one per engine at a time; plain commits two at a time (bulk file work
  that keeps the disk busy without thrashing it). Every item ends before the reply,
  even when one fails: a commit still running after the driver gave up would store a
  file into a staging directory that the driver's cleanup has already removed.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from sector.aio import gather_all
from sector.errors import BadRequest, JobFailed, NotFound
from sector.meta import records as rec
from sector.node import bulkfile
from sector.node.engines import EngineDied, EnginePool
from sector.node.put import PutProtocol
from sector.node.sphere_shuffle import received
from sector.sphere import spe
from sector.sphere.wire import MAX_ID, CommitItem, Reduce

__all__ = ["Committer", "Item", "plan"]

PLAIN_AT_ONCE = 2  # plain (concatenating) commits of one request at a time


@dataclass(frozen=True, slots=True)
class Item:
    """One file to make: its path and the staged files it is made of, in order."""

    path: str
    parts: list[Path]
    bucket: int | None  # a bucket's file (a reduce applies), or one attempt's output


def plan(jdir: Path, stage: str, items: list[CommitItem]) -> list[Item]:
    """A commit's items (their types checked as the message was decoded), checked (see
    the module rules); raises on the first bad one."""
    out: list[Item] = []
    for item in items:
        path = rec.normalize(item["path"])
        if not path.startswith(stage):
            raise BadRequest(f"commit paths must be under {stage}, not {path}")
        bucket = item.get("bucket")
        if bucket is not None:
            ids = item.get("attempts")
            if ids is None:
                raise BadRequest("attempts must be a list of attempt ids")
            parts = [received(jdir, bucket, x) for x in ids]
        else:
            attempt = item.get("attempt")
            if attempt is None:
                raise BadRequest(f"attempt must be an integer from 0 to {MAX_ID}")
            parts = [jdir / f"a{attempt}" / "out"]
        for p in parts:
            if not p.exists():
                _missing(p)
        out.append(Item(path, parts, bucket))
    if len({it.path for it in out}) != len(out):
        raise BadRequest("commit items must have distinct paths")
    return out


def _missing(p: Path) -> None:
    what = (
        f"bucket part {p.name}"
        if p.parent.name == "recv"
        else f"output of attempt {p.parent.name[1:]}"
    )
    raise NotFound(f"{what} is not on this node (lost in a restart?)")


class Committer:
    """Makes the files of checked commits (see the module rules)."""

    def __init__(
        self,
        puts: PutProtocol,
        engines: EnginePool,
        nengines: int,
        io: Executor,
        *,
        node_id: str,
        addr: str,
    ) -> None:
        self.puts = puts
        self.engines = engines
        self.nengines = nengines
        self.io = io
        self.node_id = node_id
        self.addr = addr

    async def run(
        self,
        jdir: Path,
        items: list[Item],
        reduce: Reduce | None,
        rf: int | None,
        durable: bool,
        extra: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Make every item's file; their descriptions, in the items' order. ``extra``:
        more for each reduce's task (the job's required files)."""
        sem = asyncio.Semaphore(self.nengines if reduce else PLAIN_AT_ONCE)
        work = jdir / "commit"
        work.mkdir(exist_ok=True)
        loop = asyncio.get_running_loop()

        async def one(i: int, it: Item) -> dict[str, Any]:
            if reduce is not None and it.bucket is not None:
                out = jdir / "reduce" / f"f{i}"
                async with sem:  # the engine's part; the next reduce starts as this stores
                    await self._reduce(reduce, it.bucket, it.path, it.parts, out, extra or {})
                return await self.puts.put_local(out, it.path, rf, io=self.io, durable=durable)
            async with sem:
                if len(it.parts) == 1:
                    out = it.parts[0]  # sealed as it is (a link, no copy)
                else:
                    out = work / f"f{i}"
                    await loop.run_in_executor(self.io, bulkfile.concat, it.parts, out)
                return await self.puts.put_local(out, it.path, rf, io=self.io, durable=durable)

        return await gather_all(*(one(i, it) for i, it in enumerate(items)))

    async def _reduce(
        self,
        spec: Reduce,
        bucket: int,
        path: str,
        parts: list[Path],
        out: Path,
        extra: dict[str, Any],
    ) -> None:
        """Run the job's reduce over one bucket's parts in an engine, into ``out``."""
        task = {
            **msgspec.structs.asdict(spec),
            "parts": [str(p) for p in parts],
            "bucket": bucket,
            "path": path,
            "node": self.node_id,
            "out": str(out),
            **extra,
        }
        stage = out.parent.parent.parent  # out is <staging>/<job>/reduce/f<i>
        try:
            res = await self.engines.run(spe.run_reduce, task, stage=stage, outdirs=[out.parent])
        except EngineDied as exc:
            raise JobFailed(f"bucket {bucket} on {self.addr}: in the reduce: {exc}") from None
        if not res.get("ok"):
            raise JobFailed(
                f"bucket {bucket} on {self.addr}: {res.get('error')}",
                traceback=str(res.get("traceback") or ""),
            )
