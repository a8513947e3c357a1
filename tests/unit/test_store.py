"""The SQLite metadata store: merging writes, reads, ring-range scans, persistence."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sector.ids import MASK, between_right, distance, key_id
from sector.meta import store as store_mod
from sector.meta.records import DirRecord, FileRecord, Gone, Record, add_child
from sector.meta.store import MetaStore


def frec(path: str, v: int, size: int = 10) -> FileRecord:
    return FileRecord(path, (v, 0, "a"), size, f"c{v}", f"b{v}", [("n1", "h:1")], 3)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MetaStore]:
    s = MetaStore(str(tmp_path / "meta.db"))
    yield s
    s.close()


def test_merge_many_merges_with_what_is_stored(store: MetaStore) -> None:
    assert store.get("/a") is None
    out = store.merge_many([frec("/a", 2), DirRecord("/d", (1, 0, "a"))])
    assert out == [frec("/a", 2), DirRecord("/d", (1, 0, "a"))]
    # A stale version loses: the stored one comes back and stays.
    assert store.merge_many([frec("/a", 1)]) == [frec("/a", 2)]
    assert store.get("/a") == frec("/a", 2)
    # Directory children merge rather than overwrite.
    d1 = add_child(DirRecord("/d", (1, 0, "a")), "x", "file", (2, 0, "a"))
    d2 = add_child(DirRecord("/d", (1, 0, "a")), "y", "dir", (3, 0, "b"))
    store.merge_many([d1])
    [m] = store.merge_many([d2])
    assert isinstance(m, DirRecord) and set(m.children) == {"x", "y"}
    assert store.get("/d") == m


def test_merge_many_same_path_twice_in_one_batch(store: MetaStore) -> None:
    d1 = add_child(DirRecord("/d", (1, 0, "a")), "x", "file", (2, 0, "a"))
    d2 = add_child(DirRecord("/d", (1, 0, "a")), "y", "file", (2, 0, "b"))
    first, second = store.merge_many([d1, d2])
    assert first == d1
    assert isinstance(second, DirRecord) and set(second.children) == {"x", "y"}


def test_merge_many_is_one_transaction(store: MetaStore, monkeypatch: pytest.MonkeyPatch) -> None:
    real = store_mod.merge
    calls = 0

    def failing(a: Record | None, b: Record) -> Record:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("boom")
        return real(a, b)

    monkeypatch.setattr(store_mod, "merge", failing)
    with pytest.raises(RuntimeError):
        store.merge_many([frec("/a", 1), frec("/b", 1)])
    assert store.get("/a") is None and store.get("/b") is None
    monkeypatch.setattr(store_mod, "merge", real)
    store.merge_many([frec("/a", 1)])  # the store is usable afterwards
    assert store.get("/a") == frec("/a", 1)


def test_get_many(store: MetaStore) -> None:
    paths = [f"/f{i}" for i in range(1200)]  # more than one chunk of parameters
    store.merge_many([frec(p, 1) for p in paths])
    got = store.get_many([*paths, "/missing", "/f0"])
    assert set(got) == set(paths) and got["/f7"] == frec("/f7", 1)
    assert store.get_many([]) == {}


def test_in_range_matches_ring_arithmetic_including_wraparound(store: MetaStore) -> None:
    paths = [f"/r/{i}" for i in range(300)]
    store.merge_many([frec(p, 1) for p in paths])
    keys = sorted(key_id(p) for p in paths)
    bounds = [
        (keys[10], keys[200]),  # plain
        (keys[250], keys[20]),  # wraps around zero
        (keys[5], keys[5]),  # whole ring
        (0, MASK),
        (MASK, 0),  # wraps, holds only key 0 (none here)
        (MASK, keys[3]),  # the four smallest keys
        (keys[-1], keys[0]),  # just the smallest
        (keys[-1] - 1, keys[-1]),  # just the largest
    ]
    for lo, hi in bounds:
        got = store.in_range(lo, hi)
        want = {p for p in paths if between_right(key_id(p), lo, hi)}
        assert {r.path for r in got} == want, (lo, hi)
        # Clockwise from lo: a handoff can stream them in ring order.
        dists = [distance(lo, key_id(r.path)) or (MASK + 1) for r in got]
        assert dists == sorted(dists)
    assert len(store.in_range(keys[5], keys[5])) == 300
    assert [r.path for r in store.in_range(keys[-1], keys[0])] == [
        p for p in paths if key_id(p) == keys[0]
    ]


def test_all_pages_through_everything(store: MetaStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_mod, "_PAGE", 7)
    paths = sorted(f"/p/{i}" for i in range(50))
    store.merge_many([frec(p, 1) for p in paths])
    assert [r.path for r in store.all()] == paths
    monkeypatch.setattr(store_mod, "_PAGE", 50)  # an exact multiple of the page
    assert [r.path for r in store.all()] == paths


def test_counts_and_delete_many(store: MetaStore) -> None:
    assert store.counts() == {"files": 0, "dirs": 0, "tombstones": 0, "bytes": 0}
    store.merge_many(
        [
            frec("/a", 1, 100),
            frec("/b", 1, 23),
            DirRecord("/", (1, 0, "a")),
            Gone("/c", (1, 0, "a")),
        ]
    )
    assert store.counts() == {"files": 2, "dirs": 1, "tombstones": 1, "bytes": 123}
    store.merge_many([Gone("/a", (5, 0, "a"))])  # a file becomes a tombstone
    assert store.counts() == {"files": 1, "dirs": 1, "tombstones": 2, "bytes": 23}
    store.delete_many(["/a", "/c", "/nope"])
    assert store.counts() == {"files": 1, "dirs": 1, "tombstones": 0, "bytes": 23}
    assert store.get("/a") is None


def test_reopen_keeps_everything_and_uses_wal(tmp_path: Path) -> None:
    db = str(tmp_path / "meta.db")
    with MetaStore(db) as s:
        s.merge_many([frec("/a", 3), DirRecord("/d", (1, 0, "a"))])
    with MetaStore(db) as s:
        assert s.get("/a") == frec("/a", 3)
        assert s.counts()["dirs"] == 1
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_refuses_a_newer_schema(tmp_path: Path) -> None:
    db = str(tmp_path / "meta.db")
    MetaStore(db).close()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(RuntimeError, match="schema version 99"):
        MetaStore(db)


def test_in_memory_store() -> None:
    with MetaStore(":memory:") as s:
        s.merge_many([frec("/a", 1)])
        assert s.get("/a") == frec("/a", 1)
        assert len(s.in_range(0, 0)) == 1


def test_reads_run_while_a_committer_thread_writes(store: MetaStore) -> None:
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for i in range(30):
                store.merge_many([frec(f"/w/{i}/{j}", 1) for j in range(10)])
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=writer)
    t.start()
    seen = 0
    while t.is_alive():
        seen = max(seen, store.counts()["files"])
        store.get("/w/0/0")
        store.in_range(0, 0)
    t.join()
    assert not errors
    assert store.counts()["files"] == 300 >= seen
