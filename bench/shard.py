"""A node holding many metadata records (issue 17): what each background pass costs.

    python bench/shard.py [--records 100k,1M] [--dir DIR] [--keep]

For each N, a node's metadata store is built offline with N file records in
directories of 1,000 entries (``MetaStore.put_many`` in big batches; the files' one
replica is that node, so nothing is under-replicated and repair has nothing to do).
Then real node processes (``ProcCluster``) run on it and the bench measures:

- ``restart``: process start until it listens (node.json), then until a stat answers;
- ``info``: ``node.info`` latency (median of 9; the web page polls it every 1.5 s);
- ``join``: a second node joins the one holding everything: seconds until it holds
  its half as owner plus the other half as replica (records moved per second);
- ``sync_idle``: one pass of the metadata sync loop with nothing changed (the
  ``meta-sync`` worker's last pass);
- ``anti_entropy``: the owner's sync pass after its replica peer restarted (its
  layout changed, so it reconciles the whole arc with a peer that already has it);
- ``repair_scan``: one periodic repair scan pass (``repair-scan`` worker);
- ``gc``: one collector pass (``gc.now``; it walks blobs, not records);
- ``rss``: the peak resident set (VmHWM) of the node that held N records.

Per-record cost is seconds / N; the growth column is the 1M figure over the 100k one
(10 = linear in the shard, ~1 = proportional to what changed). Results: a rich table
and ``bench/results/shard.json``.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import machine, write_result

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console
from rich.table import Table

from sector.testing import shard
from sector.testing.cluster import NodeProc, ProcCluster, wait_for

PER_DIR = 1000


def parse_n(s: str) -> int:
    s = s.strip().lower()
    mult = {"k": 1000, "m": 1_000_000}.get(s[-1:], 1)
    return int(float(s.rstrip("km")) * mult)


def build(data: Path, n: int) -> float:
    t0 = time.perf_counter()
    shard.build(data, n, per_dir=PER_DIR)
    return time.perf_counter() - t0


def rows(data: Path) -> int:
    con = sqlite3.connect(f"file:{data / 'meta.sqlite3'}?mode=ro", uri=True, timeout=30)
    try:
        return int(con.execute("SELECT COUNT(*) FROM records").fetchone()[0])
    finally:
        con.close()


def info(c: Any, node: NodeProc) -> dict[str, Any]:
    out: dict[str, Any] = c._run(c._aio.pool.call(node.address, "node.info", {}))
    return out


def worker(inf: dict[str, Any], name: str) -> dict[str, Any]:
    return next(w for w in inf["workers"] if w["name"] == name)


def next_pass(c: Any, node: NodeProc, name: str, timeout: float) -> float:
    """The duration of the next pass of worker ``name`` that starts after now."""
    runs = worker(info(c, node), name)["runs"]
    try:
        w = wait_for(
            lambda: (lambda x: x if x["runs"] >= runs + 2 else None)(worker(info(c, node), name)),
            timeout,
            interval=0.5,
            what=f"a pass of {name}",
        )
    except TimeoutError:
        return float("inf")  # no pass ended within the limit
    return float(w["last_seconds"])


def vmhwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def run_one(root: Path, n: int, console: Console, limit: float) -> dict[str, Any]:
    out: dict[str, Any] = {"records": n}
    d0 = root / "node-0"
    console.print(f"[bold]N = {n:,}[/]: building the store ...")
    out["build_s"] = build(d0, n)
    total = rows(d0)
    out["rows"] = total
    console.print(f"  built {total:,} rows in {out['build_s']:.1f} s")
    cl = ProcCluster(root, replicas=1)
    try:
        # restart to serving: the node starts on an existing store of N records.
        t0 = time.perf_counter()
        n0 = cl.add()
        out["restart_listen_s"] = time.perf_counter() - t0
        with cl.connect(n0.address) as c:
            wait_for(lambda: c.stat("/d00000/f000000"), 120, interval=0.02, what="a stat")
            out["restart_serving_s"] = time.perf_counter() - t0
            lat = []
            for _ in range(9):
                t = time.perf_counter()
                inf = info(c, n0)
                lat.append(time.perf_counter() - t)
            out["info_s"] = statistics.median(lat)
            out["info_files"] = inf["files"]
            out["sync_idle_s"] = next_pass(c, n0, "meta-sync", limit)
            out["repair_scan_s"] = next_pass(c, n0, "repair-scan", limit)
            t = time.perf_counter()
            c._run(c._aio.pool.call(n0.address, "gc.now", {}))
            out["gc_s"] = time.perf_counter() - t
            # join: a second node takes half the keys (absorbed) and replicates the rest.
            t = time.perf_counter()
            n1 = cl.add(join=n0.address)
            try:
                wait_for(lambda: rows(n1.data) >= total, limit, interval=0.5, what="the handoff")
                out["join_s"] = time.perf_counter() - t
            except TimeoutError:  # recorded as such: how many rows moved by the deadline
                out["join_timed_out"] = True
                out["join_s"] = time.perf_counter() - t
            out["join_rows"] = rows(n1.data)
            out["join_records_per_s"] = out["join_rows"] / out["join_s"]
            cl.wait_ring(120)
            # anti-entropy: node-1 restarts; node-0's layout changes and it reconciles.
            cl.restart(n1)
            cl.wait_ring(120)
            out["anti_entropy_s"] = next_pass(c, n0, "meta-sync", limit)
            out["rss_bytes"] = vmhwm(n0.proc.pid) if n0.proc else 0
    finally:
        cl.close()
    return out


COLS = [
    ("restart_serving_s", "restart to serving"),
    ("info_s", "node.info"),
    ("sync_idle_s", "sync pass, nothing changed"),
    ("anti_entropy_s", "anti-entropy pass (peer back)"),
    ("join_s", "join: half moved + replicated"),
    ("repair_scan_s", "repair scan pass"),
    ("gc_s", "gc pass"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", default="100k,1M", help="comma-separated N (100k, 1M, ...)")
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: temp)")
    ap.add_argument("--keep", action="store_true", help="keep the data directories")
    ap.add_argument("--out", default="shard.json", help="result file in bench/results/")
    ap.add_argument("--limit", type=float, default=1200.0, help="seconds to wait for a pass")
    a = ap.parse_args()
    console = Console()
    sizes = [parse_n(s) for s in a.records.split(",")]
    results = []
    for n in sizes:
        root = Path(tempfile.mkdtemp(prefix=f"shard-{n}-", dir=a.dir))
        try:
            results.append(run_one(root, n, console, a.limit))
            write_result(a.out, {"machine": machine(), "results": results})  # as it goes
        finally:
            if not a.keep:
                shutil.rmtree(root, ignore_errors=True)
    table = Table(title="A node holding N metadata records (bench/shard.py)")
    table.add_column("pass")
    for r in results:
        table.add_column(f"N={r['records']:,}", justify="right")
        table.add_column("µs/record", justify="right")
    if len(results) >= 2:
        table.add_column("growth", justify="right")
    for key, label in COLS:
        cells = []
        for r in results:
            more = ">" if key == "join_s" and r.get("join_timed_out") else ""
            cells += [f"{more}{r[key]:.3f} s", f"{r[key] / r['records'] * 1e6:.2f}"]
        if len(results) >= 2:
            first = results[0][key]
            cells.append(f"{results[-1][key] / first:.1f}x" if 0 < first < float("inf") else "-")
        table.add_row(label, *cells)
    rss = [f"{r['rss_bytes'] / 2**20:.0f} MiB" for r in results]
    table.add_row(
        "peak RSS", *[x for v in rss for x in (v, "")], *([""] if len(results) >= 2 else [])
    )
    console.print(table)
    path = write_result(a.out, {"machine": machine(), "results": results})
    console.print(f"results: {path}")


if __name__ == "__main__":
    main()
