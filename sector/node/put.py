"""The put protocol: how a file's bytes and its record come to be (DESIGN "Replication").

One module for every writer of a file: a client's put (the ``fs.begin_put`` and
``fs.commit_put`` handlers are its first and last step), a file this node makes of
bytes already on its disk (Sphere's output, ``put_local``), and repair, which needs
the chain step alone (``push_copy``). The steps, in this order, so that a crash
between two of them never loses data and never shows a half-made file:

1. plan: the writer may write the path and this node has quorum; the path is resolved
   (a put "into" a directory) and refused early where an ancestor is a file; a new
   blob id is reserved and the targets chosen (``storage/placement``, the first near
   the writer). Nothing is written yet.
2. chain: the bytes go to the first target, which forwards them to the next while it
   writes its own copy (``blob.put``, ``storage/transfer``); the reply lists the
   nodes where they are durable. A holder of a copy may start the chain as well as a
   client: this node for its own bytes, a repair's source for a lost copy.
3. confirm: a holder list from anyone but a node is not believed: each holder must say
   that it wrote that blob, at that size, for that path. Otherwise a user could point
   a record of its own at another file's blob, and have repair trim that file's
   copies, or list any address as a holder.
4. commit: enough durable copies (module ``commit``), then the file record at its
   owner, then the entry in the parent (parents made as needed). A crash before the
   record leaves only unreferenced blob bytes, collected later; the old version's
   blob is deleted after the new record stands.

Who is writing comes from the request being served (``guard``): a user's put is
checked as a user's wherever it enters, also when Sphere commits a user's output.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, Protocol

import msgspec

from sector.config import NodeConfig
from sector.errors import (
    BadRequest,
    ChecksumMismatch,
    ConnectError,
    IsADirectory,
    NoSpace,
    NotADirectory,
    NotFound,
    SectorError,
    TransportError,
    Unavailable,
)
from sector.ids import to_hex
from sector.meta import records as rec
from sector.meta.records import DirRecord, FileRecord, Record
from sector.node.members import Members
from sector.routing.chord import Peer
from sector.security import guard
from sector.storage import pieces as pl
from sector.storage import placement
from sector.storage.blobs import BlobStore, checksum_file, checksum_of, new_blob_id
from sector.storage.messages import Has, Put, PutSmall, Replicate, Stored, stored_reply
from sector.transport.chain import first_live
from sector.transport.rpc import RpcPool, split_addr
from sector.wire.messages import to_args

__all__ = ["MAX_RF", "Plan", "PutProtocol", "candidates", "push_copy"]

log = logging.getLogger("sector.fs")

MAX_RF = 16
CONFIRM_TIMEOUT = 15.0  # seconds a holder has to say what it holds

Holder = tuple[str, str]  # (node id, address): a copy's place, as records list it
Pieces = tuple[int, str]  # a copy's piece list as a record keeps it: (piece size, root)


def _pieces(v: Any) -> Pieces | None:
    """A holder's ``[piece size, root]`` (``blob.has``), if well-formed."""
    if isinstance(v, list) and len(v) == 2 and isinstance(v[0], int) and isinstance(v[1], str):
        return (v[0], v[1])
    return None


class Namespace(Protocol):
    """The namespace steps a put builds on (``FsService``)."""

    async def get(self, path: str, *, brief: bool = False) -> Record | None: ...
    def writable(self) -> None: ...
    def describe(self, r: FileRecord | DirRecord) -> dict[str, Any]: ...
    async def ensure_dir(self, path: str, *, parents: bool, exist_ok: bool) -> None: ...
    async def listed(self, d: str, added: Any) -> None: ...
    async def delete_blobs(self, r: Record | None, *, keep: str | None = None) -> None: ...


class Records(Protocol):
    async def call(self, path: str, op: str, args: dict[str, Any] | None = None) -> Any: ...


class Copies(Protocol):
    """This node's blob service: a chain write fed from a local copy, and whether a
    local copy was written for a path."""

    async def replicate(
        self, blob: str, size: int, checksum: str, targets: list[Holder], path: str = ""
    ) -> list[list[str]]: ...
    def claimed(self, blob: str, path: str) -> bool: ...
    async def put_small(self, req: PutSmall) -> Stored: ...


class CopyHost(Protocol):
    """What a chain started by a holder needs: who this node is, its blob service, RPC."""

    @property
    def me(self) -> Peer: ...
    @property
    def transfer(self) -> Copies: ...
    async def call(
        self, addr: str, op: str, args: dict[str, Any], timeout: float | None = None
    ) -> Any: ...


class PutHost(CopyHost, Protocol):
    """What the whole protocol needs from the node."""

    @property
    def cfg(self) -> NodeConfig: ...
    @property
    def addr(self) -> str: ...
    @property
    def members(self) -> Members: ...
    @property
    def blobs(self) -> BlobStore: ...
    @property
    def pool(self) -> RpcPool: ...
    @property
    def meta(self) -> Records: ...
    def voters(self) -> int: ...


def candidates(members: Members, *, reachable: bool = False) -> list[placement.Candidate]:
    """Nodes that take new replicas (up, not draining); with ``reachable`` also the
    draining ones (repair reads from them)."""
    now = time.monotonic()
    return [
        placement.Candidate(
            node_id=m.id, addr=m.addr, host=m.host, topology=m.topology, free=m.free
        )
        for m in (members.reachable(now) if reachable else members.alive(now))
    ]


async def push_copy(
    host: CopyHost,
    holder: Holder,
    blob: str,
    size: int,
    checksum: str,
    chain: list[Holder],
    path: str,
    *,
    timeout: float | None = None,
) -> list[list[str]]:
    """Have ``holder`` push its copy of ``blob`` down ``chain`` (step 2, started by a
    holder rather than a client): from this node's own copy by ``sendfile``, from
    another's through ``blob.replicate``. Every target verifies the bytes against
    ``checksum`` before sealing them. Returns the nodes that stored a copy."""
    if holder[0] == to_hex(host.me.id):
        return await host.transfer.replicate(blob, size, checksum, chain, path)
    targets = [list(c) for c in chain]
    req = Replicate(blob=blob, size=size, checksum=checksum, targets=targets, path=path)
    rep = await host.call(holder[1], "blob.replicate", to_args(req), timeout=timeout)
    return stored_reply(rep, "blob.replicate").stored if isinstance(rep, dict) else []


class Plan(msgspec.Struct, frozen=True):
    """Step 1's answer: where the file goes (``path`` resolved), under which new blob
    id, and the targets of its chain, the first one first. Also ``fs.begin_put``'s
    reply, as it travels: ``{path, blob, rf, targets: [[node id, address]]}``."""

    path: str
    blob: str
    rf: int
    targets: tuple[Holder, ...]


class PutProtocol:
    """The put protocol on one node (see the module rules)."""

    def __init__(self, host: PutHost, namespace: Namespace) -> None:
        self.host = host
        self.ns = namespace
        self._bg: set[asyncio.Task[None]] = set()

    @property
    def _me(self) -> Holder:
        return (to_hex(self.host.me.id), self.host.addr)

    def check_write(self, path: str) -> None:
        """The caller may write ``path``, and this node takes namespace changes."""
        guard.write(path)
        self.ns.writable()

    # ------------------------------------------------------------------ 1. plan

    async def plan(
        self,
        path: str,
        size: int,
        *,
        rf: int | None = None,
        name: str | None = None,
        client_host: str | None = None,
    ) -> Plan:
        """Where a file of ``size`` bytes for ``path`` goes. With ``name``, a ``path``
        that is a directory means the file ``name`` in it (cp semantics, saving the
        writer a stat round trip). ``client_host``: the writer's host, which gets the
        first copy when a node there takes one."""
        self.check_write(path)
        rf = rf or self.host.cfg.replicas
        # The target and its parent are looked up together (two owners, one round trip).
        # The parent only says what it is (``brief``): not its entries, thousands in a
        # big directory, which made a create's cost grow with its directory.
        cur, pr = await asyncio.gather(self.ns.get(path), self.ns.get(rec.parent(path), brief=True))
        if isinstance(cur, DirRecord) and name is not None:
            pr = cur
            path = rec.join(path, rec.check_name(name))
            cur = await self.ns.get(path)
        if isinstance(cur, DirRecord):
            raise IsADirectory(f"{path} is a directory")
        # Fail early (before any byte moves) when an ancestor is a file.
        par = rec.parent(path)
        while par != "/":
            if pr is None:
                pr = await self.ns.get(par, brief=True)
            if isinstance(pr, FileRecord):
                raise NotADirectory(f"{par} is a file, not a directory")
            if isinstance(pr, DirRecord):
                break
            par, pr = rec.parent(par), None
        cands = candidates(self.host.members)
        writer = None
        if client_host is not None:
            me = next((c for c in cands if c.node_id == self.host.members.me_id), None)
            same = [c for c in cands if split_addr(c.addr)[0] == client_host]
            writer = me if me is not None and me in same else (same[0] if same else None)
        blob = new_blob_id()
        chosen = placement.choose(
            cands, rf, size=size, writer=writer, seed=blob, min_free=self.host.cfg.min_free
        )
        if not chosen:
            raise NoSpace(f"no node can take {size} bytes for {path} ({len(cands)} nodes up)")
        return Plan(path, blob, rf, tuple((c.node_id, c.addr) for c in chosen))

    # ------------------------------------------------------------------ 2. chain

    async def put_local(
        self, src: Path, path: str, rf: int | None, *, io: Executor, durable: bool = True
    ) -> dict[str, Any]:
        """Make a Sector file of a file on this node's data disk (all four steps).

        The first copy is sealed in place when placement puts one here (the data waits
        for the next stage where it was made; no byte is copied), the others are
        chain-copied from it. ``src`` becomes that copy and must not be written again.
        ``durable=False`` skips the fsyncs of the local copy (a job's intermediate
        output, recomputed if lost). Blocking file work runs on ``io``.
        """
        loop = asyncio.get_running_loop()
        if not src.exists():
            src.parent.mkdir(parents=True, exist_ok=True)
            src.touch()
        size = src.stat().st_size
        plan = await self.plan(path, size, rf=rf, client_host=split_addr(self.host.addr)[0])
        if plan.targets[0] == self._me:
            adopt = functools.partial(
                self.host.blobs.adopt, src, plan.blob, plan.path, sync=durable
            )
            size, checksum = await loop.run_in_executor(io, adopt)
            stored: list[Holder] = [self._me]
            if len(plan.targets) > 1:
                chain = list(plan.targets[1:])
                try:
                    got = await push_copy(
                        self.host, self._me, plan.blob, size, checksum, chain, plan.path
                    )
                    stored += [(str(n), str(a)) for n, a in got]
                except SectorError as exc:
                    # Fewer copies now; the file's owner repairs it to its target.
                    log.warning("output %s: replication failed (%s)", path, exc)
        else:
            # Placement puts no copy here (draining, full): the bytes go down the chain
            # from this disk, as a client's would.
            checksum = await loop.run_in_executor(io, checksum_file, src)
            stored = await self._send(src, size, checksum, plan)
        return await self.commit(plan.path, plan.blob, size, checksum, stored, plan.rf)

    async def _send(self, src: Path, size: int, checksum: str, plan: Plan) -> list[Holder]:
        """A local file down the plan's chain, started at its first target that
        answers; the nodes that stored it. The checksum travels in the header: each
        target verifies the bytes before sealing them."""
        errors: list[str] = []
        for i, (_nid, addr) in enumerate(plan.targets):
            head = Put(
                blob=plan.blob,
                size=size,
                checksum=checksum,
                chain=[list(t) for t in plan.targets[i + 1 :]],
                path=plan.path,
                new=True,  # a fresh blob id: no node may hold it already
            )
            try:
                chan = await self.host.pool.open_bulk(addr, "blob.put", to_args(head))
                try:
                    with open(src, "rb") as f:
                        await chan.sendfile(f, 0, size)
                    rep = await chan.read_reply()
                finally:
                    await chan.close()
            except TransportError as exc:  # the next target starts the chain
                errors.append(f"{addr}: {exc}")
                continue
            if not isinstance(rep, dict) or rep.get("checksum") != checksum:
                raise ChecksumMismatch(f"upload of {plan.path} was corrupted in transit")
            return [(n, a) for n, a in stored_reply(rep, "blob.put").stored]
        raise ConnectError(f"no target took {plan.path} ({'; '.join(errors)})")

    # ------------------------------------------------------------------ 3. confirm

    async def confirm(
        self, path: str, blob: str, size: int, reps: list[Holder]
    ) -> tuple[list[Holder], Pieces | None]:
        """The listed holders that say they wrote ``blob``, at ``size``, for ``path``,
        and the piece list (size, root) the first of them has."""

        async def one(nid: str, addr: str, first: bool) -> Pieces | bool:
            # The first holder's piece list (the chain's first hop made it as the bytes
            # came in; the later hops make theirs when first asked).
            if addr == self.host.addr:  # the answer blob.has gives, without the round trip
                ok = nid == self._me[0] and self._holds_here(blob, path, size)
                if ok and first:
                    return await self._local_pieces(blob) or True
                return ok
            args = to_args(
                Has(blob=blob, path=path, pieces=True) if first else Has(blob=blob, path=path)
            )
            try:
                rep = await self.host.pool.call(addr, "blob.has", args, timeout=CONFIRM_TIMEOUT)
            except SectorError:
                return False
            ok = (
                isinstance(rep, dict)
                and rep.get("node") == nid
                and rep.get("size") == size
                and rep.get("claimed") is True
            )
            return (_pieces(rep.get("pieces")) or True) if ok else False

        oks = await asyncio.gather(*(one(n, ad, i == 0) for i, (n, ad) in enumerate(reps[:MAX_RF])))
        good = [r for r, ok in zip(reps, oks, strict=False) if ok]
        if not good:
            raise BadRequest(f"no listed replica holds blob {blob} written for {path}")
        return good, next((p for p in oks if isinstance(p, tuple)), None)

    async def _local_pieces(self, blob: str) -> Pieces | None:
        try:
            pl = await asyncio.to_thread(self.host.blobs.piece_list, blob)
        except (SectorError, OSError):
            return None
        return (pl.piece_size, pl.root)

    async def _pieces_of(self, blob: str, path: str, reps: list[Holder]) -> Pieces | None:
        """The piece list (size, root) of the first holder that answers (a node's put,
        which confirms nothing: ``put_local`` where placement put no copy here)."""
        for nid, addr in reps:
            got: Pieces | None = None
            if nid == self._me[0]:
                got = await self._local_pieces(blob)
            else:
                args = to_args(Has(blob=blob, path=path, pieces=True))
                with contextlib.suppress(SectorError):
                    rep = await self.host.pool.call(addr, "blob.has", args, timeout=CONFIRM_TIMEOUT)
                    got = _pieces(rep.get("pieces")) if isinstance(rep, dict) else None
            if got is not None:
                return got
        return None

    def _holds_here(self, blob: str, path: str, size: int) -> bool:
        try:
            here = self.host.blobs.size(blob)
        except SectorError:
            return False
        return here == size and self.host.transfer.claimed(blob, path)

    async def put_small(
        self,
        path: str,
        data: bytes,
        checksum: str,
        *,
        rf: int | None = None,
        name: str | None = None,
        client_host: str | None = None,
    ) -> dict[str, Any]:
        """A small file whose bytes came with the request (``fs.put_small``), all its
        steps here, at its path's owner: planned, sent down the chain by this node
        (its own copy in-process when it is the first target), and recorded. The
        holders answered this node, so none is asked to confirm (step 3 is for lists
        a writer hands in); the piece list is hashed here, from the bytes."""
        if checksum_of(data) != checksum:  # refused here, before any look-up or copy
            raise ChecksumMismatch(f"upload of {path} was corrupted in transit")
        plan = await self.plan(path, len(data), rf=rf, name=name, client_host=client_host)

        async def send(addr: str, rest: list[list[str]]) -> Stored:
            req = PutSmall(
                blob=plan.blob, data=data, checksum=checksum, chain=rest, path=plan.path, new=True
            )
            if addr == self.host.addr:
                return await self.host.transfer.put_small(req)
            got = await self.host.pool.call(addr, "blob.put_small", to_args(req))
            return stored_reply(got, "blob.put_small")

        rep = await first_live([list(t) for t in plan.targets], send)
        if rep.checksum != checksum:
            raise ChecksumMismatch(
                f"upload of {plan.path} was corrupted in transit ({rep.checksum} != {checksum})"
            )
        size = pl.piece_size_for(len(data), self.host.blobs.piece_base)
        hasher = pl.PieceHasher(size)
        hasher.update(data)
        pieces = (size, pl.root_of(hasher.digests()))
        stored = [(str(n), str(a)) for n, a in rep.stored]
        return await self.commit(
            plan.path, plan.blob, len(data), checksum, stored, plan.rf, written=pieces
        )

    # ------------------------------------------------------------------ 4. commit

    async def commit(
        self,
        path: str,
        blob: str,
        size: int,
        checksum: str,
        replicas: list[Holder],
        rf: int | None = None,
        *,
        owner: str = "",
        written: Pieces | None = None,
    ) -> dict[str, Any]:
        """Record a file whose blob is durable on ``replicas``; its description.

        ``owner`` is taken from a node only; a user's file is the user's. ``written``:
        this node wrote the blob to ``replicas`` itself (``put_small``), and this is
        its piece list: nothing to confirm."""
        guard.write(path)
        rf = rf or self.host.cfg.replicas
        reps = list(dict.fromkeys(replicas))
        pieces: Pieces | None = written
        if not guard.is_node():
            if written is None:
                reps, pieces = await self.confirm(path, blob, size, reps)
            owner = guard.user() or ""
        # A user's put is acknowledged with at least two durable copies (one where R is
        # 1 or the cluster has one member): a single copy left by a chain cut short must
        # not be all there is of an acknowledged file. (Sphere's outputs, committed by
        # nodes, can be recomputed; a job that lost a node keeps what it has.)
        need = min(2, rf, self.host.voters()) if not guard.is_node() else 1
        if len(reps) < need:
            raise Unavailable(
                f"{path}: {len(reps)} of {rf} copies written durably; a put needs {need}"
            )
        if pieces is None:
            pieces = await self._pieces_of(blob, path, reps)
        meta = self.host.meta
        now = time.time()
        record = FileRecord(
            path=path,
            v=(0, 0, ""),
            size=size,
            checksum=checksum,
            blob=blob,
            replicas=reps,
            rf=rf,
            ctime=now,
            mtime=now,
            owner=owner,
            piece_size=pieces[0] if pieces else 0,
            pieces=pieces[1] if pieces else "",
        )
        res = await meta.call(path, "put_file", {"record": rec.to_builtins(record)})
        try:
            await self._add_entry(path)
        except NotADirectory:
            # The parent became a file after the plan: take back the record we just
            # made -- only if it was new, and only our version (the blob guard), so an
            # acknowledged file of someone else is never touched. On any other error the
            # record stays: a retry re-adds the entry (add_child is idempotent).
            if res.get("old") is None:
                with contextlib.suppress(SectorError):
                    await meta.call(path, "delete", {"blob": blob})
            raise
        old = rec.from_builtins(res["old"]) if res.get("old") else None
        if isinstance(old, FileRecord) and old.blob != blob:
            log.info("put of %s: blob %s replaces %s (v %s)", path, blob, old.blob, old.v)
        self._delete_later(old, keep=blob)
        stored = rec.from_builtins(res["record"])
        assert isinstance(stored, FileRecord)
        return self.ns.describe(stored)

    async def _add_entry(self, path: str) -> None:
        """The file's entry in its parent; missing parents are made (``mkdir -p``)."""
        par, args = rec.parent(path), {"name": rec.basename(path), "kind": "file"}
        try:
            added = await self.host.meta.call(par, "add_child", args)
        except NotFound:
            await self.ns.ensure_dir(par, parents=True, exist_ok=True)
            await self.host.meta.call(par, "add_child", args)
        else:
            # Outside the try: a parent removed with an ancestor's tree is NotFound too,
            # and must not be made again.
            await self.ns.listed(par, added)

    def _delete_later(self, r: Record | None, *, keep: str) -> None:
        task = asyncio.create_task(self.ns.delete_blobs(r, keep=keep), name="blob-delete")
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)
