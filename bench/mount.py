"""Read throughput of one large file through `sector mount` against `sector get`.

    python bench/mount.py [--size-mib 512] [--nodes 2] [--replicas 2] [--runs 3] [--dir DIR]

A local cluster of ``--nodes`` node processes on loopback holds one file of random
bytes. Each run measures, in turn (so a busy machine weighs on all alike):

    get          `sector get FILE LOCAL` (the command: BLAKE3-verified, written to disk)
    mount cold   `dd if=MOUNT/FILE of=/dev/null bs=1M` on a fresh mount with an empty
                 cache: every block is fetched from a replica (readahead on)
    page cache   the same dd again on that mount: the kernel keeps the file's pages
                 (its version is unchanged, so the mount lets it)
    disk cache   dd after a remount over the same cache directory: no page cache,
                 every block from the mount's local cache

Page caches are dropped before `get` and each cold phase where the kernel allows it
(the JSON says whether it did). Results: a table and ``bench/results/mount.json``.
Needs /dev/fuse and fusermount3 (apt-get install fuse3).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import MB, drop_caches, machine, mbps, write_result
from rich.console import Console
from rich.table import Table

from sector.testing.cluster import ProcCluster

PHASES = ("get", "mount cold", "page cache", "disk cache")


def sector_cmd(address: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "sector", "--cluster", address, *args]


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


def dd(path: Path) -> float:
    return timed(["dd", f"if={path}", "of=/dev/null", "bs=1M"])


def mount(address: str, mp: Path, cache: Path) -> None:
    subprocess.run(
        sector_cmd(address, "mount", str(mp), "--cache", str(cache), "--cache-size", "4G"),
        check=True,
        capture_output=True,
    )


def umount(address: str, mp: Path) -> None:
    subprocess.run(sector_cmd(address, "umount", str(mp)), check=True, capture_output=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="where the temp dir goes")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    ap.add_argument("--out", default="mount.json")
    args = ap.parse_args()
    if shutil.which("fusermount3") is None:
        print("needs fusermount3: apt-get install fuse3", file=sys.stderr)
        return 1
    size = args.size_mib << 20
    root = Path(tempfile.mkdtemp(prefix="sector-bench-mount-", dir=args.dir))
    os.environ["SECTOR_HOME"] = str(root / "home")
    times: dict[str, list[float]] = {p: [] for p in PHASES}
    dropped = True
    try:
        with ProcCluster(root / "cl", replicas=args.replicas, node_args=["--engines", "1"]) as cl:
            cl.start(args.nodes)
            src = root / "big.bin"
            with open(src, "wb") as f:
                for _ in range(args.size_mib):
                    f.write(os.urandom(1 << 20))
            subprocess.run(sector_cmd(cl.address, "put", str(src), "/big.bin"), check=True)
            src.unlink()
            mp = root / "mnt"
            mp.mkdir()
            for run in range(args.runs):
                dropped &= drop_caches()
                local = root / "got.bin"
                times["get"].append(timed(sector_cmd(cl.address, "get", "/big.bin", str(local))))
                local.unlink()
                cache = root / f"cache-{run}"
                mount(cl.address, mp, cache)
                dropped &= drop_caches()
                times["mount cold"].append(dd(mp / "big.bin"))
                times["page cache"].append(dd(mp / "big.bin"))
                umount(cl.address, mp)
                mount(cl.address, mp, cache)
                dropped &= drop_caches()
                times["disk cache"].append(dd(mp / "big.bin"))
                umount(cl.address, mp)
                shutil.rmtree(cache)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    table = Table(title=f"{args.size_mib} MiB, {args.nodes} nodes, R={args.replicas}")
    for col in ("phase", "median s", "MB/s", "runs (s)"):
        table.add_column(col, justify="left" if col == "phase" else "right")
    result: dict[str, Any] = {
        "size_bytes": size,
        "nodes": args.nodes,
        "replicas": args.replicas,
        "caches_dropped": dropped,
        "phases": {},
        "machine": machine(),
    }
    for p in PHASES:
        med = statistics.median(times[p])
        result["phases"][p] = {"seconds": times[p], "median_mbps": mbps(size, med)}
        runs = " ".join(f"{t:.2f}" for t in times[p])
        table.add_row(p, f"{med:.2f}", f"{mbps(size, med):.0f}", runs)
    Console().print(table)
    print(f"MB = {MB} bytes; page caches dropped: {dropped}")
    print(json.dumps({p: round(result["phases"][p]["median_mbps"]) for p in PHASES}))
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
