"""What a UDF receives (``Batch``) and what it may return (``normalize``, ``split``). Pure.

The original hands a UDF one segment at a time as a buffer plus an int64 record index
(``SInput::m_pcUnit``/``m_pllIndex``) and takes back a buffer, an index and one bucket
id per record (``SOutput``; reference §3). We keep that shape, with numpy instead of raw
pointers, because the cost of Sphere in Python is per *call* and per *record*, not per
byte: a UDF is called once per segment, records are never Python objects unless the UDF
asks (``Batch.lines()``), and every per-record step here -- finding line ends, taking the
index of a fixed-size record, grouping records by bucket -- is a numpy operation.

Rules
-----
1. ``Batch.data`` is a read-only memoryview of the segment's bytes (often a slice of an
   mmap of the stored file): a UDF cannot corrupt a buffer it shares with the engine.
2. Records by kind: "lines" end at each b"\\n" (a last line without one is a record too);
   "fixed" are ``record_size`` bytes; "idx" are given by the file's index; a "file" or
   "task" batch is one record, its whole data (a task usually has none: its input is
   ``param``), so a batch of a segment always counts one unit of progress.
3. A UDF returns records as ``None``, bytes-likes, ``str``, a numpy array (a row, or an
   element of a 1-D array, is a record) or a list of bytes-likes; and with buckets, a
   pair ``(records, bucket_ids)``. ``normalize`` turns any of them into one ``Output``:
   one buffer plus either a fixed width or int64 offsets, never a list of objects.
4. ``split`` groups an output's records by bucket, keeping their relative order (a
   stable sort), so a bucket file receives records in stream order within a segment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sector.sphere.wire import KINDS

__all__ = ["Batch", "Output", "normalize", "split"]

Bytes = bytes | bytearray | memoryview


def _byte_view(data: Any) -> memoryview:
    mv = memoryview(data)
    if not mv.c_contiguous:
        return memoryview(mv.tobytes())
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    return mv


class Batch:
    """One segment's records, handed to the UDF in one call.

    Attributes: ``data`` (read-only memoryview of the segment's bytes), ``kind``,
    ``record_size``, ``path`` (the file), ``segment`` (its id), ``offset`` (of ``data``
    in the file), ``first`` (index of the first record in the file, "fixed"/"idx"),
    ``param`` (the job's parameter, or the task's), ``node`` (id of the node running it),
    ``required`` (the job's required files: Sector path -> local path, read-only).
    """

    __slots__ = (
        "_given",
        "_offsets",
        "data",
        "first",
        "kind",
        "node",
        "offset",
        "param",
        "path",
        "record_size",
        "required",
        "segment",
    )

    def __init__(
        self,
        data: Bytes,
        *,
        kind: str,
        record_size: int = 0,
        offsets: np.ndarray | None = None,
        path: str = "",
        segment: int = 0,
        offset: int = 0,
        first: int = 0,
        param: Any = None,
        node: str = "",
        required: dict[str, str] | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown batch kind {kind!r} (one of {', '.join(KINDS)})")
        self.data = _byte_view(data).toreadonly()
        self.kind = kind
        self.record_size = record_size
        self.path = path
        self.segment = segment
        self.offset = offset
        self.first = first
        self.param = param
        self.node = node
        self.required = dict(required or {})
        self._offsets: np.ndarray | None = None
        self._given: np.ndarray | None = None
        nbytes = self.data.nbytes
        if kind == "fixed":
            if record_size < 1 or nbytes % record_size:
                raise ValueError(
                    f"{nbytes} bytes are not a whole number of {record_size}-byte records"
                )
        elif kind == "idx":
            if offsets is None:
                raise ValueError("an 'idx' batch needs the records' offsets")
            given = np.asarray(offsets, dtype=np.int64)
            if given.ndim != 1 or len(given) == 0 or int(given[-1] - given[0]) != nbytes:
                raise ValueError(
                    f"the offsets (n+1 boundaries) do not cover the batch's {nbytes} bytes"
                )
            self._given = given

    def __len__(self) -> int:
        if self.kind == "fixed":
            return self.data.nbytes // self.record_size
        if self.kind in ("file", "task"):
            return 1
        return len(self.offsets) - 1

    def __repr__(self) -> str:
        return (
            f"<Batch {self.kind} {self.path!r} segment {self.segment}: "
            f"{len(self)} records, {self.data.nbytes} bytes>"
        )

    @property
    def offsets(self) -> np.ndarray:
        """int64 record boundaries relative to ``data``: n+1 of them, from 0 to its size."""
        if self._offsets is None:
            nbytes = self.data.nbytes
            if self.kind == "lines":
                u8 = np.frombuffer(self.data, np.uint8)
                ends = np.flatnonzero(u8 == 10) + 1
                tail = [nbytes] if nbytes and u8[-1] != 10 else []
                self._offsets = np.concatenate(([0], ends, tail)).astype(np.int64)
            elif self.kind == "fixed":
                n = nbytes // self.record_size
                self._offsets = np.arange(n + 1, dtype=np.int64) * self.record_size
            elif self.kind == "idx":
                assert self._given is not None
                self._offsets = self._given - self._given[0]
            else:  # file, task: one record
                self._offsets = np.array([0, nbytes], dtype=np.int64)
        return self._offsets

    @property
    def records(self) -> np.ndarray:
        """Fixed-size records as a zero-copy uint8 array of shape (n, record_size)."""
        if self.kind != "fixed":
            raise TypeError(
                f"Batch.records needs fixed-size records (records=<size>); this batch is "
                f"{self.kind!r}: use batch.offsets, batch.lines() or batch.array(dtype)"
            )
        return np.frombuffer(self.data, np.uint8).reshape(-1, self.record_size)

    def array(self, dtype: Any) -> np.ndarray:
        """The data as a zero-copy (read-only) numpy array of ``dtype``."""
        return np.frombuffer(self.data, dtype)

    def lines(self) -> list[bytes]:
        """The data split into lines, without their b"\\n" (or b"\\r\\n"); for small data.

        Unlike ``bytes.splitlines`` a lone b"\\r" does not end a line, so a "lines"
        batch has exactly ``len(batch)`` of them.
        """
        raw = bytes(self.data)
        if not raw:
            return []
        parts = raw.split(b"\n")
        if raw.endswith(b"\n"):
            parts.pop()
        return [p[:-1] if p.endswith(b"\r") else p for p in parts]

    def text(self, encoding: str = "utf-8") -> str:
        return str(self.data, encoding)


@dataclass(slots=True)
class Output:
    """A UDF's output records, normalised: one buffer and where its records end."""

    data: bytes | memoryview  # all output records, concatenated
    offsets: np.ndarray | None  # int64 n+1 boundaries, or None when width > 0
    width: int  # fixed record width, 0 if variable
    buckets: np.ndarray | int | None  # int64 id per record, one id for all, or None

    def __len__(self) -> int:
        if self.width:
            return self.nbytes // self.width
        assert self.offsets is not None
        return len(self.offsets) - 1

    @property
    def nbytes(self) -> int:
        return len(self.data) if isinstance(self.data, bytes) else self.data.nbytes


_ACCEPTED = "None, bytes, str, a numpy array, a list of bytes, or (records, bucket_ids)"


def _variable(data: bytes | memoryview, lengths: np.ndarray) -> Output:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return Output(data, offsets, 0, None)


def _from_array(a: np.ndarray) -> Output:
    if a.ndim not in (1, 2):
        raise TypeError(
            f"a UDF may return a 1-D or 2-D numpy array (a record per element or row), "
            f"not {a.ndim}-D"
        )
    if a.dtype.hasobject:
        raise TypeError("a UDF may not return a numpy array of Python objects")
    n = a.shape[0]
    width = a.itemsize * (a.shape[1] if a.ndim == 2 else 1)
    if width == 0:  # records of no bytes: keep them, as n empty variable records
        return _variable(b"", np.zeros(n, dtype=np.int64))
    flat = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    return Output(flat.data, None, width, None)


def _from_sequence(seq: list[Any] | tuple[Any, ...]) -> Output:
    parts: list[Bytes] = []
    for x in seq:
        if isinstance(x, str):
            parts.append(x.encode())
        elif isinstance(x, bytes | bytearray):
            parts.append(x)
        elif isinstance(x, memoryview):
            parts.append(_byte_view(x))
        else:
            raise TypeError(
                f"a list of records must hold bytes-likes (or str), not {type(x).__name__}"
            )
    lengths = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
    return _variable(b"".join(parts), lengths)


def _records(ret: Any) -> Output:
    if ret is None:
        return _variable(b"", np.zeros(0, dtype=np.int64))
    if isinstance(ret, bytes):
        return _variable(ret, np.array([len(ret)], dtype=np.int64))
    if isinstance(ret, bytearray | memoryview):
        mv = _byte_view(ret)
        return _variable(mv, np.array([mv.nbytes], dtype=np.int64))
    if isinstance(ret, str):
        return _records(ret.encode())
    if isinstance(ret, np.ndarray):
        return _from_array(ret)
    if isinstance(ret, list | tuple):
        return _from_sequence(ret)
    raise TypeError(f"a UDF must return {_ACCEPTED}; got {type(ret).__name__}")


def _is_int(x: Any) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


def _is_bucket_ids(x: Any) -> bool:
    # What tells (records, bucket_ids) from a pair of records: a record is bytes-like,
    # bucket ids are an int or integers -- the two never overlap.
    if isinstance(x, np.ndarray):
        return x.dtype.kind in "iu"
    if isinstance(x, list | tuple | range):
        return all(_is_int(i) for i in x)
    return _is_int(x)


def normalize(ret: Any) -> Output:
    """Turn whatever a UDF returned into an ``Output`` (see rule 3 of this module)."""
    if isinstance(ret, Output):  # built by a vectorised helper (e.g. sphere stream)
        return ret
    if isinstance(ret, tuple) and len(ret) == 2 and _is_bucket_ids(ret[1]):
        out = _records(ret[0])
        ids = ret[1]
        if _is_int(ids):
            out.buckets = int(ids)
            return out
        arr = np.asarray(ids, dtype=np.int64)
        if arr.ndim != 1 or len(arr) != len(out):
            raise ValueError(
                f"the UDF returned {len(out)} records but {arr.size} bucket ids "
                f"(one per record, or one int for all)"
            )
        out.buckets = arr
        return out
    return _records(ret)


# Variable-width records are gathered through a byte index built for this many output
# bytes at a time: the index (8 bytes per byte) stays in cache and small next to the data.
_GATHER_CHUNK = 1 << 19


def _check_ids(ids: np.ndarray, nbuckets: int) -> None:
    bad = np.flatnonzero((ids < 0) | (ids >= nbuckets))
    if len(bad):
        i = int(bad[0])
        raise ValueError(
            f"bucket id {int(ids[i])} (record {i}) is outside [0, {nbuckets})"
            + (f", and {len(bad) - 1} more" if len(bad) > 1 else "")
        )


def _gather_variable(src: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenate ``src[starts[i]:starts[i]+lengths[i]]`` for every i, vectorised.

    The byte index of a chunk is built as a running sum: ones (the next byte of the same
    record) with, at the first byte of each record, the jump from the previous record's
    last byte. That is one fill, one scatter of a value per record and one cumsum --
    about 5x faster than ``np.repeat(starts - out_starts, lengths) + arange``.
    """
    if not lengths.all():  # an empty record has no first byte to put its jump on
        keep = lengths > 0
        starts, lengths = starts[keep], lengths[keep]
    n = len(lengths)
    ends = np.cumsum(lengths)
    dst = np.empty(int(ends[-1]) if n else 0, dtype=np.uint8)
    jumps = np.empty(n, dtype=np.intp)
    if n:
        jumps[0] = 0
        jumps[1:] = starts[1:] - (starts[:-1] + lengths[:-1] - 1)
    r0 = 0
    while r0 < n:
        base = int(ends[r0] - lengths[r0])
        r1 = int(np.searchsorted(ends, base + _GATHER_CHUNK, side="right"))
        r1 = min(n, max(r0 + 1, r1))
        m = int(ends[r1 - 1]) - base
        index = np.ones(m, dtype=np.intp)
        index[0] = starts[r0]
        index[ends[r0 : r1 - 1] - base] = jumps[r0 + 1 : r1]
        np.cumsum(index, out=index)
        # mode="clip": the index is valid by construction, and numpy buffers ``out``
        # (a second copy) in the default mode="raise".
        np.take(src, index, out=dst[base : base + m], mode="clip")
        r0 = r1
    return dst


def split(out: Output, nbuckets: int) -> list[tuple[int, memoryview | bytes]]:
    """Group ``out``'s records by bucket id.

    Returns ``[(bucket, its records' bytes, concatenated in their original order)]`` for
    the non-empty buckets, ascending. An output with no records gives ``[]`` (a UDF
    that returns nothing needs no bucket ids); one id for all returns the buffer itself.
    """
    if nbuckets < 1:
        raise ValueError(f"split needs at least one bucket, got {nbuckets}")
    n = len(out)
    if n == 0:
        return []
    if out.buckets is None:
        raise ValueError("the UDF must return (records, bucket_ids) when the job has buckets")
    if isinstance(out.buckets, int | np.integer):
        b = int(out.buckets)
        if not 0 <= b < nbuckets:
            raise ValueError(f"bucket id {b} is outside [0, {nbuckets})")
        return [(b, out.data)]
    ids = np.asarray(out.buckets)
    if ids.shape != (n,):
        raise ValueError(f"{n} records but {ids.size} bucket ids")
    _check_ids(ids, nbuckets)

    if bool(np.all(ids[1:] >= ids[:-1])):
        # Already grouped (one bucket, or a UDF that emits in bucket order): slice the
        # buffer as it is, no copy.
        order = None
        sorted_ids = ids
    else:
        # A stable sort keeps each bucket's records in their order. Small ids make it a
        # radix sort (numpy sorts ints of <= 16 bits so), ~4x faster than on int64.
        key = ids
        if nbuckets <= 256:
            key = ids.astype(np.uint8)
        elif nbuckets <= 65536:
            key = ids.astype(np.uint16)
        order = np.argsort(key, kind="stable")
        sorted_ids = ids[order]

    src = np.frombuffer(out.data, np.uint8)
    if out.width:
        w = out.width
        # One take of whole rows, as fixed-size opaque items, moves each record once.
        grouped = src if order is None else np.take(src.view(f"V{w}"), order).view(np.uint8)
        rec_bounds = np.arange(n + 1, dtype=np.int64) * w
    else:
        assert out.offsets is not None
        offs = np.asarray(out.offsets, dtype=np.int64)
        if order is None:
            rec_bounds = offs - offs[0]
            grouped = src[int(offs[0]) : int(offs[-1])]
        else:
            lengths = np.diff(offs)[order]
            grouped = _gather_variable(src, offs[:-1][order], lengths)
            rec_bounds = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(lengths, out=rec_bounds[1:])

    # Where each bucket's run of records starts and ends in the grouped buffer.
    cuts = np.flatnonzero(sorted_ids[1:] != sorted_ids[:-1]) + 1
    first = np.concatenate(([0], cuts))
    last = np.concatenate((cuts, [n]))
    starts = rec_bounds[first]
    stops = rec_bounds[last]
    view = grouped.data
    return [
        (int(sorted_ids[f]), view[int(a) : int(b)])
        for f, a, b in zip(first, starts, stops, strict=True)
    ]
