"""Word count: Disco's job API on Sector against Dask bags and PySpark RDDs.

    python bench/disco.py [--size 1G] [--nodes 3] [--files N] [--only sector,dask,...]

One run, one machine. The text (``--size`` bytes, 1G = 10^9; words from a fixed
vocabulary of 10,000 with Zipf-like frequencies, ``examples/wordcount/text.py``) is
made on the nodes of a local Sector cluster as ``--files`` files (not timed), then
copied to a local directory for the peers (not timed). Every system runs the same
per-record Python map, ``words(line)`` (each word of a line with a 1), adds the counts
of each word, and hands the whole ``{word: count}`` back to the driving program:

    sector        ``sector.disco``: ``Job().run(map=words, reduce=sum_reduce,
                  partitions=P)`` over the files in Sector (one map task per file, on
                  ``--nodes`` nodes with one engine per core in all), then
                  ``result_iterator``: every (word, 1) goes through the shuffle
    sector+comb   the same with ``combiner=sum_combiner``: each map task sums its
                  words first (what the peers below do by design)
    dask          ``dask.bag.read_text`` of the local files (a partition per file),
                  ``map_partitions`` of ``words`` over the lines, ``foldby`` (a
                  per-partition fold, then a tree of combines), on a
                  ``LocalCluster`` of one single-threaded worker process per core
                  (the per-record Python holds the GIL: processes, not threads)
    spark         PySpark ``local[cores]`` RDD: ``textFile`` (a partition per file),
                  ``flatMap(words)``, ``reduceByKey(add)`` (map-side combine in the
                  Python workers), ``collectAsMap``

Not timed: cluster and session start-up, and a warm-up run of each on a little text.
All outputs must be equal (keys compared as text). ``x Sector`` is the peer's seconds
over ``sector+comb``'s (the like-for-like row: every peer combines map-side). The
goals of issue 12: >= 1.5x against Dask, >= 2x against Spark. Writes
``bench/results/disco.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from operator import add
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, mbps, write_result

from sector.disco import runtime
from sector.disco.core import Job, result_iterator
from sector.disco.worker.classic.func import sum_combiner, sum_reduce
from sector.testing.cluster import ProcCluster

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SYSTEMS = ("sector", "sector+comb", "dask", "spark")
GOALS = {"dask": 1.5, "spark": 2.0}


def words(line: Any, params: Any = None) -> Iterator[tuple[Any, int]]:
    """The map of every system: each word of a line (bytes or str) with a 1."""
    for word in line.split():
        yield word, 1


def size_arg(text: str) -> int:
    """'1G' -> 10^9, '200M' -> 2 * 10^8, '5000' -> 5000 (decimal units, as terasort.py)."""
    scale = {"k": 10**3, "m": 10**6, "g": 10**9}.get(text[-1:].lower(), 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def load(rel: str) -> ModuleType:
    path = EXAMPLES / rel
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def run_sector(address: str, inputs: list[str], partitions: int, combine: bool) -> dict[Any, int]:
    extra: dict[str, Any] = {"combiner": sum_combiner} if combine else {}
    job = Job(master=address).run(
        input=inputs, map=words, reduce=sum_reduce, partitions=partitions, **extra
    )
    try:
        return dict(result_iterator(job.wait()))
    finally:
        job.purge()


def _dask_words(lines: Iterable[str]) -> list[tuple[str, int]]:
    return [kv for line in lines for kv in words(line)]


def run_dask(files: list[str]) -> dict[Any, int]:
    import dask.bag as db

    pairs = db.read_text(files, blocksize=None).map_partitions(_dask_words)
    counts = pairs.foldby(lambda kv: kv[0], lambda acc, kv: acc + kv[1], 0, add, 0)
    return dict(counts.compute())


def run_spark(sc: Any, local_dir: str, nfiles: int) -> dict[Any, int]:
    rdd = sc.textFile(local_dir, minPartitions=nfiles)
    return dict(rdd.flatMap(words).reduceByKey(add).collectAsMap())


def timed(fn: Callable[[], dict[Any, int]]) -> tuple[float, dict[Any, int]]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def as_text(counts: dict[Any, int]) -> dict[str, int]:
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in counts.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=size_arg, default=10**9, help="bytes of text, e.g. 200M")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument(
        "--files", type=int, default=0, help="default: ~32 MB each, whole waves of map tasks"
    )
    ap.add_argument("--partitions", type=int, default=4, help="Sector's reduce tasks")
    ap.add_argument("--only", default=",".join(SYSTEMS), help="systems to run")
    ap.add_argument("--dir", type=Path, default=None, help="where the temporary files go")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--out", default="disco.json")
    args = ap.parse_args()
    only = [s for s in args.only.split(",") if s]
    cores = os.cpu_count() or 1
    engines = max(1, cores // args.nodes)
    slots = args.nodes * engines  # map tasks that run at once: whole waves of them
    files = args.files or max(2, -(-args.size // (32 * 10**6) // slots)) * slots
    root = Path(tempfile.mkdtemp(prefix="sector-disco-", dir=args.dir))
    text = load("wordcount/text.py")
    res: dict[str, Any] = {
        "settings": {**vars(args), "dir": str(args.dir), "files": files, "engines": engines},
        "seconds": {},
    }
    got: dict[str, dict[str, int]] = {}
    local = root / "text"
    local.mkdir()
    try:
        with ProcCluster(root / "cl", replicas=1, node_args=["--engines", str(engines)]) as cl:
            cl.start(args.nodes)
            with cl.connect() as c:
                t = time.perf_counter()
                text.make(c, args.size, "/wc", files=files)
                res["gen_seconds"] = time.perf_counter() - t
                paths = sorted(e["path"] for e in c.ls("/wc") if e["type"] == "file")
                res["bytes"] = sum(int(e["size"]) for e in c.ls("/wc") if e["type"] == "file")
                for p in paths:
                    c.get(p, str(local / p.rsplit("/", 1)[-1]))
                run_sector(cl.address, ["raw://a b a"], 2, True)  # warm: engines, imports
                for name in ("sector", "sector+comb"):
                    if name in only:
                        secs, out = timed(
                            lambda n=name: run_sector(
                                cl.address, ["/wc"], args.partitions, n == "sector+comb"
                            )
                        )
                        res["seconds"][name], got[name] = secs, as_text(out)
            runtime.close_clients()
        local_files = sorted(str(p) for p in local.iterdir())
        if "dask" in only:
            from dask.distributed import Client, LocalCluster

            with (
                LocalCluster(
                    n_workers=cores,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    local_directory=str(root / "dask-local"),
                    silence_logs=logging.ERROR,
                ) as lc,
                Client(lc),
            ):
                run_dask(local_files[:1])  # warm
                res["seconds"]["dask"], got["dask"] = timed(lambda: run_dask(local_files))
        if "spark" in only:
            from pyspark.sql import SparkSession

            spark_local = root / "spark-local"
            spark_local.mkdir()
            spark = (
                SparkSession.builder.master(f"local[{cores}]")
                .appName("disco-bench")
                .config("spark.local.dir", str(spark_local))
                .config("spark.ui.enabled", "false")
                .config("spark.ui.showConsoleProgress", "false")
                .getOrCreate()
            )
            spark.sparkContext.setLogLevel("ERROR")
            try:
                run_spark(spark.sparkContext, local_files[0], 1)  # warm
                res["seconds"]["spark"], got["spark"] = timed(
                    lambda: run_spark(spark.sparkContext, str(local), len(local_files))
                )
            finally:
                spark.stop()
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    names = [s for s in SYSTEMS if s in got]
    first = got[names[0]]
    res["outputs_equal"] = {s: got[s] == first for s in names}
    res["distinct_words"] = len(first)
    res["words"] = sum(first.values())
    res["machine"] = machine()
    secs = res["seconds"]
    base = secs.get("sector+comb") or secs.get("sector")
    print(
        f"word count: {res['bytes'] / 1e6:,.0f} MB of text in {files} files, "
        f"{res['words']:,} words ({len(first):,} distinct)"
    )
    print(f"{'system':<13}{'seconds':>9}{'MB/s':>8}{'x Sector':>10}  output")
    for s in names:
        ratio = secs[s] / base if base else 0.0
        goal = f"  (goal >= {GOALS[s]})" if s in GOALS else ""
        same = "same" if res["outputs_equal"][s] else "DIFFERS"
        print(
            f"{s:<13}{secs[s]:>9.2f}{mbps(res['bytes'], secs[s]):>8.1f}{ratio:>10.2f}  {same}{goal}"
        )
    print(f"wrote {write_result(args.out, res)}")
    if not all(res["outputs_equal"].values()):
        sys.exit("outputs differ")


if __name__ == "__main__":
    main()
