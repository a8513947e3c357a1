"""Drain and disk-full (issue 3, part 4), on real node processes and the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import sector
from sector.errors import NotFound
from sector.testing.cluster import ProcCluster, wait_for

DRAIN_DEADLINE = 90.0  # seconds; 40 small files move in a few seconds once noticed


def _cli(cl: ProcCluster, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sector", "--cluster", cl.nodes[0].address, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cl.env,
    )


def _holders_on_disk(cl: ProcCluster, blob: str) -> set[str]:
    return {n.node_id for n in cl.nodes if (n.data / "blobs" / blob[:2] / blob).is_file()}


def test_drain_moves_every_replica_off_the_node(tmp_path: Path) -> None:
    with ProcCluster(tmp_path / "cl", replicas=3) as cl:
        cl.start(5)
        files: dict[str, bytes] = {}
        with sector.connect(cl.nodes[0].address) as c:
            for i in range(40):
                data = os.urandom(200_000 if i % 8 == 0 else 500 + 41 * i)
                src = tmp_path / "src.bin"
                src.write_bytes(data)
                files[c.put(src, f"/d/f{i:02d}")["path"]] = data
            held: dict[str, int] = {}
            for p in files:
                for r in c.stat(p)["replicas"]:
                    held[r["id"]] = held.get(r["id"], 0) + 1
        victim = max(cl.nodes[1:], key=lambda n: held.get(n.node_id, 0))
        assert held[victim.node_id] > 0

        res = _cli(cl, "node", "drain", victim.address, "--json", "--timeout", str(DRAIN_DEADLINE))
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        assert out["state"] == "drained" and out["drain_remaining"] == 0
        print(f"\ndrain of {held[victim.node_id]} replicas took {out['seconds']} s")

        with sector.connect(cl.nodes[0].address) as c:
            for path, data in files.items():
                st = c.stat(path)
                ids = [r["id"] for r in st["replicas"]]
                assert victim.node_id not in ids
                assert len(set(ids)) == 3 and all(r["state"] == "up" for r in st["replicas"])
                # "Safe to remove": R copies really on disk, none counted on the victim.
                assert len(_holders_on_disk(cl, st["blob"]) - {victim.node_id}) >= 3
                assert c.read(path) == data
            # The node stays out of placement: a new file lands elsewhere.
            src = tmp_path / "new.bin"
            src.write_bytes(b"after the drain")
            st = c.put(src, "/d/new")
            assert victim.node_id not in {r["id"] for r in st["replicas"]}
            nodes = {m["address"]: m for m in c.status()["nodes"]}
            assert nodes[victim.address]["state"] == "drained"

        # The victim is removable now: stop it for good and every file still reads.
        cl.kill(victim)
        with sector.connect(cl.nodes[0].address) as c:
            for path, data in files.items():
                assert c.read(path) == data


def test_disk_full_node_is_skipped_and_impossible_write_fails_cleanly(tmp_path: Path) -> None:
    # A 1 MiB floor instead of the default 64 MiB, so the quotas decide.
    with ProcCluster(tmp_path / "cl", replicas=3, node_args=["--min-free", "1M"]) as cl:
        cl.start(4, quota=64 << 20)
        tiny = cl.add(quota=512 << 10)
        cl.wait_ring()
        with sector.connect(cl.nodes[0].address) as c:
            wait_for(
                lambda: any(
                    m["address"] == tiny.address and m["state"] == "up" for m in c.status()["nodes"]
                ),
                30.0,
                what="the tiny node up",
            )
            for i in range(12):
                src = tmp_path / "f.bin"
                src.write_bytes(os.urandom(100_000 + i))
                st = c.put(src, f"/full/f{i}")
                ids = {r["id"] for r in st["replicas"]}
                assert len(ids) == 3 and tiny.node_id not in ids
                assert not st["under_replicated"]
        assert not any((tiny.data / "blobs").glob("*/*"))

        # Larger than any node can take: one line, exit 1, no record, nothing listed.
        big = tmp_path / "huge.bin"
        with open(big, "wb") as f:
            f.truncate(100 << 20)  # sparse: nothing is sent before placement refuses
        res = _cli(cl, "put", str(big), "/full/huge")
        assert res.returncode == 1
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sector: error: ")
        assert "no node can take" in lines[0]
        with sector.connect(cl.nodes[0].address) as c:
            with pytest.raises(NotFound):
                c.stat("/full/huge")
            assert "huge" not in {e["name"] for e in c.ls("/full")}
