"""A job's options, checked before anything starts (``c.sphere.run(udf, **options)``).

``job_options`` refuses what cannot work (a reduce without buckets, buckets without an
output, ...) as a ``UsageError`` at ``run()``, and settles the job's output mode from
the options: buckets > files > client (or none, ``to_client=False``). The options are
described in ``api``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sector.errors import UsageError

__all__ = ["job_options"]


def job_options(
    *,
    input: Any = None,
    output: str | None = None,
    buckets: int = 0,
    records: Any = "file",
    param: Any = None,
    tasks: Sequence[Any] | None = None,
    replicas: int | None = None,
    min_unit: int = 1 << 20,
    max_unit: int = 256 << 20,
    speculate: bool = True,
    max_attempts: int = 4,
    engines: int | None = None,
    name: str | None = None,
    to_client: bool | None = None,
    durable: bool = True,
    reduce: Callable[..., Any] | None = None,
    reduce_records: Any = "file",
    map_batch: int | None = None,
    shuffle_compress: bool = False,
    required_files: str | Sequence[str] | None = None,
) -> dict[str, Any]:
    """Check a job's options; the mode follows from them (buckets > files > client)."""
    if reduce is not None:
        if not buckets:
            raise UsageError("reduce needs buckets: it runs on each bucket's node")
        if not callable(reduce):
            raise UsageError(f"reduce must be a function, not {type(reduce).__name__}")
    if not (
        reduce_records in ("file", "lines", "stream")
        or (
            isinstance(reduce_records, int)
            and not isinstance(reduce_records, bool)
            and 1 <= reduce_records <= 1 << 30
        )
    ):
        raise UsageError(
            "reduce_records must be 'file', 'lines', 'stream' or a record size, "
            f"not {reduce_records!r}"
        )
    if not isinstance(buckets, int) or isinstance(buckets, bool) or not 0 <= buckets <= 1 << 16:
        raise UsageError(f"buckets must be a whole number from 0 to 65536, not {buckets!r}")
    if buckets and output is None:
        raise UsageError("a job with buckets needs an output directory")
    if replicas is not None and not 1 <= replicas <= 16:
        raise UsageError("replicas must be from 1 to 16")
    if not 1 <= min_unit <= max_unit:
        raise UsageError("min_unit must be >= 1 and <= max_unit")
    if map_batch is not None:
        if not isinstance(map_batch, int) or isinstance(map_batch, bool) or map_batch < 1:
            raise UsageError(f"map_batch must be a number of bytes >= 1, not {map_batch!r}")
        if not isinstance(records, int) or isinstance(records, bool):
            raise UsageError("map_batch needs fixed-size records (records=<bytes per record>)")
        if output is None:
            raise UsageError("map_batch needs an output (files or buckets)")
    if not isinstance(shuffle_compress, bool):
        raise UsageError(f"shuffle_compress must be True or False, not {shuffle_compress!r}")
    if shuffle_compress and reduce is None:
        # A bucket file is its parts as they are unless a reduce reads them.
        raise UsageError("shuffle_compress needs a reduce (it reads the compressed parts)")
    if tasks is None and input is None:
        raise UsageError("a job needs an input (files, a directory or a glob) or tasks")
    if tasks is not None and input is not None:
        raise UsageError("give a job either an input or tasks, not both")
    if isinstance(required_files, str):
        required_files = [required_files]
    required = list(required_files or ())
    for p in required:
        if not isinstance(p, str) or not p.startswith("/"):
            raise UsageError(f"required_files must be absolute Sector paths, not {p!r}")
    if buckets:
        mode = "buckets"
    elif output is not None:
        mode = "files"
    elif to_client is False:
        mode = "none"
    else:
        mode = "client"
    return {
        "input": input,
        "output": output,
        "buckets": buckets,
        "records": records,
        "param": param,
        "tasks": tasks,
        "replicas": replicas,
        "min_unit": min_unit,
        "max_unit": max_unit,
        "speculate": speculate,
        "max_attempts": max_attempts,
        "engines": engines,
        "name": name,
        "mode": mode,
        "durable": durable,
        "reduce": reduce,
        "reduce_records": reduce_records,
        "map_batch": map_batch,
        "shuffle_compress": shuffle_compress,
        "required_files": required,
    }
