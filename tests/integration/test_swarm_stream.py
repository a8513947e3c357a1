"""A get served through the swarm streams (issue 14): its bytes flow to the client
while the node's fetch is still under way, in order; a fetch that fails mid-get cuts
the stream (never a short file taken for whole); a reader that leaves mid-get costs
the fetch nothing.

The holders upload at 1 MB/s (``--swarm-upload-rate``), so a 2 MiB fetch lasts about
two seconds; every assertion is on bytes and on the nodes' counters, not on timing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sector.errors import SectorError
from sector.storage.transfer import open_get
from sector.swarm.messages import SwarmGet
from sector.testing.cluster import ProcCluster, wait_for

NODE_ARGS = ["--piece-size", "16K", "--swarm-upload-rate", "1M", "--cache-size", "8M"]
SIZE = 2 << 20
FIRST = 64 << 10


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcCluster]:
    cl = ProcCluster(tmp_path_factory.mktemp("stream"), replicas=1, node_args=NODE_ARGS)
    try:
        cl.start(3)
        yield cl
    finally:
        cl.close()


def swarm(c: Any, addr: str) -> dict[str, Any]:
    info: dict[str, Any] = c._run(c._aio.pool.call(addr, "node.info", {}))["swarm"]
    return info


def setup(cl: ProcCluster, c: Any, tmp: Path, path: str) -> tuple[bytes, Any, str]:
    """A file of one replica, and a node that does not hold it."""
    data = os.urandom(SIZE)
    (tmp / "src").write_bytes(data)
    st = c.put(str(tmp / "src"), path, replicas=1)
    reader = next(n.address for n in cl.nodes if n.address != st["replicas"][0]["address"])
    return data, st, reader


class Get:
    """A raw ``swarm.get`` stream from a node, read step by step by the test."""

    def __init__(self, c: Any, addr: str, st: dict[str, Any]) -> None:
        self.c = c
        req = SwarmGet(path=st["path"], blob=st["blob"])
        self.chan, self.size = c._run(open_get(c._aio.pool, addr, req, stall_timeout=60.0))

    def read(self, n: int) -> bytes:
        data: bytes = self.c._run(self.chan.read_exactly(n))
        return data

    def close(self) -> None:
        self.c._run(self.chan.close())


def test_a_swarm_get_streams_while_its_fetch_is_under_way(
    cluster: ProcCluster, tmp_path: Path
) -> None:
    with cluster.connect() as c:
        data, st, reader = setup(cluster, c, tmp_path, "/s/ok.bin")
        g = Get(c, reader, st)
        try:
            assert g.size == SIZE
            head = g.read(FIRST)
            # the first bytes are here, and the node is still fetching the rest
            mid = swarm(c, reader)
            assert mid["cache_fetching"] == 1
            rest = g.read(SIZE - FIRST)
        finally:
            g.close()
        assert head + rest == data
        after = swarm(c, reader)
        assert after["streamed_bytes"] >= SIZE - FIRST and after["local_gets"] >= 1


def test_a_fetch_failing_mid_get_cuts_the_stream(cluster: ProcCluster, tmp_path: Path) -> None:
    with cluster.connect() as c:
        data, st, reader = setup(cluster, c, tmp_path, "/s/gone.bin")
        g = Get(c, reader, st)
        try:
            assert g.read(FIRST) == data[:FIRST]
            c.rm("/s/gone.bin")  # the node's partial copy is dropped: its fetch fails
            with pytest.raises(SectorError, match="ended early|lost|cut"):
                g.read(SIZE - FIRST)
        finally:
            g.close()
        wait_for(
            lambda: swarm(c, reader)["local_gets_cut"] >= 1, 30.0, what="the get counted as cut"
        )


def test_a_reader_leaving_mid_get_costs_the_fetch_nothing(
    cluster: ProcCluster, tmp_path: Path
) -> None:
    with cluster.connect() as c:
        data, st, reader = setup(cluster, c, tmp_path, "/s/left.bin")
        g = Get(c, reader, st)
        assert g.read(FIRST) == data[:FIRST]
        g.close()
        n = next(n for n in cluster.nodes if n.address == reader)
        cached = n.data / "cache" / st["blob"][:2] / st["blob"]
        wait_for(cached.exists, 30.0, what="the fetch done after its reader left")
        assert cached.read_bytes() == data
        # and a get now is served whole from the cache
        out = tmp_path / "out"
        with cluster.connect(reader) as cn:
            cn.get("/s/left.bin", str(out))
        assert out.read_bytes() == data
