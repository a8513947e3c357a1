"""Bulk transfer of blobs between clients and nodes: chain-replicated writes, reads
with ``os.sendfile`` (DESIGN "Replication", "Transport").

``blob.put`` (bulk): the header names the blob, its size, its checksum and the rest of
the *chain* of nodes that must also store it. The node opens the same request to the
next node of the chain before reading any data, then streams: every chunk read from
upstream is written to its temp file and forwarded downstream, so all copies fill at
once (pipelined, as in HDFS and the Sector paper). When the last byte is in, it
verifies the checksum, fsyncs and renames, and only then waits for the downstream
reply; the reply lists every node where the blob is durable. A dead or failing
downstream node is skipped over (the next one of the chain is tried) and simply leaves
that node out of the list: the caller sees fewer copies and reports it.

``blob.get`` (bulk): a header frame with the size, then the raw bytes by sendfile.

The requests (and a chain write's reply) are declared in ``messages.py`` and decoded
where the handler table calls a handler (``typed``); a handler checks only what types
cannot say: the blob id, who may write, the blob's existence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
from msgspec import UNSET

from sector.errors import (
    AlreadyExists,
    BadRequest,
    ChecksumMismatch,
    NotFound,
    PermissionDenied,
    SectorError,
    TransportError,
    UsageError,
    from_wire,
)
from sector.meta import records as rec
from sector.security import guard
from sector.storage import pieces
from sector.storage.blobs import BlobStore, BlobWriter, check_blob_id, checksum_file
from sector.storage.inventory import Inventory
from sector.storage.messages import (
    SMALL_MAX,
    Delete,
    Get,
    GetPieces,
    GetSmall,
    Has,
    Missing,
    Put,
    PutSmall,
    Replicate,
    Stored,
    Verify,
    stored_reply,
)
from sector.transport import bulk
from sector.transport.bulk import BulkChannel
from sector.transport.chain import Chain, Skipped, first_live
from sector.transport.rpc import RpcPool
from sector.wire import codec
from sector.wire.messages import Request, decode, to_args, typed

log = logging.getLogger("sector.transfer")

PUMP_BUF = 1 << 20
MIN_RATE = 64 << 10  # bytes/s an upload must average after tcp.RATE_GRACE seconds
VERIFY_AT_ONCE = 2  # blob.verify hashes running at once on a node (each a whole copy)


class BlobService:
    """The ``blob.*`` handlers of one node.

    It is given what it uses of the node, never the node: the blob store and its
    inventory, the RPC pool for the next hops of a chain, the node's own ``[node id,
    address]`` (first in every ``stored`` list it answers) and ``suspect(node id,
    address, error)``, called on a chain target found unreachable.
    """

    def __init__(
        self,
        blobs: BlobStore,
        inventory: Inventory,
        pool: RpcPool,
        *,
        me: tuple[str, str],
        suspect: Callable[[str, str, BaseException], object],
        is_member: Callable[[str, str], bool] = lambda nid, addr: True,
    ) -> None:
        self.blobs = blobs
        self.inventory = inventory
        self.pool = pool
        self.me = me
        self.suspect = suspect
        self.is_member = is_member  # (node id, address) is a member of the cluster
        # fsyncs of many small blobs at once: each waits on the disk, not the CPU, so a
        # pool wider than the default (cores + 4) keeps a burst of puts from queueing.
        self.io = ThreadPoolExecutor(32, thread_name_prefix="blob-io")
        # Copy loops of bulk uploads: their own pool, so uploads never starve the
        # default executor (or each other's commits).
        self.pumps = ThreadPoolExecutor(64, thread_name_prefix="blob-pump")
        self.stats = {"puts": 0, "gets": 0, "bytes_in": 0, "bytes_out": 0}
        # blob.verify is open to anyone (``stat --verify``) and one small request costs
        # a hash of the whole copy: at most two run at once, the rest wait their turn.
        self._verifying = asyncio.Semaphore(VERIFY_AT_ONCE)

    def handlers(self) -> dict[str, Any]:
        return {
            "blob.delete": self._h_delete,
            "blob.has": self._h_has,
            "blob.verify": self._h_verify,
            "blob.missing": self._h_missing,
            "blob.put_small": self._h_put_small,
            "blob.get_small": self._h_get_small,
            "blob.pieces": self._h_pieces,
            "blob.replicate": self._h_replicate,
        }

    def bulk_handlers(self) -> dict[str, Any]:
        return {"blob.put": self._h_put, "blob.get": self._h_get}

    async def _open_downstream(self, req: Put, blob: str, new: bool) -> BulkChannel | None:
        """The next hop of a chain write: the first target of the chain that answers,
        given this hop's request with the rest of the chain; None if none does."""

        async def open_(addr: str, rest: list[list[str]]) -> BulkChannel:
            # Later hops hash no pieces: one list per put is all a record needs, and
            # hashing it at every hop cost a put ~20% on a 2-core host (issue 14).
            hop = msgspec.structs.replace(req, chain=rest, new=new, pieces=False)
            return await self.pool.open_bulk(addr, "blob.put", to_args(hop))

        try:
            return await first_live(req.chain, open_, on_skip=self._skipped(blob))
        except TransportError:
            return None

    def _skipped(self, blob: str) -> Skipped:
        def skipped(nid: str, addr: str, exc: SectorError) -> None:
            log.warning("chain write of %s: %s failed (%s), skipping it", blob, addr, exc)
            if isinstance(exc, TransportError):
                # Down until its next heartbeat proves otherwise: placement stops
                # choosing it now, not after gossip's dead_after (a partition).
                self.suspect(nid, addr, exc)

        return skipped

    def _check_write(self, req: Put | PutSmall, blob: str) -> bool:
        """A user (not a node) may write a new blob for a file it may write, and only a
        new one: overwriting a stored blob is for the cluster's own repairs.

        Returns whether the write must be of a new blob. That travels down the chain
        (``new``), so a node forwarding a user's write refuses an existing blob too:
        otherwise a user could name a blob id of someone else's file and have the next
        node "repair" that file's copy with the user's bytes.
        """
        new = req.new is True
        if not guard.is_node():
            if not req.path:
                raise BadRequest("a blob write from a client must name its file's path")
            guard.write(rec.normalize(req.path))
            # The chain a client names is dialled by this node: only the cluster's own
            # nodes, or a user could have it probe any address (a port scan).
            for nid, addr in req.chain:
                if not self.is_member(nid, addr):
                    raise PermissionDenied(
                        f"permission denied: {addr!r:.80} is not a node of this cluster"
                    )
            new = True
        if new and self.blobs.exists(blob):
            raise AlreadyExists(f"blob {blob} exists")
        return new

    def _check_read(self, blob: str) -> None:
        """Reading a blob is reading its files: checked only where paths are private."""
        if guard.private_reads():
            paths = self.inventory.paths(blob)
            if not paths and not guard.is_admin():
                # Which file this is, nothing here says: where some paths are private,
                # such a copy (adopted, of an older writer) is for nodes and admins.
                raise PermissionDenied(f"permission denied: blob {blob} has no known file")
            for p in paths:
                guard.read(p)

    @typed(Put)
    async def _h_put(self, req: Put, chan: BulkChannel) -> Stored:
        blob = check_blob_id(req.blob)
        size = req.size
        new = self._check_write(req, blob)
        w = self.blobs.writer(blob, size, req.path, hash_pieces=req.pieces is not False)
        down = await self._open_downstream(req, blob, new) if req.chain else None
        try:
            forwarded = await bulk.recv(
                chan,
                size,
                w,
                forward=down,
                executor=self.pumps,
                chunk=PUMP_BUF,
                min_rate=MIN_RATE,
                what=f"upload of {blob}",
            )
            if down is not None and not forwarded:
                await down.close()
                down = None
            mine = await asyncio.get_running_loop().run_in_executor(self.io, w.commit, req.checksum)
            self.blobs.committed(w)
        except BaseException:
            w.abort()
            if down is not None:
                await down.close()
            raise
        self.stats["puts"] += 1
        self.stats["bytes_in"] += size
        stored: list[list[str]] = [list(self.me)]
        if down is not None:
            try:
                rep = stored_reply(await down.read_reply(), "blob.put")
                if rep.checksum == mine:
                    stored += rep.stored
                else:
                    log.warning("chain write of %s: downstream copy differs, leaving it out", blob)
            except (SectorError, OSError) as exc:
                log.warning("chain write of %s: downstream did not confirm (%s)", blob, exc)
            finally:
                await down.close()
        return Stored(stored, mine)

    @typed(PutSmall)
    async def _h_put_small(self, req: PutSmall) -> Stored:
        return await self.put_small(req)

    async def put_small(self, req: PutSmall) -> Stored:
        """A small blob inline in a control frame, over pooled connections (also called
        in-process by a path's owner that writes a small file's chain itself).

        For many little files the cost of a put is round trips, not bytes: a fresh
        connection per hop and a chain that waits hop by hop. Here the node forwards
        to the rest of the chain *while* it writes its own copy, on connections that
        are already open; the reply is the same as ``blob.put``'s.
        """
        blob = check_blob_id(req.blob)
        data = req.data
        new = self._check_write(req, blob)

        async def store() -> str:
            # No piece list kept: the owner that sends a small file hashes the one the
            # record keeps from the bytes (``put.py``); a holder makes its own when
            # first asked for it (``piece_list``), as a chain's later hops always have.
            w = self.blobs.writer(blob, len(data), req.path, hash_pieces=False)
            try:
                w.write(data)
                loop = asyncio.get_running_loop()
                mine = await loop.run_in_executor(self.io, w.commit, req.checksum)
            except BaseException:
                w.abort()
                raise
            self.blobs.committed(w)
            return mine

        async def call(addr: str, rest: list[list[str]]) -> Any:
            hop = msgspec.structs.replace(req, chain=rest, new=new)
            return await self.pool.call(addr, "blob.put_small", to_args(hop))

        async def forward() -> tuple[list[list[str]], str | None]:
            try:
                skipped = self._skipped(blob)
                rep = await first_live(req.chain, call, skip=SectorError, on_skip=skipped)
            except SectorError:
                return [], None
            if not isinstance(rep, dict):
                return [], None
            got = stored_reply(rep, "blob.put_small")
            return got.stored, got.checksum

        mine, (downstream, their_sum) = await asyncio.gather(store(), forward())
        if downstream and their_sum != mine:
            log.warning("chain write of %s: downstream copy differs, leaving it out", blob)
            downstream = []
        self.stats["puts"] += 1
        self.stats["bytes_in"] += len(data)
        return Stored([list(self.me), *downstream], mine)

    @typed(Get)
    async def _h_get(self, req: Get, chan: BulkChannel) -> Any:
        """``blob.get``; with ``keep``, the requests that follow on the stream too (a
        striped read's chunks), until the reader closes it."""
        while True:
            await self._serve_get(req, chan)
            if req.keep is not True:
                return None
            args = await bulk.next_request(chan, "blob.get")
            if args is None:
                return None  # the reader closed the stream (or it went idle)
            req = decode(Get, args)

    async def _serve_get(self, req: Get, chan: BulkChannel) -> None:
        blob = check_blob_id(req.blob)
        offset = req.offset or 0
        length = None if req.length is UNSET else req.length
        self._check_read(blob)
        f = self.blobs.open(blob)
        with f:
            total = self.blobs.size(blob)
            n = max(0, total - offset) if length is None else min(length, max(0, total - offset))
            await chan.write(codec.reply(1, {"size": n, "total": total}))
            await bulk.send_file(chan, f, offset, n)
        self.stats["gets"] += 1
        self.stats["bytes_out"] += n

    @typed(GetPieces)
    async def _h_pieces(self, req: GetPieces) -> Any:
        """The copy's piece list (read as the blob is: ``_check_read``)."""
        blob = check_blob_id(req.blob)
        self._check_read(blob)
        size = self.blobs.size(blob)
        if req.piece_size:
            pieces.check_size(size, req.piece_size)
        loop = asyncio.get_running_loop()
        ps = req.piece_size or None
        if req.kept is True:
            where = str(self.blobs.path(blob).parent)
            got = await loop.run_in_executor(self.io, pieces.load, where, blob, size, ps)
            if got is None:
                raise NotFound(f"blob {blob}: no piece list kept here")
            pl = got
        else:
            pl = await loop.run_in_executor(self.io, self.blobs.piece_list, blob, ps)
        return {"size": pl.size, "piece_size": pl.piece_size, "digests": pl.digests}

    @typed(GetSmall)
    async def _h_get_small(self, req: GetSmall) -> Any:
        blob = check_blob_id(req.blob)
        self._check_read(blob)
        with self.blobs.open(blob) as f:
            # One read of at most SMALL_MAX + 1 bytes (a page-cache hit for a fresh
            # small file, as blob.get's open is on the loop too).
            data = f.read(SMALL_MAX + 1)
        if len(data) > SMALL_MAX:
            raise UsageError(f"blob {blob} is larger than {SMALL_MAX} bytes (use blob.get)")
        self.stats["gets"] += 1
        self.stats["bytes_out"] += len(data)
        return {"data": data, "total": len(data)}

    @typed(Delete)
    async def _h_delete(self, req: Delete) -> Any:
        inv = self.inventory
        n = 0
        ids = [check_blob_id(b) for b in req.blobs]  # all checked before any is deleted
        listed = req.paths if isinstance(req.paths, list) else None
        if listed is not None and len(listed) != len(ids):
            raise UsageError("blob.delete: paths must name one path per blob")
        for i, b in enumerate(ids):
            path = listed[i] if listed is not None else req.path
            # A file's delete (``path`` given) spares a blob another path also claims:
            # a rename cut short by a crash leaves two records on one blob, and removing
            # one must not take the other's bytes. The collector decides, after its
            # grace, by asking the metadata about every path.
            if path is not None and any(p != path for p in inv.paths(b)):
                continue
            if self.blobs.delete(b):
                log.info("blob %s deleted (a delete of %s)", b, path or "its file")
                n += 1
        return n

    @typed(Replicate)
    async def _h_replicate(self, req: Replicate) -> Any:
        """Push this node's copy of a blob to new holders (repair, issue 3).

        The same chain write a client makes (``blob.put`` with the rest of the chain),
        fed by ``sendfile`` from the local file. The record's checksum travels in the
        header, so every target verifies the bytes before sealing them: a copy that
        rotted here fails there instead of spreading. Reply: the nodes that stored it.
        """
        blob = check_blob_id(req.blob)
        stored = await self.replicate(blob, req.size, req.checksum, req.targets, req.path)
        return {"stored": stored}

    async def replicate(
        self, blob: str, size: int, checksum: str, targets: Chain, path: str = ""
    ) -> list[list[str]]:
        if not targets:
            return []
        have = self.blobs.size(blob)  # NotFound if this node has no copy
        if have != size:
            raise ChecksumMismatch(f"local copy of {blob} has {have} bytes, the record {size}")

        async def push(addr: str, rest: list[list[str]]) -> Any:
            # No piece hashing on the new copies: the record has its root already, and
            # a copy makes its list when first asked (issue 14).
            req = Put(blob=blob, size=size, checksum=checksum, chain=rest, path=path, pieces=False)
            chan = await self.pool.open_bulk(addr, "blob.put", to_args(req))
            try:
                with self.blobs.open(blob) as f:
                    await bulk.send_file(chan, f, 0, size)
                rep = await chan.read_reply()
            finally:
                await chan.close()
            if not isinstance(rep, dict) or rep.get("checksum") != checksum:
                raise ChecksumMismatch(
                    f"copy of {blob} at {addr} does not match the record's checksum"
                )
            return rep

        rep = await first_live(targets, push)
        self.stats["bytes_out"] += size
        return stored_reply(rep, "blob.put").stored

    @typed(Verify)
    async def _h_verify(self, req: Verify) -> Any:
        """``{blob, checksum}``: re-hash the local copy; ok, corrupt or missing."""
        blob = check_blob_id(req.blob)
        checksum = req.checksum
        self._check_read(blob)
        p = self.blobs.path(blob)
        loop = asyncio.get_running_loop()
        try:
            async with self._verifying:
                got = await loop.run_in_executor(self.io, checksum_file, p)
        except FileNotFoundError:
            return {"health": "missing"}
        return {"health": "ok" if got == checksum else "corrupt"}

    @typed(Missing)
    async def _h_missing(self, req: Missing) -> Any:
        """``{blobs: [id]}``: the ones this node does not hold (a repair audit)."""
        ids = [check_blob_id(b) for b in req.blobs]
        exists = self.blobs.exists
        return {"missing": await asyncio.to_thread(lambda: [b for b in ids if not exists(b)])}

    @typed(Has)
    async def _h_has(self, req: Has) -> Any:
        """``{blob}``: its size here, or None. ``{blob, path}``: also whether the copy
        here was written for ``path`` (``claimed``), and this node's id."""
        blob = check_blob_id(req.blob)
        size = None
        with contextlib.suppress(SectorError):
            size = self.blobs.size(blob)
        path = req.path
        if path is None:
            return size
        pieces = None  # [piece size, root] of the copy here (issue 14): a put's commit
        if size is not None and req.pieces is True:  # records them (``node/put.py``)
            with contextlib.suppress(SectorError, OSError):
                pl = await asyncio.get_running_loop().run_in_executor(
                    self.io, self.blobs.piece_list, blob
                )
                pieces = [pl.piece_size, pl.root]
        return {
            "size": size,
            "claimed": size is not None and self.claimed(blob, path),
            "node": self.me[0],
            "pieces": pieces,
        }

    def claimed(self, blob: str, path: str) -> bool:
        """Whether this node's copy of ``blob`` was written for ``path``."""
        want = rec.normalize(path)
        for p in self.inventory.paths(blob):
            with contextlib.suppress(SectorError):
                if rec.normalize(p) == want:
                    return True
        return False


async def open_get(
    pool: RpcPool, addr: str, req: Request, *, stall_timeout: float = 60.0
) -> tuple[BulkChannel, int]:
    """A ``blob.get`` stream (or another read of the same shape, ``swarm.get``) from
    ``addr`` and the number of bytes that follow its header; the node's error reply
    raised as it is. The caller closes the stream."""
    chan = await pool.open_bulk(addr, req.op, to_args(req), stall_timeout=stall_timeout)
    try:
        head = await chan.read_frame()
        if head.e is not None:
            raise from_wire(head.e)
        return chan, int(head.r["size"])
    except BaseException:
        await chan.close()
        raise


__all__ = ["BlobService", "BlobWriter", "open_get"]
