"""A large directory listed a page at a time (issue 17), on real nodes (1,500 entries
here; `bench/listing.py` measures 20,000 and more).

``fs.ls`` with ``limit`` answers a page of entries in name order and the cursor of the
next; the entries' records come from their owners in one call per owner and page
(``Router.get_many``), not one routed call each (counted here in the nodes' own
``/metrics``). Entries made while a listing pages through appear in it if their name
comes after the cursor; every entry there throughout appears exactly once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import sector
from sector.testing.cluster import NodeProc, ProcCluster, metric_total

N = 1500  # entries: two pages of 1,000


def meta_ops(nodes: list[NodeProc]) -> float:
    """Routed metadata calls the nodes have served (``meta.op``), summed."""
    return metric_total(nodes, "sector_requests_total", op="meta.op")


def test_a_large_directory_lists_in_pages_exactly_once_each(tmp_path: Path) -> None:
    with ProcCluster(tmp_path / "c", replicas=1) as cluster:
        cluster.start(3)
        cluster.wait_ring()
        with sector.connect(cluster.nodes[0].address) as c:
            names = [f"e{i:05d}" for i in range(N)]
            batch = c.mkdir_many([f"/big/{n}" for n in names])
            assert not batch.failed, batch.failed[:3]

            before = meta_ops(cluster.nodes)
            first, after = c.ls_page("/big", limit=1000)
            assert [e["name"] for e in first] == names[:1000]
            assert after == names[999] and all(e["type"] == "dir" for e in first)
            # One page of 1,000 entries spread over 3 owners: a call per owner (and
            # a few for the directory and routing), not a routed call per entry.
            assert meta_ops(cluster.nodes) - before < 50
            # Names and types only (``ls`` without -l): from the directory's record.
            before = meta_ops(cluster.nodes)
            bare, bare_next = c.ls_page("/big", limit=1000, detail=False)
            assert [(e["name"], e["type"]) for e in bare] == [(e["name"], "dir") for e in first]
            assert bare_next == after and meta_ops(cluster.nodes) - before < 5

            # Paging on while entries are made on both sides of the cursor.
            c.mkdir("/big/a-early")  # before the cursor: not in this listing
            c.mkdir("/big/z-late")  # after it: in this listing
            seen = [e["name"] for e in first]
            while after is not None:
                page, after = c.ls_page("/big", after=after, limit=1000)
                seen += [e["name"] for e in page]
            assert seen == [*names, "z-late"]  # in order, each once

            # The whole listing (the client pages underneath), and past the end.
            every = [e["name"] for e in c.ls("/big")]
            assert every == ["a-early", *names, "z-late"]
            assert c.ls_page("/big", after="zzz") == ([], None)
            assert c.ls_page("/big/e00001") == ([], None)  # an empty directory

        # The CLI prints every page (the first as soon as it comes).
        cli = [sys.executable, "-m", "sector", "--cluster", cluster.nodes[1].address]
        out = subprocess.run([*cli, "ls", "/big"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == [f"{n}/" for n in ["a-early", *names, "z-late"]]
        js = subprocess.run(
            [*cli, "ls", "--json", "/big"], capture_output=True, text=True, timeout=120
        )
        assert len(json.loads(js.stdout)) == N + 2


def test_a_bad_page_request_is_refused_in_one_line(tmp_path: Path) -> None:
    with ProcCluster(tmp_path / "c", replicas=1) as cluster:
        cluster.start(1)
        with sector.connect(cluster.nodes[0].address) as c:
            c.mkdir("/d")
            for bad in (0, 10_001):
                try:
                    c.ls_page("/d", limit=bad)
                except sector.SectorError as exc:
                    assert "limit must be an integer from 1 to 10000" in str(exc)
                else:
                    raise AssertionError(f"limit {bad} accepted")
