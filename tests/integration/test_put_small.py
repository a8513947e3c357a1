"""A small file goes up in one call to its path's owner (``fs.put_small``, issue 17), on
real nodes: the client makes one request, the owner writes the copies itself and
asks no holder to confirm them, and the file is what a put always made: R durable
copies of the bytes, a record whose piece list is the holders' own (the swarm checks
pieces against it), its entry in the directory. Bytes that do not match their
checksum, or more bytes than a small file may have, are refused in one line and
leave no file behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import sector
from sector.errors import BadRequest, ChecksumMismatch, NotFound
from sector.storage import pieces
from sector.storage.blobs import checksum_of
from sector.storage.messages import SMALL_MAX
from sector.testing.cluster import NodeProc, ProcCluster, metric_total


def requests(nodes: list[NodeProc], op: str) -> float:
    return metric_total(nodes, "sector_requests_total", op=op)


def test_a_small_put_is_one_call_to_the_owner_and_makes_r_good_copies(tmp_path: Path) -> None:
    data = bytes(range(256)) * 16  # 4 KiB
    src = tmp_path / "small.bin"
    src.write_bytes(data)
    with ProcCluster(tmp_path / "c", replicas=3) as cluster:
        cluster.start(3)
        cluster.wait_ring()
        nodes = cluster.nodes
        with sector.connect(nodes[0].address) as c:
            c.mkdir("/s")
            ops = ("fs.put_small", "fs.begin_put", "fs.commit_put", "blob.has", "blob.put")
            before = {op: requests(nodes, op) for op in ops}
            st = c.put(str(src), "/s/")  # into the directory: /s/small.bin
            after = {op: requests(nodes, op) for op in ops}
            assert st["path"] == "/s/small.bin"
            # One request from the client; no plan, no commit, no holder confirming.
            assert after["fs.put_small"] - before["fs.put_small"] == 1
            for op in ("fs.begin_put", "fs.commit_put", "blob.has", "blob.put"):
                assert after[op] == before[op], op
            assert c.read("/s/small.bin") == data
            assert [e["name"] for e in c.ls("/s")] == ["small.bin"]

            st = c.stat("/s/small.bin")
            assert st["checksum"] == checksum_of(data)
            ids = {r["id"] for r in st["replicas"]}
            assert len(ids) == 3
            # Each holder has the bytes, and the record's piece list is what a holder
            # computes from them (as the swarm will).
            for n in nodes:
                assert n.node_id in ids
                blob = n.data / "blobs" / st["blob"][:2] / st["blob"]
                assert blob.read_bytes() == data
            assert st["piece_size"] == pieces.piece_size_for(len(data))
            h = pieces.PieceHasher(st["piece_size"])
            h.update(data)
            assert st["pieces"] == pieces.root_of(h.digests())

            # A second put of the path is a new version with the new bytes.
            src.write_bytes(b"v2")
            assert c.put(str(src), "/s/small.bin")["size"] == 2
            assert c.read("/s/small.bin") == b"v2"


def _call(c: sector.Client, node: NodeProc, args: dict[str, Any]) -> Any:
    return c._run(c._aio.pool.call(node.address, "fs.put_small", args))


def test_bad_bytes_are_refused_in_one_line_and_leave_no_file(tmp_path: Path) -> None:
    with ProcCluster(tmp_path / "c", replicas=2) as cluster:
        cluster.start(2)
        cluster.wait_ring()
        with sector.connect(cluster.nodes[0].address) as c:
            wrong = {"path": "/bad", "data": b"abc", "checksum": checksum_of(b"abd")}
            with pytest.raises(ChecksumMismatch) as exc:
                _call(c, cluster.nodes[1], wrong)
            assert "\n" not in str(exc.value)
            with pytest.raises(NotFound):
                c.stat("/bad")
            big = {"path": "/big", "data": b"x" * (SMALL_MAX + 1), "checksum": "blake3:00"}
            with pytest.raises(BadRequest) as bad:
                _call(c, cluster.nodes[0], big)
            assert "fs.put_small" in str(bad.value) and "\n" not in str(bad.value)
            with pytest.raises(NotFound):
                c.stat("/big")
            assert c.ls("/") == []
            # The nodes still serve.
            c.mkdir("/ok")
            assert [e["name"] for e in c.ls("/")] == ["ok"]
