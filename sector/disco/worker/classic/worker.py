"""``disco.worker.classic.worker`` on Sector: the classic ``Worker``.

A ``Worker`` is a dict of a job's settings with Disco's defaults. ``getitem`` resolves
a setting as Disco does: the keywords of ``Job.run``, then an attribute of the job
(a ``Job`` subclass may set ``map``, ``partitions``, ... as class attributes), then the
worker's own item, then the default. ``resolve`` fixes every setting once, on the
client; the resolved worker is what travels to the nodes (``ship``), and there its
``map_task`` / ``reduce_task`` run one task with Disco's semantics:

- map: the input through ``map_input_stream`` + ``map_reader`` (``map_init`` first sees
  the same iterator), each entry to ``map``, each (key, value) to ``partition`` (when
  ``partitions``) and to the partition's ``combiner`` buffer or output; at the end the
  ``combiner`` is called once more per buffer with ``done=True``.
- reduce: the partition's records through ``reduce_input_stream`` + ``reduce_reader``,
  sorted by key if ``sort``, ``reduce_init``, then ``reduce(iter, out, params)`` or the
  records ``reduce(iter, params)`` yields, through ``reduce_output_stream``.

Each task runs on its own copy of the settings (unpickled for it), so ``params`` is
the task's own, as on Disco. ``this_name()``, ``this_partition()``, ``this_host()`` and
``this_inputs()`` tell a running task where it is.
"""

from __future__ import annotations

import io
import pickle
import sys
from collections.abc import Callable, Iterator
from operator import itemgetter
from pathlib import Path
from typing import Any

from sector.disco import util
from sector.disco.compat import persistent_hash
from sector.disco.worker import Params
from sector.disco.worker.classic import func, spill
from sector.disco.worker.task_io import HUNK, DiscoOutputStream, StreamCombiner, chain_reader

__all__ = [
    "Params",
    "Worker",
    "this_host",
    "this_inputs",
    "this_master",
    "this_name",
    "this_partition",
]

# Settings a job function may name (resolved with ``getitem``), with Disco's defaults.
SETTINGS = (
    "map",
    "map_init",
    "map_reader",
    "map_input_stream",
    "map_output_stream",
    "combiner",
    "partition",
    "partitions",
    "merge_partitions",
    "reduce",
    "reduce_init",
    "reduce_reader",
    "reduce_input_stream",
    "reduce_output_stream",
    "params",
    "sort",
    "sort_buffer_size",
    "status_interval",
    "required_modules",
    "required_files",
    "save_results",
    "profile",
    "scheduler",
    "ext_params",
)


class _Task:
    """What a running task knows of itself (``this_name()`` and friends)."""

    jobname = ""
    host = ""
    master = ""
    group_label: Any = None
    inputs: list[list[str]] = []


Task = _Task()


class Worker(dict):
    """The classic worker: a job's settings (see the module doc and ``SETTINGS``)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(self.defaults())
        self.update(kwargs)

    def defaults(self) -> dict[str, Any]:
        return {
            "map": None,
            "map_init": func.init,
            "map_reader": None,
            "map_input_stream": (func.map_input_stream,),
            "map_output_stream": (func.map_output_stream, func.disco_output_stream),
            "combiner": None,
            "partition": func.default_partition,
            "partitions": 1,
            "merge_partitions": False,
            "reduce": None,
            "reduce_init": func.init,
            "reduce_reader": chain_reader,
            "reduce_input_stream": (func.reduce_input_stream,),
            "reduce_output_stream": (func.reduce_output_stream, func.disco_output_stream),
            "params": Params(),
            "sort": False,
            "sort_buffer_size": "10%",
            "status_interval": 100000,
            "required_modules": None,
            "required_files": {},
            "save_results": False,
            "profile": False,
            "scheduler": {},
            "ext_params": {},
        }

    def getitem(self, key: str, job: Any, jobargs: dict[str, Any], default: Any = None) -> Any:
        """``key`` from the run's keywords, else the job's attribute, else this worker."""
        if key in jobargs:
            return jobargs[key]
        if job is not None and hasattr(job, key):
            return getattr(job, key)
        return self.get(key, default)

    def resolve(self, job: Any, jobargs: dict[str, Any]) -> Worker:
        """A copy of this worker with every setting fixed (what the tasks get)."""
        out = type(self)()
        out.clear()
        for key in set(SETTINGS) | set(self):
            out[key] = self.getitem(key, job, jobargs)
        for key in ("map_input_stream", "map_output_stream"):
            out[key] = tuple(util.iterify(out[key] or ()))
        for key in ("reduce_input_stream", "reduce_output_stream"):
            out[key] = tuple(util.iterify(out[key] or ()))
        return out

    # ------------------------------------------------------------------ tasks

    def map_task(self, fd: Any, size: int, url: str) -> dict[int, bytes]:
        """One map task over one input (already open as ``fd``): the output of each
        partition, in the record format, by partition (0 when not partitioned)."""
        params = self["params"]
        streams = [*self["map_input_stream"], *([self["map_reader"]] if self["map_reader"] else [])]
        inp = StreamCombiner(url, streams, params, fd=fd, size=size)
        entries = _entries(inp)
        nparts = int(self["partitions"] or 0)
        fmap = self["map"]
        combiner = self["combiner"]
        part_of = _partitioner(self["partition"], nparts, params)
        outputs = _Outputs(self["map_output_stream"], params, url)
        self["map_init"](entries, params)
        if combiner is None and outputs.direct and part_of is _zero:
            # The common case, kept tight: every record to one list, pickled at the end.
            append = outputs.records(0).append
            for entry in entries:
                for key, val in fmap(entry, params):
                    append((key, val))
        elif combiner is None and outputs.direct:
            lists = outputs.lists
            for entry in entries:
                for key, val in fmap(entry, params):
                    part = part_of(key)
                    got = lists.get(part)
                    (got if got is not None else outputs.records(part)).append((key, val))
        elif combiner is None:
            for entry in entries:
                for key, val in fmap(entry, params):
                    outputs.add(part_of(key), key, val)
        elif combiner is func.sum_combiner and self["partition"] is func.default_partition:
            # Disco's own sum_combiner under Disco's own partition (a function of the
            # key alone): the same buffers, filled without a call per record -- one
            # dict of sums, split by partition once per distinct key at the end.
            total: dict[Any, Any] = {}
            get = total.get
            for entry in entries:
                for key, val in fmap(entry, params):
                    total[key] = get(key, 0) + val
            by_part: dict[Any, dict[Any, Any]] = {}
            for key, val in total.items():
                part = part_of(key)
                buf = by_part.get(part)
                if buf is None:
                    buf = by_part[part] = {}
                buf[key] = val
            for part, buf in by_part.items():
                for record in combiner(None, None, buf, True, params) or ():
                    outputs.add(part, *record)
        else:
            bufs: dict[Any, dict[Any, Any]] = {}
            for entry in entries:
                for key, val in fmap(entry, params):
                    part = part_of(key)
                    buf = bufs.get(part)
                    if buf is None:
                        buf = bufs[part] = {}
                    for record in combiner(key, val, buf, False, params) or ():
                        outputs.add(part, *record)
            for part, buf in bufs.items():
                for record in combiner(None, None, buf, True, params) or ():
                    outputs.add(part, *record)
        inp.close()
        return outputs.close()

    def read_task(self, fd: Any, size: int, url: str) -> bytes:
        """The input of a reduce-only job, read with the reduce's streams and reader,
        as records of the record format (what the reduce then gets)."""
        params = self["params"]
        reader = self["reduce_reader"]
        streams = [*self["reduce_input_stream"], *([reader] if reader else [])]
        inp = StreamCombiner(url, streams, params, fd=fd, size=size)
        sink = io.BytesIO()
        out = func.DiscoOutputStream(sink)
        batch: list[Any] = []
        for entry in inp:
            batch.append(entry)
            if len(batch) >= HUNK:
                out.extend(batch)
                batch = []
        out.extend(batch)
        inp.close()
        return sink.getvalue()

    def reduce_task(self, fd: Any, size: int, url: str, read: bool) -> bytes:
        """One reduce task over one partition's records (``fd``, the record format),
        in memory; its output whole (``reduce_stream`` without a spill directory)."""
        return b"".join(self.reduce_stream(fd, size, url, read))

    def reduce_stream(
        self,
        fd: Any,
        size: int,
        url: str,
        read: bool,
        spill_dir: Path | None = None,
        consumed: Callable[[], int] | None = None,
    ) -> Iterator[bytes]:
        """One reduce task over one partition's records (``fd``, the record format),
        its output in pieces; ``read``: through the reduce's streams and reader (a
        map-reduce job), or as they are (a reduce-only job, whose inputs ``read_task``
        read). With ``spill_dir`` (and ``consumed()``, the input bytes read so far) a
        sort runs on disk and an ``out`` reduce writes there (``spill``)."""
        params = self["params"]
        if read:
            reader = self["reduce_reader"]
            streams = [*self["reduce_input_stream"], *([reader] if reader else [])]
        else:
            streams = [chain_reader]
        inp = StreamCombiner(url, streams, params, fd=fd, size=size)
        entries: Iterator[Any] = _entries(inp)
        if self["sort"]:
            if spill_dir is None or consumed is None:
                entries = iter(sorted(entries, key=itemgetter(0)))
            else:
                entries = spill.sorted_on_disk(entries, spill_dir, consumed, spill.run_budget())
        ostreams = self["reduce_output_stream"]
        direct = tuple(ostreams) == _DEFAULT_OUTPUT

        def open_out(sink: Any) -> tuple[Any, Callable[[], None]]:
            if direct:
                out = DiscoOutputStream(sink)
                return out, out.close
            chain = StreamCombiner(url, ostreams, params, fd=sink, size=0)

            def close() -> None:
                for f in reversed(chain.fds):
                    shut = getattr(f, "close", None)
                    if f is not sink and shut is not None:
                        shut()

            return chain.last, close

        self["reduce_init"](entries, params)
        fred = self["reduce"]
        yield from spill.stream_out(
            fred, entries, params, open_out, direct, util.argcount(fred) < 3, spill_dir
        )
        inp.close()


def _entries(inp: StreamCombiner) -> Iterator[Any]:
    # One iterator for map_init and the task both: what map_init takes, map never sees.
    yield from inp


def _zero(key: Any) -> int:
    return 0


_CACHE_MAX = 1 << 18  # keys whose default partition a map task remembers


def _partitioner(partition: Any, nparts: int, params: Any) -> Callable[[Any], int]:
    if not nparts or (partition is func.default_partition and nparts == 1):
        return _zero
    if partition is func.default_partition:
        # md5 per record is most of a map's framing cost; keys repeat (words), and
        # Disco's partition of a str or bytes key depends on nothing else.
        cache: dict[Any, int] = {}

        def cached(key: Any) -> int:
            t = type(key)
            if t is not bytes and t is not str:
                return persistent_hash(key) % nparts
            p = cache.get(key)
            if p is None:
                p = persistent_hash(key) % nparts
                if len(cache) < _CACHE_MAX:
                    cache[key] = p
            return p

        return cached

    def part_of(key: Any) -> int:
        p = int(partition(key, nparts, params))
        if not 0 <= p < nparts:
            raise ValueError(
                f"the partition function put key {key!r:.80} in partition {p}, "
                f"outside range(0, {nparts})"
            )
        return p

    return part_of


_DEFAULT_OUTPUT = (func.map_output_stream, func.disco_output_stream)


class _Outputs:
    """A map task's outputs, one per partition, each a chain of output streams over an
    in-memory buffer (the task's output goes to Sphere in one piece). With the default
    streams (``direct``) a partition's records are gathered in a list and pickled in
    ``HUNK``-record lists at the end: what ``disco_output_stream`` writes, without a
    method call per record."""

    def __init__(self, streams: tuple[Callable[..., Any], ...], params: Any, url: str) -> None:
        self.streams = streams
        self.params = params
        self.url = url
        self.open_: dict[int, tuple[io.BytesIO, StreamCombiner]] = {}
        self.direct = tuple(streams) == _DEFAULT_OUTPUT
        self.lists: dict[int, list[Any]] = {}

    def records(self, part: int) -> list[Any]:
        got = self.lists.get(part)
        if got is None:
            got = self.lists[part] = []
        return got

    def open(self, part: int) -> Any:
        got = self.open_.get(part)
        if got is None:
            sink = io.BytesIO()
            chain = StreamCombiner(self.url, self.streams, self.params, fd=sink, size=part)
            got = self.open_[part] = (sink, chain)
        return got[1].last

    def add(self, part: int, key: Any, val: Any) -> None:
        if self.direct:
            self.records(part).append((key, val))
            return
        got = self.open_.get(part)
        (got[1].last if got is not None else self.open(part)).add(key, val)

    def close(self) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        for part, recs in self.lists.items():
            out[part] = b"".join(
                pickle.dumps(recs[i : i + HUNK], pickle.HIGHEST_PROTOCOL)
                for i in range(0, len(recs), HUNK)
            )
        for part, (sink, chain) in self.open_.items():
            for fd in reversed(chain.fds):
                close = getattr(fd, "close", None)
                if fd is not sink and close is not None:
                    close()
            out[part] = sink.getvalue()
        return out


def this_name() -> str:
    """The name of the job of the running task."""
    return Task.jobname


def this_master() -> str:
    """The cluster address the job was started through ("" for the default)."""
    return Task.master


def this_host() -> str:
    """The node (its id) that runs the current task."""
    return Task.host


def this_partition() -> Any:
    """A map task's input number, or a reduce task's partition."""
    return Task.group_label


def this_inputs() -> list[list[str]]:
    """The inputs of the running task (a list of replica lists)."""
    return Task.inputs


def get(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("out-of-band results (Task.get) are not supported on Sector")


def put(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("out-of-band results (Task.put) are not supported on Sector")


if __name__ == "__main__":  # pragma: no cover - Disco ran this module as its worker
    sys.exit("sector.disco's classic worker runs inside Sphere's engines, not as a program")
