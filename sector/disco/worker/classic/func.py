"""``disco.worker.classic.func`` on Sector: the classic job functions.

The shapes of a classic job's functions (Disco's documented interfaces):

    map(entry, params)                          -> iterable of (key, value)
    partition(key, nr_partitions, params)       -> int in range(nr_partitions)
    combiner(key, value, buffer, done, params)  -> iterable of (key, value), or None
    reduce(input_stream, output_stream, params) -> None (``out.add(k, v)``)
    reduce(input_stream, params)                -> iterable of (key, value)
    init(input_iter, params)                    (map_init / reduce_init)
    reader(fd, size, url[, params])             -> iterable of entries

and the ready-made ones programs use: ``nop_map``, ``nop_reduce``, ``sum_combiner``,
``sum_reduce``, ``default_partition`` (Disco's md5 of the key), ``make_range_partition``
and the readers of ``task_io`` (``chain_reader``, ``re_reader``, ...), which Disco
exported from here too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from sector.disco.compat import persistent_hash
from sector.disco.error import DataError
from sector.disco.worker.task_io import (
    DiscoOutputStream,
    DiscoPlainOut,
    StreamCombiner,
    chain_reader,
    chain_stream,
    default_stream,
    disco_input_stream,
    disco_output_stream,
    gzip_line_reader,
    gzip_line_stream,
    gzip_reader,
    gzip_stream,
    plain_output_stream,
    re_reader,
    string_input_stream,
    task_input_stream,
    task_output_stream,
)

__all__ = [
    "DataError",
    "DiscoOutputStream",
    "DiscoPlainOut",
    "StreamCombiner",
    "chain_reader",
    "chain_stream",
    "default_partition",
    "default_stream",
    "disco_input_stream",
    "disco_output_stream",
    "gzip_line_reader",
    "gzip_line_stream",
    "gzip_reader",
    "gzip_stream",
    "init",
    "make_range_partition",
    "map_input_stream",
    "map_line_reader",
    "map_output_stream",
    "netstr_reader",
    "noop",
    "nop_map",
    "nop_reduce",
    "plain_output_stream",
    "re_reader",
    "reduce_input_stream",
    "reduce_output_stream",
    "string_input_stream",
    "sum_combiner",
    "sum_reduce",
    "task_input_stream",
    "task_output_stream",
]


def init(input_iter: Any, params: Any) -> None:
    """The default map_init / reduce_init: nothing to do."""


def default_partition(key: Any, nr_partitions: int, params: Any) -> int:
    """Disco's partition of a key: the md5 of its UTF-8 bytes, modulo the number of
    partitions (stable across processes, unlike ``hash()``)."""
    return persistent_hash(key) % nr_partitions


def make_range_partition(min_val: int, max_val: int) -> Callable[[Any, int, Any], int]:
    """A partition function that splits integer keys in ``[min_val, max_val]`` into
    equal ranges, one per partition."""
    r = max_val - min_val

    def range_partition(key: Any, nr_partitions: int, params: Any = None) -> int:
        return round((int(key) - min_val) / r * (nr_partitions - 1))

    return range_partition


def noop(*args: Any, **kwargs: Any) -> None:
    pass


def nop_map(entry: Any, params: Any) -> Iterator[Any]:
    """Yields its input: the entries of the input become the map's output."""
    yield entry


def nop_reduce(iter: Any, out: Any, params: Any) -> None:
    """Copies its input to its output (one result per partition of many maps)."""
    for k, v in iter:
        out.add(k, v)


def sum_combiner(key: Any, value: Any, buf: dict[Any, Any], done: bool, params: Any) -> Any:
    """Sums the values of each key within a map task (per partition)."""
    if not done:
        buf[key] = buf.get(key, 0) + value
        return None
    return buf.items()


def sum_reduce(iter: Any, params: Any) -> Any:
    """Sums the values of each key."""
    buf: dict[Any, Any] = {}
    for key, value in iter:
        buf[key] = buf.get(key, 0) + value
    return buf.items()


def map_line_reader(fd: Any, size: Any, url: str) -> Iterator[Any]:
    """The lines of the input without their line ends (Disco 0.3's line reader)."""
    for line in fd:
        yield line.rstrip(b"\r\n" if isinstance(line, bytes) else "\r\n")


def netstr_reader(fd: Any, size: Any, url: str) -> Iterator[Any]:
    """Disco 0.3's name of the reader of job results."""
    return chain_reader(fd, size, url)


map_input_stream = reduce_input_stream = task_input_stream
map_output_stream = reduce_output_stream = task_output_stream
