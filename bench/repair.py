"""Repair speed: time to restore R copies after losing a node that held G GiB.

    python bench/repair.py [--gib 2] [--nodes 4] [--replicas 3] [--file-mib 64] [--dir DIR]

A local cluster of ``--nodes`` node processes (``ProcCluster``, loopback, one disk)
takes files of ``--file-mib`` MiB until the node holding the most replicas holds
``--gib`` GiB. That node is SIGKILLed; the clock runs from the kill until every file
is back at R live copies with an empty repair queue (``sector status``). So the time
includes noticing the crash (``dead_after``, ~4 s) and the owners' scans, not only
the copying.

Baseline: ``cp`` of a file of the same size on the same disk, then fsync: what moving
those bytes once costs this machine. Repair moves them once too (a holder's sendfile
to the new holder, which fsyncs), so ``ratio = repair / cp``; the goal is <= 1.5.
Results: a line on stdout and ``bench/results/repair.json``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine, mbps, write_result

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sector
from sector.testing.cluster import ProcCluster, wait_for

GiB = 1 << 30
MiB = 1 << 20


def plain_copy(src: Path, dst: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(["cp", str(src), str(dst)], check=True)
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=2.0, help="GiB held by the lost node")
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--file-mib", type=int, default=64)
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir)")
    a = ap.parse_args()
    target = int(a.gib * GiB)
    fsize = a.file_mib * MiB
    work = Path(tempfile.mkdtemp(prefix="sector-bench-repair-", dir=a.dir))
    try:
        src = work / "src.bin"
        with open(src, "wb") as f:
            f.write(os.urandom(fsize))
        with ProcCluster(work / "cl", replicas=a.replicas) as cl:
            cl.start(a.nodes)
            held: dict[str, int] = {}
            n = 0
            with sector.connect(cl.nodes[0].address) as c:
                others = {x.node_id for x in cl.nodes[1:]}  # node 0 is the entry: kept
                while max((v for k, v in held.items() if k in others), default=0) < target:
                    # A few bytes differ per file: every file is its own blob.
                    with open(src, "r+b") as f:
                        f.write(n.to_bytes(8, "big"))
                    st = c.put(src, f"/bench/f{n:05d}")
                    for r in st["replicas"]:
                        held[r["id"]] = held.get(r["id"], 0) + st["size"]
                    n += 1
                victim = max(cl.nodes[1:], key=lambda x: held.get(x.node_id, 0))
                lost = held.get(victim.node_id, 0)
                print(f"{n} files of {a.file_mib} MiB; killing a node holding {lost / GiB:.2f} GiB")
                cl.kill(victim)
                t0 = time.perf_counter()

                def noticed() -> bool:
                    st = c.status()
                    return any(
                        # "down" by gossip, not merely "unreachable" to this status call.
                        m["address"] == victim.address and m["state"] == "down"
                        for m in st["nodes"]
                    )

                wait_for(noticed, 60, interval=0.1, what="the crash to be noticed")
                t_noticed = time.perf_counter() - t0

                paths = [f"/bench/f{i:05d}" for i in range(n)]

                def restored() -> bool:
                    for p in paths:
                        reps = c.stat(p)["replicas"]
                        ids = {r["id"] for r in reps if r["state"] == "up"}
                        if len(ids) < a.replicas or victim.node_id in ids:
                            return False
                    return True

                wait_for(restored, 3600, interval=0.25, what="R copies of every file")
                t_repair = time.perf_counter() - t0
        base = work / "base.bin"
        with open(base, "wb") as f:
            for _ in range(max(1, lost // fsize)):
                f.write(os.urandom(fsize))
        t_cp = plain_copy(base, work / "base-copy.bin")
        result = {
            "gib_lost": round(lost / GiB, 3),
            "files": n,
            "file_mib": a.file_mib,
            "nodes": a.nodes,
            "replicas": a.replicas,
            "repair_seconds": round(t_repair, 2),
            "noticed_seconds": round(t_noticed, 2),
            "repair_mb_s": round(mbps(lost, t_repair), 1),
            "cp_seconds": round(t_cp, 2),
            "cp_mb_s": round(mbps(base.stat().st_size, t_cp), 1),
            "ratio": round(t_repair / t_cp, 2),
            "ratio_after_noticed": round((t_repair - t_noticed) / t_cp, 2),
            "machine": machine(),
        }
        out = write_result("repair.json", result)
        print(
            f"repair of {lost / GiB:.2f} GiB: {t_repair:.1f} s (crash noticed at {t_noticed:.1f} s);"
            f" cp: {t_cp:.1f} s; ratio {result['ratio']} (goal <= 1.5) -> {out}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
