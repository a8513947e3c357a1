"""Sphere processing engines (SPEs): the worker processes that run UDFs on a node.

A node keeps a pool of worker processes (one per core by default). The node's asyncio
side never touches segment bytes: it hands a worker a small task (where the segment
is on the local disk, the UDF, the output mode) and the worker does the bulk work --
map the file, call the UDF once with the whole batch, split its output by bucket with
numpy, write the parts to the node's staging directory -- and returns a summary.
Why processes, not threads: UDFs are Python and would hold the GIL; why the file, not
a pipe: a segment is up to 256 MB and the kernel's page cache already has it.

A UDF that raises is caught here and reported with its traceback (the job fails with
it, the worker lives on). A UDF that kills its process ends only that engine; the node
starts another in its place and the attempt counts as failed (retried elsewhere, up to
the job's limit). An attempt the driver cancels is stopped the same way: the node kills
the engine running it (the node's engine pool, ``node/engines.py``).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

import cloudpickle
import numpy as np

from sector.sphere import packed
from sector.sphere import required as req_files
from sector.sphere.batch import Batch, normalize, split
from sector.sphere.bucket import Bucket, fits, memory_limit, part_size, write_output
from sector.sphere.segments import line_bounds
from sector.storage.blobs import open_nofollow

CLIENT_MAX = 12 << 20  # output of one segment returned to the client in a reply frame

# Per worker process: digest -> (function, job parameter). A job sends the same UDF
# with every segment; unpickling it once per process is enough.
_UDFS: dict[str, tuple[Callable[..., Any], Any]] = {}


def _load(udf: bytes, digest: str) -> tuple[Callable[..., Any], Any]:
    got = _UDFS.get(digest)
    if got is None:
        fn, param = cloudpickle.loads(udf)
        if not callable(fn):
            raise TypeError(f"the UDF is a {type(fn).__name__}, not a function")
        if len(_UDFS) >= 32:
            _UDFS.clear()
        got = _UDFS[digest] = (fn, param)
    return got


def init_engine(parent: int) -> None:
    """Worker start-up: end this engine when its node dies.

    A pool worker waits for tasks on a pipe that its siblings also hold open, so a
    node killed with SIGKILL never closes it: without this the node's engines would
    live on as orphans, each holding its memory, for ever. A daemon thread checks once
    a second that the node is still the parent and exits the process when not.
    """

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, name="engine-watchdog", daemon=True).start()


class Guard(Protocol):
    """What wraps each task in a sandboxed engine (``jail.Guard``)."""

    def begin(self, task: Any) -> Any: ...
    def end(self, res: Any) -> Any: ...


def serve(conn: Connection, parent: int | None, guard: Guard | None = None) -> None:
    """An engine's life (``node/engines.py`` starts it, through ``jail.engine_main``):
    take ``(function, task)`` from the node, send back what the function returns, one
    at a time, until the node closes the pipe or kills this process. ``run_task`` and
    ``run_reduce`` never raise; anything else that goes wrong is still an answer.
    ``parent``: the node, watched (None in a sandbox: the engine's pid 1 ends it);
    ``guard``: a sandbox's work before and after each task."""
    if parent is not None:
        init_engine(parent)
    while True:
        try:
            fn, task = conn.recv()
        except (EOFError, OSError):
            return
        try:
            if guard is not None:
                task = guard.begin(task)
            res = fn(task)
        except Exception as exc:  # a bug of ours: an answer, and the engine lives on
            res = {"error": f"engine: {type(exc).__name__}: {exc}", "retryable": True}
        if guard is not None:
            res = guard.end(res)
        try:
            conn.send(res)
        except (EOFError, OSError):
            return
        except Exception as exc:  # an answer that does not pickle
            conn.send({"error": f"engine: cannot send the result: {exc}", "retryable": True})


def _write(path: Path, data: bytes | memoryview) -> int:
    """A new file at ``path``: one already there is unlinked, never written through
    (after a commit it is also a sealed blob's name: a commit made again, after a
    bucket node was lost, must not rewrite the blob the first one sealed)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    with open(path, "xb") as f:
        f.write(data)
    return len(data)


def _with_required(
    run: Callable[[dict[str, Any], dict[str, str]], dict[str, Any]], task: dict[str, Any]
) -> dict[str, Any]:
    """``run(task, required)`` inside the job's required files (``required.use``)."""
    try:
        with req_files.use(task) as required:
            return run(task, required)
    except OSError as exc:  # the job's files directory is not there (a bug of the node's)
        return {"error": f"cannot enter the job's required files: {exc}", "retryable": True}


def run_task(task: dict[str, Any]) -> dict[str, Any]:
    """Run one segment attempt (in a worker process). Never raises: failures are data.

    ``task``: udf (cloudpickled (function, job parameter)), digest, kind, file (local path or None), offset, length, size,
    record_size, first, index (int64 bytes or None), param, segment, path, node,
    mode ("client" | "files" | "buckets" | "none"), nbuckets, out (staging dir),
    files_dir and required (the job's required files, ``sphere.required``).
    """
    return _with_required(_run_task, task)


def _run_task(task: dict[str, Any], required: dict[str, str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        fn, param = _load(task["udf"], task["digest"])
        if task.get("param") is not None:  # a generator task's own parameter
            param = cloudpickle.loads(task["param"])
    except Exception as exc:
        return {
            "error": f"cannot load the UDF: {type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
            "retryable": False,
        }
    mm: mmap.mmap | None = None
    try:
        try:
            data, mm, start = _read(task)
        except OSError as exc:
            return {"error": f"cannot read the segment: {exc}", "retryable": True}
        kind = task["kind"]
        offsets = None
        if kind == "idx" and task.get("index") is not None:
            offsets = np.frombuffer(task["index"], dtype=np.int64)
        rs = int(task.get("record_size") or 0)
        step = len(data) or 1
        batching = kind == "fixed" and rs > 0 and task["mode"] in ("files", "buckets")
        if batching and int(task.get("batch") or 0) > 0:
            step = max(rs, int(task["batch"]) // rs * rs)
        sink = _Parts(task)
        records = nbytes = 0
        for at in range(0, max(len(data), 1), step):
            try:
                batch = Batch(
                    data[at : at + step],
                    kind=kind,
                    record_size=rs,
                    offsets=offsets,
                    path=task.get("path", ""),
                    segment=int(task.get("segment", 0)),
                    offset=start + at,
                    first=int(task.get("first", 0)) + (at // rs if rs else 0),
                    param=param,
                    node=task.get("node", ""),
                    required=required,
                )
            except ValueError as exc:  # a segment that does not fit its records
                return {"error": f"bad segment: {exc}", "retryable": False}
            try:
                out = normalize(fn(batch))
                sink.add(out)
            except Exception as exc:
                return {**_raised("the UDF", exc), "retryable": False}
            records, nbytes = records + len(out), nbytes + out.nbytes
            del batch, out
            if mm is not None and step < len(data):
                _drop_pages(mm, start + at, min(step, len(data) - at))
        return {
            "ok": True,
            "records_out": records,
            "bytes_in": len(data),
            "bytes_out": nbytes,
            "seconds": time.perf_counter() - t0,
            **sink.result(),
        }
    finally:
        if mm is not None:
            # A UDF may keep views of the map (in a global, say): then the map stays
            # until the views go, rather than failing the attempt.
            with contextlib.suppress(BufferError):
                mm.close()


def run_reduce(task: dict[str, Any]) -> dict[str, Any]:
    """Run a job's reduce UDF over one bucket (in a worker process); never raises.

    ``task``: udf, digest (the cloudpickled (reduce, job parameter)), parts (the
    bucket's part files in segment order), kind ("file", "lines", "fixed"),
    record_size, bucket, path (the bucket file's), node, out (the file to write).
    The parts are read into one buffer (a single part is mapped): the reduce sees the
    whole bucket at once, which is what a sort needs, and nothing is written between
    the shuffle and the output -- unless the bucket is more than this engine's memory
    allows (``bucket.fits``: the attempt fails at once, saying so). Kind "stream": the
    reduce gets a ``bucket.Bucket`` instead, nothing loaded (``_run_stream``).
    """
    return _with_required(_run_reduce, task)


def _run_reduce(task: dict[str, Any], required: dict[str, str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        fn, param = _load(task["udf"], task["digest"])
    except Exception as exc:
        return {"error": f"cannot load the reduce: {type(exc).__name__}: {exc}"}
    parts = [Path(p) for p in task["parts"]]
    if task["kind"] == "stream":
        return _run_stream(fn, param, parts, task, t0, required)
    compressed = bool(task.get("compress"))
    try:
        total = sum(part_size(p, compressed) for p in parts)
    except (OSError, ValueError) as exc:
        return {"error": f"cannot read the bucket's parts: {exc}"}
    why = fits(int(task.get("bucket", 0)), total, memory_limit())
    if why is not None:
        return {"error": why, "retryable": False}
    mm: mmap.mmap | None = None
    try:
        try:
            data, mm = _read_parts(parts, compressed)
        except (OSError, ValueError) as exc:
            return {"error": f"cannot read the bucket's parts: {exc}"}
        try:
            batch = Batch(
                data,
                kind=task["kind"],
                record_size=int(task.get("record_size") or 0),
                path=task.get("path", ""),
                segment=int(task.get("bucket", 0)),
                param=param,
                node=task.get("node", ""),
                required=required,
            )
        except ValueError as exc:
            return {"error": f"bucket {task.get('bucket')}: {exc}"}
        try:
            out = normalize(fn(batch))
            if out.buckets is not None:
                raise TypeError("a reduce returns records, not (records, bucket_ids)")
            size = _write(Path(task["out"]), out.data)
        except Exception as exc:
            return _raised("the reduce", exc)
        return {
            "ok": True,
            "records_out": len(out),
            "bytes_in": len(data),
            "bytes_out": size,
            "seconds": time.perf_counter() - t0,
        }
    finally:
        if mm is not None:
            with contextlib.suppress(BufferError):
                mm.close()


def _raised(who: str, exc: Exception) -> dict[str, Any]:
    """The answer for a UDF or reduce that raised (call inside its ``except``)."""
    return {
        "error": f"{who} raised {type(exc).__name__}: {exc}",
        "traceback": traceback.format_exc(),
    }


def _run_stream(
    fn: Callable[..., Any],
    param: Any,
    parts: list[Path],
    task: dict[str, Any],
    t0: float,
    required: dict[str, str],
) -> dict[str, Any]:
    """A stream-mode reduce (``bucket``): its temporary files go to a directory next
    to its output (on disk, writable by the engine), removed when it ends."""
    out = Path(task["out"])
    spill = out.with_name(out.name + ".spill")
    try:
        try:
            shutil.rmtree(spill, ignore_errors=True)
            spill.mkdir()
            seg = Bucket(
                parts,
                spill_dir=spill,
                path=task.get("path", ""),
                segment=int(task.get("bucket", 0)),
                param=param,
                node=task.get("node", ""),
                compressed=bool(task.get("compress")),
                required=required,
            )
        except (OSError, ValueError) as exc:
            return {"error": f"cannot read the bucket's parts: {exc}"}
        try:
            records, size = write_output(fn(seg), out)
        except Exception as exc:
            return _raised("the reduce", exc)
        return {
            "ok": True,
            "records_out": records,
            "bytes_in": seg.nbytes,
            "bytes_out": size,
            "seconds": time.perf_counter() - t0,
        }
    finally:
        shutil.rmtree(spill, ignore_errors=True)


def _read_parts(
    parts: list[Path], compressed: bool = False
) -> tuple[memoryview | bytes, mmap.mmap | None]:
    """A bucket's parts as one buffer: a map of a single part, else one read of each
    into a buffer of their total size (no per-part Python bytes, no concat file).
    Compressed parts (``packed``) are each read whole, then decompressed frame by frame
    into their place in the buffer."""
    if compressed:
        return _unpack_parts(parts), None
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(open(open_nofollow(str(p)), "rb")) for p in parts]
        sizes = [os.fstat(f.fileno()).st_size for f in files]
        total = sum(sizes)
        if total == 0:
            return b"", None
        if len(files) == 1:
            mm = mmap.mmap(files[0].fileno(), 0, access=mmap.ACCESS_READ)
            return memoryview(mm), mm
        # numpy, not bytearray: no zero-filling pass, and numpy asks for huge pages
        view = np.empty(total, np.uint8).data
        at = 0
        for f, n in zip(files, sizes, strict=True):
            got = f.readinto(view[at : at + n])
            if got != n:
                raise OSError(f"a bucket part changed size while read ({got} of {n} bytes)")
            at += n
        return view, None


def _unpack_parts(parts: list[Path]) -> memoryview | bytes:
    blobs = []
    for p in parts:
        with open(open_nofollow(str(p)), "rb") as f:
            blobs.append(f.read())
    total = sum(packed.raw_size(b) for b in blobs)
    if total == 0:
        return b""
    view = np.empty(total, np.uint8).data
    at = 0
    blobs.reverse()
    while blobs:  # each compressed part goes as soon as it is unpacked
        at += packed.unpack_into(blobs.pop(), view[at:])
    if at != total:
        raise ValueError(f"the bucket's compressed parts held {at} bytes, not {total}")
    return view


def _read(task: dict[str, Any]) -> tuple[memoryview | bytes, mmap.mmap | None, int]:
    """The segment's bytes (a view of the mapped file) and where they start."""
    if task["kind"] == "task" or task.get("file") is None:
        return b"", None, 0
    size = int(task["size"])
    if size == 0:
        return b"", None, 0
    with open(open_nofollow(task["file"]), "rb") as f:  # never through a planted link
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if len(mm) != size:
        mm.close()
        raise OSError(f"local copy has {len(mm)} bytes, the record says {size}")
    kind, offset, length = task["kind"], int(task["offset"]), int(task["length"])
    if kind == "file":
        a, b = 0, size
    elif kind == "lines":
        a, b = line_bounds(mm, offset, length, size)
    else:
        a, b = offset, offset + length
    with contextlib.suppress(OSError, AttributeError):
        mm.madvise(mmap.MADV_SEQUENTIAL)
    return memoryview(mm)[a : max(a, b)], mm, a


class _Parts:
    """Where an attempt's output goes, batch after batch (``map_batch``: the UDF runs
    on several batches of one segment): to the client, or appended to its part files
    (one per bucket, or one "out" file). A file is made new by the first batch that
    writes to it (``_write``) and appended to by the others."""

    def __init__(self, task: dict[str, Any]) -> None:
        self.mode = task["mode"]
        self.nbuckets = int(task.get("nbuckets") or 0)
        self.outdir = Path(task["out"]) if self.mode in ("files", "buckets") else None
        self.parts: dict[str, int] = {}
        self.data: bytes | None = None
        # shuffle_compress: each bucket's chunk goes to its part as one zstd frame
        self.compress = bool(task.get("compress")) and self.mode == "buckets"

    def add(self, out: Any) -> None:
        if self.mode == "client":
            if out.nbytes > CLIENT_MAX:
                raise ValueError(
                    f"a segment's output of {out.nbytes} bytes is too big to return to "
                    f"the client (limit {CLIENT_MAX}); write it to files with output=..."
                )
            self.data = bytes(out.data)
        elif self.outdir is not None:
            if not self.parts:
                self.outdir.mkdir(parents=True, exist_ok=True)
            if self.mode == "files":
                self._append("0", self.outdir / "out", out.data)
            else:
                for bucket, chunk in split(out, self.nbuckets):
                    self._append(str(bucket), self.outdir / f"b{bucket}", chunk)

    def _append(self, key: str, path: Path, data: bytes | memoryview) -> None:
        if self.compress:
            data = packed.pack(data)
        if key not in self.parts:
            self.parts[key] = _write(path, data)
            return
        with open(path, "ab") as f:
            f.write(data)
        self.parts[key] += len(data)

    def result(self) -> dict[str, Any]:
        if self.mode == "client":
            return {"data": self.data or b""}
        return {"parts": self.parts} if self.outdir is not None else {}


def _drop_pages(mm: mmap.mmap, offset: int, length: int) -> None:
    """Unmap the whole pages of a batch done with (they stay in the page cache): the
    engine's resident set then follows the batch, not the segment."""
    page = mmap.PAGESIZE
    lo, hi = -(-offset // page) * page, (offset + length) // page * page
    if hi > lo:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
