"""Replica placement on real nodes: topology-aware, never two copies on one host, and a
cluster too small for the target stores what it can and says so."""

from __future__ import annotations

from pathlib import Path

import sector
from sector.testing.cluster import ProcCluster


def test_three_copies_land_in_three_racks(tmp_path: Path) -> None:
    racks = ["/dc1/r1", "/dc1/r1", "/dc1/r2", "/dc1/r2", "/dc2/r1", "/dc2/r1"]
    with ProcCluster(tmp_path / "cl") as cl:
        first = cl.add(topology=racks[0])
        for topo in racks[1:]:
            cl.add(join=first.address, topology=topo)
        cl.wait_ring()
        src = tmp_path / "f.bin"
        src.write_bytes(b"x" * 1000)
        with sector.connect(cl.address) as c:
            for i in range(12):
                st = c.put(src, f"/p/f{i}")
                topos = [r["topology"] for r in st["replicas"]]
                addrs = [r["address"] for r in st["replicas"]]
                assert len(addrs) == 3 and len(set(addrs)) == 3, st
                assert sorted(topos) == ["/dc1/r1", "/dc1/r2", "/dc2/r1"], st


def test_a_small_cluster_stores_what_it_can_and_reports_under_replication(
    tmp_path: Path, sector_cli
) -> None:
    with ProcCluster(tmp_path / "cl", replicas=3) as cl:
        cl.start(2)
        src = tmp_path / "f.bin"
        src.write_bytes(b"y" * 5000)
        with sector.connect(cl.address) as c:
            st = c.put(src, "/small/f.bin")
            assert len(st["replicas"]) == 2 and st["under_replicated"] is True
            assert c.status()["under_replicated"] == 1
            assert c.read("/small/f.bin") == src.read_bytes()
        out = sector_cli("put", str(src), "/small/g.bin", cluster=cl.address)
        assert out.returncode == 0
        assert b"2 of 3" in out.stderr, out.stderr


def test_a_read_fails_over_from_a_corrupt_replica(tmp_path: Path) -> None:
    """Flip one byte of a stored copy on disk: reads still return the right bytes."""
    with ProcCluster(tmp_path / "cl") as cl:
        cl.start(3)
        src = tmp_path / "f.bin"
        data = bytes(range(256)) * 4096  # 1 MiB
        src.write_bytes(data)
        with sector.connect(cl.address) as c:
            st = c.put(src, "/c/f.bin")
            blob = st["blob"]
            copies = [p for n in cl.nodes for p in (n.data / "blobs" / blob[:2]).glob(blob)]
            assert len(copies) == 3
            for bad in copies[:2]:  # two of three copies corrupt
                raw = bytearray(bad.read_bytes())
                raw[len(raw) // 2] ^= 0xFF
                bad.write_bytes(bytes(raw))
            for _ in range(6):  # whatever replica the client tries first
                out = tmp_path / "out.bin"
                c.get("/c/f.bin", out)
                assert out.read_bytes() == data
                assert c.read("/c/f.bin") == data
