"""The programs in ``examples/`` run on a live local cluster and give the answers of a
single-process reference run of the same algorithm."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

import sector
from sector.testing.cluster import ProcCluster

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(rel: str) -> ModuleType:
    """An example as a module (examples/ is not a package and not on the nodes)."""
    path = EXAMPLES / rel
    name = "example_" + path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sector.Client]:
    root = tmp_path_factory.mktemp("examples")
    with ProcCluster(root / "cl", node_args=["--engines", "1"]) as cl:
        cl.start(3)
        with cl.connect() as c:
            yield c


def lloyd(pts: np.ndarray, centres: np.ndarray, iterations: int) -> np.ndarray:
    """k-means as a textbook writes it, in one process."""
    c = centres.astype(np.float64)
    for _ in range(iterations):
        d = ((pts[:, None, :].astype(np.float64) - c[None, :, :]) ** 2).sum(axis=2)
        nearest = d.argmin(axis=1)
        for j in range(len(c)):
            if (nearest == j).any():
                c[j] = pts[nearest == j].astype(np.float64).mean(axis=0)
        c = c.astype(np.float32).astype(np.float64)  # the example keeps float32 centres
    return c.astype(np.float32)


def test_kmeans_sphere_matches_a_single_process_run(client: sector.Client) -> None:
    points = load("kmeans/points.py")
    km = load("kmeans/kmeans_sphere.py")
    points.make(client, 20_000, "/km/points", files=4, dims=8, centers=5)
    files = sorted(e["path"] for e in client.ls("/km/points") if e["type"] == "file")
    assert len(files) == 4
    pts = np.concatenate(
        [np.frombuffer(client.read(f), dtype=np.float32).reshape(-1, 8) for f in files]
    )
    assert pts.shape == (20_000, 8)
    got = km.kmeans(client, "/km/points", k=5, iterations=4, dims=8)
    want = lloyd(pts, pts[:5], 4)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    assert not np.allclose(got, pts[:5])  # the centres did move
