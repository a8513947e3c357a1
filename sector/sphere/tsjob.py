"""TeraSort on Sphere, the hello world (original §3 "TeraSort"; kernels in ``terasort``).

- ``gen``: one generator task per output file, run on the nodes (the data is made where
  it will be stored, never uploaded from the client); file i holds rows
  [i*n/F, (i+1)*n/F) of the one deterministic gensort stream.
- ``sort``: stage 1 reads 100-byte records where they are stored and sends each to a
  bucket by key range (bucket i holds keys below bucket i+1's), so the buckets in
  order are the sorted output once each is sorted; stage 2 sorts each bucket on the
  node that holds it (no data moves). By default stage 2 is the job's *reduce*: it
  runs on the bucket's node over the parts it received, as the bucket is committed,
  so no intermediate file is written, hashed and read again. ``stages=2`` runs it as
  a second job over intermediate bucket files (one replica; a lost one is recomputed
  by the job, see ``driver``).
- ``validate``: every output file's summary (count, order-independent checksum, first
  and last key, sorted?) computed on its node; merged in file order by the client.

UDFs here are module-level functions of the installed package, so they are pickled by
reference and the engines import them.
"""

from __future__ import annotations

import contextlib
import math
import secrets
from typing import Any, Protocol

import msgspec

from sector.errors import SectorError, UsageError
from sector.sphere import terasort as ts
from sector.sphere.api import Sphere
from sector.sphere.batch import Batch
from sector.sphere.wire import STAGING, staging_owner


class Client(Protocol):
    """The sync client, as TeraSort uses it."""

    @property
    def sphere(self) -> Sphere: ...
    def ls(self, path: str = "/") -> list[dict[str, Any]]: ...
    def whoami(self) -> dict[str, Any]: ...
    def rm(self, path: str, *, recursive: bool = False) -> int: ...


BUCKET_BYTES = 64 << 20  # target size of a bucket (its sort holds it in memory)
FILE_BYTES = 256 << 20  # default size of a generated file
SEGMENT_BYTES = 256 << 20  # largest map segment (the parts grow with it, memory does not)
# From this much input on, the shuffle's parts are compressed (``shuffle_compress``):
# gensort records shrink 7.6x at zstd's fast level. Measured on 3 nodes here, paired
# runs: at 4 GB the sort took 23.6 s against 28.1 s (26.1 against 34.6 in another
# pair), the map phase a third shorter; at 1 GB, whose parts the page cache holds,
# compressing only cost CPU (4.85 s against 4.09 s).
COMPRESS_FROM = 2 << 30


def gen_udf(seg: Batch) -> Any:
    start, count, seed = seg.param
    return ts.gen_records(start, count, seed)


def bucket_udf(seg: Batch) -> Any:
    recs = seg.records
    return recs, ts.bucket_of(recs, seg.param)


def sort_udf(seg: Batch) -> Any:
    return ts.sort_records(ts.as_records(seg.data))


def summary_udf(seg: Batch) -> Any:
    return msgspec.msgpack.encode(ts.summary(ts.as_records(seg.data)))


def gen(
    c: Client,
    path: str,
    records: int,
    *,
    files: int | None = None,
    seed: int = 0,
    replicas: int | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    if records < 1:
        raise UsageError("--records must be at least 1")
    if files is None:
        files = max(len(c.sphere.engines()), math.ceil(records * ts.RECORD / FILE_BYTES))
    if not 1 <= files <= records:
        raise UsageError("--files must be from 1 to the number of records")
    bounds = [records * i // files for i in range(files + 1)]
    tasks = [(bounds[i], bounds[i + 1] - bounds[i], seed) for i in range(files)]
    job = c.sphere.run(gen_udf, tasks=tasks, output=path, replicas=replicas, name="terasort gen")
    res = job.wait(progress=progress)
    return {**res, "records": records}


def sort(
    c: Client,
    src: str,
    dst: str,
    *,
    buckets: int | None = None,
    replicas: int | None = 1,
    stages: int = 1,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Sort ``src`` into ``dst``: bucket by key range, then sort each bucket on its node.

    ``stages=1`` (the default) runs both steps as one job: the sort is the job's
    reduce, run on each bucket's node over the parts it received, so the buckets never
    become intermediate Sector files. ``stages=2`` runs them as two jobs, the second
    reading the first's bucket files (the classic Sphere form; slower: every byte is
    written, hashed and read once more).
    """
    if stages not in (1, 2):
        raise UsageError("--stages must be 1 or 2")
    total = sum(e["size"] for e in c.ls(src) if e["type"] == "file")
    engines = sum(c.sphere.engines().values()) or 2
    if buckets is None:
        # Buckets of about BUCKET_BYTES, at least two per engine and a whole number per
        # engine: every engine sorts the same share, and while one bucket is written
        # and fsynced the next is sorted (8 buckets over 6 engines left one node
        # sorting its third bucket alone: 2.7 s of reducing against 1.6 s with 18).
        want = max(math.ceil(total / BUCKET_BYTES), 2 * engines)
        buckets = engines * math.ceil(want / engines)
    if not 1 <= buckets <= 1 << 16:
        raise UsageError("--buckets must be from 1 to 65536")
    # The map of both forms: each 100-byte record to its bucket by key range.
    # The map runs on batches of a bucket's size: an engine holds its batch about
    # three times over (the read, the records grouped by bucket, the parts being
    # written), so this, not the data set's size, sets its peak memory; the segments
    # stay large, so the parts do too (64 MiB segments made 4x as many parts, and the
    # 16 GB sort slower). About three segments per engine where the data is small:
    # idle engines pull the tail (10 segments over 6 engines mapped 1 GB in 3.3 s,
    # 18 in 1.4 s).
    by_key = {
        "records": ts.RECORD,
        "buckets": buckets,
        "param": buckets,
        "map_batch": BUCKET_BYTES,
        "shuffle_compress": total >= COMPRESS_FROM,
        "max_unit": min(SEGMENT_BYTES, max(1 << 20, total // (3 * engines))),
    }
    if stages == 1:
        s = c.sphere.run(
            bucket_udf,
            src,
            **by_key,
            output=dst,
            reduce=sort_udf,
            replicas=replicas,
            name="terasort (bucket, sort)",
        ).wait(progress=progress)
        done = [s]
    else:
        # Intermediate buckets live in the user's staging area (its compute right
        # covers it).
        owner = staging_owner(c.whoami().get("user"))
        tmp = f"{STAGING}/{owner}/terasort-{secrets.token_hex(6)}"
        try:
            s1 = c.sphere.run(
                bucket_udf,
                src,
                **{**by_key, "shuffle_compress": False},  # the parts are the bucket files
                output=tmp,
                replicas=1,
                durable=False,  # intermediate: only stage 2 reads it; its output is fsynced
                name="terasort 1/2 (buckets)",
            ).wait(progress=progress)
            s2 = c.sphere.run(
                sort_udf, tmp, output=dst, replicas=replicas, name="terasort 2/2 (sort)"
            ).wait(progress=progress)
        finally:
            with contextlib.suppress(SectorError):
                c.rm(tmp, recursive=True)  # never made (stage 1 failed early) or gone
        done = [s1, s2]
    return {
        "input": src,
        "output": dst,
        "buckets": buckets,
        "records": done[-1]["records_out"],
        "seconds": round(sum(s["seconds"] for s in done), 3),
        "stages": [
            {
                k: s[k]
                for k in ("job", "seconds", "segments", "speculative", "failed_attempts", "phases")
            }
            for s in done
        ],
    }


def summarize(c: Client, path: str, *, progress: bool | None = None) -> dict[str, Any]:
    res = c.sphere.run(summary_udf, path, name="terasort validate").wait(progress=progress)
    parts = [msgspec.msgpack.decode(r) for r in res["results"]]
    out = ts.merge_summaries(parts)
    out["files"] = len(parts)
    return out


def validate(
    c: Client, path: str, *, input: str | None = None, progress: bool | None = None
) -> dict[str, Any]:
    out = summarize(c, path, progress=progress)
    res: dict[str, Any] = {
        "path": path,
        "records": out["records"],
        "checksum": f"{out['checksum']:016x}",
        "sorted": bool(out["sorted"]),
        "files": out["files"],
        "error": out.get("error"),
    }
    if input is not None:
        inp = summarize(c, input, progress=progress)
        res["input_records"] = inp["records"]
        res["input_checksum"] = f"{inp['checksum']:016x}"
        res["same_records"] = (
            inp["records"] == out["records"] and inp["checksum"] == out["checksum"]
        )
        if not res["same_records"] and res["error"] is None:
            res["error"] = "the output does not hold the same records as the input"
    res["ok"] = res["sorted"] and res["error"] is None
    return res
