"""A reduce over a bucket larger than memory: ``reduce_records="stream"`` (issue 13).

The whole-bucket reduce modes ("file", "lines", a record size) read every part of a
bucket into one buffer, which is what an in-memory sort wants and what an engine's
memory limit forbids past a point. In the stream mode the reduce gets a ``Bucket``
instead of a ``Batch``: nothing of the bucket is loaded, and

- ``seg.parts(chunk=None)`` yields the bucket's part files, in segment order, as
  read-only memoryviews of maps, one at a time (with ``chunk``, each part in windows
  of at most that many bytes). A view is good until the next one is asked for: its
  map is then closed, so the pages it touched leave the engine's resident set;
- ``seg.reader()`` is the same bytes as one binary file, read sequentially;
- ``seg.spill_dir`` is a directory on disk the reduce may fill with temporary files
  (runs of an external sort, say) -- not ``/tmp``, which in a sandboxed engine is a
  small RAM-backed tmpfs. It is removed when the reduce ends;
- the reduce may return what a batch UDF returns, or an iterator of such outputs,
  each written to the bucket's file as it comes (``write_output``): the output is
  not held in memory either.

Mapped file pages are not the engine's memory in the sense of its limit (RLIMIT_DATA
counts anonymous memory); they are the page cache's, and closing a window's map gives
them back. What the reduce keeps -- its runs, its hash tables -- is its own to bound.

``fits`` is the other half of the issue: a whole-bucket reduce over a bucket its engine
cannot hold fails at once with an error that says so, rather than dying to the OOM
killer (or a MemoryError) half way through.
"""

from __future__ import annotations

import contextlib
import io
import mmap
import os
import resource
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from sector.sphere import packed
from sector.sphere.batch import normalize
from sector.storage.blobs import open_nofollow

__all__ = ["Bucket", "fits", "memory_limit", "part_size", "write_output"]

# A window of a part is mapped at an offset that is a multiple of this.
_GRAIN = mmap.ALLOCATIONGRANULARITY


def memory_limit() -> int | None:
    """This process's memory limit (RLIMIT_DATA's soft limit, bytes), or None."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_DATA)
    return None if soft == resource.RLIM_INFINITY or soft <= 0 else soft


def part_size(path: Path, compressed: bool = False) -> int:
    """A part's size in records' bytes: its file's, or its frames' raw sizes."""
    if not compressed:
        return os.stat(path).st_size
    with open(open_nofollow(str(path)), "rb") as f:
        return sum(raw for _, _, raw in packed.scan(f, os.fstat(f.fileno()).st_size))


def fits(bucket: int, total: int, limit: int | None) -> str | None:
    """Why a whole-bucket reduce of ``total`` bytes cannot run under ``limit``, or None.

    More than half the limit is refused: the engine's own baseline (Python, numpy) and
    whatever the reduce makes of the data (a sort's output, its index) need the rest.
    """
    if limit is None or total <= limit // 2:
        return None
    mib = 1 << 20
    return (
        f"bucket {bucket} is {total / mib:.1f} MiB, more than this engine's memory allows "
        f"(limit {limit / mib:.1f} MiB): use reduce_records='stream'"
    )


class Bucket:
    """What a stream-mode reduce receives: one bucket, not loaded (see the module doc).

    Attributes: ``files`` (the parts' paths, in segment order), ``sizes``, ``nbytes``
    (their total), ``kind`` ("stream"), ``segment`` (the bucket id), ``path`` (the
    bucket file's), ``param``, ``node``, ``spill_dir``, ``required`` (the job's required
    files: Sector path -> local path).
    """

    kind = "stream"

    def __init__(
        self,
        files: list[Path],
        *,
        spill_dir: Path,
        path: str = "",
        segment: int = 0,
        param: Any = None,
        node: str = "",
        compressed: bool = False,
        required: dict[str, str] | None = None,
    ) -> None:
        self.files = list(files)
        self.compressed = compressed  # shuffle_compress: parts of zstd frames (packed)
        self.sizes = [part_size(p, compressed) for p in self.files]
        self.nbytes = sum(self.sizes)
        self.spill_dir = spill_dir
        self.path = path
        self.segment = segment
        self.param = param
        self.node = node
        self.required = dict(required or {})

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return (
            f"<Bucket {self.segment} {self.path!r}: {len(self.files)} parts, "
            f"{self.nbytes} bytes (stream)>"
        )

    def parts(self, chunk: int | None = None) -> Iterator[memoryview]:
        """Each part's bytes in segment order, as read-only views of maps; with
        ``chunk``, in windows of at most ``chunk`` bytes (a part's last one shorter).
        Empty parts are skipped. A view's map is closed when the next is asked for."""
        if chunk is not None and chunk < 1:
            raise ValueError(f"chunk must be at least 1 byte, not {chunk}")
        if self.compressed:
            yield from self._unpacked(chunk)
            return
        for p, size in zip(self.files, self.sizes, strict=True):
            if size == 0:
                continue
            with open(open_nofollow(str(p)), "rb") as f:
                step = size if chunk is None else chunk
                at = 0
                while at < size:
                    n = min(step, size - at)
                    base = at - at % _GRAIN  # maps start on the allocation grain
                    mm = mmap.mmap(f.fileno(), n + at - base, access=mmap.ACCESS_READ, offset=base)
                    with contextlib.suppress(OSError, AttributeError):
                        mm.madvise(mmap.MADV_SEQUENTIAL)
                    view = memoryview(mm)[at - base :]
                    try:
                        yield view
                    finally:
                        # A view the reduce kept (an array over it, say) keeps its map
                        # until it goes, as in run_task.
                        with contextlib.suppress(BufferError):
                            view.release()
                            mm.close()
                    at += n

    def _unpacked(self, chunk: int | None) -> Iterator[memoryview]:
        """Compressed parts: each frame decompressed in turn (one batch's records for
        this bucket), in windows of at most ``chunk`` bytes."""
        for p in self.files:
            with open(open_nofollow(str(p)), "rb") as f:
                for fr in packed.scan(f, os.fstat(f.fileno()).st_size):
                    f.seek(fr[0])
                    raw = packed.unpack(f.read(fr[1]), (0, fr[1], fr[2]))
                    step = len(raw) if chunk is None else chunk
                    for at in range(0, len(raw), step or 1):
                        yield memoryview(raw)[at : at + step]
                    del raw

    def reader(self, chunk: int = 8 << 20) -> io.BufferedReader:
        """The parts as one binary file object, read sequentially (``chunk``-byte maps)."""
        return io.BufferedReader(_PartsReader(self.parts(chunk)), buffer_size=1 << 20)


class _PartsReader(io.RawIOBase):
    """A raw, read-only stream over a sequence of views (the windows of the parts)."""

    def __init__(self, views: Iterator[memoryview]) -> None:
        self._views = views
        self._cur: memoryview | None = None
        self._at = 0
        self._pos = 0

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def readinto(self, b: Any) -> int:
        dst = memoryview(b).cast("B")
        while self._cur is None or self._at >= len(self._cur):
            nxt = next(self._views, None)
            if nxt is None:
                self._cur = None
                return 0
            self._cur, self._at = nxt, 0
        n = min(len(dst), len(self._cur) - self._at)
        dst[:n] = self._cur[self._at : self._at + n]
        self._at += n
        self._pos += n
        return n

    def close(self) -> None:
        self._cur = None
        close = getattr(self._views, "close", None)
        if close is not None:
            close()  # the generator's finally: the last map closed
        super().close()


def _streamed(ret: Any) -> bool:
    """Whether a reduce returned an iterator of outputs, not one output."""
    if ret is None or isinstance(ret, bytes | bytearray | memoryview | str | list | tuple):
        return False
    return isinstance(ret, Iterator) or (
        isinstance(ret, Iterable) and not hasattr(ret, "__array__")
    )


def write_output(ret: Any, path: Path) -> tuple[int, int]:
    """Write a reduce's output -- one output, or an iterator of them, each written as it
    comes -- to a new file at ``path``; (records, bytes) written.

    A file already there is unlinked first, never written through (see ``spe._write``).
    """
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    records = size = 0
    with open(path, "xb") as f:
        for one in ret if _streamed(ret) else (ret,):
            out = normalize(one)
            if out.buckets is not None:
                raise TypeError("a reduce returns records, not (records, bucket_ids)")
            f.write(out.data)
            records += len(out)
            size += out.nbytes
    return records, size
