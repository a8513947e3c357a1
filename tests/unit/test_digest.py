"""Range digests of a shard (meta/digest.py) and the store's arc queries built on them:
every figure the bucket table gives equals the same figure computed row by row, for
arcs that wrap, arcs that are the whole ring and arcs that cut buckets in two."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from sector.ids import MASK, between_right, key_id, to_hex
from sector.meta import digest
from sector.meta.records import Child, DirRecord, FileRecord, Gone, Record
from sector.meta.store import MetaStore

N1, N2, N3, N4 = (f"{i:040x}" for i in (1, 2, 3, 4))  # node ids: 40 hex digits


def frec(path: str, v: int, holders: tuple[str, ...] = (N1,), rf: int = 2) -> FileRecord:
    return FileRecord(
        path, (v, 0, "a"), 10 * v, f"c{v}", f"b{v}", [(h, "x:1") for h in holders], rf
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MetaStore]:
    s = MetaStore(str(tmp_path / "meta.db"))
    yield s
    s.close()


def brute(records: list[Record], lo: int, hi: int) -> dict[str, digest.Digest]:
    out: dict[str, list[int]] = {}
    for r in records:
        k = key_id(r.path)
        if lo == hi or between_right(k, lo, hi):
            h = digest.row_hash(r)
            d = out.setdefault(to_hex(k)[: digest.PREFIX], [0, 0, 0])
            d[0] += 1
            d[1] += h & 0x7FFFFFFF
            d[2] += h >> 31
    return {b: (n, x, y) for b, (n, x, y) in out.items()}


def arcs(rng: random.Random, records: list[Record]) -> list[tuple[int, int]]:
    keys = [key_id(r.path) for r in records]
    out = [(0, 0), (5, 5), (MASK, 0), (0, MASK)]
    for _ in range(20):
        out.append((rng.randrange(MASK + 1), rng.randrange(MASK + 1)))
    for _ in range(10):  # ends exactly on a record's key: (lo, hi] leaves lo out
        out.append((rng.choice(keys), rng.choice(keys)))
    # ends inside one bucket (a narrow arc and its complement, nearly the whole ring)
    k = rng.choice(keys)
    out += [(k - 1, k + 1), (k + 1, k - 1)]
    return out


def test_intervals_and_partial_buckets() -> None:
    a, b = "1" * 40, "2" * 40
    assert digest.intervals(a, b) == [(a, b)]
    assert digest.intervals(a, a) == [("", digest.MAX_KEY)]
    assert digest.intervals(b, a) == [("", a), (b, digest.MAX_KEY)]
    assert digest.intervals(digest.MAX_KEY, a) == [("", a)]
    assert digest.partial(a, b) == ["111", "222"]
    assert digest.partial("", b) == ["222"]
    assert digest.partial("123" + "0" * 37, "123" + "f" * 37) == ["123"]
    assert digest.differ({"a": (1, 2, 3), "b": (1, 1, 1)}, {"a": (1, 2, 3), "c": (1, 0, 0)}) == [
        "b",
        "c",
    ]


def test_row_hash_ignores_the_order_of_entries() -> None:
    v = (1, 0, "a")
    one = DirRecord("/d", v, children={"x": Child(v, "file"), "y": Child(v, "dir")})
    two = DirRecord("/d", v, children={"y": Child(v, "dir"), "x": Child(v, "file")})
    assert digest.row_hash(one) == digest.row_hash(two)
    assert digest.row_hash(one) != digest.row_hash(
        DirRecord("/d", v, children={"x": Child(v, "file")})
    )
    assert 0 <= digest.row_hash(one) < 1 << 62


def test_arc_digests_and_counts_equal_a_scan_after_every_kind_of_write(store: MetaStore) -> None:
    rng = random.Random(7)
    recs: dict[str, Record] = {}
    for i in range(3000):
        p = f"/d{i % 7}/f{i}"
        recs[p] = frec(p, rng.randrange(1, 9)) if i % 5 else DirRecord(p, (1, 0, "a"))
    store.put_many(list(recs.values()))
    # merge (newer wins), replace_exact, delete, a tombstone: the sums follow each.
    newer = [frec(p, 20) for p in list(recs)[:300]]
    store.merge_many(newer)
    recs.update({r.path: r for r in newer})
    victim = list(recs)[400]
    old = store.raw_pages().__next__()
    first_path, first_data = old[0]
    store.replace_exact([(first_path, first_data, None)])
    recs.pop(first_path)
    store.delete_many([victim])
    recs.pop(victim)
    g = Gone(list(recs)[500], (99, 0, "a"))
    store.put_many([g])
    recs[g.path] = g
    rows = list(recs.values())
    for lo, hi in arcs(rng, rows):
        assert store.arc_digests(lo, hi) == brute(rows, lo, hi), (lo, hi)
        inside = [r for r in rows if lo == hi or between_right(key_id(r.path), lo, hi)]
        files = [r for r in inside if isinstance(r, FileRecord)]
        assert store.arc_counts(lo, hi) == {
            "files": len(files),
            "dirs": sum(isinstance(r, DirRecord) for r in inside),
            "tombstones": sum(isinstance(r, Gone) for r in inside),
            "bytes": sum(r.size for r in files),
            "short": sum(r.rf > len(r.replicas) for r in files),
        }
        got = [r for page in store.arc_pages(lo, hi) for r in page]
        assert sorted(r.path for r in got) == sorted(r.path for r in inside)
        b = to_hex(key_id(inside[0].path))[: digest.PREFIX] if inside else "000"
        want = {r.path for r in inside if to_hex(key_id(r.path)).startswith(b)}
        assert {r.path for r in store.bucket_records(lo, hi, b)} == want
    assert store.clear() == len(rows)
    assert store.arc_digests(0, 0) == {} and store.arc_counts(0, 0)["files"] == 0


def test_one_changed_record_makes_one_bucket_differ(tmp_path: Path) -> None:
    a, b = MetaStore(str(tmp_path / "a.db")), MetaStore(str(tmp_path / "b.db"))
    recs = [frec(f"/x/{i}", 1) for i in range(2000)]
    a.put_many(recs)
    b.put_many(list(reversed(recs)))
    assert digest.differ(a.arc_digests(0, 0), b.arc_digests(0, 0)) == []
    b.put_many([frec("/x/17", 2)])
    bucket = to_hex(key_id("/x/17"))[: digest.PREFIX]
    assert digest.differ(a.arc_digests(0, 0), b.arc_digests(0, 0)) == [bucket]
    a.close()
    b.close()


def test_short_counts_files_listing_fewer_holders_than_their_target(store: MetaStore) -> None:
    store.put_many(
        [
            frec("/ok", 1, (N1, N2), 2),
            frec("/extra", 1, (N1, N2, N3), 2),
            frec("/short", 1, (N1,), 2),
            frec("/none", 1, (), 1),
            DirRecord("/d", (1, 0, "a")),
        ]
    )
    assert store.arc_counts(0, 0)["short"] == 2
    store.put_many([frec("/short", 2, (N1, N4), 2)])
    assert store.arc_counts(0, 0)["short"] == 1


def test_a_version_1_store_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    con = sqlite3.connect(path)
    con.executescript(
        "CREATE TABLE records (path TEXT PRIMARY KEY, key TEXT NOT NULL, kind TEXT NOT NULL,"
        " size INTEGER NOT NULL DEFAULT 0, data BLOB NOT NULL) WITHOUT ROWID;"
        "CREATE INDEX records_key ON records(key); PRAGMA user_version = 1;"
    )
    recs = [frec(f"/u/{i}", 2, (N1,), 1) for i in range(1500)]
    rows = [MetaStore._row(r)[:5] for r in recs]
    con.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?)", rows)
    con.commit()
    con.close()
    with MetaStore(str(path)) as s:
        assert s.arc_digests(0, 0) == brute(list(recs), 0, 0)
        assert s.arc_counts(0, 0)["files"] == 1500
        assert s.arc_counts(0, 0)["short"] == 0
        assert s.get("/u/3") == recs[3]


def test_files_since_reads_only_what_was_written_after(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    with MetaStore(path) as s:
        s.put_many([frec(f"/s/{i}", 1) for i in range(2500)] + [DirRecord("/s", (1, 0, "a"))])
        mark = s.last_seq()
        assert sum(len(p) for p in s.files(0, 0)) == 2500  # files only, every page
    with MetaStore(path) as s:  # the seq goes on across a restart
        assert s.last_seq() == mark
        s.merge_many([frec("/s/7", 2)])
        s.put_many([Gone("/s/8", (3, 0, "a")), frec("/s/new", 1)])
        got = [r for page in s.files(0, 0, mark) for r in page]
        assert sorted(r.path for r in got) == ["/s/7", "/s/8", "/s/new"]
        assert any(isinstance(r, Gone) for r in got)  # a scan sees a file removed
        assert list(s.files(0, 0, s.last_seq())) == []
        k = key_id("/s/new")
        assert [r.path for p in s.files(k - 1, k, mark) for r in p] == ["/s/new"]
