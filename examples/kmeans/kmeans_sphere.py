"""k-means over points stored in Sector, as a Sphere batch UDF over numpy arrays.

    python examples/kmeans/points.py 1000000 /km/points
    python examples/kmeans/kmeans_sphere.py /km/points -k 16 --iterations 10

This is the Angle application of the Sector/Sphere papers in its simplest form: each
iteration is one Sphere job over the points, where they are stored. The UDF gets a
whole segment of fixed-size records as one numpy array (no per-point Python), finds
each point's nearest centre and returns, per centre, the sum of its points and their
count: ``k * (dims + 1)`` float64 values, however many points the segment has. The
client adds the segments' sums and moves each centre to the mean of its points. So the
bytes that travel per iteration are the centres out and k small sums back per segment.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import cloudpickle
import numpy as np

import sector

CHUNK = 65536  # points per distance computation: bounds the engine's scratch memory


def sums(pts: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per centre, the sum of the points nearest it (float64) and their count."""
    k, dims = centres.shape
    total = np.zeros((k, dims), dtype=np.float64)
    counts = np.zeros(k, dtype=np.float64)
    c2 = (centres**2).sum(axis=1)
    onehot = np.eye(k, dtype=np.float32)
    for i in range(0, len(pts), CHUNK):
        p = pts[i : i + CHUNK]
        # |p - c|^2 = |p|^2 - 2 p.c + |c|^2, and |p|^2 is the same for every c.
        nearest = np.argmin(c2 - 2.0 * (p @ centres.T), axis=1)
        total += onehot[nearest].T @ p  # one matrix product, not a loop over points
        counts += np.bincount(nearest, minlength=k)
    return total, counts


def partial_sums(seg: Any) -> bytes:
    """One segment: its per-centre sums and counts, ``k * (dims + 1)`` float64."""
    centres = np.asarray(seg.param, dtype=np.float32)
    pts = np.frombuffer(seg.data, dtype=np.float32).reshape(-1, centres.shape[1])
    total, counts = sums(pts, centres)
    return np.concatenate([total.ravel(), counts]).tobytes()


def step(c: sector.Client, points: str, centres: np.ndarray) -> np.ndarray:
    """One iteration: the new centres (a centre with no points stays where it was)."""
    k, dims = centres.shape
    job = c.sphere.run(partial_sums, points, records=4 * dims, param=centres)
    total = np.zeros(k * (dims + 1))
    for r in job.results():
        total += np.frombuffer(r, dtype=np.float64)
    sums, counts = total[: k * dims].reshape(k, dims), total[k * dims :]
    new = centres.astype(np.float64).copy()
    has = counts > 0
    new[has] = sums[has] / counts[has, None]
    return new.astype(np.float32)


def first_centres(c: sector.Client, points: str, k: int, dims: int) -> np.ndarray:
    """The first k points of the first file: the same start as the other forms."""
    first = sorted(e["path"] for e in c.ls(points) if e["type"] == "file")[0]
    head = c.read(first, 0, k * dims * 4)
    return np.frombuffer(head, dtype=np.float32).reshape(k, dims).copy()


def kmeans(c: sector.Client, points: str, k: int, iterations: int, dims: int = 8) -> np.ndarray:
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # nodes need not have it
    centres = first_centres(c, points, k, dims)
    for _ in range(iterations):
        centres = step(c, points, centres)
    return centres


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("points", help="Sector directory of float32 points")
    ap.add_argument("-k", type=int, default=16)
    ap.add_argument("--dims", type=int, default=8)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--cluster", default=None, help="a node's HOST:PORT (default: the local one)")
    args = ap.parse_args()
    with sector.connect(args.cluster) as c:
        centres = kmeans(c, args.points, args.k, args.iterations, args.dims)
    np.savetxt(sys.stdout, centres, fmt="%.4f")


if __name__ == "__main__":
    main()
