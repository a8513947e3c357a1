"""The programs in ``examples/`` run on a live local cluster and give the answers of a
single-process reference run of the same algorithm."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

import sector
from sector.disco import runtime
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
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcCluster]:
    root = tmp_path_factory.mktemp("examples")
    with ProcCluster(root / "cl", node_args=["--engines", "1"]) as cl:
        cl.start(3)
        yield cl
    runtime.close_clients()


@pytest.fixture(scope="module")
def client(cluster: ProcCluster) -> Iterator[sector.Client]:
    with cluster.connect() as c:
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


def test_kmeans_disco_matches_a_single_process_run(
    cluster: ProcCluster, client: sector.Client
) -> None:
    points = load("kmeans/points.py")
    km = load("kmeans/kmeans_disco.py")
    points.make(client, 3_000, "/kmd/points", files=3, dims=8, centers=4)
    files = sorted(e["path"] for e in client.ls("/kmd/points") if e["type"] == "file")
    pts = np.concatenate(
        [np.frombuffer(client.read(f), dtype=np.float32).reshape(-1, 8) for f in files]
    )
    got = km.kmeans(client, "/kmd/points", k=4, iterations=3, dims=8, master=cluster.address)
    want = lloyd(pts, pts[:4], 3)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    assert not np.allclose(got, pts[:4])


def _text_of(client: sector.Client, d: str) -> bytes:
    files = sorted(e["path"] for e in client.ls(d) if e["type"] == "file")
    assert len(files) == 3
    return b"".join(client.read(f) for f in files)


def test_wordcount_matches_a_single_process_run(
    cluster: ProcCluster, client: sector.Client
) -> None:
    text = load("wordcount/text.py")
    wc = load("wordcount/wordcount.py")
    text.make(client, 300_000, "/wce/text", files=3, vocab=2_000)
    want = Counter(_text_of(client, "/wce/text").split())
    assert len(want) > 500
    got = wc.count(["/wce/text"], master=cluster.address, partitions=3)
    assert got == dict(want)


def test_pipeline_matches_a_single_process_run(cluster: ProcCluster, client: sector.Client) -> None:
    text = load("wordcount/text.py")
    pipe = load("pipeline/pipeline.py")
    text.make(client, 200_000, "/pipe/text", files=3, vocab=500)
    want = Counter(_text_of(client, "/pipe/text").split())
    best = sorted(want.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:7]
    got = pipe.top_words(["/pipe/text"], top=7, master=cluster.address)
    assert got == [(i, (w, n)) for i, (w, n) in enumerate(best, start=1)]


def test_join_matches_a_single_process_run(cluster: ProcCluster, client: sector.Client) -> None:
    tables = load("join/tables.py")
    jn = load("join/join.py")
    tables.make(client, 300, 1_000, "/jn")
    users_csv, orders_csv = tables.tables(300, 1_000)
    users = {int(r[0]): (r[1], r[2]) for r in (ln.split(",") for ln in users_csv.splitlines())}
    want = sorted(
        (int(uid), (*users[int(uid)], int(oid), float(amount)))
        for oid, uid, amount in (ln.split(",") for ln in orders_csv.splitlines())
        if int(uid) in users
    )
    assert 0 < len(want) < 1_000  # some orders have no user
    got = jn.join("/jn/users.csv", "/jn/orders.csv", master=cluster.address)
    assert got == want
