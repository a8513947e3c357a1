"""Listing a large directory (issue 17): time to the first page and entries a second.

    python bench/listing.py [--entries 20000] [--nodes 5] [--dir DIR]

A cluster of ``--nodes`` node processes (``ProcCluster``, R = 1: the directory's
entries are empty files' worth of metadata, made with ``mkdir_many``, not timed). Then,
on a warm cluster, the best of three passes each:

    first page   ``Client.ls_page`` of 1,000 entries: what ``sector ls`` shows at once
    whole        ``Client.ls``: every entry with its record (pages underneath)
    names        every page with ``detail=False`` (``sector ls`` without ``-l``):
                 names and types from the directory's record alone

The anchor is the same listing on the local file system of this machine: a directory
of as many entries (``os.scandir`` + ``stat`` of each), the floor a Python program gets
from the kernel. Results: a table and ``bench/results/listing.json``.

Then the cost of a create into the big directory against one into an empty directory
(the issue's "a create into it costs no more than into an empty one"): ``--creates``
puts of a 4 KiB file into each, alternating, one at a time; the median latency of each
and their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import machine, write_result

import sector
from sector.testing.cluster import ProcCluster

RUNS = 3
FILE_BYTES = 4096  # a create's file, as bench/metadata.py's


def best(fn: Any) -> float:
    """The best of RUNS timings of fn() (seconds): the machine is shared and noisy."""
    times = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def local_listing(base: Path, n: int) -> dict[str, float]:
    d = base / "local"
    d.mkdir()
    for i in range(n):
        (d / f"e{i:07d}").mkdir()

    def scan() -> None:
        got = [(e.name, e.stat()) for e in os.scandir(d)]
        assert len(got) == n

    def first() -> None:
        with os.scandir(d) as it:
            [(e.name, e.stat()) for _, e in zip(range(1000), it, strict=False)]

    return {"first_page_s": best(first), "whole_s": best(scan)}


def create_cost(c: sector.Client, base: Path, creates: int) -> dict[str, float]:
    """Median seconds of a small put into /big and into an empty directory, taken in
    turn so that both see the same machine."""
    c.mkdir("/small")
    src = base / "create.bin"
    src.write_bytes(os.urandom(FILE_BYTES))
    took: dict[str, list[float]] = {"/big": [], "/small": []}
    for i in range(creates):
        for d, times in took.items():
            t0 = time.perf_counter()
            c.put(src, f"{d}/f{i:06d}")
            times.append(time.perf_counter() - t0)
    return {f"create_{d[1:]}_s": statistics.median(t) for d, t in took.items()}


def sector_listing(base: Path, n: int, nodes: int, creates: int) -> dict[str, float]:
    with ProcCluster(base / "cl", replicas=1) as cl:
        cl.start(nodes)
        cl.wait_ring(60)
        with sector.connect(cl.nodes[0].address, timeout=120) as c:
            t0 = time.perf_counter()
            batch = c.mkdir_many([f"/big/e{i:07d}" for i in range(n)])
            made = time.perf_counter() - t0
            assert not batch.failed, batch.failed[:3]
            c.ls("/big")  # warm: the owner's sorted names, the range caches

            def first() -> None:
                page, _ = c.ls_page("/big", limit=1000)
                assert len(page) == min(n, 1000)

            def whole() -> None:
                assert len(c.ls("/big")) == n

            def names() -> None:  # sector ls without -l: names and types, no records
                got, after = c.ls_page("/big", detail=False)
                while after is not None:
                    page, after = c.ls_page("/big", after=after, detail=False)
                    got += page
                assert len(got) == n

            t0 = time.perf_counter()
            c.ls_page("/big", detail=False)
            bare_first = time.perf_counter() - t0
            return {
                "first_page_s": best(first),
                "whole_s": best(whole),
                "names_first_page_s": bare_first,
                "names_whole_s": best(names),
                "made_s": made,
                **create_cost(c, base, creates),
            }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=20_000)
    ap.add_argument("--nodes", type=int, default=5)
    ap.add_argument("--creates", type=int, default=200, help="timed puts into each directory")
    ap.add_argument("--dir", type=Path, default=None, help="where the cluster and files go")
    args = ap.parse_args(argv)
    n = args.entries
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        base = Path(tmp)
        local = local_listing(base, n)
        ours = sector_listing(base, n, args.nodes, args.creates)
    bare = {"first_page_s": ours["names_first_page_s"], "whole_s": ours["names_whole_s"]}
    rows = {"sector": ours, "sector names": bare, "local fs": local}
    print(f"listing a directory of {n:,} entries ({args.nodes} nodes; best of {RUNS})")
    print(f"{'':12} {'first page':>12} {'whole':>10} {'entries/s':>12} {'x local':>8}")
    for name, r in rows.items():
        rate = n / r["whole_s"]
        ratio = r["whole_s"] / local["whole_s"]
        print(
            f"{name:12} {r['first_page_s'] * 1000:10.1f} ms {r['whole_s']:8.2f} s "
            f"{rate:12,.0f} {ratio:7.1f}x"
        )
    print(f"(made with mkdir_many in {ours['made_s']:.1f} s: {n / ours['made_s']:,.0f} mkdir/s)")
    big, small = ours["create_big_s"], ours["create_small_s"]
    print(
        f"a {FILE_BYTES // 1024} KiB create, median of {args.creates}: into /big "
        f"{big * 1000:.1f} ms, into an empty directory {small * 1000:.1f} ms ({big / small:.2f}x)"
    )
    out = write_result(
        "listing.json", {"machine": machine(), "entries": n, "nodes": args.nodes, "results": rows}
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
