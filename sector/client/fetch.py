"""A client's download of one replica into a local temp file, verified (``get``).

- Striped over the live replicas (issue 15, ``striped``): a file of ``STRIPE_MIN`` or
  more read in ranges from the holders about as near as the nearest, at once, the
  nearer and faster ones reading more, failing over per range; on any path
  (``wan.streams_for``; ``SECTOR_BULK_STREAMS=1`` turns it off). Hashed whole at the
  end; a mismatch is an error and the get reads one replica at a time instead.
- From one replica's holder: one stream, or, over a long link, the file in several
  ranges at once (``transport.stripe``), then hashed whole.
- Through the entry node's swarm (issue 14): ``swarm.get``, answered as the node's
  fetch brings verified pieces.
The file's BLAKE3 is checked either way; a mismatch is ``ChecksumMismatch``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import blake3

from sector.errors import ChecksumMismatch, SectorError
from sector.storage.blobs import WriteBehind
from sector.storage.messages import SMALL_MAX, Get, GetSmall
from sector.storage.transfer import open_get
from sector.swarm.messages import SwarmGet
from sector.transport import bulk, stripe, wan
from sector.transport.bulk import BulkChannel
from sector.transport.rpc import RpcPool, split_addr
from sector.transport.spans import Plan, allot
from sector.wire.messages import Request, to_args

__all__ = ["SWARM_FLOOR", "download", "hash_file", "striped", "tell"]

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
    streams = wan.streams_for(min(known, default=None), st["size"], len(addrs))
    if streams <= 1 or len(addrs) < 2:
        return False
    counts = allot(rtts, streams)
    tell(progress, sum(counts), len(addrs))
    try:
        far = max((r for r in rtts if r is not None), default=None)
        plan = await _fetch(pool, st, tmp, progress, addrs, counts, far)
        st["transfer"] = {
            "streams": sum(counts),
            "holders": [a for a in addrs if plan.served.get(a)],
            "bytes_from": {a: n for a, n in plan.served.items() if n},
            "rtt_ms": wan.ms(min(known, default=None)),
            "from": addrs[0],
            "failed": plan.dead,
            "refetched": plan.refetched,
        }
        if await asyncio.to_thread(hash_file, str(tmp)) != st["checksum"]:
            raise ChecksumMismatch(
                f"a read striped over {len(addrs)} replicas does not verify (checksum mismatch)"
            )
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return True


async def _fetch(
    pool: RpcPool,
    st: dict[str, Any],
    tmp: Path,
    progress: Progress | None,
    addrs: list[str],
    counts: list[int],
    rtt: float | None,
) -> Plan:
    async def open_range(addr: str, offset: int, length: int) -> tuple[BulkChannel, int]:
        return await open_get(pool, addr, Get(blob=st["blob"], offset=offset, length=length))

    with open(tmp, "wb") as f:
        what = f"download of {st['path']}"
        behind = WriteBehind(f)  # written back while it grows, as a one-stream get is
        try:
            return await stripe.fetch(
                open_range,
                st["size"],
                f.fileno(),
                addrs,
                counts,
                progress=progress,
                wrote=behind.wrote,
                min_split=wan.split_for(rtt),
                what=what,
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
    await _fetch(pool, st, tmp, progress, [addr], [streams], rtt)
    st["transfer"] = {
        "streams": streams,
        "holders": [addr],
        "rtt_ms": wan.ms(rtt),
        "from": addr,
    }
    if await asyncio.to_thread(hash_file, str(tmp)) != st["checksum"]:
        raise ChecksumMismatch(f"replica at {addr} is corrupt (checksum mismatch)")
