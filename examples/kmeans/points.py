"""Points for k-means, made on the nodes: ``python examples/kmeans/points.py N DIR``.

Each of ``--files`` generator tasks (Sphere ``tasks=``, one per file, run where an
engine is free) draws its share of N points of ``--dims`` float32 coordinates around
``--centers`` random centres, seeded by its task number, so a data set is the same on
any cluster. The points land in Sector as ``DIR/part-NNNNN``: fixed-size records of
``4 * dims`` bytes, the input of ``kmeans_sphere.py`` and ``kmeans_disco.py``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import cloudpickle
import numpy as np

import sector

DIMS = 8


def generate(seg: Any) -> np.ndarray:
    """One task: ``seg.param`` = (seed, count, dims, centres, spread)."""
    seed, count, dims, k, spread = seg.param
    centres = np.random.default_rng(12345).uniform(-100, 100, (k, dims)).astype(np.float32)
    rng = np.random.default_rng(seed)
    which = rng.integers(0, k, count)
    pts = centres[which] + rng.normal(0, spread, (count, dims)).astype(np.float32)
    return pts.astype(np.float32)


def make(
    c: sector.Client,
    n: int,
    out: str,
    *,
    files: int = 8,
    dims: int = DIMS,
    centers: int = 16,
    spread: float = 5.0,
) -> None:
    """Write ``n`` points to ``out`` (which must not exist) in ``files`` files."""
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # nodes need not have it
    share = [n // files + (i < n % files) for i in range(files)]
    tasks = [(1000 + i, m, dims, centers, spread) for i, m in enumerate(share) if m]
    c.sphere.run(generate, tasks=tasks, output=out).wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("n", type=int, help="number of points")
    ap.add_argument("dir", help="Sector directory to create")
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--dims", type=int, default=DIMS)
    ap.add_argument("--centers", type=int, default=16)
    ap.add_argument("--cluster", default=None, help="a node's HOST:PORT (default: the local one)")
    args = ap.parse_args()
    with sector.connect(args.cluster) as c:
        make(c, args.n, args.dir, files=args.files, dims=args.dims, centers=args.centers)
        print(f"{args.n} points of {args.dims} float32 in {args.dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
