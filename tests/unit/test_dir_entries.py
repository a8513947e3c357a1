"""A directory's entries as rows of their own (issue 17, ``meta/entries.py``): a write
that names the entries it changed writes those alone, and the store then holds, reads
back and digests exactly what a write of the whole record would have given."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sector.meta import digest
from sector.meta import records as rec
from sector.meta.records import Child, DirRecord, FileRecord, Gone, Record
from sector.meta.store import MetaStore

D = "/d"
NAMES = st.sampled_from([f"n{i}" for i in range(12)])
# One step of a directory's life: an entry set or buried, its attributes changed, the
# directory removed (its entries carried as the tombstone's shadow) or made again.
STEPS = st.one_of(
    st.tuples(st.just("add"), NAMES, st.sampled_from(["file", "dir", "gone"])),
    st.tuples(st.just("attrs"), st.just(""), st.just("")),
    st.tuples(st.just("rm"), st.just(""), st.just("")),
)


def _h(store: MetaStore, path: str) -> int:
    with sqlite3.connect(store.path) as con:
        return int(con.execute("SELECT h FROM records WHERE path = ?", (path,)).fetchone()[0])


def _apply(r: Record, step: tuple[str, str, str], t: int) -> tuple[Record, set[str]]:
    """The record after ``step`` at time ``t``, and the entry names it changed."""
    what, name, kind = step
    if what == "add" and isinstance(r, DirRecord):
        return rec.add_child(r, name, kind, (t, 0, "a")), {name}
    if what == "attrs" and isinstance(r, DirRecord):
        return DirRecord(D, (t, 0, "a"), r.children, mode=0o700 + t % 8), set()
    if what == "rm" and isinstance(r, DirRecord):
        return rec.merge(r, Gone(D, (t, 0, "a"))), set()
    if what == "rm":  # made again over the tombstone: its shadow comes back as entries
        return rec.merge(r, DirRecord(D, (t, 0, "a"))), set()
    return r, set()


@settings(max_examples=60, deadline=None)
@given(st.lists(STEPS, max_size=25))
def test_writes_of_the_changed_entries_equal_writes_of_the_whole(
    tmp_path_factory: Any, steps: list[tuple[str, str, str]]
) -> None:
    tmp = tmp_path_factory.mktemp("entries")
    with MetaStore(str(tmp / "a.db")) as a, MetaStore(str(tmp / "b.db")) as b:
        r: Record = DirRecord(D, (1, 0, "a"))
        a.put_many([r], {D: set()})
        for t, step in enumerate(steps, start=2):
            r, names = _apply(r, step, t)
            a.put_many([r], {D: names})  # what the metadata service's committer does
        b.put_many([r])  # the whole record at once
        assert a.get(D) == b.get(D) == r
        assert _h(a, D) == _h(b, D) == digest.row_hash(r)
        assert a.arc_digests(0, 0) == b.arc_digests(0, 0)
        assert a.counts() == b.counts()


def test_a_create_in_a_big_directory_writes_one_entry(tmp_path: Path) -> None:
    """The cost of adding an entry does not grow with the directory: the rows the write
    changes are the entry's and the directory's (and the bucket sums its triggers keep),
    whether it has ten entries or ten thousand."""
    with MetaStore(str(tmp_path / "m.db")) as s:
        for n in (10, 10_000):
            path = f"/big{n}"
            d = DirRecord(
                path, (1, 0, "a"), {f"f{i}": Child((2, i, "a"), "file") for i in range(n)}
            )
            s.put_many([d])
            d2 = rec.add_child(d, "new", "file", (3, 0, "a"))
            before = s._w.total_changes
            s.put_many([d2], {path: {"new"}})
            assert s._w.total_changes - before <= 4, n
            assert s.get(path) == d2
            assert _h(s, path) == digest.row_hash(d2)


def test_a_directory_that_becomes_a_file_or_tombstone_leaves_no_entry_rows(
    tmp_path: Path,
) -> None:
    with MetaStore(str(tmp_path / "m.db")) as s:
        d = DirRecord(D, (1, 0, "a"), {"x": Child((2, 0, "a"), "file")})
        s.put_many([d])
        g = rec.merge(d, Gone(D, (5, 0, "a")))
        assert isinstance(g, Gone) and "x" in g.shadow
        s.put_many([g], {D: set()})
        assert s.get(D) == g
        with sqlite3.connect(s.path) as con:
            assert con.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == 0
        back = rec.merge(g, DirRecord(D, (6, 0, "a")))
        s.put_many([back], {D: set()})  # made again: every entry written, not none
        assert s.get(D) == back and isinstance(back, DirRecord) and "x" in back.children
        s.delete_many([D])
        with sqlite3.connect(s.path) as con:
            assert con.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == 0


def test_a_version_2_store_moves_its_entries_out(tmp_path: Path) -> None:
    """A store written before entries had rows of their own (each directory's entries
    inside its row) opens with the same records and digests as one written now."""
    d = DirRecord(D, (1, 0, "a"), {f"e{i}": Child((2, i, "a"), "file") for i in range(2500)})
    f = FileRecord("/f", (1, 0, "a"), 3, "c", "b1", [("n1", "h:1")], 1)
    old = tmp_path / "old.db"
    MetaStore(str(old)).close()
    with sqlite3.connect(old) as con:  # back to version 2: the row and its triggers
        con.executescript(
            "DROP TABLE entries; ALTER TABLE records DROP COLUMN esum; PRAGMA user_version = 2"
        )
        for r in (d, f):
            row = MetaStore._row(r)
            con.execute(
                "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*row[:4], rec.encode(r), digest.row_hash(r), *row[6:9]),
            )
    with MetaStore(str(old)) as s, MetaStore(str(tmp_path / "new.db")) as fresh:
        fresh.put_many([d, f])
        assert s.get(D) == d and s.get("/f") == f
        assert s.arc_digests(0, 0) == fresh.arc_digests(0, 0)
        assert s.counts() == fresh.counts()
        d2 = rec.add_child(d, "late", "dir", (9, 0, "a"))
        s.put_many([d2], {D: {"late"}})
        assert s.get(D) == d2


DIRS = st.builds(
    lambda v, kids: DirRecord(
        D, (v, 0, "a"), {n: Child((t, 0, "a"), k) for n, (t, k) in kids.items()}
    ),
    st.integers(1, 4),
    st.dictionaries(NAMES, st.tuples(st.integers(0, 9), st.sampled_from(["file", "dir", "gone"]))),
)


@given(DIRS, DIRS)
def test_merging_in_place_is_the_merge(cur: DirRecord, r: DirRecord) -> None:
    mine = DirRecord(cur.path, cur.v, dict(cur.children))
    assert rec.merge_into(mine, r) == rec.merge(cur, r)
