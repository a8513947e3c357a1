"""Segmentation (pure): a stream of files -> segments, the units of work of a Sphere job.

Rules (after ``segmentData`` in the original's ``client/dcclient.cpp``; Sphere paper §3)
---------------------------------------------------------------------------------------
1. The *unit* is the stream's total size divided by the number of engines, rounded up,
   then clamped to ``[min_unit, max_unit]`` (1 MB .. 256 MB by default). Dividing by the
   engines gives every engine work; the floor keeps the per-segment cost (a scheduling
   round trip, a UDF call) small next to the work; the ceiling keeps a retry or a
   straggler cheap and lets idle engines pull the tail (load balancing by pull). Rounding
   up rather than down avoids a needless 1-byte segment (2 MB + 1 over 2 engines is two
   segments, not three).
2. Segments never span files. A file is the unit of placement, so a segment lives whole
   on every replica of its file and can run where its data is.
3. By record kind:
   - ``"file"``: one segment per file, the whole file, even when empty (the UDF gets the
     file as one record, e.g. to sort a bucket in place).
   - an ``int`` (fixed record size): whole records, ``unit // size`` of them per segment
     but at least one; the last segment of a file takes the remainder. A file whose size
     is not a multiple of the record size is refused (its last record would be torn).
     An empty file gives no segment.
   - ``"idx"``: records from the file's ``.idx`` offsets (int64, N records -> N+1 entries,
     0 first, the file size last). Each segment is the longest run of records from its
     first one that fits in ``unit`` bytes, but at least one record: like "fixed", a
     segment exceeds the unit only when a single record does.
   - ``"lines"``: byte ranges of exactly ``unit`` bytes, the last one takes the remainder,
     an empty file gives none. No index is needed: the engine moves both ends of its
     range to line boundaries with ``line_bounds`` (Hadoop's rule), so every line is read
     by exactly one segment although the planner never looks at the bytes.
4. Segment ids are dense (0..n-1) in stream order: files in the order given, then by
   offset, so a job's results can be put back in stream order.

Rejected: balancing the segments of one file to equal sizes. The original hands the
remainder to the last segment; equal sizes would save little and make a segment's range
depend on the file's size in a less obvious way.
"""

from __future__ import annotations

import mmap
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from sector.errors import UsageError
from sector.sphere.wire import KINDS

__all__ = [
    "KINDS",
    "InputFile",
    "RecordSpec",
    "Segment",
    "check_index",
    "line_bounds",
    "plan_segments",
    "task_segments",
]

RecordSpec = Literal["file", "lines", "idx"] | int
"""How a file divides into records: whole files, text lines, an ``.idx`` index, or fixed
records of that many bytes."""


@dataclass(frozen=True, slots=True)
class InputFile:
    """One file of the input stream, as the planner sees it (from the metadata layer)."""

    path: str
    size: int
    blob: str  # blob id of the stored file
    holders: tuple[str, ...]  # node ids (hex) holding a replica
    # For records="idx": int64 offsets, N records -> N+1 entries, index[0] == 0 and
    # index[-1] == size. Not compared: arrays have no truth value for ==.
    index: np.ndarray | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Segment:
    """A unit of work: a byte range of one file (or one parameter of a generator job)."""

    id: int  # dense 0..n-1, in stream order
    path: str
    blob: str
    offset: int  # byte offset of the segment in its file
    # Bytes. For "lines" the nominal range: the engine moves both ends to line
    # boundaries with line_bounds.
    length: int
    kind: str  # "file" | "lines" | "fixed" | "idx" | "task"
    holders: tuple[str, ...]
    record_size: int = 0  # for "fixed"
    first: int = 0  # index of the first record in its file ("fixed"/"idx"); 0 otherwise
    count: int = -1  # records in the segment ("fixed"/"idx"); -1 = unknown
    param: Any = None  # for "task" segments only


def _unit(total: int, engines: int, min_unit: int, max_unit: int) -> int:
    return max(min_unit, min(max_unit, -(-total // engines)))


def _spec_kind(records: RecordSpec) -> str:
    # bool is an int in Python; records=True is a mistake, not a 1-byte record size.
    if isinstance(records, bool) or not isinstance(records, int | str):
        raise UsageError(
            f"records must be 'file', 'lines', 'idx' or a record size in bytes, got {records!r}"
        )
    if isinstance(records, int):
        if records < 1:
            raise UsageError(f"the record size must be at least 1 byte, got {records}")
        return "fixed"
    if records not in ("file", "lines", "idx"):
        raise UsageError(
            f"records must be 'file', 'lines', 'idx' or a record size in bytes, got {records!r}"
        )
    return records


def check_index(index: np.ndarray, size: int, path: str) -> np.ndarray:
    """Validate the ``.idx`` offsets of the file at ``path`` of ``size`` bytes.

    Returns them as a C-contiguous int64 array. Raises ``UsageError`` unless they are a
    1-D integer array starting with 0, ending with ``size`` and never decreasing (an
    empty record is allowed; a record running backwards is not).
    """
    a = np.asarray(index)
    if a.ndim != 1 or a.dtype.kind not in "iu":
        raise UsageError(
            f"{path}: the index must be a 1-D array of integer offsets, "
            f"got shape {a.shape} of {a.dtype}"
        )
    if len(a) == 0:
        raise UsageError(f"{path}: the index is empty (N records need N+1 offsets, from 0)")
    if a.dtype.kind == "u" and len(a) and int(a.max()) > np.iinfo(np.int64).max:
        raise UsageError(f"{path}: the index has an offset beyond 2**63")
    a = np.ascontiguousarray(a, dtype=np.int64)
    if a[0] != 0:
        raise UsageError(f"{path}: the index must start at 0, not {int(a[0])}")
    if a[-1] != size:
        raise UsageError(f"{path}: the index ends at {int(a[-1])} but the file has {size} bytes")
    if len(a) > 1:
        back = np.flatnonzero(a[1:] < a[:-1])
        if len(back):
            i = int(back[0])
            raise UsageError(
                f"{path}: the index goes backwards at record {i} ({int(a[i])} -> {int(a[i + 1])})"
            )
    return a


def plan_segments(
    files: Sequence[InputFile],
    records: RecordSpec,
    *,
    engines: int,
    min_unit: int = 1 << 20,
    max_unit: int = 256 << 20,
) -> list[Segment]:
    """Divide a stream of files into segments by the rules of this module."""
    kind = _spec_kind(records)
    if isinstance(engines, bool) or not isinstance(engines, int) or engines < 1:
        raise UsageError(f"engines must be at least 1, got {engines!r}")
    if min_unit < 1:
        raise UsageError(f"min_unit must be at least 1 byte, got {min_unit}")
    if max_unit < min_unit:
        raise UsageError(f"max_unit ({max_unit}) is below min_unit ({min_unit})")
    for f in files:
        if f.size < 0:
            raise UsageError(f"{f.path}: negative size {f.size}")
    unit = _unit(sum(f.size for f in files), engines, min_unit, max_unit)

    out: list[Segment] = []

    def add(f: InputFile, offset: int, length: int, **kw: Any) -> None:
        out.append(Segment(len(out), f.path, f.blob, offset, length, kind, f.holders, **kw))

    for f in files:
        if kind == "file":
            add(f, 0, f.size)
        elif kind == "lines":
            for off in range(0, f.size, unit):
                add(f, off, min(unit, f.size - off))
        elif kind == "fixed":
            assert isinstance(records, int)
            rs = records
            if f.size % rs:
                raise UsageError(
                    f"{f.path}: size {f.size} is not a multiple of the record size {rs}"
                )
            n = f.size // rs
            per = max(1, unit // rs)
            for first in range(0, n, per):
                count = min(per, n - first)
                add(f, first * rs, count * rs, record_size=rs, first=first, count=count)
        else:  # idx
            if f.index is None:
                raise UsageError(f"{f.path}: records='idx' needs the file's .idx offsets")
            idx = check_index(f.index, f.size, f.path)
            n = len(idx) - 1
            first = 0
            while first < n:
                # The last record boundary within unit bytes of this segment's start,
                # but at least one record further.
                end = int(np.searchsorted(idx, idx[first] + unit, side="right")) - 1
                end = min(n, max(end, first + 1))
                start_b = int(idx[first])
                add(f, start_b, int(idx[end]) - start_b, first=first, count=end - first)
                first = end
    return out


def task_segments(params: Sequence[Any]) -> list[Segment]:
    """One ``"task"`` segment per parameter, for generator jobs that read no file.

    A task has no data and no holders, so it runs on whichever engine pulls it.
    """
    return [Segment(i, "", "", 0, 0, "task", (), param=p) for i, p in enumerate(params)]


Buffer = bytes | bytearray | memoryview | mmap.mmap


def _find_newline(buf: Buffer, pos: int, end: int) -> int:
    """The position of the first b"\\n" in ``buf[pos:end]``, or -1."""
    if isinstance(buf, memoryview):
        # memoryview has no find(): copy out a window that doubles until a newline shows,
        # so a long line costs O(line) and a short one O(64 KiB), never the whole buffer.
        step = 1 << 16
        while pos < end:
            stop = min(end, pos + step)
            i = bytes(buf[pos:stop]).find(b"\n")
            if i >= 0:
                return pos + i
            pos = stop
            step = min(step * 2, 1 << 24)
        return -1
    return buf.find(b"\n", pos, end)


def line_bounds(buf: Buffer, offset: int, length: int, size: int) -> tuple[int, int]:
    """Move the nominal range ``[offset, offset+length)`` of a file to line boundaries.

    ``buf`` holds the file's bytes (bytes or an mmap; a memoryview works too) and
    ``size`` its length. Hadoop's rule: a segment owns every line that *starts* inside
    its range, and reads the last one past its end. So each end moves to the first line
    start at or after it: just past the first b"\\n" at or after ``pos - 1`` (``pos``
    itself when the byte before it is a newline); 0 stays 0 and an end at or past
    ``size`` is ``size``; without a newline a bound is ``size``. Neighbouring ranges
    share an end and move it alike, so every line belongs to exactly one segment.
    Returns ``(start, end)`` with ``start <= end``; ``start == end`` is a segment with
    no line (a long line that started earlier covers its whole range).
    """
    if isinstance(buf, memoryview) and buf.format != "B":
        buf = buf.cast("B")
    if not (0 <= offset <= size and length >= 0):
        raise ValueError(f"bad range: offset {offset}, length {length} of {size} bytes")
    if size > len(buf):
        raise ValueError(f"the file has {size} bytes but the buffer only {len(buf)}")
    return _bound(buf, offset, size), _bound(buf, offset + length, size)


def _bound(buf: Buffer, pos: int, size: int) -> int:
    # The first line start at or after pos: pos itself when a line ends just before it.
    if pos <= 0:
        return 0
    if pos >= size:
        return size
    nl = _find_newline(buf, pos - 1, size)
    return size if nl < 0 else nl + 1
