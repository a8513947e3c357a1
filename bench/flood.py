"""A connection flood against a secure node (issue 11, point 3): does a user still get in?

Four loopback addresses (as four hosts) keep as many TLS connections open to one node
of a 3-node secure cluster as it lets them (``--per-address``, default 256: 1,024 in
all, the node's whole default connection limit), each kept busy with pings. Then a
logged-in user connects and stats ``/`` ``--tries`` times, and a fourth node joins
through the flooded node. The same user timings are taken before the flood, so the
table gives the ratio: how much the flood slows a user, not whether the machine is
fast.

    .venv/bin/python bench/flood.py            # writes bench/results/flood.json
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, percentile, write_result

from sector.testing.cluster import ProcCluster, wait_for
from sector.testing.raw import Flood, node_info


def user_times(cl: ProcCluster, addr: str, token: str, tries: int) -> list[float]:
    out = []
    for _ in range(tries):
        t = time.monotonic()
        with cl.connect(addr, token=token) as c:
            c.stat("/")
        out.append(time.monotonic() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-address", type=int, default=256)
    ap.add_argument("--tries", type=int, default=20)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--out", default="flood.json")
    args = ap.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 16384), hard))  # the attacker's
    root = Path(tempfile.mkdtemp(prefix="sector-flood-", dir=args.dir))
    res: dict[str, Any] = {"settings": vars(args) | {"dir": str(args.dir)}}
    with ProcCluster(root / "cl", secure=True, node_args=["--engines", "1"]) as cl:
        cl.start(3)
        target = cl.nodes[0]
        tok = cl.token("u", write=["/u"])
        quiet = user_times(cl, target.address, tok, args.tries)
        with Flood(target.address, per_address=args.per_address) as flood:
            t0 = time.monotonic()
            wait_for(
                lambda: flood.counts["opened"] + flood.counts["refused"] >= 4 * args.per_address,
                300,
                what="the flood to be at full strength",
            )
            res["flood_ramp_s"] = time.monotonic() - t0
            loud = user_times(cl, target.address, tok, args.tries)
            t = time.monotonic()
            new = cl.add(join=target.address)
            cl.wait_ring(timeout=120)
            res["join_s"] = time.monotonic() - t
            res["joined"] = new.alive
            res["node_connections"] = node_info(cl, target.address)["connections"]
        res["flood"] = dict(flood.counts)
    res["user_s"] = {
        "quiet_p50": percentile(quiet, 50),
        "flood_p50": percentile(loud, 50),
        "quiet_max": max(quiet),
        "flood_max": max(loud),
    }
    res["machine"] = machine()
    u = res["user_s"]
    print(f"flood: {res['flood']}  node: {res['node_connections']}")
    print(f"{'user connect + stat':<24}{'quiet':>10}{'flooded':>10}{'ratio':>8}")
    for k in ("p50", "max"):
        q, f = u[f"quiet_{k}"], u[f"flood_{k}"]
        print(f"{k:<24}{q * 1000:>8.1f}ms{f * 1000:>8.1f}ms{f / q:>8.2f}")
    print(f"a node joins through the flooded node in {res['join_s']:.2f} s ({res['joined']=})")
    print(f"wrote {write_result(args.out, res)}")


if __name__ == "__main__":
    main()
