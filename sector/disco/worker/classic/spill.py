"""A Disco reduce over more data than memory: ``sort=True`` on disk, output streamed.

A Disco reduce task runs as a Sphere stream-mode reduce (``sphere.bucket``): its
partition's records are read hunk by hunk from the bucket's parts, never as one buffer.

Sorting (``sorted_on_disk``), as Disco's own disk sort and Hadoop's reduce-side merge:
records are gathered into a *run* until it holds about ``budget`` bytes (estimated: the
input bytes it came from plus ``PER_RECORD`` a record, for the Python objects), the run
is sorted by key and spilled to a file of ``spill_dir``, and the runs are merged with
``heapq.merge`` by key. Both sorts are stable and ``heapq.merge`` takes equal keys from
earlier runs first, so the order is exactly ``sorted(records, key=key)``'s (Disco's),
str or bytes keys alike. A partition that fits in one run is sorted in memory and never
written. Runs are pickled -- they hold the job's own Python objects, as Disco's record
format does; they live only as long as the task -- in small hunks (``RUN_HUNK``), so the
merge holds ``RUN_HUNK`` records per run. One merge pass: runs x RUN_HUNK records at once.

Output (``stream_out``): the records a generator reduce yields are pickled and handed on
``HUNK`` at a time; a reduce that writes to ``out`` writes through its output streams to
a file of ``spill_dir``, read back in pieces when it returns.
"""

from __future__ import annotations

import heapq
import io
import os
import pickle
from collections.abc import Callable, Iterator
from operator import itemgetter
from pathlib import Path
from typing import Any

from sector.sphere.bucket import memory_limit

__all__ = ["PER_RECORD", "RUN_HUNK", "run_budget", "sorted_on_disk"]

PER_RECORD = 100  # bytes a record costs in memory beyond its input bytes (a tuple, refs)
RUN_HUNK = 256  # records per pickled hunk of a spilled run
_PROTO = pickle.HIGHEST_PROTOCOL
_KEY = itemgetter(0)
READ_PIECE = 8 << 20  # bytes of a spilled output read back at a time


def run_budget() -> int:
    """Bytes (estimated) a run may hold: an eighth of the engine's memory limit, or
    64 MiB without one -- the rest is the engine's baseline, the sort's own lists, the
    merge's hunks and the reduce's state."""
    limit = memory_limit()
    return 64 << 20 if limit is None else max(1 << 20, limit // 8)


def _spill(run: list[Any], spill_dir: Path, n: int) -> Path:
    run.sort(key=_KEY)
    path = spill_dir / f"run-{n:05d}"
    with open(path, "xb") as f:
        for i in range(0, len(run), RUN_HUNK):
            pickle.dump(run[i : i + RUN_HUNK], f, _PROTO)
    return path


def _read_run(path: Path) -> Iterator[Any]:
    with open(path, "rb", buffering=1 << 16) as f:
        while True:
            try:
                hunk = pickle.load(f)
            except EOFError:
                break
            yield from hunk
    os.unlink(path)  # read: its disk space back before the merge ends


def sorted_on_disk(
    entries: Iterator[Any], spill_dir: Path, consumed: Callable[[], int], budget: int
) -> Iterator[Any]:
    """``entries`` sorted by key (their first item), spilling sorted runs of about
    ``budget`` bytes to ``spill_dir``; ``consumed()``: input bytes read so far."""
    run: list[Any] = []
    runs: list[Path] = []
    start = consumed()
    for entry in entries:
        run.append(entry)
        # consumed() moves a buffer at a time: checked every RUN_HUNK records is enough.
        if len(run) % RUN_HUNK == 0 and consumed() - start + PER_RECORD * len(run) >= budget:
            runs.append(_spill(run, spill_dir, len(runs)))
            run = []
            start = consumed()
    if not runs:
        run.sort(key=_KEY)
        yield from run
        return
    if run:
        runs.append(_spill(run, spill_dir, len(runs)))
    del run
    yield from heapq.merge(*(_read_run(p) for p in runs), key=_KEY)


def stream_out(
    fred: Callable[..., Any],
    entries: Iterator[Any],
    params: Any,
    open_out: Callable[[Any], Any],
    direct: bool,
    generator_form: bool,
    spill_dir: Path | None,
) -> Iterator[bytes]:
    """The reduce's output, in pieces (see the module doc). ``open_out(sink)``: the
    output object over a sink (the reduce's output streams); ``direct``: the default
    streams (pickled hunks of records); ``generator_form``: ``reduce(iter, params)``."""
    from sector.disco.worker.task_io import HUNK

    if direct and generator_form:
        hunk: list[Any] = []
        for record in fred(entries, params) or ():
            k, v = record
            hunk.append((k, v))
            if len(hunk) >= HUNK:
                yield pickle.dumps(hunk, _PROTO)
                hunk = []
        if hunk:
            yield pickle.dumps(hunk, _PROTO)
        return
    sink: Any = io.BytesIO() if spill_dir is None else open(spill_dir / "out", "w+b")  # noqa: SIM115
    try:
        out, close = open_out(sink)
        if generator_form:
            for record in fred(entries, params) or ():
                out.add(*record)
        else:
            fred(entries, out, params)
        close()
        sink.seek(0)
        while piece := sink.read(READ_PIECE):
            yield piece
    finally:
        sink.close()
