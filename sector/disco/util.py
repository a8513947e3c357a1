"""``disco.util`` on Sector: the helpers Disco programs import (``kvgroup``,
``shuffled``, ``iterify``, ...), with Disco's meanings, and ``argcount``, which decides
whether a job function or reader is handed ``params`` (Disco's rule: by the number of
positional parameters it still takes, ``partial`` arguments subtracted).

Disco's URL helpers for its own master and DDFS (``urlsplit``, ``proxy_url``, ...)
have no meaning on Sector and are not here; ``jobname`` reads the job's name out of a
result URL (``sector:///disco/<name>/...``).
"""

from __future__ import annotations

import functools
import heapq
import inspect
import pickle
import random
import tempfile
from collections.abc import Callable, Iterable, Iterator
from itertools import chain, groupby, islice, repeat
from typing import Any

from sector.disco.error import DiscoError

__all__ = [
    "argcount",
    "chainify",
    "dsorted",
    "flatten",
    "globalize",
    "hexhash",
    "identity",
    "ilen",
    "isiterable",
    "iskv",
    "iterify",
    "jobname",
    "key",
    "kvgroup",
    "kvify",
    "listify",
    "partition",
    "reify",
    "schemesplit",
    "shuffled",
]


def chainify(iterable: Iterable[Iterable[Any]]) -> list[Any]:
    return list(chain(*iterable))


def dsorted(iterable: Iterable[Any], buffer_size: float = 1e6, tempdir: str | None = None) -> Any:
    """Sort more items than fit in memory: sorted runs of ``buffer_size`` items are
    pickled to temporary files and merged."""

    def read(handle: Any) -> Iterator[Any]:
        while True:
            try:
                yield pickle.load(handle)
            except EOFError:
                return

    it = iter(iterable)
    runs = []
    while True:
        buffer = sorted(islice(it, int(buffer_size)))
        handle = tempfile.TemporaryFile(dir=tempdir)  # noqa: SIM115 - read by the merge
        for item in buffer:
            pickle.dump(item, handle, -1)
        handle.seek(0)
        runs.append(read(handle))
        if len(buffer) < buffer_size:
            break
    return heapq.merge(*runs)


def flatten(iterable: Iterable[Any]) -> Iterator[Any]:
    for item in iterable:
        if isiterable(item):
            yield from flatten(item)
        else:
            yield item


def hexhash(data: bytes) -> str:
    from hashlib import md5

    return md5(data).hexdigest()[:2]


def identity(obj: Any) -> Any:
    return obj


def isiterable(obj: Any) -> bool:
    return hasattr(obj, "__iter__") and not isinstance(obj, str | bytes)


def iskv(obj: Any) -> bool:
    return isinstance(obj, tuple) and len(obj) == 2


def iterify(obj: Any) -> Iterable[Any]:
    if isiterable(obj):
        return obj
    return repeat(obj, 1)


def ilen(it: Iterable[Any]) -> int:
    return sum(1 for _ in it)


def key(k_v: Any) -> Any:
    return k_v[0]


def kvgroup(kviter: Iterable[Any]) -> Iterator[tuple[Any, Iterator[Any]]]:
    """Group the values of consecutive equal keys: ``(k, v)`` pairs in, ``(k, vs)``
    out. Does not sort the input first."""
    for k, kvs in groupby(kviter, key):
        yield k, (v for _k, v in kvs)


def kvify(entry: Any) -> Any:
    return entry if iskv(entry) else (entry, None)


def listify(obj: Any) -> list[Any]:
    return list(iterify(obj))


def partition(iterable: Iterable[Any], fn: Callable[[Any], Any]) -> tuple[list[Any], list[Any]]:
    t: list[Any] = []
    f: list[Any] = []
    for item in iterable:
        (t if fn(item) else f).append(item)
    return t, f


def reify(dotted_name: str, globals: dict[str, Any] | None = None) -> Any:
    """The object a dotted name refers to (``"os.path.join"``)."""
    if "." in dotted_name:
        package, name = dotted_name.rsplit(".", 1)
        return getattr(__import__(package, fromlist=[name]), name)
    return (globals or {})[dotted_name]


def shuffled(obj: Any) -> list[Any]:
    """The items of ``obj`` in a random order, as a new list."""
    out = listify(obj)
    random.shuffle(out)
    return out


def argcount(obj: Any) -> int:
    """How many positional parameters ``obj`` still takes, as Disco counts them: a
    function's own, less a ``partial``'s positional and keyword arguments (and a bound
    method's ``self``). Disco passes ``params`` to a reader only when this is 4, and
    uses the 3-argument reduce (``reduce(iter, out, params)``) when it is 3 or more."""
    if isinstance(obj, functools.partial):
        return argcount(obj.func) - len(obj.args or ()) - len(obj.keywords or ())
    if inspect.ismethod(obj):
        return argcount(obj.__func__) - 1
    code = getattr(obj, "__code__", None)
    if code is not None:
        return int(code.co_argcount)
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return 0
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in sig.parameters.values() if p.kind in kinds)


def globalize(obj: Any, globals: dict[str, Any]) -> None:
    """Make ``globals`` globals of the function ``obj`` (without replacing any)."""
    if isinstance(obj, functools.partial):
        obj = obj.func
    if inspect.ismethod(obj):
        obj = obj.__func__
    g = getattr(obj, "__globals__", None)
    if isinstance(g, dict):
        for k, v in globals.items():
            g.setdefault(k, v)


def schemesplit(url: str) -> tuple[str, str]:
    """``("raw", "data")`` for ``"raw://data"``; ``("", url)`` without a scheme."""
    if "://" in url:
        scheme, rest = url.split("://", 1)
        return scheme, rest
    return "", url


def jobname(url: str) -> str:
    """The name of the job a result URL belongs to (``sector:///disco/<name>/...``)."""
    from sector.disco.inputs import job_of

    name = job_of(url)
    if name is None:
        raise DiscoError(f"Cannot parse jobname from {url}")
    return name
