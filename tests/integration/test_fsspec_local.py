"""``sector://`` inside a Sphere UDF (issue 16) on real nodes: where the UDF runs on a
node holding the file, the same ``SectorFileSystem`` reads the node's replica directly
-- whole (checksum-checked) and ranged -- and no blob bytes cross the network (the
nodes' bulk counters stay put). Outside an engine the same read goes over the network
(the counters move), so the counters do see such reads."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sector.fsspec import SectorFileSystem
from sector.testing.cluster import ProcCluster

SIZE = 3 << 20


def read_through_fsspec(seg: Any) -> Any:
    """Reads its own input file again, through sector:// as any user code would."""
    import hashlib
    import json

    from sector.fsspec import SectorFileSystem

    fs = SectorFileSystem(cluster=seg.param, skip_instance_cache=True)
    whole = fs.cat(seg.path)
    with fs.open(seg.path, "rb", block_size=4096) as f:
        f.seek(1 << 20)
        part = f.read(1000)
    got = {
        "whole": hashlib.sha256(whole).hexdigest(),
        "part": hashlib.sha256(part).hexdigest(),
        "local_reads": fs.local.reads,
        "local_bytes": fs.local.bytes,
        "misses": fs.local.misses,
    }
    return json.dumps(got).encode()


@pytest.fixture(scope="module", params=["auto", "none"])
def cluster(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[ProcCluster]:
    """Two nodes, two replicas: every node holds the file, so the segment runs on a
    holder. Engines sandboxed as the host allows (the blobs at a path of the view),
    and not sandboxed (the blobs where the node keeps them)."""
    args = ["--engines", "1", "--udf-sandbox", request.param]
    with ProcCluster(tmp_path_factory.mktemp("fslocal"), replicas=2, node_args=args) as c:
        c.start(2)
        c.wait_ring()
        yield c


def bulk(c: Any, cl: ProcCluster) -> tuple[int, int]:
    """Blob gets served and bytes sent, over every node."""
    gets = sent = 0
    for n in cl.nodes:
        b = c._run(c._aio.pool.call(n.address, "node.info", {}, timeout=5))["bulk"]
        gets, sent = gets + int(b["gets"]), sent + int(b["bytes_out"])
    return gets, sent


def test_a_udf_reads_the_local_replica_through_fsspec(cluster: ProcCluster, tmp_path: Path) -> None:
    import hashlib

    data = os.urandom(SIZE)
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    want = {
        "whole": hashlib.sha256(data).hexdigest(),
        "part": hashlib.sha256(data[1 << 20 : (1 << 20) + 1000]).hexdigest(),
    }
    with cluster.connect() as c:
        c.put(str(src), "/local/blob.bin")
        before = bulk(c, cluster)
        mode = c._run(c._aio.pool.call(cluster.address, "sphere.info", {}, timeout=5))["sandbox"]
        print(f"\nengines' sandbox: {mode}")
        job = c.sphere.run(
            read_through_fsspec, "/local/blob.bin", records="file", param=cluster.address
        )
        [out] = job.results()
        got = json.loads(out)
        assert {k: got[k] for k in want} == want, got
        assert got["local_reads"] >= 2 and got["misses"] == 0, got
        assert got["local_bytes"] >= SIZE, got
        assert bulk(c, cluster) == before, "blob bytes moved over the network"
        # The same reads from this process (not in an engine) go over the network.
        fs = SectorFileSystem(cluster=cluster.address, skip_instance_cache=True)
        assert hashlib.sha256(fs.cat("/local/blob.bin")).hexdigest() == want["whole"]
        assert fs.local.reads == 0
        gets, sent = bulk(c, cluster)
        assert gets > before[0] and sent >= before[1] + SIZE, (before, (gets, sent))
