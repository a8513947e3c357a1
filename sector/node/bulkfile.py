"""Bulk file work of the shuffle, for ``sector.node.sphere``: bytes of a stream into a
file, files joined into one.

It owns the two byte-moving loops that must stay off the event loop (they run on the
executor the caller passes, the Sphere service's own I/O threads): receiving a bucket
part or a fetched segment straight from the socket with ``recv_into`` (or, on TLS,
chunk by chunk through the transport, each chunk written in a thread while the next is
decrypted), and concatenating a bucket's parts in the kernel with ``sendfile``. No
Python ``bytes`` of the payload is made on the way.
"""

from __future__ import annotations

import asyncio
import os
import socket
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from sector.errors import ConnectError
from sector.transport.rpc import BulkChannel

__all__ = ["concat", "recv_file", "recv_into_file"]

RECV_CHUNK = 4 << 20


async def recv_file(chan: BulkChannel, size: int, path: Path, io: Executor) -> None:
    """``size`` raw bytes of a bulk stream into a new file: ``recv_into`` in a
    thread on plain TCP; on TLS through the transport, each chunk written in a
    thread while the next is decrypted."""
    loop = asyncio.get_running_loop()
    raw = chan.raw_socket()
    if raw is not None:
        try:
            await loop.run_in_executor(
                io, recv_into_file, raw, chan.take_buffered(size), size, path
            )
        finally:
            raw.close()
        return
    with open(path, "wb") as f:
        got = 0
        writing: Any = None
        try:
            while got < size:
                chunk = await chan.read_some(min(RECV_CHUNK, size - got))
                if not chunk:
                    raise ConnectError("the sender closed the stream early")
                got += len(chunk)
                if writing is not None:
                    await writing
                writing = loop.run_in_executor(io, f.write, chunk)
        finally:
            if writing is not None:
                await writing


def recv_into_file(sock: socket.socket, first: bytes, size: int, path: Path) -> None:
    buf = bytearray(RECV_CHUNK)
    view = memoryview(buf)
    with open(path, "wb") as f:
        f.write(first)
        got = len(first)
        while got < size:
            try:
                n = sock.recv_into(view[: min(RECV_CHUNK, size - got)])
            except OSError as exc:
                raise ConnectError(f"bucket stream failed: {exc}") from None
            if n == 0:
                raise ConnectError("the sender closed the bucket stream early")
            f.write(view[:n])
            got += n


def concat(parts: list[Path], out: Path) -> int:
    """Join files in the kernel (copy_file_range/sendfile), not through Python bytes."""
    total = 0
    with open(out, "wb") as o:
        for p in parts:
            with open(p, "rb") as i:
                n = os.fstat(i.fileno()).st_size
                done = 0
                while done < n:
                    k = os.sendfile(o.fileno(), i.fileno(), done, n - done)
                    if k == 0:
                        break
                    done += k
                total += done
    return total
