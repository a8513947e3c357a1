"""A client's download of one replica into a local temp file, verified (``get``).

- From a replica's holder: one stream, or, over a long link (issue 15), the file in
  several ranges at once (``transport.stripe``), then hashed whole.
- Through the entry node's swarm (issue 14): ``swarm.get``, answered as the node's
  fetch brings verified pieces.
The file's BLAKE3 is checked either way; a mismatch is ``ChecksumMismatch``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import blake3

from sector.errors import ChecksumMismatch
from sector.storage.blobs import WriteBehind
from sector.storage.messages import SMALL_MAX, Get, GetSmall
from sector.storage.transfer import open_get
from sector.swarm.messages import SwarmGet
from sector.transport import bulk, stripe, wan
from sector.transport.bulk import BulkChannel
from sector.transport.rpc import RpcPool, split_addr
from sector.wire.messages import Request, to_args

__all__ = ["SWARM_FLOOR", "download", "hash_file"]

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
    st["transfer"] = {"streams": 1, "rtt_ms": wan.ms(chan.rtt), "from": addr}
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
    st["transfer"] = {"streams": 1, "inline": True, "from": addr}
    with open(tmp, "wb") as f:
        f.write(data)


async def _striped(
    pool: RpcPool,
    addr: str,
    st: dict[str, Any],
    tmp: Path,
    progress: Progress | None,
    streams: int,
) -> None:
    """The file in ``streams`` ranges read at once (``stripe.py``), then verified."""

    async def open_range(offset: int, length: int) -> tuple[BulkChannel, int]:
        return await open_get(pool, addr, Get(blob=st["blob"], offset=offset, length=length))

    with open(tmp, "wb") as f:
        what = f"download from {addr}"
        n = await stripe.fetch(
            open_range, st["size"], f.fileno(), streams, progress=progress, what=what
        )
    st["transfer"] = {"streams": n, "rtt_ms": wan.ms(await pool.rtt(addr)), "from": addr}
    if await asyncio.to_thread(hash_file, str(tmp)) != st["checksum"]:
        raise ChecksumMismatch(f"replica at {addr} is corrupt (checksum mismatch)")
