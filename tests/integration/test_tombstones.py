"""Tombstones are purged after their grace, and a node that was away longer than the
grace brings nothing back (issue 17; ``meta/purge.py``, ``node/tombstones.py``).

Four real nodes with a grace of a few seconds. A node holding copies of the metadata
is SIGKILLed; while it is away the files are removed and every trace of the removals
is purged on the nodes that stayed (checked on each of them with ``meta.fetch``). When
it comes back, it holds the files as they were before the removal: pushed to their
owners or served to a read, they would live again. It must find out that it was away
too long and drop its records, so the files stay removed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import sector
from sector.errors import NotFound
from sector.testing.cluster import NodeProc, ProcCluster, wait_for

GRACE = 4.0
FILES = [f"/t/f{i:02d}" for i in range(24)]


def _call(c: sector.Client, node: NodeProc, op: str, args: dict[str, Any]) -> Any:
    return c._run(c._aio.pool.call(node.address, op, args))


def _held(c: sector.Client, node: NodeProc) -> dict[str, str]:
    """path -> kind of the records of FILES and of /t that ``node`` holds."""
    got = _call(c, node, "meta.fetch", {"paths": [*FILES, "/t"]})
    return {r["path"]: r["type"] for r in got}


def _dir_entries(c: sector.Client, node: NodeProc) -> dict[str, str]:
    got = _call(c, node, "meta.fetch", {"paths": ["/t"]})
    return {n: ch[1] for r in got for n, ch in (r.get("children") or {}).items()}


def _worker(c: sector.Client, node: NodeProc, name: str) -> dict[str, Any]:
    info = _call(c, node, "node.info", {})
    return next(w for w in info["workers"] if w["name"] == name)


def test_a_node_away_longer_than_the_grace_brings_no_removed_file_back(tmp_path: Path) -> None:
    args = ["--tombstone-grace", str(GRACE), "--tombstone-interval", "0.5"]
    with ProcCluster(tmp_path / "c", node_args=args) as cluster:
        cluster.start(4)
        cluster.wait_ring()
        entry, away = cluster.nodes[0], cluster.nodes[2]
        src = tmp_path / "f"
        src.write_bytes(b"x" * 100)
        with sector.connect(entry.address) as c:
            c.mkdir("/t")
            for p in FILES:
                c.put(src, p)
            wait_for(  # the copies past the quorum land in the background
                lambda: sum(k == "file" for k in _held(c, away).values()) >= len(FILES) // 3,
                10,
                what="the node to hold copies of the file records",
            )
            wait_for(
                lambda: _worker(c, away, "tombstones")["alive_ms"] is not None,
                10,
                what="the node to note that it is alive",
            )

        cluster.kill(away)
        live = [n for n in cluster.nodes if n is not away]
        with sector.connect(entry.address) as c:
            for p in FILES:
                c.rm(p)
            removed_at = time.time()
            # Every trace of the removals goes on the nodes that stayed: the Gone
            # records and the directory's "gone" entries.
            wait_for(
                lambda: all(set(_held(c, n)) <= {"/t"} and not _dir_entries(c, n) for n in live),
                GRACE * 6,
                interval=0.3,
                what="the tombstones to be purged on every node that stayed",
            )
            assert time.time() - removed_at >= GRACE * 0.9  # not before the grace

        cluster.restart(away)  # its old records, with every file live in them
        cluster.wait_ring()
        with sector.connect(entry.address) as c:
            state = _worker(c, away, "tombstones")
            assert state["wiped"] >= len(FILES) // 3, state
            # Its metadata sync has run since (it pushes what it holds, hands off
            # what it does not own) and reads have merged with its copies.
            wait_for(
                lambda: _worker(c, away, "meta-sync")["syncs"] >= 2,
                30,
                what="two metadata syncs on the node that came back",
            )
            assert c.ls("/t") == []
            for p in FILES:
                try:
                    st = c.stat(p)
                except NotFound:
                    continue
                raise AssertionError(f"{p} came back after its removal: {st}")
            for n in cluster.nodes:
                assert set(_held(c, n)) <= {"/t"}, (n.index, _held(c, n))
