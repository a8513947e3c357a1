"""k-means: Sector's Sphere batch form against scikit-learn and a Dask array form.

    python bench/kmeans.py [--points 20M] [--dims 8] [-k 16] [--iterations 10] [--nodes 3]

One run, one machine. The points (float32, ``--dims`` coordinates, around ``k`` random
centres) are made on the nodes of a local Sector cluster by ``examples/kmeans/points.py``
(not timed) and read back whole into one numpy array for the peers (not timed either:
each peer starts from the data in the form its users keep it -- scikit-learn and Dask
from memory, Sector from its files). Every system starts from the same centres (the
first k points) and runs exactly ``--iterations`` Lloyd iterations:

    sector   ``examples/kmeans/kmeans_sphere.py``: one Sphere job per iteration over the
             stored points (fixed-size records), the UDF one numpy pass per segment
             returning per-centre sums; ``--nodes`` nodes, one engine per core in all
    sklearn  ``KMeans(init=those centres, n_init=1, max_iter=N, tol=0,
             algorithm="lloyd")`` on the in-memory array (its OpenMP threads use every
             core); it may stop early when no label changes, which the JSON records
    dask     ``dask.array`` of the points in 1M-point chunks, persisted in memory; per
             iteration one ``map_blocks`` of the same per-chunk sums, summed and
             computed on the threaded scheduler (numpy releases the GIL)

The three results must agree (max centre difference in the JSON). ``x Sector`` is the
peer's seconds over Sector's. The goals of issue 12: faster than Dask, within 1.5x of
scikit-learn on one machine. Writes ``bench/results/kmeans.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_result

from sector.testing.cluster import ProcCluster

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "kmeans"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def count(text: str) -> int:
    """'20M' -> 20,000,000; '500k' -> 500,000; '1234' -> 1234."""
    scale = {"k": 10**3, "m": 10**6, "g": 10**9}.get(text[-1:].lower(), 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def block_sums(block: np.ndarray, centres: np.ndarray, km: ModuleType) -> np.ndarray:
    """One chunk's per-centre sums and counts: the Sphere UDF's own kernel."""
    total, counts = km.sums(block, centres)
    return np.concatenate([total, counts[:, None]], axis=1)[None]


def run_dask(pts: np.ndarray, start: np.ndarray, iterations: int, km: ModuleType) -> np.ndarray:
    import dask
    import dask.array as da

    x = da.from_array(pts, chunks=(1 << 20, pts.shape[1])).persist()
    centres = start.copy()
    k, dims = centres.shape
    with dask.config.set(scheduler="threads"):
        for _ in range(iterations):
            parts = x.map_blocks(
                block_sums, centres, km, new_axis=2, chunks=(1, k, dims + 1), dtype=np.float64
            )
            total = parts.sum(axis=0).compute()
            has = total[:, dims] > 0
            new = centres.astype(np.float64)
            new[has] = total[has, :dims] / total[has, dims, None]
            centres = new.astype(np.float32)
    return centres


def run_sklearn(pts: np.ndarray, start: np.ndarray, iterations: int) -> tuple[np.ndarray, int]:
    from sklearn.cluster import KMeans

    km = KMeans(
        n_clusters=len(start), init=start, n_init=1, max_iter=iterations, tol=0.0, algorithm="lloyd"
    ).fit(pts)
    return km.cluster_centers_.astype(np.float32), int(km.n_iter_)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=count, default=20_000_000, help="e.g. 20M (M = 10^6)")
    ap.add_argument("--dims", type=int, default=8)
    ap.add_argument("-k", type=int, default=16)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--files", type=int, default=12)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--out", default="kmeans.json")
    args = ap.parse_args()
    n = args.points
    points_mod, km = load("points"), load("kmeans_sphere")
    cores = os.cpu_count() or 1
    engines = max(1, cores // args.nodes)
    root = Path(tempfile.mkdtemp(prefix="sector-kmeans-", dir=args.dir))
    res: dict[str, Any] = {"settings": {**vars(args), "dir": str(args.dir), "points": n}}
    times: dict[str, float] = {}
    with ProcCluster(root / "cl", replicas=1, node_args=["--engines", str(engines)]) as cl:
        cl.start(args.nodes)
        with cl.connect() as c:
            t = time.monotonic()
            points_mod.make(c, n, "/km", files=args.files, dims=args.dims, centers=args.k)
            res["gen_seconds"] = time.monotonic() - t
            files = sorted(e["path"] for e in c.ls("/km") if e["type"] == "file")
            pts = np.concatenate(
                [np.frombuffer(c.read(f), dtype=np.float32).reshape(-1, args.dims) for f in files]
            )
            start = pts[: args.k].copy()
            km.kmeans(c, "/km", args.k, 1, args.dims)  # warm: engines up, UDF imported
            t = time.monotonic()
            got = {"sector": km.kmeans(c, "/km", args.k, args.iterations, args.dims)}
            times["sector"] = time.monotonic() - t
    t = time.monotonic()
    got["sklearn"], res["sklearn_iterations"] = run_sklearn(pts, start, args.iterations)
    times["sklearn"] = time.monotonic() - t
    run_dask(pts[: 1 << 20], start, 1, km)  # warm: imports, thread pool
    t = time.monotonic()
    got["dask"] = run_dask(pts, start, args.iterations, km)
    times["dask"] = time.monotonic() - t
    res["seconds"] = times
    res["max_centre_difference"] = {
        s: float(np.abs(got[s] - got["sector"]).max()) for s in ("sklearn", "dask")
    }
    res["machine"] = machine()
    print(f"k-means: {n:,} points x {args.dims} float32, k={args.k}, {args.iterations} iterations")
    print(f"{'system':<10}{'seconds':>10}{'x Sector':>10}{'max diff':>12}")
    for s in ("sector", "sklearn", "dask"):
        diff = res["max_centre_difference"].get(s, 0.0)
        print(f"{s:<10}{times[s]:>10.2f}{times[s] / times['sector']:>10.2f}{diff:>12.2e}")
    print(f"wrote {write_result(args.out, res)}")


if __name__ == "__main__":
    main()
