"""``disco.worker.task_io`` on Sector: input and output streams, readers and writers.

A task reads an input through a chain of *input streams* ``f(fd, size, url[, params])``
(each returns a file-like object, or ``(fd, size, url)``) and iterates what the last one
returns; it writes ``(key, value)`` records through a chain of *output streams*
``f(fd, partition, url[, params])`` and calls ``add(key, value)`` on the last one. That
is Disco's contract; ``StreamCombiner`` runs a chain. ``params`` is passed only to a
function that declares it (``util.argcount``).

On Sector the task opens its input itself (a Sector file's bytes, from the node that
holds them; ``raw://`` data), so ``task_input_stream`` hands on what it is given, and
``task_output_stream`` the buffer the task collects a partition's output in.

The record format (what ``disco_output_stream`` writes and ``chain_reader`` reads): a
stream of pickles, each a list of up to ``HUNK`` records -- pickle keeps the records'
Python types from one job to the next (Disco's format did too), and a pickle per list,
not per record, keeps the framing's cost per record at C speed. Results of a job are
such streams, so they are valid input of the next job with ``chain_reader``.
"""

from __future__ import annotations

import io
import pickle
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from sector.disco import util
from sector.disco.compat import str_to_bytes
from sector.disco.error import DataError

__all__ = [
    "HUNK",
    "DiscoOutputStream",
    "DiscoPlainOut",
    "StreamCombiner",
    "chain_reader",
    "chain_stream",
    "default_stream",
    "disco_input_stream",
    "disco_output_stream",
    "gzip_line_reader",
    "gzip_line_stream",
    "gzip_reader",
    "gzip_stream",
    "plain_output_stream",
    "re_reader",
    "string_input_stream",
    "task_input_stream",
    "task_output_stream",
]

HUNK = 4096  # records per pickled list
_PROTO = pickle.HIGHEST_PROTOCOL


def task_input_stream(stream: Any, size: Any, url: str, params: Any) -> Any:
    """The input as the task opened it (on Sector the task reads its input itself)."""
    return stream, size, url


def task_output_stream(stream: Any, partition: Any, url: str, params: Any) -> Any:
    """The buffer the task collects this partition's output in."""
    return stream


def string_input_stream(string: str, size: Any, url: str, params: Any) -> Any:
    return io.StringIO(string), len(string), url


def gzip_reader(fd: Any, size: Any, url: str, params: Any) -> Any:
    """Wraps the input in a ``gzip.GzipFile``."""
    from gzip import GzipFile

    return GzipFile(fileobj=fd), size, url


def gzip_line_reader(fd: Any, size: Any, url: str, params: Any) -> Iterator[bytes]:
    """The lines of a gzipped input."""
    from gzip import GzipFile

    yield from GzipFile(fileobj=fd)


class DiscoOutputStream:
    """The writer of the record format: ``add(k, v)`` buffers a record and every
    ``HUNK`` records one pickled list goes to the underlying stream."""

    def __init__(self, stream: Any, hunk: int = HUNK) -> None:
        self.stream = stream
        self.hunk = hunk
        self.records: list[Any] = []

    def add(self, k: Any, v: Any) -> None:
        self.records.append((k, v))
        if len(self.records) >= self.hunk:
            self.flush()

    def append(self, record: Any) -> None:
        self.records.append(record)
        if len(self.records) >= self.hunk:
            self.flush()

    def extend(self, records: Sequence[Any]) -> None:
        """Many records at once (a list of them is pickled as one hunk)."""
        self.flush()
        if records:
            self.stream.write(pickle.dumps(list(records), _PROTO))

    def flush(self) -> None:
        if self.records:
            self.stream.write(pickle.dumps(self.records, _PROTO))
            self.records = []

    def write(self, data: bytes) -> None:
        self.flush()
        self.stream.write(data)

    def close(self) -> None:
        self.flush()


def disco_output_stream(stream: Any, partition: Any, url: str, params: Any) -> DiscoOutputStream:
    """Output stream of the record format."""
    return DiscoOutputStream(stream)


def _at_end(stream: Any) -> bool:
    peek = getattr(stream, "peek", None)
    if peek is not None:
        return not peek(1)
    if getattr(stream, "seekable", lambda: False)():
        pos = stream.tell()
        got = stream.read(1)
        stream.seek(pos)
        return not got
    return False


def disco_input_stream(
    stream: Any, size: Any = None, url: str = "", ignore_corrupt: bool = False
) -> Iterator[Any]:
    """The records of the record format (the results of a job), in order."""
    offset = 0
    while True:
        if _at_end(stream):
            return
        try:
            hunk = pickle.load(stream)
        except EOFError:
            if offset == 0 and not _seekable(stream):
                return  # an empty, unseekable stream
            raise DataError(f"Truncated data after {offset} records", url) from None
        except Exception as exc:
            if ignore_corrupt is True:
                return
            raise DataError(
                f"Corrupted data after {offset} records (not the output of a job? use "
                f"another reader): {type(exc).__name__}: {exc}",
                url,
            ) from None
        if not isinstance(hunk, list):
            raise DataError(f"Corrupted data after {offset} records: not a list of records", url)
        offset += len(hunk)
        yield from hunk


def _seekable(stream: Any) -> bool:
    return bool(getattr(stream, "seekable", lambda: False)())


def chain_reader(stream: Any, size: Any, url: str, params: Any = None) -> Iterator[Any]:
    """Reads the results of a job (the record format): the reader to chain jobs."""
    return disco_input_stream(stream, size, url)


def re_reader(
    item_re_str: str | bytes,
    fd: Any,
    size: Any,
    fname: str,
    output_tail: bool = False,
    read_buffer_size: int = 8192,
) -> Iterator[Any]:
    """Input entries parsed by a regular expression: each match's ``groups()``.

    Bytes are read into a buffer and matched at its start, again and again; bytes
    left unmatched at the end are yielded (``output_tail``) or dropped with a warning.
    The expression must cover every byte of the input.
    """
    pattern = item_re_str if isinstance(item_re_str, bytes) else str_to_bytes(item_re_str)
    item_re = re.compile(pattern)
    buf = b""
    tot = 0
    while True:
        r = fd.read(min(read_buffer_size, size - tot) if size else read_buffer_size)
        if isinstance(r, str):
            r = str_to_bytes(r)
        tot += len(r)
        buf += r
        m = item_re.match(buf)
        while m:
            yield m.groups()
            buf = buf[m.end() :]
            m = item_re.match(buf)
        if not r or (size is not None and tot >= size):
            if size is not None and tot < size:
                raise DataError(f"Truncated input: expected {size} bytes, got {tot}", fname)
            if buf:
                if output_tail:
                    yield [buf]
                else:
                    print(f"Couldn't match the last {len(buf)} bytes in {fname}.")
            break


class DiscoPlainOut:
    """A text output: ``len key len value`` lines (Disco's plain format)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def add(self, k: Any, v: Any) -> None:
        k, v = str(k), str(v)
        self.stream.write(str_to_bytes(f"{len(k)} {k} {len(v)} {v}\n"))

    def close(self) -> None:
        pass


def plain_output_stream(stream: Any, partition: Any, url: str, params: Any) -> DiscoPlainOut:
    return DiscoPlainOut(stream)


chain_stream = (task_input_stream, chain_reader)
default_stream = (task_input_stream,)
gzip_stream = (task_input_stream, gzip_reader)
gzip_line_stream = (task_input_stream, gzip_line_reader)


class StreamCombiner:
    """Runs a chain of input or output streams from ``fd`` (Disco's contract): each is
    called with what the previous one returned, and with ``params`` only if it takes
    four arguments; iterating the combiner iterates the last one's result."""

    def __init__(
        self,
        url: str,
        streams: Sequence[Callable[..., Any]],
        params: Any,
        fd: Any = None,
        size: Any = None,
    ) -> None:
        self.fds: list[Any] = []
        self.url = url
        for stream in streams:
            maybe_params = (params,) if util.argcount(stream) == 4 else ()
            fd = stream(fd, size, url, *maybe_params)
            if isinstance(fd, tuple):
                if len(fd) == 3:
                    fd, size, url = fd
                else:
                    fd, url = fd
            self.fds.append(fd)
        if not self.fds:
            self.fds.append(fd)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fds[-1])

    @property
    def last(self) -> Any:
        return self.fds[-1]

    def close(self) -> None:
        for fd in reversed(self.fds):
            close = getattr(fd, "close", None)
            if close is not None:
                close()
