"""An ``rm -r`` finishes on a child it did not see (records rule 7), on real nodes.

In thrash, the entry of a subdirectory was acknowledged on two of its directory's
three copies; a kill and a partition at once put both out of reach, and ``rm -r`` ran
on the third, which did not list it. When the copies met again, the subtree lived on,
unlisted, and its files came back after their removal was acknowledged.

Here the copies that come back are sent to every node as the copy holders would push
them (``meta.replicate``, the frame a replica receives): a copy of the removed
directory listing a child stamped before the removal, and the child's own records. The
owner must then remove the child's tree. The same copy of a directory removed by an
rmdir (not a tree removal) keeps rule 6: its child is left for the directory to be
made again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import sector
from sector.errors import NotFound
from sector.meta import records as rec
from sector.meta.records import Child, DirRecord, FileRecord
from sector.testing.cluster import NodeProc, ProcCluster, wait_for


def _call(c: sector.Client, node: NodeProc, op: str, args: dict[str, Any]) -> Any:
    return c._run(c._aio.pool.call(node.address, op, args))


def _gone_stamp(c: sector.Client, nodes: list[NodeProc], path: str) -> rec.Stamp:
    found = [r for n in nodes for r in _call(c, n, "meta.fetch", {"paths": [path]})]
    stamps = [tuple(r["v"]) for r in found if r["type"] == "gone"]
    assert stamps, f"no tombstone of {path}: {found}"
    return min(stamps)  # type: ignore[return-value]


def _came_back(path: str, before: rec.Stamp, child: str) -> list[rec.Record]:
    """The records a copy out of reach held: ``path`` listing ``child`` (a directory,
    stamped ``before``), ``child`` listing a file, and the file."""
    sub = rec.join(path, child)
    f = rec.join(sub, "f")
    return [
        DirRecord(path=path, v=(1, 0, "away"), children={child: Child(before, "dir")}),
        DirRecord(path=sub, v=before, children={"f": Child(before, "file")}),
        FileRecord(path=f, v=before, size=0, checksum="", blob="0" * 32, replicas=[], rf=3),
    ]


def test_rm_r_finishes_on_a_child_that_a_copy_out_of_reach_listed(tmp_path: Path) -> None:
    with ProcCluster(tmp_path / "c") as cluster:
        cluster.start(3)
        cluster.wait_ring()
        with sector.connect(cluster.nodes[0].address) as c:
            c.mkdir("/t/a", parents=True)
            c.mkdir("/t/b")
            c.rm("/t/a", recursive=True)  # a tree removal
            c.rm("/t/b")  # an rmdir
            a_at = _gone_stamp(c, cluster.nodes, "/t/a")
            b_at = _gone_stamp(c, cluster.nodes, "/t/b")
            came = [
                *_came_back("/t/a", (a_at[0] - 5, 0, "away"), "x"),
                *_came_back("/t/b", (b_at[0] - 5, 0, "away"), "y"),
            ]
            records = [rec.to_builtins(r) for r in came]
            for n in cluster.nodes:  # every node holds a copy of every record (3 of 3)
                _call(c, n, "meta.replicate", {"records": records})

            def gone(path: str) -> bool:
                try:
                    c.stat(path)
                except NotFound:
                    return True
                return False

            wait_for(
                lambda: gone("/t/a/x/f") and gone("/t/a/x"),
                30,
                interval=0.2,
                what="the rm -r of /t/a to finish on the child it had not seen",
            )

            def buried() -> bool:
                for n in cluster.nodes:
                    for r in _call(c, n, "meta.fetch", {"paths": ["/t/a"]}):
                        if r["type"] != "gone" or r["shadow"]["x"][1] != "gone":
                            return False
                return True

            wait_for(buried, 30, interval=0.2, what="the entry of x buried on every copy")
            # An rmdir's child is not removed (rule 6): it waits for the directory.
            assert c.stat("/t/b/y")["type"] == "dir"
            assert c.stat("/t/b/y/f")["type"] == "file"
            assert not gone("/t/b/y/f")
            assert c.ls("/t") == []


def test_a_directory_made_and_never_entered_is_entered_by_the_next_put_into_it(
    tmp_path: Path,
) -> None:
    """The node of a ``mkdir -p`` was killed between its two steps (thrash): the
    directory's record is there and its parent does not list it. The next put into it
    enters it (``node/dirlinks.py``), at the stamp it was made with, so an ``rm -r`` of
    the parent then takes it and the file; and a put into such a directory whose parent
    was removed with its tree since is refused, and the directory goes."""
    src = tmp_path / "f.bin"
    src.write_bytes(b"data")
    with ProcCluster(tmp_path / "c") as cluster:
        cluster.start(3)
        cluster.wait_ring()
        n0 = cluster.nodes[0]
        with sector.connect(n0.address) as c:
            c.mkdir("/t")
            # The first step of a mkdir -p alone, as the killed node left it.
            assert _call(c, n0, "meta.op", {"path": "/t/a", "op": "mkdir", "args": {}})
            assert c.ls("/t") == []
            c.put(str(src), "/t/a/f")
            assert [e["name"] for e in c.ls("/t")] == ["a"]
            c.rm("/t", recursive=True)
            with pytest.raises(NotFound):
                c.stat("/t/a/f")

            c.mkdir("/u")
            _call(c, n0, "meta.op", {"path": "/u/b", "op": "mkdir", "args": {}})
            c.rm("/u", recursive=True)  # runs after b was made, and cannot see it
            with pytest.raises(NotFound):
                c.put(str(src), "/u/b/f")
            for path in ("/u/b/f", "/u/b", "/u"):
                with pytest.raises(NotFound):
                    c.stat(path)
