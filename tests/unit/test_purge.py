"""Tombstone purge (issue 17): what goes and when (``meta/purge.py``), and the store's
conditional write-back that lets a purge never undo a commit (``MetaStore``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sector.meta import purge
from sector.meta.records import (
    Child,
    DirRecord,
    FileRecord,
    Gone,
    add_child,
    decode,
    encode,
    merge,
    remove_child,
)
from sector.meta.store import MetaStore

P = "/d"


def _file(path: str, v: int) -> FileRecord:
    return FileRecord(path, (v, 0, "a"), 1, f"c{v}", f"b{v}", [("n1", "h:1")], 3)


def test_an_old_gone_record_goes_a_new_one_stays() -> None:
    old, new = Gone("/f", (100, 0, "a")), Gone("/g", (500, 0, "a"))
    assert purge.purged(old, 300) is None
    assert purge.purged(new, 300) is new
    f = _file("/h", 1)
    assert purge.purged(f, 300) is f  # a live file is never touched


def test_a_gone_record_carrying_live_children_stays_without_its_old_tombstones() -> None:
    shadow = {"kid": Child((50, 0, "a"), "file"), "was": Child((60, 0, "a"), "gone")}
    g = Gone(P, (100, 0, "a"), shadow=shadow)
    kept = purge.purged(g, 300)
    assert isinstance(kept, Gone) and kept.shadow == {"kid": shadow["kid"]}


def test_a_directory_loses_its_old_gone_entries_only() -> None:
    d = DirRecord(P, (1, 0, "a"))
    d = add_child(d, "live", "file", (10, 0, "a"))
    d = remove_child(d, "old", (100, 0, "a"))
    d = remove_child(d, "recent", (500, 0, "a"))
    p = purge.purged(d, 300)
    assert isinstance(p, DirRecord) and set(p.children) == {"live", "recent"}
    assert purge.purged(p, 300) is p  # nothing left to purge: the same object


def test_the_cutoff_is_the_grace_before_now() -> None:
    assert purge.cutoff(10_000, 3_000) == 7_000


def test_a_node_is_stale_only_past_half_a_grace_of_what_it_vouches_for() -> None:
    grace = 1000
    assert not purge.stale(None, 10**12, grace)  # never alive: a new node, nothing held
    assert not purge.stale(5000, 4500, grace)  # the peers purged up to alive - grace/2
    assert not purge.stale(5000, 4000, grace)
    assert purge.stale(5000, 4501, grace)
    assert purge.stale(5000, 9000, grace)


stamps = st.integers(0, 1000)


@given(
    st.lists(st.tuples(st.sampled_from("abcd"), stamps, st.booleans()), max_size=12),
    st.integers(0, 1000),
)
def test_purging_drops_only_tombstones_older_than_the_cutoff(
    ops: list[tuple[str, int, bool]], before: int
) -> None:
    """Whatever the history, a purged directory lists exactly what it listed, and keeps
    every tombstone at or after the cutoff (those may still be needed)."""
    d = DirRecord(P, (1, 0, "a"))
    for name, v, live in ops:
        d = add_child(d, name, "file" if live else "gone", (v, 0, "a"))
    p = purge.purged(d, before)
    assert isinstance(p, DirRecord)
    live = {n: c for n, c in d.children.items() if c.kind != "gone"}
    assert {n: c for n, c in p.children.items() if c.kind != "gone"} == live
    for n, c in d.children.items():
        if c.kind == "gone" and c.v[0] >= before:
            assert p.children[n] == c
        if c.kind == "gone" and c.v[0] < before:
            assert n not in p.children
    assert merge(p, d) == d  # a replica that has not purged yet merges back to d


def test_replace_exact_writes_only_rows_no_commit_changed(tmp_path: Path) -> None:
    with MetaStore(str(tmp_path / "m.sqlite3")) as s:
        g, d = Gone("/f", (100, 0, "a")), remove_child(DirRecord(P, (1, 0, "a")), "x", (5, 0, "a"))
        s.put_many([g, d, _file("/h", 7)])
        raw = dict(row for page in s.raw_pages() for row in page)
        assert raw["/f"] == encode(g)
        # Meanwhile a create lands on /f: the purge's drop must not undo it.
        s.put_many([_file("/f", 200)])
        assert s.replace_exact([("/f", raw["/f"], None)]) == 0
        f = s.get("/f")
        assert isinstance(f, FileRecord) and f.v[0] == 200
        # A directory's row holds no entries to purge: its entries are rows of their own.
        assert purge.purged(decode(raw[P]), 300) == decode(raw[P])
        assert s.purge_entries(300) == ([P], 1)
        pd = s.get(P)
        assert isinstance(pd, DirRecord) and pd.children == {}
        assert s.counts() == {"files": 2, "dirs": 1, "tombstones": 0, "bytes": 2}
        # An unchanged Gone row does go.
        s.put_many([Gone("/z", (1, 0, "a"))])
        assert s.replace_exact([("/z", encode(Gone("/z", (1, 0, "a"))), None)]) == 1
        assert s.get("/z") is None
        assert s.clear() == 3 and s.get("/h") is None


@given(
    st.dictionaries(
        st.sampled_from("abcdefgh"),
        st.tuples(st.integers(0, 600), st.sampled_from(["file", "dir", "gone"])),
        max_size=8,
    ),
    st.integers(0, 600),
)
@settings(max_examples=50, deadline=None)
def test_purged_entries_leave_the_digest_of_the_purged_directory(
    tmp_path_factory: Any, kids: dict[str, tuple[int, str]], before: int
) -> None:
    """A directory whose old "gone" entries the store purged in place has the row hash
    (and so the digests) of the purged directory written whole, and reads back as it:
    a replica that purged and one that wrote the purged record agree."""
    d = DirRecord(P, (1, 0, "a"), {n: Child((v, 0, "a"), k) for n, (v, k) in kids.items()})
    p = purge.purged(d, before)
    tmp = tmp_path_factory.mktemp("purge")
    with MetaStore(str(tmp / "a.db")) as a, MetaStore(str(tmp / "b.db")) as b:
        a.put_many([d, _file("/h", 7)])
        b.put_many([p, _file("/h", 7)])
        dirs, n = a.purge_entries(before)
        assert n == len(d.children) - len(p.children)
        assert dirs == ([P] if n else [])
        assert a.get(P) == p
        assert a.arc_digests(0, 0) == b.arc_digests(0, 0)
