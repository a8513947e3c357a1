"""Partition rules on real nodes (README "Consistency"): a node that reaches only a
minority of the members refuses every write and still serves reads; a restarted node
that knows its cluster merges its ring back on its own; status never calls a split
cluster whole. (The partitions themselves, in network namespaces, are the slow suite's
``test_partition.py``; here the minority is made by SIGKILL, which looks the same from
the survivor's side.)"""

from __future__ import annotations

from pathlib import Path

import pytest

import sector
from sector.errors import Unavailable
from sector.testing.cluster import ProcCluster, wait_for


def _refuses_writes(addr: str) -> bool:
    with sector.connect(addr) as c:
        try:
            c.mkdir("/q/probe", parents=True)
        except Unavailable as exc:
            return "no quorum" in str(exc)
    return False


def test_a_node_cut_off_from_the_majority_refuses_writes_and_serves_reads(
    tmp_path: Path,
) -> None:
    with ProcCluster(tmp_path / "cl") as cl:
        cl.start(3)
        src = tmp_path / "a.bin"
        src.write_bytes(b"acknowledged before the split" * 1000)
        with cl.connect() as c:
            c.put(src, "/q/a.bin")
        survivor = cl.nodes[2]

        def all_see_all() -> bool:
            for addr in cl.addresses():
                with sector.connect(addr) as c:
                    if sum(n["state"] == "up" for n in c.status()["nodes"]) != 3:
                        return False
            return True

        # Every node must know the whole roll first (gossip): the survivor would count
        # 1 of 2, and a restarted node that knew only the dead bootstrap could not
        # find its way back.
        wait_for(all_see_all, 30, what="every node to see 3 members up")

        def survivor_holds_the_records() -> bool:
            # An update is acknowledged on a majority of its 3 copies; the third follows
            # in the background. This test's minority must hold all three.
            with sector.connect(survivor.address) as c:
                args = {"paths": ["/q", "/q/a.bin"]}
                got = c._run(c._aio.pool.call(survivor.address, "meta.fetch", args))
            return len(got) == 2 and all("a.bin" in str(r) for r in got)

        wait_for(survivor_holds_the_records, 30, what="the survivor to hold /q and /q/a.bin")
        cl.kill(cl.nodes[0])
        cl.kill(cl.nodes[1])
        # Once it sees the others down, the survivor is a minority of 1 in 3.
        wait_for(lambda: _refuses_writes(survivor.address), 30, what="writes refused")
        with sector.connect(survivor.address) as c:
            for attempt in (
                lambda: c.put(src, "/q/b.bin"),
                lambda: c.rm("/q/a.bin"),
                lambda: c.mv("/q/a.bin", "/q/c.bin"),
                lambda: c.setrf("/q/a.bin", 2),
            ):
                with pytest.raises(Unavailable, match=r"no quorum: this node reaches 1 of 3"):
                    attempt()
            # Reads go on (it holds a copy of everything, R = 3 on 3 nodes).
            assert c.read("/q/a.bin") == src.read_bytes()
            st = c.status()
            assert st["split"] is True and st["quorum"] is False
            assert "b.bin" not in {e["name"] for e in c.ls("/q")}
        # The majority comes back: writes are accepted again and nothing was lost.
        cl.restart(cl.nodes[0])
        cl.restart(cl.nodes[1])
        with sector.connect(survivor.address) as c:
            wait_for(lambda: not _refuses_writes(survivor.address), 60, what="quorum again")
            c.put(src, "/q/b.bin")
            assert c.read("/q/a.bin") == c.read("/q/b.bin") == src.read_bytes()
            wait_for(lambda: c.status()["split"] is False, 60, what="status: not split")


def test_a_restarted_first_node_merges_its_ring_back_without_a_join_address(
    tmp_path: Path,
) -> None:
    # The first node of a cluster has no --join address: before the merge probe, when
    # it restarted it made a ring of one of its own for good and, with no quorum rule,
    # acknowledged writes there that the rest of the cluster never saw.
    with ProcCluster(tmp_path / "cl") as cl:
        cl.start(3)
        first = cl.nodes[0]
        assert "--join" not in first.args
        cl.kill(first)
        other = cl.nodes[1].address
        src = tmp_path / "w.bin"
        src.write_bytes(b"written while the first node was down")
        with sector.connect(other) as c:
            wait_for(lambda: _put_ok(c, src, "/m/while-down.bin"), 60, what="a put without node 0")
        cl._launch(first)  # same data directory, still no --join
        cl._wait_ready(first)
        cl.wait_ring(60)
        with sector.connect(first.address) as c:
            # Its ring is the cluster's again: it reads what was written without it and
            # writes what the others read.
            assert c.read("/m/while-down.bin") == src.read_bytes()
            c.put(src, "/m/after.bin")
            wait_for(lambda: c.status()["split"] is False, 60, what="status: not split")
            merged = c.status()["nodes"]
        assert all((n.get("partition") or {}).get("converged") for n in merged), merged
        with sector.connect(other) as c:
            assert c.read("/m/after.bin") == src.read_bytes()


def _put_ok(c: sector.Client, src: Path, remote: str) -> bool:
    try:
        c.put(src, remote)
    except Unavailable:
        return False
    return True


def test_a_bad_copy_report_about_a_replaced_version_is_ignored(tmp_path: Path) -> None:
    # A reader whose stat predates an overwrite finds the old blob gone and reports
    # "missing" copies: that says nothing of the new version's copies on those nodes.
    # Before the blob travelled with the report, such reports marked all three current
    # copies bad, and the file sat in the repair queue for ever ("no good copy is up").
    with ProcCluster(tmp_path / "cl") as cl:
        cl.start(3)
        src = tmp_path / "v.bin"
        with cl.connect() as c:
            src.write_bytes(b"version one")
            old = c.put(src, "/r/v.bin")
            src.write_bytes(b"version two")
            new = c.put(src, "/r/v.bin")
            assert old["blob"] != new["blob"]
            holder = new["replicas"][0]["id"]
            args = {"path": "/r/v.bin", "node_id": holder}
            stale = c._run(c._aio._call("repair.report", {**args, "blob": old["blob"]}))
            assert stale == {"queued": False, "owner": stale["owner"], "stale": True}
            current = c._run(c._aio._call("repair.report", {**args, "blob": new["blob"]}))
            assert current.get("stale") is None
