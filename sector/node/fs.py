"""The namespace operations a client asks of its entry node (``fs.*``).

Each operation touches one or more metadata records through ``MetaService.call``
(routed to the records' owners) and, for files, the blobs on the replica nodes. The
order of steps is chosen so that a crash between two steps never loses data and never
shows a half-made file:
- put (its protocol is ``node/put.py``): the blob is durable on its replicas *before*
  its record exists (``begin_put`` only reserves a blob id and picks targets); then the
  file record, then the entry in the parent (and parent directories). A crash before the
  record leaves only unreferenced blob bytes (collected later), never a visible file
  without data.
- rm: the record becomes a tombstone, then the parent entry goes, then the blobs are
  deleted (best effort: a node that is down keeps an orphan to collect later).
- mv: the new record and entry first, then the old ones removed; the blobs stay put.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from sector.errors import (
    AlreadyExists,
    BadRequest,
    IsADirectory,
    NotADirectory,
    NotFound,
    SectorError,
    TransportError,
    Unavailable,
    UsageError,
)
from sector.meta import records as rec
from sector.meta.records import DirRecord, FileRecord, Gone, Record
from sector.node import dirlinks, listing, rename, rmtree, status
from sector.node.fs_messages import (
    BeginPut,
    CommitPut,
    Ls,
    Mkdir,
    Mv,
    PutSmall,
    Rm,
    SetRf,
    Stat,
)
from sector.node.put import MAX_RF, PutHost, PutProtocol, Records
from sector.security import guard
from sector.storage.blobs import check_blob_id
from sector.wire.messages import typed

log = logging.getLogger("sector.fs")

FANOUT = 32  # concurrent metadata requests of one recursive operation


def _opt_int(v: Any, name: str, lo: int, hi: int) -> int | None:
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise UsageError(f"{name} must be an integer from {lo} to {hi}")
    return v


def _stamp(v: rec.Stamp) -> str:
    return f"{v[0]}.{v[1]}@{v[2][:8]}"


class Meta(Records, Protocol):
    async def get(self, path: str, *, brief: bool = False) -> Record | None: ...
    async def get_many(self, paths: list[str]) -> dict[str, Record | None]: ...


class Reporter(Protocol):
    async def report(self, path: str) -> Any: ...


class Describes(Protocol):
    def describe(self) -> dict[str, Any]: ...


class FsHost(PutHost, Protocol):
    """What the namespace handlers need from the node, beyond the put protocol's:
    the member view and quorum, this node's own info (for ``fs.status``), the repair
    worker to tell of a replica target change, and the security description."""

    @property
    def meta(self) -> Meta: ...
    @property
    def repair(self) -> Reporter: ...
    @property
    def security(self) -> Describes | None: ...
    def alive_ids(self) -> set[str]: ...
    def draining_ids(self) -> set[str]: ...
    def member_view(self) -> list[dict[str, Any]]: ...
    def quorum_refusal(self) -> str | None: ...
    async def info(self) -> dict[str, Any]: ...


class FsService:
    def __init__(self, node: FsHost) -> None:
        self.node = node
        self._bg: set[asyncio.Task[None]] = set()
        self._finishing: set[str] = set()  # paths whose rm -r is being finished
        self.names = listing.Names()  # sorted names of huge directories, for ls pages
        self.links = dirlinks.Links(self)  # every directory listed by its parent
        self.reaper = rmtree.Reaper(node.pool.call, self.spawn)  # blob.delete, batched
        # Told of every file version whose blob goes (``swarm.forget``: cached copies).
        self.on_blob_gone: Callable[[str, str], Awaitable[None]] | None = None

    def handlers(self) -> dict[str, Any]:
        return {
            "fs.stat": self._h_stat,
            "fs.ls": self._h_ls,
            "fs.mkdir": self._h_mkdir,
            "fs.begin_put": self._h_begin_put,
            "fs.commit_put": self._h_commit_put,
            "fs.put_small": self._h_put_small,
            "fs.rm": self._h_rm,
            "fs.mv": self._h_mv,
            "fs.status": self._h_status,
            "fs.setrf": self._h_setrf,
        }

    # ------------------------------------------------------------------ helpers

    async def get(self, path: str, *, brief: bool = False) -> Record | None:
        r = await self.node.meta.get(path, brief=brief)
        return None if isinstance(r, Gone) else r

    async def call(self, path: str, op: str, args: dict[str, Any] | None = None) -> Any:
        """Owner-side ``op`` on the record of ``path`` (routed)."""
        return await self.node.meta.call(path, op, args)

    async def must_get(self, path: str) -> FileRecord | DirRecord:
        r = await self.get(path)
        if r is None:
            raise NotFound(f"no such file or directory: {path}")
        assert isinstance(r, FileRecord | DirRecord)
        return r

    def describe(
        self, r: FileRecord | DirRecord, views: tuple[set[str], set[str]] | None = None
    ) -> dict[str, Any]:
        """A stat; ``views``: the (alive, draining) node ids, asked once for a listing."""
        if isinstance(r, DirRecord):
            return {
                "path": r.path,
                "name": rec.basename(r.path) or "/",
                "type": "dir",
                "size": 0,
                "children": sum(c.kind != "gone" for c in r.children.values()),
                "rf": r.rf or self.node.cfg.replicas,
                "mtime": r.mtime,
                "ctime": r.ctime,
                "version": _stamp(r.v),
                "replicas": [],
                "under_replicated": False,
            }
        alive, draining = views or (self.node.alive_ids(), self.node.draining_ids())
        reps = []
        for nid, addr in r.replicas:
            m = self.node.members.get(nid)
            reps.append(
                {
                    "id": nid,
                    "address": m.addr if m else addr,
                    # "draining": readable, but being moved off (not counted as healthy).
                    "state": "up" if nid in alive else "draining" if nid in draining else "down",
                    "topology": m.topology if m else "",
                }
            )
        healthy = sum(1 for x in reps if x["state"] == "up")
        return {
            "path": r.path,
            "name": rec.basename(r.path),
            "type": "file",
            "size": r.size,
            "checksum": r.checksum,
            "blob": r.blob,
            "rf": r.rf,
            "mtime": r.mtime,
            "ctime": r.ctime,
            "version": _stamp(r.v),
            "owner": r.owner,
            "mode": r.mode,
            "replicas": reps,
            "under_replicated": healthy < r.rf,
            "piece_size": r.piece_size,  # the piece list's (issue 14); 0: none recorded
            "pieces": r.pieces,
        }

    def entry(self, r: FileRecord | DirRecord, alive: set[str] | None = None) -> dict[str, Any]:
        """A listing's line: a few fields of ``describe``'s, made directly (a page has
        a thousand); ``alive``: the live node ids, asked once for a listing."""
        if isinstance(r, DirRecord):
            return {
                "name": rec.basename(r.path) or "/",
                "path": r.path,
                "type": "dir",
                "size": 0,
                "mtime": r.mtime,
                "replicas": 0,
                "rf": r.rf or self.node.cfg.replicas,
                "checksum": None,
            }
        up = self.node.alive_ids() if alive is None else alive
        return {
            "name": rec.basename(r.path),
            "path": r.path,
            "type": "file",
            "size": r.size,
            "mtime": r.mtime,
            "replicas": sum(1 for nid, _ in r.replicas if nid in up),
            "rf": r.rf,
            "checksum": r.checksum,  # a listing names a version as a stat does
        }

    def writable(self) -> None:
        """Refuse a namespace change at once on a node without quorum (the minority
        side of a partition), before any byte moves; the owners check again."""
        refusal = self.node.quorum_refusal()
        if refusal is not None:
            raise Unavailable(refusal, node=self.node.addr)

    async def gather(self, coros: list[Any]) -> list[Any]:
        sem = asyncio.Semaphore(FANOUT)

        async def one(c: Any) -> Any:
            async with sem:
                return await c

        return await asyncio.gather(*(one(c) for c in coros))

    async def ensure_dir(self, path: str, *, parents: bool, exist_ok: bool) -> None:
        """mkdir, with -p semantics when ``parents``.

        Two routed steps per level, no look-ups first: the owner of a path makes the
        record (or says it exists, or that a file is there), then the owner of its
        parent adds the entry, which fails if the parent is missing or a file. A
        missing parent (with ``parents``) is made the same way, then the entry is
        added again: a loop over the levels, not a recursion (a path may be
        ``MAX_DEPTH`` levels deep). On any error every directory this call made is
        taken back, deepest first, so no unlisted or half-made directory is left.
        """
        if path == "/":
            if not exist_ok:
                raise AlreadyExists("/ already exists")
            return
        todo = [path]  # the levels still to make and link, the deepest first
        made: list[str] = []  # records this call created, the deepest first
        linked: list[str] = []  # ... and entered into their parent
        entered: set[str] = set()  # every level this call entered into its parent
        try:
            while todo:
                p = todo[-1]
                if p not in made:
                    res = await self.node.meta.call(p, "mkdir")
                    if res["created"]:
                        made.append(p)
                    elif p == path and not exist_ok:
                        raise AlreadyExists(f"{path} already exists")
                par = rec.parent(p)
                try:
                    got = await self.node.meta.call(
                        par, "add_child", {"name": rec.basename(p), "kind": "dir"}
                    )
                except NotFound:
                    if not parents or par == "/":
                        raise
                    todo.append(par)  # make the parent, then link this level again
                    continue
                if par not in entered:  # a parent this call did not enter: listed?
                    await self.listed(par, got)
                entered.add(p)
                if p in made:
                    linked.append(p)
                todo.pop()
        except SectorError:
            await self.links.take_back(made, linked)
            raise

    async def listed(self, d: str, added: Any) -> None:
        """``d``, a directory an entry was just added to (``added``: its owner's reply),
        is listed by its parent, as are its ancestors (``dirlinks``)."""
        await self.links.listed(d, added.get("v") if isinstance(added, dict) else None)

    async def delete_blobs(self, r: Record | None, *, keep: str | None = None) -> None:
        """Best effort: remove a file version's blob from its replicas."""
        if not isinstance(r, FileRecord) or r.blob == keep:
            return
        for _nid, addr in r.replicas:
            self.reaper.add(addr, r.blob, r.path)
        if self.on_blob_gone is not None:
            await self.on_blob_gone(r.path, r.blob)

    def spawn_delete(self, r: Record | None, keep: str | None = None) -> None:
        self.spawn(self.delete_blobs(r, keep=keep))

    def finish_rm(self, path: str) -> None:
        """Finish, in the background, the ``rm -r`` of ``path`` on the children it did
        not see (records rule 7; ``meta.on_unseen`` calls this on the owner)."""
        if path in self._finishing:
            return
        self._finishing.add(path)

        async def run() -> None:
            try:
                await rmtree.finish(self, path)
            except SectorError as exc:  # the next merge that shows them tries again
                log.info("finishing the rm -r of %s: %s", path, exc)
            finally:
                self._finishing.discard(path)

        self.spawn(run())

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro, name="fs-background")
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    # ------------------------------------------------------------------ handlers

    @typed(Stat)
    async def _h_stat(self, req: Stat) -> Any:
        path = rec.normalize(req.path)
        guard.read(path)
        return self.describe(await self.must_get(path))

    @typed(Ls)
    async def _h_ls(self, req: Ls) -> Any:
        path = rec.normalize(req.path)
        guard.read(path)
        limit = _opt_int(req.limit, "limit", 1, listing.MAX_PAGE)
        r = await self.must_get(path)
        nxt = None
        if isinstance(r, FileRecord):
            entries = [self.entry(r)]
        else:
            names = self.names.of(r)
            if limit is not None:
                names, nxt = listing.page(names, req.after, limit)
            # Names come from the record (checked when they were added): no re-check.
            paths = [f"{path.rstrip('/')}/{n}" for n in names]
            if not req.detail:
                kinds = [r.children[n].kind for n in names]
                entries = [
                    {"name": n, "path": p, "type": k}
                    for n, p, k in zip(names, paths, kinds, strict=True)
                ]
                return entries if limit is None else {"entries": entries, "next": nxt}
            got = await self.node.meta.get_many(paths)
            kids = [got.get(p) for p in paths]
            alive = self.node.alive_ids()
            entries = [self.entry(k, alive) for k in kids if isinstance(k, FileRecord | DirRecord)]
        return entries if limit is None else {"entries": entries, "next": nxt}

    @typed(Mkdir)
    async def _h_mkdir(self, req: Mkdir) -> Any:
        path = rec.normalize(req.path)
        guard.write(path)
        self.writable()
        await self.ensure_dir(path, parents=req.parents, exist_ok=req.parents)
        return self.describe(await self.must_get(path)) if path != "/" else None

    @functools.cached_property
    def puts(self) -> PutProtocol:
        """The put protocol (``node/put.py``) on this node; its handlers are below."""
        return PutProtocol(self.node, self)

    def _put_target(self, path: str, name: str | None) -> str:
        """A put's path, normalised (a put "into" / names the file ``name`` there),
        checked for writing before the other arguments, as always (the plan checks
        again for its other callers): a caller that may not write hears that first."""
        path = rec.normalize(path)
        if path == "/" and name is not None:
            path = rec.join("/", rec.check_name(name))
        if path == "/":
            raise IsADirectory("/ is a directory")
        self.puts.check_write(path)
        return path

    @typed(BeginPut)
    async def _h_begin_put(self, req: BeginPut) -> Any:
        path = self._put_target(req.path, req.name)
        size = _opt_int(req.size, "size", 0, 1 << 62)
        if size is None:
            raise BadRequest("begin_put needs a size")
        rf = _opt_int(req.rf, "rf", 1, MAX_RF)
        return await self.puts.plan(path, size, rf=rf, name=req.name, client_host=req.client_host)

    @typed(PutSmall)
    async def _h_put_small(self, req: PutSmall) -> Any:
        path = self._put_target(req.path, req.name)
        rf = _opt_int(req.rf, "rf", 1, MAX_RF)
        return await self.puts.put_small(
            path, req.data, req.checksum, rf=rf, name=req.name, client_host=req.client_host
        )

    @typed(CommitPut)
    async def _h_commit_put(self, req: CommitPut) -> Any:
        path = rec.normalize(req.path)
        guard.write(path)
        blob = check_blob_id(req.blob)
        size = _opt_int(req.size, "size", 0, 1 << 62)
        rf = _opt_int(req.rf, "rf", 1, MAX_RF)
        if size is None:
            raise BadRequest("commit_put needs size, checksum and replicas")
        return await self.puts.commit(
            path, blob, size, req.checksum, req.replicas, rf, owner=req.owner or ""
        )

    @typed(Rm)
    async def _h_rm(self, req: Rm) -> Any:
        path = rec.normalize(req.path)
        guard.write(path)
        self.writable()
        if path == "/":
            raise UsageError("refusing to remove /")
        n = await rmtree.remove(self, path, recursive=req.recursive)
        return {"removed": n}

    @typed(Mv)
    async def _h_mv(self, req: Mv) -> Any:
        src, dst = rec.normalize(req.src), rec.normalize(req.dst)
        guard.write(src)
        self.writable()
        if src == "/":
            raise UsageError("cannot move /")
        r = await self.must_get(src)
        d = await self.get(dst)
        if isinstance(d, DirRecord):
            dst = rec.join(dst, rec.basename(src))
            d = await self.get(dst)
        guard.write(dst)
        if dst == src:
            return self.describe(r)
        if d is not None and not (
            req.replace and isinstance(d, FileRecord) and isinstance(r, FileRecord)
        ):
            raise AlreadyExists(f"{dst} already exists")
        if isinstance(r, DirRecord) and (dst + "/").startswith(src + "/"):
            raise UsageError(f"cannot move {src} into itself")
        pr = await self.get(rec.parent(dst))
        if pr is None and rec.parent(dst) != "/":
            raise NotFound(f"no such directory: {rec.parent(dst)}")
        if isinstance(pr, FileRecord):
            raise NotADirectory(f"{rec.parent(dst)} is a file, not a directory")
        await self._mv(r, dst)
        return self.describe(await self.must_get(dst))

    @property
    def meta(self) -> Meta:
        return self.node.meta

    async def _mv(self, r: FileRecord | DirRecord, dst: str) -> None:
        if isinstance(r, FileRecord):
            await rename.move_file(self, r, dst)
        else:
            await self.ensure_dir(dst, parents=False, exist_ok=True)
            names = list(rec.live_children(r))
            kids = await self.gather([self.get(rec.join(r.path, n)) for n in names])
            await self.gather(
                [
                    self._mv(k, rec.join(dst, rec.basename(k.path)))
                    for k in kids
                    if isinstance(k, FileRecord | DirRecord)
                ]
            )
            await self.node.meta.call(r.path, "delete")
        await self.node.meta.call(
            rec.parent(r.path), "remove_child", {"name": rec.basename(r.path)}
        )

    async def alias(self, addr: str, blob: str, path: str, *, confirm: bool = False) -> bool | None:
        """Tell a holder of a blob of its new path (``rename``); whether it has the blob
        (None: it did not answer)."""
        args = {"blob": blob, "path": path, "confirm": confirm}
        with contextlib.suppress(SectorError, OSError):
            return bool(await self.node.pool.call(addr, "blob.alias", args, timeout=5.0))
        return None

    @typed(SetRf)
    async def _h_setrf(self, req: SetRf) -> Any:
        """Change a file's replica target; its owner's repair worker adds or trims copies."""
        path = rec.normalize(req.path)
        guard.write(path)
        self.writable()
        rf = _opt_int(req.rf, "rf", 1, MAX_RF)
        if rf is None:
            raise BadRequest("setrf needs rf")
        res = await self.node.meta.call(path, "set_rf", {"rf": rf})
        await self.node.repair.report(path)
        r = rec.from_builtins(res["record"])
        assert isinstance(r, FileRecord)
        return self.describe(r)

    async def _h_status(self, a: dict[str, Any]) -> Any:
        view = self.node.member_view()

        async def info(m: dict[str, Any]) -> dict[str, Any] | None:
            if m["state"] not in ("up", "draining"):
                return None
            if m["id"] == self.node.members.me_id:
                return await self.node.info()
            try:
                res = await self.node.pool.call(m["address"], "node.info", {}, timeout=3.0)
                return res if isinstance(res, dict) else None
            except (TransportError, SectorError):
                return None

        infos = await asyncio.gather(*(info(m) for m in view))
        stranger = not guard.is_node() and not guard.is_admin()
        return {
            **status.summarize(view, infos, stranger=stranger),
            "quorum": self.node.quorum_refusal() is None,
            "replicas": self.node.cfg.replicas,
            "entry": self.node.addr,
            # The cluster's id (from its CA) and whether it is secure (TLS, credentials).
            "security": (self.node.security.describe() if self.node.security else {"tls": False}),
        }
