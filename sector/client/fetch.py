"""A client's download of one replica into a local temp file, verified (``get``).

- Striped over the live replicas (issue 15, ``striped``): a file of ``STRIPE_MIN`` or
  more read in ranges from the holders about as near as the nearest, at once, the
  nearer and faster ones reading more, failing over per range; on any path
  (``wan.streams_for``; ``SECTOR_BULK_STREAMS=1`` turns it off). Each piece is checked
  against the file's piece list as it arrives (``_Check``: the list's root is the
  record's), so nothing is read again at the end but the few pieces cut by a span's
  ends; a file with no piece list is hashed whole at the end. A mismatch is an error
  and the get reads one replica at a time instead.
- From one replica's holder: one stream, or, over a long link, the file in several
  ranges at once (``transport.stripe``), checked the same way.
- Through the entry node's swarm (issue 14): ``swarm.get``, answered as the node's
  fetch brings verified pieces.
The file's BLAKE3 is checked either way; a mismatch is ``ChecksumMismatch``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import blake3

from sector.errors import ChecksumMismatch, SectorError
from sector.storage import pieces
from sector.storage.blobs import WriteBehind
from sector.storage.messages import SMALL_MAX, Get, GetPieces, GetSmall
from sector.storage.transfer import open_get
from sector.swarm.messages import SwarmGet
from sector.transport import bulk, stripe, wan
from sector.transport.bulk import BulkChannel
from sector.transport.rpc import RpcPool, split_addr
from sector.transport.spans import ALIGN, Plan, allot
from sector.wire import codec
from sector.wire.messages import Request, to_args

__all__ = ["SWARM_FLOOR", "download", "hash_file", "striped", "tell"]

log = logging.getLogger("sector.client")

Progress = Callable[[int, int], None]
SWARM_FLOOR = 1 << 20  # bytes/s a swarm get is assumed to make at worst (its first wait)


def hash_file(path: str) -> str:
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    if os.path.getsize(path) > 0:
        h.update_mmap(path)
    return "blake3:" + h.hexdigest()


class _Download:
    """A download's temp file, written back to disk while it grows (``WriteBehind``)."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.behind = WriteBehind(f)

    def write(self, data: memoryview) -> None:
        self.f.write(data)
        self.behind.wrote(len(data))


async def download(
    pool: RpcPool,
    addr: str,
    st: dict[str, Any],
    tmp: Path,
    progress: Progress | None,
    *,
    swarm: bool = False,
) -> None:
    """One replica (or the swarm's copy, ``swarm``) of ``st`` into ``tmp``, verified;
    ``st["transfer"]`` says how it came (streams, RTT, from where)."""
    if swarm:  # the node answers once the file is in its cache: a long first wait
        req: Request = SwarmGet(path=st["path"], blob=st["blob"])
        wait = max(60.0, st["size"] / SWARM_FLOOR)
        chan, size = await open_get(pool, addr, req, stall_timeout=wait)
    elif st["size"] <= SMALL_MAX:
        await _small(pool, addr, st, tmp)
        return
    else:
        streams = 1
        # A long link: several streams at once (loopback is never one: not asked).
        if st["size"] >= wan.STRIPE_MIN and not wan.loopback(split_addr(addr)[0]):
            streams = wan.streams_for(await pool.rtt(addr), st["size"])
        if streams > 1:
            await _striped(pool, addr, st, tmp, progress, streams)
            return
        chan, size = await open_get(pool, addr, Get(blob=st["blob"]))
    tell(progress, 1, 1)
    st["transfer"] = {"streams": 1, "holders": [addr], "rtt_ms": wan.ms(chan.rtt), "from": addr}
    try:
        if size != st["size"]:
            raise ChecksumMismatch(f"replica at {addr} has {size} bytes, expected {st['size']}")
        h = blake3.blake3()
        with open(tmp, "wb") as f:
            sink = _Download(f)
            try:
                what = f"download from {addr}"
                await bulk.recv(chan, size, sink, hasher=h, progress=progress, what=what)
            finally:
                await asyncio.to_thread(sink.behind.join)  # an fdatasync may be running
        if "blake3:" + h.hexdigest() != st["checksum"]:
            raise ChecksumMismatch(f"replica at {addr} is corrupt (checksum mismatch)")
    finally:
        await chan.close()


async def _small(pool: RpcPool, addr: str, st: dict[str, Any], tmp: Path) -> None:
    """A small file inline in one reply, over the pooled connection (``blob.get_small``)."""
    rep = await pool.call(addr, "blob.get_small", to_args(GetSmall(blob=st["blob"])))
    data = rep.get("data") if isinstance(rep, dict) else None
    if not isinstance(data, bytes) or len(data) != st["size"]:
        got = len(data) if isinstance(data, bytes) else "no"
        raise ChecksumMismatch(f"replica at {addr} has {got} bytes, expected {st['size']}")
    if "blake3:" + blake3.blake3(data).hexdigest() != st["checksum"]:
        raise ChecksumMismatch(f"replica at {addr} is corrupt (checksum mismatch)")
    st["transfer"] = {"streams": 1, "holders": [addr], "inline": True, "from": addr}
    with open(tmp, "wb") as f:
        f.write(data)


def tell(progress: Progress | None, streams: int, holders: int) -> None:
    """Tell a progress bar how a transfer runs (its ``note``, if it has one)."""
    note = getattr(progress, "note", None)
    if callable(note):
        note(f"{streams} stream{'s' * (streams != 1)}, {holders} holder{'s' * (holders != 1)}")


async def _rtt(pool: RpcPool, addr: str) -> float | None:
    """The RTT to ``addr``: 0 for loopback (never probed), None if it cannot be read."""
    if wan.loopback(split_addr(addr)[0]):
        return 0.0
    try:
        return await pool.rtt(addr)
    except SectorError:
        return None


async def striped(pool: RpcPool, st: dict[str, Any], tmp: Path, progress: Progress | None) -> bool:
    """``st`` striped over its live replicas into ``tmp`` and verified, if it is worth it
    (``wan.streams_for``: large, two holders or more about as near as the nearest);
    False if not (nothing done). Raises ``TransportError`` if every holder failed,
    ``ChecksumMismatch`` if the assembled file does not verify."""
    addrs = [r["address"] for r in st["replicas"] if r.get("state") == "up"]
    if st["size"] < wan.STRIPE_MIN or len(addrs) < 2:
        return False
    rtts = list(await asyncio.gather(*(_rtt(pool, a) for a in addrs)))
    known = [r for r in rtts if r is not None]
    if known:  # the holders about as near as the nearest (``wan.near``), nearest first
        kept = sorted((r, a) for a, r in zip(addrs, rtts, strict=True) if r is not None)
        kept = [(r, a) for r, a in kept if wan.near(r, kept[0][0])]
        addrs, rtts = [a for _, a in kept], [r for r, _ in kept]
    nearest = min(known, default=None)
    streams = wan.streams_for(nearest, st["size"], len(addrs))
    if streams <= 1 or len(addrs) < 2:
        return False
    counts = allot(rtts, streams)
    tell(progress, sum(counts), len(addrs))
    check = _Check(pool, st, addrs)
    try:
        plan = await _fetch(pool, st, tmp, progress, addrs, counts, nearest, check)
        st["transfer"] = {
            "streams": sum(counts),
            "holders": [a for a in addrs if plan.served.get(a)],
            "bytes_from": {a: n for a, n in plan.served.items() if n},
            "rtt_ms": wan.ms(nearest),
            "from": addrs[0],
            "failed": plan.dead,
            "refetched": plan.refetched,
        }
        if not await check.verify(tmp):
            raise ChecksumMismatch(
                f"a read striped over {len(addrs)} replicas does not verify (checksum mismatch)"
            )
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    finally:
        check.close()
    return True


async def _fetch(
    pool: RpcPool,
    st: dict[str, Any],
    tmp: Path,
    progress: Progress | None,
    addrs: list[str],
    counts: list[int],
    rtt: float | None,
    check: _Check,
) -> Plan:
    min_chunk, depth = wan.chunking(rtt)
    with open(tmp, "wb") as f:
        what = f"download of {st['path']}"
        behind = WriteBehind(f)  # written back while it grows, as a one-stream get is
        try:
            return await stripe.fetch(
                _BlobRanges(pool, st["blob"]),
                st["size"],
                f.fileno(),
                addrs,
                counts,
                progress=progress,
                wrote=behind.wrote,
                min_chunk=min_chunk,
                depth=depth,
                align=max(ALIGN, check.piece_size),  # chunks of whole pieces
                what=what,
                observe=check.observe,
            )
        finally:
            await asyncio.to_thread(behind.join)


async def _striped(
    pool: RpcPool,
    addr: str,
    st: dict[str, Any],
    tmp: Path,
    progress: Progress | None,
    streams: int,
) -> None:
    """The file in ``streams`` ranges read at once from one holder, then verified."""
    tell(progress, streams, 1)
    rtt = await pool.rtt(addr)
    check = _Check(pool, st, [addr])
    try:
        await _fetch(pool, st, tmp, progress, [addr], [streams], rtt, check)
        st["transfer"] = {
            "streams": streams,
            "holders": [addr],
            "rtt_ms": wan.ms(rtt),
            "from": addr,
        }
        if not await check.verify(tmp):
            raise ChecksumMismatch(f"replica at {addr} is corrupt (checksum mismatch)")
    finally:
        check.close()


class _BlobRanges:
    """A striped read's streams (``stripe.Ranges``): ``blob.get`` with ``keep``, the
    chunks asked for on one stream, one ahead."""

    def __init__(self, pool: RpcPool, blob: str) -> None:
        self.pool, self.blob = pool, blob

    def _req(self, offset: int, length: int) -> Get:
        return Get(blob=self.blob, offset=offset, length=length, keep=True)

    async def open(self, holder: str, offset: int, length: int) -> BulkChannel:
        req = self._req(offset, length)
        return await self.pool.open_bulk(holder, req.op, to_args(req))

    async def ask(self, chan: BulkChannel, offset: int, length: int) -> None:
        req = self._req(offset, length)
        await chan.write(codec.request(1, req.op, to_args(req)))

    async def head(self, chan: BulkChannel) -> int:
        head = await chan.read_reply()
        return int(head["size"])


class _Check:
    """How a striped get verifies what came (issue 15): piece by piece, as the bytes
    arrive, against the piece list of the file's record (fetched from a holder while
    the bytes come; its root must be the record's), with the pieces no span holds
    whole hashed from the file afterwards. A file whose record has no piece list, or
    whose list no holder gives, is hashed whole afterwards, as before."""

    def __init__(self, pool: RpcPool, st: dict[str, Any], addrs: list[str]) -> None:
        self.st = st
        ps = int(st.get("piece_size") or 0)
        self.ver = pieces.Verifier(st["size"], ps) if ps > 0 and st.get("pieces") else None
        self.listed: asyncio.Future[pieces.PieceList | None] | None = None
        if self.ver is not None:
            self.listed = asyncio.ensure_future(_piece_list(pool, st, addrs))

    @property
    def piece_size(self) -> int:
        """The size of the pieces checked as they come (0: none are)."""
        return 0 if self.ver is None else self.ver.piece_size

    @property
    def observe(self) -> Callable[[int], Callable[[memoryview], object]] | None:
        """What shows a span's bytes to the check (``stripe.fetch``), if it checks pieces."""
        ver = self.ver
        return None if ver is None else lambda offset: ver.run(offset).update

    async def verify(self, tmp: Path) -> bool:
        """Whether ``tmp`` is the file; says how it was checked in the transfer's
        ``checked``: "pieces" or "whole"."""
        pl = await self.listed if self.listed is not None else None
        if self.ver is None or pl is None:
            self.st["transfer"]["checked"] = "whole"
            return await asyncio.to_thread(hash_file, str(tmp)) == self.st["checksum"]
        self.st["transfer"]["checked"] = "pieces"
        bad = await asyncio.to_thread(_bad_pieces, str(tmp), self.ver, pl)
        if bad:
            log.warning(
                "%s: %d pieces do not match, the first %d", self.st["path"], len(bad), bad[0]
            )
        return not bad

    def close(self) -> None:
        if self.listed is not None and not self.listed.done():
            self.listed.cancel()


async def _piece_list(
    pool: RpcPool, st: dict[str, Any], addrs: list[str]
) -> pieces.PieceList | None:
    """The file's piece list from the first holder that keeps one that is the
    record's, asked in the record's order (the first is where the put's first copy was
    sealed, with its list); a holder is never made to compute one (``kept``): that
    would read its whole copy while the streams read it too."""
    order = {r.get("address"): i for i, r in enumerate(st.get("replicas") or [])}
    for addr in sorted(addrs, key=lambda a: order.get(a, len(order))):
        req = GetPieces(blob=st["blob"], piece_size=int(st["piece_size"]), kept=True)
        try:
            rep = await pool.call(addr, "blob.pieces", to_args(req), timeout=60.0)
            pl = pieces.PieceList(int(rep["size"]), int(rep["piece_size"]), bytes(rep["digests"]))
        except (SectorError, OSError, KeyError, TypeError, ValueError) as exc:
            log.info("piece list of %s from %s: %s", st["path"], addr, exc)
            continue
        if pl.valid() and pl.size == st["size"] and pl.root == st["pieces"]:
            return pl
        log.warning("piece list of %s from %s is not its record's", st["path"], addr)
    return None


def _bad_pieces(path: str, ver: pieces.Verifier, pl: pieces.PieceList) -> list[int]:
    """The pieces of the file at ``path`` that are not the list's: those the streams
    hashed, and the rest hashed here from the file (blocking)."""
    extra: dict[int, bytes] = {}
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for i in ver.missing():
            n = pieces.piece_len(i, ver.size, ver.piece_size)
            extra[i] = pieces.digest(os.pread(fd, n, i * ver.piece_size))
    finally:
        os.close(fd)
    return ver.bad(pl, extra)
