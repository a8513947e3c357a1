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
            with pytest.raises(SectorError, match=r"ended early|lost|cut"):
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


def test_piece_requests_to_a_peer_share_one_pooled_stream(
    cluster: ProcCluster, tmp_path: Path
) -> None:
    """2 MiB in 16 KiB pieces is at least four requests of 16 pieces to the holder;
    they go down at most two links (streams), not a connection each."""
    with cluster.connect() as c:
        _, st, reader = setup(cluster, c, tmp_path, "/s/links.bin")
        holder = st["replicas"][0]["address"]
        before = swarm(c, holder)
        job = c._run(c._aio.pool.call(reader, "swarm.fetch", {"paths": [st["path"]]}))["job"]

        def done() -> bool:
            got = c._run(c._aio.pool.call(reader, "swarm.job", {"job": job}))
            return bool(got["state"] == "done" and got["files"] == 1)

        wait_for(done, 60.0, what="the fetch")
        after = swarm(c, holder)
        requests = after["piece_requests"] - before["piece_requests"]
        streams = after["piece_streams"] - before["piece_streams"]
        assert requests >= 4 and streams <= 2, (requests, streams)


def test_endgame_asks_a_slow_holders_last_pieces_of_another(tmp_path: Path) -> None:
    """Two holders, one uploading at 64 KB/s: the last pieces, in flight from the slow
    one, are asked of the fast one too (endgame), and the fetch is whole and right."""
    args = ["--piece-size", "16K", "--swarm-upload-rate", "1M"]
    with ProcCluster(tmp_path / "eg", replicas=2, node_args=args) as cl:
        cl.start(2)
        cl.node_args = ["--piece-size", "16K", "--swarm-upload-rate", "64K"]
        slow = cl.add()
        cl.node_args = args
        reader = cl.add()
        cl.wait_ring()
        with cl.connect() as c:
            for i in range(12):
                data = os.urandom(1 << 20)
                (tmp_path / "src").write_bytes(data)
                st = c.put(str(tmp_path / "src"), f"/eg/f{i}", replicas=2)
                holders = {r["address"] for r in st["replicas"]}
                if slow.address in holders and reader.address not in holders:
                    break
            else:
                pytest.skip("placement never put a replica on the slow node")
            job = c._run(c._aio.pool.call(reader.address, "swarm.fetch", {"paths": [st["path"]]}))

            def done() -> dict[str, Any] | None:
                got: dict[str, Any] = c._run(
                    c._aio.pool.call(reader.address, "swarm.job", {"job": job["job"]})
                )
                return got if got["state"] == "done" else None

            assert wait_for(done, 60.0, what="the fetch")["errors"] == []
            cached = reader.data / "cache" / st["blob"][:2] / st["blob"]
            assert cached.read_bytes() == data
            assert swarm(c, reader.address)["endgame_requests"] >= 1


def test_fetch_jobs_are_bounded_per_caller(cluster: ProcCluster, tmp_path: Path) -> None:
    from sector.node.swarm_clients import JOBS_PER_CALLER

    with cluster.connect() as c:
        _, st, reader = setup(cluster, c, tmp_path, "/s/jobs.bin")  # ~2 s to fetch
        for _ in range(JOBS_PER_CALLER):
            c._run(c._aio.pool.call(reader, "swarm.fetch", {"paths": [st["path"]]}))
        with pytest.raises(SectorError, match="distribute jobs running"):
            c._run(c._aio.pool.call(reader, "swarm.fetch", {"paths": [st["path"]]}))


def test_on_a_secure_cluster_only_identified_callers_may_ask_for_fetches(
    tmp_path: Path,
) -> None:
    with ProcCluster(tmp_path / "sec", replicas=1, secure=True, node_args=NODE_ARGS) as cl:
        cl.start(2)
        with cl.connect() as admin:
            data, st, reader = setup(cl, admin, tmp_path, "/pub/f.bin")
        with (
            cl.connect(reader, anonymous=True) as anon,
            pytest.raises(SectorError, match="needs a user credential"),
        ):
            anon._run(anon._aio.pool.call(reader, "swarm.fetch", {"paths": [st["path"]]}))
        with cl.connect(reader, token=cl.token("alice", read=["/"])) as c:
            args = {"paths": [st["path"]]}
            job = c._run(c._aio.pool.call(reader, "swarm.fetch", args))["job"]

            def done() -> dict[str, Any] | None:
                got: dict[str, Any] = c._run(c._aio.pool.call(reader, "swarm.job", {"job": job}))
                return got if got["state"] == "done" else None

            assert wait_for(done, 60.0, what="the fetch")["errors"] == []
        n = next(n for n in cl.nodes if n.address == reader)
        # (the pieces came over TLS links between the nodes)
        assert (n.data / "cache" / st["blob"][:2] / st["blob"]).read_bytes() == data
