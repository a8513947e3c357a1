"""Self-healing (issue 3, part 1): the owners of the files re-replicate after a crash,
trim extra copies, and replace a copy reported bad, on real node processes."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import sector
from sector.testing.cluster import ProcCluster, wait_for

REPAIR_DEADLINE = 60.0  # seconds from the kill; a crash is noticed in ~4 s (dead_after)


def _copies_on_disk(cl: ProcCluster, blob: str) -> list[int]:
    """Indexes of the nodes whose data directory holds the blob."""
    return [n.index for n in cl.nodes if (n.data / "blobs" / blob[:2] / blob).is_file()]


def test_kill_9_one_of_five_all_files_return_to_three_copies(tmp_path: Path) -> None:
    with ProcCluster(tmp_path / "cl", replicas=3) as cl:
        cl.start(5)
        files: dict[str, bytes] = {}
        with sector.connect(cl.nodes[0].address) as c:
            for i in range(50):
                # Mostly small (inline puts), some over the inline limit (bulk puts).
                data = os.urandom(300_000 if i % 10 == 0 else 1000 + 37 * i)
                src = tmp_path / "src.bin"
                src.write_bytes(data)
                st = c.put(src, f"/heal/f{i:02d}")
                assert len(st["replicas"]) == 3
                files[st["path"]] = data
            stats = {p: c.stat(p) for p in files}
        held: dict[str, int] = {}
        for st in stats.values():
            for r in st["replicas"]:
                held[r["id"]] = held.get(r["id"], 0) + 1
        victim = max(cl.nodes[1:], key=lambda n: held.get(n.node_id, 0))
        assert held[victim.node_id] > 0

        cl.kill(victim)
        t0 = time.monotonic()
        reads = 0
        with sector.connect(cl.nodes[0].address) as c:

            def healed() -> bool:
                nonlocal reads
                ok = True
                for path, data in files.items():
                    assert c.read(path) == data  # no read fails during the repair
                    reads += 1
                    reps = c.stat(path)["replicas"]
                    ids = [r["id"] for r in reps]
                    ok = ok and (
                        len(ids) == 3
                        and len(set(ids)) == 3
                        and victim.node_id not in ids
                        and all(r["state"] == "up" for r in reps)
                    )
                return ok

            wait_for(healed, REPAIR_DEADLINE, interval=0.2, what="3 live copies of every file")
            took = time.monotonic() - t0
            print(f"\nrepair after kill -9: all 50 files at 3 live copies in {took:.1f} s")
            assert reads >= len(files)

            def settled() -> dict[str, Any] | None:
                st = c.status()
                return st if st["under_replicated"] == 0 and st["repair_queue"] == 0 else None

            st = wait_for(settled, 30.0, interval=0.2, what="no under-replicated file, empty queue")
            assert st["files"] == 50
            # The copies are really on disk, one per listed node.
            for path in files:
                s = c.stat(path)
                on_disk = {cl.nodes[i].node_id for i in _copies_on_disk(cl, s["blob"])}
                assert {r["id"] for r in s["replicas"]} <= on_disk


def test_rf_lowered_trims_raised_adds_and_a_reported_bad_copy_is_replaced(
    tmp_path: Path,
) -> None:
    with ProcCluster(tmp_path / "cl", replicas=3) as cl:
        cl.start(4)
        src = tmp_path / "f.bin"
        data = os.urandom(400_000)
        src.write_bytes(data)
        with sector.connect(cl.address) as c:
            st = c.put(src, "/rf/f.bin")
            blob = st["blob"]
            assert len(_copies_on_disk(cl, blob)) == 3

            # Over-replicated: the target drops to 1, two copies are trimmed (record
            # first, then the bytes).
            c.setrf("/rf/f.bin", 1)
            wait_for(
                lambda: (
                    len(c.stat("/rf/f.bin")["replicas"]) == 1
                    and len(_copies_on_disk(cl, blob)) == 1
                ),
                30.0,
                interval=0.2,
                what="a trim to one copy",
            )
            assert c.read("/rf/f.bin") == data

            # Under-replicated by a raised target: copies are made from the survivor.
            c.setrf("/rf/f.bin", 4)
            wait_for(
                lambda: (
                    len({r["id"] for r in c.stat("/rf/f.bin")["replicas"]}) == 4
                    and len(_copies_on_disk(cl, blob)) == 4
                ),
                30.0,
                interval=0.2,
                what="four copies",
            )
            c.setrf("/rf/f.bin", 3)
            wait_for(
                lambda: (
                    len(c.stat("/rf/f.bin")["replicas"]) == 3
                    and len(_copies_on_disk(cl, blob)) == 3
                ),
                30.0,
                interval=0.2,
                what="back to three copies",
            )

            # A copy reported bad is replaced elsewhere, then removed: 3 copies all along.
            bad = c.stat("/rf/f.bin")["replicas"][0]["id"]
            c._run(
                c._aio.pool.call(cl.address, "repair.report", {"path": "/rf/f.bin", "node_id": bad})
            )
            wait_for(
                lambda: (
                    bad not in {r["id"] for r in c.stat("/rf/f.bin")["replicas"]}
                    and len(c.stat("/rf/f.bin")["replicas"]) == 3
                ),
                30.0,
                interval=0.2,
                what="the reported copy replaced",
            )
            bad_node = next(n for n in cl.nodes if n.node_id == bad)
            wait_for(
                lambda: bad_node.index not in _copies_on_disk(cl, blob),
                10.0,
                interval=0.2,
                what="the bad copy deleted",
            )
            assert c.read("/rf/f.bin") == data
            info = c._run(c._aio.pool.call(cl.address, "node.info", {}))
            [worker] = [w for w in info["workers"] if w["name"] == "repair"]
            assert {"queue", "in_flight", "done", "failed", "last_error"} <= set(worker)


def test_three_nodes_at_rf_3_remake_a_lost_copy_in_place(tmp_path: Path) -> None:
    """Rule 2b: with no spare node, a copy missing from (or rotten on) its holder is
    written there again, so `sector up`'s default cluster heals too."""
    with ProcCluster(tmp_path / "cl", replicas=3) as cl:
        cl.start(3)
        data = os.urandom(5000)
        src = tmp_path / "x.bin"
        src.write_bytes(data)
        with sector.connect(cl.nodes[0].address) as c:
            st = c.put(src, "/inplace/x.bin")
            victim = next(n for n in cl.nodes if n.node_id == st["replicas"][1]["id"])
            copy = victim.data / "blobs" / st["blob"][:2] / st["blob"]
            copy.unlink()

            def back() -> bool:
                assert c.read("/inplace/x.bin") == data  # reads fail over meanwhile
                return copy.is_file() and copy.read_bytes() == data

            wait_for(back, REPAIR_DEADLINE, interval=0.2, what="the lost copy re-made in place")
            ids = sorted(r["id"] for r in c.stat("/inplace/x.bin")["replicas"])
            assert ids == sorted(n.node_id for n in cl.nodes)
