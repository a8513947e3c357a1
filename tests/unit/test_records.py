"""Metadata records: the clock, the merge rules (as properties), encoding, path rules."""

from __future__ import annotations

import functools
import json
import random
import re

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sector.errors import BadRequest, InvalidPath, UsageError
from sector.meta import records as rec
from sector.meta.records import (
    KINDS,
    Child,
    Clock,
    DirRecord,
    FileRecord,
    Gone,
    Record,
    Stamp,
    add_child,
    basename,
    check_name,
    decode,
    encode,
    from_builtins,
    join,
    live_children,
    merge,
    normalize,
    parent,
    purge_tombstones,
    remove_child,
    to_builtins,
)

P = "/data/d"

# Small domains on purpose: collisions of stamps, names and kinds are where merge
# rules go wrong, and hypothesis only finds them if they are likely.
stamps = st.tuples(st.integers(0, 3), st.integers(0, 2), st.sampled_from(["a", "b", "c"]))
children = st.dictionaries(
    st.sampled_from(["x", "y", "z", "w"]), st.builds(Child, stamps, st.sampled_from(KINDS))
)
files = st.builds(
    FileRecord,
    path=st.just(P),
    v=stamps,
    size=st.integers(0, 9),
    checksum=st.sampled_from(["c1", "c2"]),
    blob=st.sampled_from(["b1", "b2"]),
    replicas=st.lists(st.tuples(st.sampled_from(["n1", "n2"]), st.just("h:1")), max_size=2),
    rf=st.integers(0, 3),
    mode=st.sampled_from([0o644, 0o600]),
    shadow=children,
    rv=st.one_of(st.none(), stamps),
)
dirs = st.builds(
    DirRecord,
    path=st.just(P),
    v=stamps,
    children=children,
    rf=st.integers(0, 3),
    mode=st.sampled_from([0o755, 0o700]),
)
gones = st.builds(
    Gone, path=st.just(P), v=stamps, mtime=st.sampled_from([0.0, 1.5]), shadow=children
)
records = st.one_of(files, dirs, gones)


def entries(r: Record) -> dict[str, Child]:
    return r.children if isinstance(r, DirRecord) else r.shadow


# --------------------------------------------------------------------------- clock


def test_clock_is_strictly_increasing_even_when_wall_clock_steps_back() -> None:
    c = Clock("a")
    seen = [c.tick(now) for now in [5, 5, 7, 3, 3, 8, 8]]
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    assert seen[0] == (5, 0, "a") and seen[3] == (7, 1, "a") and seen[5] == (8, 0, "a")


def test_clock_ticks_after_what_it_observed() -> None:
    a, b = Clock("a"), Clock("b")
    remote = b.tick(1_000)
    a.observe(remote)
    assert a.tick(10) > remote  # our wall clock is far behind, the counter carries us
    a.observe((5, 0, "z"))  # an older stamp changes nothing
    assert a.last[:2] == (1_000, 1)


# --------------------------------------------------------------------------- merge: properties


@settings(deadline=None)
@given(records, records)
def test_merge_is_commutative(a: Record, b: Record) -> None:
    assert merge(a, b) == merge(b, a)


@settings(deadline=None)
@given(records, records, records)
def test_merge_is_associative(a: Record, b: Record, c: Record) -> None:
    assert merge(merge(a, b), c) == merge(a, merge(b, c))


@settings(deadline=None)
@given(records, records)
def test_merge_is_idempotent(a: Record, b: Record) -> None:
    assert merge(a, a) == a
    ab = merge(a, b)
    assert merge(ab, b) == ab and merge(ab, a) == ab


@settings(deadline=None)
@given(st.lists(records, min_size=1, max_size=6), st.randoms(use_true_random=False))
def test_any_order_of_delivery_converges(rs: list[Record], rnd: random.Random) -> None:
    first = functools.reduce(merge, rs, None)
    shuffled = list(rs)
    rnd.shuffle(shuffled)
    assert functools.reduce(merge, shuffled + shuffled[:2], None) == first
    # The winner is the record of the highest stamp; entries are the per-name maximum.
    assert first is not None and first.v == max(r.v for r in rs)
    names = {n for r in rs for n in entries(r)}
    for n in names:
        best = max((entries(r)[n] for r in rs if n in entries(r)), key=lambda c: (c.v, c.kind))
        assert entries(first)[n] == best


@settings(deadline=None)
@given(records)
def test_encode_decode_round_trip(r: Record) -> None:
    assert decode(encode(r)) == r
    assert from_builtins(to_builtins(r)) == r
    # Through JSON too (tuples become lists on the way): what a web face would send.
    assert from_builtins(json.loads(json.dumps(to_builtins(r)))) == r


# --------------------------------------------------------------------------- merge: cases


def test_merge_with_nothing_is_the_record() -> None:
    g = Gone(P, (1, 0, "a"))
    assert merge(None, g) is g


def test_higher_stamp_wins_whole() -> None:
    old = FileRecord(P, (1, 0, "a"), 10, "c1", "b1", [("n1", "h:1")], 3)
    new = FileRecord(P, (2, 0, "b"), 20, "c2", "b2", [("n2", "h:2")], 3)
    assert merge(old, new) is new and merge(new, old) is new
    gone = Gone(P, (3, 0, "a"))
    assert merge(new, gone) is gone


def test_two_dirs_merge_children_and_take_attributes_from_the_later() -> None:
    a = DirRecord(P, (5, 0, "a"), {"x": Child((1, 0, "a"), "file")}, mode=0o700)
    b = DirRecord(P, (2, 0, "b"), {"y": Child((9, 0, "b"), "dir")}, mode=0o755)
    m = merge(a, b)
    assert isinstance(m, DirRecord)
    assert m.mode == 0o700 and m.v == (5, 0, "a")
    assert live_children(m) == {"x": "file", "y": "dir"}


def test_equal_stamps_are_broken_the_same_way_everywhere() -> None:
    a = DirRecord(P, (5, 0, "a"), mode=0o700)
    b = DirRecord(P, (5, 0, "a"), mode=0o755)
    assert merge(a, b) == merge(b, a)
    f = FileRecord(P, (5, 0, "a"), 1, "c", "b", [], 3)
    assert merge(a, f) == merge(f, a)


def test_children_survive_a_tombstone_into_a_later_dir() -> None:
    d1 = add_child(DirRecord(P, (1, 0, "a")), "f", "file", (2, 0, "a"))
    gone = Gone(P, (3, 0, "b"))  # an rmdir that raced the create of f
    d3 = DirRecord(P, (4, 0, "c"))  # mkdir again
    left = merge(merge(d1, gone), d3)
    right = merge(d1, merge(gone, d3))
    assert left == right
    assert isinstance(left, DirRecord) and live_children(left) == {"f": "file"}
    # Meanwhile the tombstone carries the entry, but it is not a listing.
    hidden = merge(d1, gone)
    assert isinstance(hidden, Gone) and "f" in hidden.shadow


def test_children_survive_a_file_into_a_later_dir() -> None:
    d1 = add_child(DirRecord(P, (1, 0, "a")), "f", "file", (2, 0, "a"))
    f2 = FileRecord(P, (3, 0, "b"), 1, "c", "b", [], 3)
    d3 = DirRecord(P, (4, 0, "c"))
    m = merge(merge(d1, f2), d3)
    assert m == merge(d1, merge(f2, d3))
    assert isinstance(m, DirRecord) and live_children(m) == {"f": "file"}


def test_merge_refuses_records_of_different_paths() -> None:
    with pytest.raises(UsageError, match="different paths"):
        merge(Gone("/a", (1, 0, "a")), Gone("/b", (1, 0, "a")))


def test_concurrent_adds_from_many_origins_all_survive() -> None:
    rnd = random.Random(7)
    base = DirRecord(P, (1, 0, "root"))
    replicas: list[DirRecord] = []
    expected: set[str] = set()
    for o in range(8):
        clock, d = Clock(f"node{o}"), base
        for i in range(25):
            name = f"f{o}-{i}"
            # Every origin's wall clock starts at the same ms: stamps collide on wall
            # and counter, only the origin tells them apart.
            d = add_child(d, name, rnd.choice(["file", "dir"]), clock.tick(1_000 + i // 5))
            expected.add(name)
        replicas.append(d)
    for _ in range(5):
        rnd.shuffle(replicas)
        m = functools.reduce(merge, replicas, None)
        assert isinstance(m, DirRecord) and set(live_children(m)) == expected


def test_add_remove_add_takes_the_latest() -> None:
    a, b = Clock("a"), Clock("b")
    d = DirRecord(P, (1, 0, "a"))
    added = add_child(d, "x", "file", a.tick(10))
    removed = remove_child(added, "x", b.tick(20))
    assert live_children(removed) == {}
    # A replica that only saw the add does not bring x back...
    assert live_children(merge(added, removed)) == {}  # type: ignore[arg-type]
    # ...but a later add (after observing the removal) does.
    a.observe(removed.children["x"].v)
    again = add_child(added, "x", "dir", a.tick(15))
    assert live_children(merge(removed, again)) == {"x": "dir"}  # type: ignore[arg-type]


def test_add_child_with_an_older_stamp_changes_nothing() -> None:
    d = add_child(DirRecord(P, (1, 0, "a")), "x", "file", (9, 0, "a"))
    assert add_child(d, "x", "gone", (5, 0, "a")) is d
    assert d.v == (1, 0, "a")  # entries carry their own versions


def test_add_child_checks_its_arguments() -> None:
    d = DirRecord(P, (1, 0, "a"))
    with pytest.raises(InvalidPath):
        add_child(d, "a/b", "file", (1, 0, "a"))
    with pytest.raises(InvalidPath):
        add_child(d, "..", "file", (1, 0, "a"))
    with pytest.raises(UsageError, match="kind"):
        add_child(d, "x", "symlink", (1, 0, "a"))


def test_purge_tombstones_drops_only_old_gone_entries() -> None:
    d = DirRecord(P, (1, 0, "a"))
    d = remove_child(d, "old", (100, 0, "a"))
    d = remove_child(d, "new", (500, 0, "a"))
    d = add_child(d, "live", "file", (50, 0, "a"))
    p = purge_tombstones(d, older_than_ms=300)
    assert set(p.children) == {"new", "live"}
    assert purge_tombstones(p, older_than_ms=300) is p
    g = Gone(P, (600, 0, "a"), shadow={"x": Child((1, 0, "a"), "gone")})
    assert purge_tombstones(g, 300).shadow == {}


def test_live_children_is_sorted_and_hides_tombstones() -> None:
    d = DirRecord(P, (1, 0, "a"))
    for name in ["b", "a", "c"]:
        d = add_child(d, name, "file", (2, 0, "a"))
    d = remove_child(d, "b", (3, 0, "a"))
    assert list(live_children(d).items()) == [("a", "file"), ("c", "file")]


# --------------------------------------------------------------------------- encoding


def test_defaults_are_not_encoded() -> None:
    g = Gone("/a", (1, 0, "ab"))
    assert b"shadow" not in encode(g) and len(encode(g)) < 30


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1garbage",
        msgspec.msgpack.encode([1, 2, 3]),
        msgspec.msgpack.encode({"type": "symlink", "path": "/a", "v": [1, 0, "a"]}),
        msgspec.msgpack.encode({"type": "gone", "path": "/a", "v": [1, "x", "a"]}),
        msgspec.msgpack.encode({"type": "gone", "path": "/a"}),
        msgspec.msgpack.encode({"type": "gone", "path": "/a/../etc", "v": [1, 0, "a"]}),
        msgspec.msgpack.encode({"type": "gone", "path": "/a//b/", "v": [1, 0, "a"]}),
        msgspec.msgpack.encode({"type": "gone", "path": "/a", "v": [-1, 0, "a"]}),
        msgspec.msgpack.encode(
            {
                "type": "dir",
                "path": "/a",
                "v": [1, 0, "a"],
                "children": {"..": [[1, 0, "a"], "dir"]},
            }
        ),
        msgspec.msgpack.encode(
            {"type": "dir", "path": "/a", "v": [1, 0, "a"], "children": {"x": [[1, 0, "a"], "lnk"]}}
        ),
        msgspec.msgpack.encode(
            {
                "type": "file",
                **{"path": "/a", "v": [1, 0, "a"], "size": -1, "checksum": "c"},
                **{"blob": "b", "replicas": [], "rf": 3},
            }
        ),
    ],
)
def test_decode_refuses_bad_data(data: bytes) -> None:
    with pytest.raises(BadRequest):
        decode(data)


def test_from_builtins_refuses_bad_data() -> None:
    for obj in [None, {"type": "file"}, {"type": "dir", "path": "/x\x00", "v": [1, 0, "a"]}]:
        with pytest.raises(BadRequest):
            from_builtins(obj)


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("/", "/"),
        ("//", "/"),
        ("/a", "/a"),
        ("/a/", "/a"),
        ("//a///b//", "/a/b"),
        ("/with space/and  two", "/with space/and  two"),
        ("/données/日本語/🎉", "/données/日本語/🎉"),
        ("/...", "/..."),  # only exactly '.' and '..' are special
        ("/.hidden/a..b", "/.hidden/a..b"),
        ("/" + "a" * 255, "/" + "a" * 255),
        ("/" + "é" * 127, "/" + "é" * 127),  # 254 UTF-8 bytes
    ],
)
def test_normalize_accepts(raw: str, norm: str) -> None:
    assert normalize(raw) == norm
    assert normalize(norm) == norm


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("", "not absolute"),
        ("a/b", "not absolute"),
        ("/a/../b", "'..'"),
        ("/..", "'..'"),
        ("/a/.", "'.'"),
        ("/./a", "'.'"),
        ("/a\x00b", "NUL"),
        ("/a\nb", "U+000A"),
        ("/a\x7fb", "U+007F"),
        ("/a\x85b", "U+0085"),
        ("/a\ud800", "surrogate"),
        ("/" + "a" * 256, "longer than 255"),
        ("/" + "é" * 128, "longer than 255"),  # 128 chars but 256 bytes
        ("/" + "/".join(["a" * 200] * 21), "longer than 4096"),
        ("/" * 100_000, "longer than 4096"),
    ],
)
def test_normalize_refuses(raw: str, why: str) -> None:
    with pytest.raises(InvalidPath, match=re.escape(why)) as info:
        normalize(raw)
    msg = str(info.value)
    assert "\n" not in msg and len(msg) < 300
    assert msg.startswith("invalid path ") and repr(raw[:20])[1:-1] in msg


def test_path_length_limit_is_in_bytes_and_exact() -> None:
    seg = "a" * 255
    ok = "/" + "/".join([seg] * 16)  # 16 * 256 = 4096 bytes
    assert len(ok.encode()) == 4096 and normalize(ok) == ok
    with pytest.raises(InvalidPath):
        normalize(ok + "/b")


def test_normalize_refuses_non_strings() -> None:
    with pytest.raises(InvalidPath):
        normalize(b"/a")  # type: ignore[arg-type]


def test_parent_basename_join() -> None:
    assert parent("/a/b/c") == "/a/b" and parent("/a") == "/" and parent("/") == "/"
    assert basename("/a/b/c") == "c" and basename("/a/") == "a" and basename("/") == ""
    assert join("/", "a") == "/a" and join("/a/b", "c d") == "/a/b/c d"
    with pytest.raises(InvalidPath):
        join("/a", "b/c")
    with pytest.raises(InvalidPath):
        join("/a", "")
    with pytest.raises(InvalidPath):
        join("/a", "..")
    with pytest.raises(InvalidPath):
        parent("/a/../b")
    assert check_name("日本") == "日本"


def test_stamp_alias_is_a_tuple() -> None:
    s: Stamp = Clock("x").tick(1)
    assert isinstance(s, tuple) and s == (1, 0, "x")


# --------------------------------------------------------------------------- rule 4a


def _file(v: Stamp, blob: str, *, rv: Stamp | None = None, reps: int = 3) -> FileRecord:
    return FileRecord(
        path=P,
        v=v,
        size=1,
        checksum="c",
        blob=blob,
        replicas=[(f"n{i}", f"h:{i}") for i in range(reps)],
        rf=3,
        rv=rv,
    )


def test_a_repair_of_an_old_version_never_beats_a_later_overwrite() -> None:
    # The old version repaired long after the overwrite (a stale owner on the far side
    # of a partition): its replica list is newer, its content is not.
    old = _file((10, 0, "a"), "b1", reps=2)
    overwrite = _file((20, 0, "b"), "b2")
    repaired = msgspec.structs.replace(
        old, replicas=[*old.replicas, ("n9", "h:9")], rv=(99, 0, "c")
    )
    assert merge(overwrite, repaired) == overwrite
    assert merge(repaired, overwrite) == overwrite


def test_a_repair_of_an_old_version_never_undoes_a_delete() -> None:
    repaired = _file((10, 0, "a"), "b1", rv=(99, 0, "c"))
    gone = Gone(path=P, v=(20, 0, "b"))
    assert merge(repaired, gone) == gone
    assert merge(gone, repaired) == gone


def test_the_newer_replica_list_of_one_version_wins() -> None:
    base = _file((10, 0, "a"), "b1", reps=2)
    repaired = msgspec.structs.replace(
        base, replicas=[*base.replicas, ("n9", "h:9")], rv=(11, 0, "a")
    )
    assert merge(base, repaired) == repaired
    assert merge(repaired, base) == repaired


def test_records_without_rv_decode_as_before() -> None:
    r = _file((10, 0, "a"), "b1")
    raw = encode(r)
    assert b"rv" not in raw  # the zero stamp is not encoded: old bytes, same record
    assert decode(raw) == r


_PATH_CHARS = st.sampled_from(list("/.ab\x00\x1f\x7f\x9f\u00e9\ud800 \u4e2d"))


@given(st.text(alphabet=_PATH_CHARS, max_size=40).map(lambda s: "/" + s))
def test_the_fast_way_to_a_normal_path_is_the_long_way(path: str) -> None:
    """normalize's shortcut for a path already normal answers as the full checks do."""

    def both(p: str) -> tuple[str, str]:
        try:
            return ("ok", rec.normalize(p))
        except InvalidPath as exc:
            return ("error", str(exc))

    fast = both(path)
    assert rec._NORMAL.fullmatch("/data/run-7/part-00001.csv")  # the shortcut is taken
    saved = rec._NORMAL
    rec._NORMAL = re.compile("(?!)")  # never matches: every path the long way
    try:
        assert both(path) == fast
    finally:
        rec._NORMAL = saved
