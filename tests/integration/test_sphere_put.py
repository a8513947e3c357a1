"""Sphere's output is put by the node that made it, through the put protocol
(``sector/node/put.py``): the first copy stays where it was made, unless placement
takes no copy there (a draining node), when the bytes go down a chain of other nodes
from that node's disk. Driven by raw ``sphere.*`` calls, so the job runs on the node
chosen here (a driver schedules no work on a draining node)."""

from __future__ import annotations

import os
from typing import Any

import pytest

import sector
from sector.sphere.udf import pickle_udf
from sector.testing.cluster import NodeProc, ProcCluster, wait_for

SIZE = 300_000


def some_bytes(seg: Any) -> Any:
    return (seg.node.encode() + b"\n") * (SIZE // 41)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("sphere-put")
    with ProcCluster(root / "cl", replicas=2, node_args=["--engines", "1"]) as cl:
        cl.start(3)
        yield cl


def run_and_commit(c: sector.Client, node: NodeProc, job: str) -> dict[str, Any]:
    """One generator task on ``node``, its output committed there; the file's stat."""
    call = c._aio.pool.call
    args = {
        "job": job,
        "attempt": 0,
        "seg": {"id": 0, "kind": "task"},
        "udf": pickle_udf(some_bytes, None),
        "digest": job,
        "mode": "files",
        "nbuckets": 0,
        "buckets": {},
    }
    assert c._run(call(node.address, "sphere.run", args))["accepted"]

    def finished() -> dict[str, Any] | None:
        rep = c._run(call(node.address, "sphere.poll", {"job": job, "wait": 1.0}))
        return next((d for d in rep["done"] if d["attempt"] == 0), None)

    done = wait_for(finished, timeout=60.0, what="the attempt to finish")
    assert done.get("ok"), done
    path = f"/.sphere/_/{job}/out"
    commit = {"job": job, "rf": 2, "items": [{"path": path, "attempt": 0}]}
    files = c._run(call(node.address, "sphere.commit", commit, timeout=60.0))["files"]
    assert [f["path"] for f in files] == [path]
    st = c.stat(path)
    assert st["size"] == len(c.read(path)) == (len(node.node_id) + 1) * (SIZE // 41)
    assert c.read(path).split(b"\n")[0] == node.node_id.encode()
    c._run(call(node.address, "sphere.cleanup", {"job": job}))
    return st


def all_up(c: sector.Client, path: str) -> None:
    """Every copy up, as the entry node sees them (a cluster just started may not
    have heard from every member yet)."""

    def up() -> bool:
        return all(r["state"] == "up" for r in c.stat(path)["replicas"])

    wait_for(up, timeout=30.0, what=f"every copy of {path} up")


def test_output_first_copy_stays_on_the_node_that_made_it(cluster: ProcCluster) -> None:
    node = cluster.nodes[1]
    with sector.connect(cluster.address) as c:
        st = run_and_commit(c, node, os.urandom(8).hex())
        ids = [r["id"] for r in st["replicas"]]
        assert ids[0] == node.node_id and len(set(ids)) == 2, st
        all_up(c, st["path"])


def test_output_of_a_draining_node_goes_to_the_others(cluster: ProcCluster) -> None:
    node = cluster.nodes[2]
    with sector.connect(cluster.address) as c:
        c.drain(node.address)
        try:
            st = run_and_commit(c, node, os.urandom(8).hex())
        finally:
            c.drain(node.address, cancel=True)
        ids = [r["id"] for r in st["replicas"]]
        assert node.node_id not in ids and len(set(ids)) == 2, st
        all_up(c, st["path"])
        assert not (node.data / "blobs" / st["blob"][:2] / st["blob"]).exists()
