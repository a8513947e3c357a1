"""Bulk file work of the shuffle, for ``sector.node.sphere``: bytes of a stream into a
file, files joined into one.

Receiving a bucket part or a fetched segment is ``sector.transport.bulk.recv`` into a
new file, on the executor the caller passes (the Sphere service's own I/O threads);
concatenating a bucket's parts happens in the kernel with ``sendfile``. No Python
``bytes`` of the payload is made on the way.
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import Executor
from pathlib import Path

from sector.storage.blobs import open_nofollow
from sector.transport import bulk
from sector.transport.bulk import BulkChannel

__all__ = ["concat", "recv_file"]


async def recv_file(chan: BulkChannel, size: int, path: Path, io: Executor) -> None:
    """``size`` raw bytes of a bulk stream into a new file."""
    with open(path, "wb") as f:
        await bulk.recv(chan, size, f, executor=io)


def concat(parts: list[Path], out: Path) -> int:
    """Join files in the kernel (copy_file_range/sendfile), not through Python bytes.
    A part is read only if it is a regular file reached through no symlink (parts are
    what UDFs wrote, in directories they could write)."""
    total = 0
    # A new file: one of that name may be a blob sealed by an earlier commit (a link,
    # no copy), which must not be written through.
    with contextlib.suppress(FileNotFoundError):
        out.unlink()
    with open(out, "xb") as o:
        for p in parts:
            with open(open_nofollow(p), "rb") as i:
                n = os.fstat(i.fileno()).st_size
                done = 0
                while done < n:
                    k = os.sendfile(o.fileno(), i.fileno(), done, n - done)
                    if k == 0:
                        break
                    done += k
                total += done
    return total
