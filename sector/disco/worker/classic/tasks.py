"""The Sphere UDFs that run a Disco job's tasks on the nodes.

A Disco job is one Sphere job (``runtime``): its segments are the job's inputs, whole
files (``records="file"``: one map task per input, which sees its input whole and
once, on a node that holds a replica), its buckets are the job's partitions, and its
reduce runs on each bucket's node. The UDFs here are ``partial``s of the packed job
(``ship.pack``), unpacked afresh for every task:

- ``map_udf``: the classic map over one input; returns each partition's output (the
  record format of ``task_io``) with the partition as its bucket id.
- ``read_udf``: a reduce-only job's input, read with the reduce's reader, to the
  bucket of its partition (0 unless every input is a partition of a map-only job).
- ``reduce_udf``: the classic reduce over one bucket, a Sphere stream-mode reduce
  (``spill``: the bucket is never in memory, ``sort`` runs on disk); what it yields is
  the result file of that partition.

A task that raises fails its Sphere attempt with the traceback, which fails the job
(Sphere does not retry a UDF that raised) and reaches ``wait()`` as a ``JobError``.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

from sector.disco.ship import Unpacked
from sector.disco.worker.classic import func
from sector.disco.worker.classic import worker as classic

__all__ = ["map_udf", "read_udf", "reduce_udf"]

# Disco ran the job functions with the classic worker's module globals as fall-backs:
# programs used ``chain_reader`` or ``nop_reduce`` without importing them.
_GLOBALS = {n: getattr(func, n) for n in func.__all__}


def _open(meta: dict[str, Any], seg: Any) -> tuple[Any, int, str]:
    """The task's input as Disco hands it to the first input stream: a file object,
    its size and its URL (``raw://`` data as text, as Disco did under Python 3)."""
    url, raw = meta["inputs"].get(seg.path, (seg.path, False))
    if raw:
        text = bytes(seg.data).decode("utf-8")
        return io.StringIO(text), len(text), url
    data = bytes(seg.data)
    return io.BytesIO(data), len(data), url


def _enter_task(meta: dict[str, Any], seg: Any, label: Any, inputs: list[list[str]]) -> None:
    t = classic.Task
    t.jobname = meta["name"]
    t.master = meta.get("master") or ""
    t.host = getattr(seg, "node", "")
    t.group_label = label
    t.inputs = inputs


def map_udf(blob: bytes, seg: Any) -> Any:
    """One map task (a Sphere UDF over one whole input file)."""
    with Unpacked(blob, _GLOBALS, seg.required) as (worker, meta):
        fd, size, url = _open(meta, seg)
        _enter_task(meta, seg, seg.segment, [[url]])
        parts = worker.map_task(fd, size, url)
        if not parts:
            return None
        merge = meta["merge"]
        order = sorted(parts)
        return [parts[p] for p in order], [0 if merge else p for p in order]


def read_udf(blob: bytes, seg: Any) -> Any:
    """A reduce-only job's input, read by the reduce's reader, to its partition."""
    with Unpacked(blob, _GLOBALS, seg.required) as (worker, meta):
        fd, size, url = _open(meta, seg)
        _enter_task(meta, seg, seg.segment, [[url]])
        data = worker.read_task(fd, size, url)
        label = meta["labels"].get(seg.path, 0)
        return (data, label) if data else None


def reduce_udf(blob: bytes, seg: Any) -> Iterator[bytes]:
    """One reduce task (a Sphere stream-mode reduce over one bucket: the partition's
    records, read from its parts as they are needed; ``sort`` on disk, in the bucket's
    spill directory); its output in pieces, written as they come."""
    with Unpacked(blob, _GLOBALS, seg.required) as (worker, meta):
        fd = seg.reader()
        url = f"sector://{meta.get('master') or ''}{seg.path}"
        _enter_task(meta, seg, seg.segment, [[url]])
        try:
            yield from worker.reduce_stream(
                fd, seg.nbytes, url, meta["has_map"], seg.spill_dir, fd.raw.tell
            )
        finally:
            fd.close()
