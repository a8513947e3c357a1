"""k-means over points stored in Sector, in the classic Disco form: one record a point.

    python examples/kmeans/points.py 100000 /km/points
    python examples/kmeans/kmeans_disco.py /km/points -k 16 --iterations 10

The form of Disco's own k-clustering example, on the float32 points ``points.py``
writes: each iteration is one Disco job over the point files. The ``map_reader`` turns
a file's bytes into points (tuples of ``dims`` floats), the ``map`` gives each point
to its nearest centre, the ``combiner`` adds up, per map task, each centre's points
and their count, and the ``reduce`` adds the partial sums and divides: the new
centres. Every step is per-record Python, as Disco programs were written; compare
``kmeans_sphere.py``, which does an iteration in one numpy pass per segment.

Same start as ``kmeans_sphere.py`` (the first k points of the first file); centres are
kept as float32 between iterations, like the Sphere form, and a centre that gets no
point stays where it was.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

import sector
from sector.disco.core import Job, result_iterator
from sector.disco.util import kvgroup
from sector.disco.worker import Params


def point_reader(fd: Any, size: int, url: str, params: Any) -> Iterator[tuple[float, ...]]:
    """The map reader: the points of a file of float32 records, one tuple each."""
    pts = np.frombuffer(fd.read(), dtype=np.float32).reshape(-1, params.dims)
    yield from map(tuple, pts.astype(np.float64).tolist())


def nearest(point: tuple[float, ...], params: Any) -> Iterator[tuple[int, Any]]:
    """The map: (index of the nearest centre, the point)."""
    best, best_d = 0, float("inf")
    for j, c in enumerate(params.centres):
        d = 0.0
        for p, q in zip(point, c, strict=True):
            d += (p - q) * (p - q)
        if d < best_d:
            best, best_d = j, d
    yield best, point


def add_up(key: Any, point: Any, buf: dict[Any, Any], done: bool, params: Any) -> Any:
    """The combiner: per centre, the sum of its points and their count."""
    if done:
        return [(j, (s, n)) for j, (s, n) in buf.items()]
    got = buf.get(key)
    if got is None:
        buf[key] = (list(point), 1)
    else:
        s, n = got
        for i, x in enumerate(point):
            s[i] += x
        buf[key] = (s, n + 1)
    return None


def mean(iter: Any, params: Any) -> Iterator[tuple[int, list[float]]]:
    """The reduce: each centre's new place, the mean of its points."""
    for j, parts in kvgroup(sorted(iter, key=lambda kv: kv[0])):
        total: list[float] | None = None
        count = 0
        for s, n in parts:
            total = list(s) if total is None else [a + b for a, b in zip(total, s, strict=True)]
            count += n
        assert total is not None
        yield j, [x / count for x in total]


class KMeansStep(Job):
    map_reader = staticmethod(point_reader)
    map = staticmethod(nearest)
    combiner = staticmethod(add_up)
    reduce = staticmethod(mean)
    partitions = 1


def first_centres(c: sector.Client, points: str, k: int, dims: int) -> np.ndarray:
    first = sorted(e["path"] for e in c.ls(points) if e["type"] == "file")[0]
    return np.frombuffer(c.read(first, 0, k * dims * 4), dtype=np.float32).reshape(k, dims).copy()


def kmeans(
    c: sector.Client, points: str, k: int, iterations: int, dims: int = 8, master: Any = None
) -> np.ndarray:
    """``iterations`` Lloyd steps from the first k points; the centres (float32)."""
    centres = first_centres(c, points, k, dims)
    for _ in range(iterations):
        params = Params(centres=centres.astype(np.float64).tolist(), dims=dims)
        job = KMeansStep(master=master).run(input=[points], params=params)
        try:
            moved = dict(result_iterator(job.wait()))
        finally:
            job.purge()
        for j, centre in moved.items():
            centres[j] = np.asarray(centre, dtype=np.float32)
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
        centres = kmeans(c, args.points, args.k, args.iterations, args.dims, args.cluster)
    np.savetxt(sys.stdout, centres, fmt="%.4f")


if __name__ == "__main__":
    main()
