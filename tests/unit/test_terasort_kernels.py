"""TeraSort kernels: gensort format, chunk-free generation, buckets, sort, checksum, text."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import numpy as np
import pytest

from sector.sphere import terasort as ts
from sector.sphere.terasort import (
    KEY,
    RECORD,
    as_records,
    bucket_of,
    checksum,
    from_text,
    gen_records,
    merge_summaries,
    sort_records,
    summary,
    to_text,
)


def keys(recs: np.ndarray) -> list[bytes]:
    return [bytes(r[:KEY]) for r in recs]


def test_record_format() -> None:
    recs = gen_records(0x1E240, 3, seed=7)
    assert recs.shape == (3, RECORD) and recs.dtype == np.uint8
    r = bytes(recs[1])  # row 0x1E241
    assert r[10:12] == b"\x00\x11"
    assert r[12:44] == b"0" * 27 + b"1E241"
    assert r[44:48] == b"\x88\x99\xaa\xbb"
    # Filler: the low 48 bits' hex digits 000000 01E241 as letters A..P, 4 times each.
    expect = b"".join(bytes([ord("A") + int(d, 16)]) * 4 for d in "00000001E241")
    assert r[48:96] == expect
    assert r[96:100] == b"\xcc\xdd\xee\xff"
    # Keys are random bytes: different rows, different keys; another seed, other keys.
    assert len(set(keys(recs))) == 3
    assert keys(gen_records(0x1E240, 3, seed=8)) != keys(recs)
    # The row number field of a big row uses all 16 low digits.
    big = bytes(gen_records(2**64 - 2, 1)[0])
    assert big[12:44] == b"0" * 16 + b"FFFFFFFFFFFFFFFE"


@pytest.mark.parametrize("start", [0, 1, 12345])
def test_generation_independent_of_chunking(start: int) -> None:
    whole = gen_records(start, 1001, seed=3)
    for cut in (0, 1, 2, 7, 500, 1000, 1001):
        parts = np.concatenate(
            [gen_records(start, cut, seed=3), gen_records(start + cut, 1001 - cut, seed=3)]
        )
        assert np.array_equal(parts, whole), cut
    three = [gen_records(start + a, b - a, seed=3) for a, b in ((0, 333), (333, 334), (334, 1001))]
    assert np.array_equal(np.concatenate(three), whole)
    assert np.array_equal(gen_records(start, 1001, seed=3), whole)  # deterministic
    assert gen_records(start, 0).shape == (0, RECORD)


def test_bucket_monotonic_and_in_range() -> None:
    recs = gen_records(0, 20_000)
    order = np.argsort(np.array(keys(recs), dtype=object), kind="stable")  # key order
    for n in (1, 2, 3, 7, 64, 1000, 2**31, 2**32):
        b = bucket_of(recs, n)
        assert b.dtype == np.int64 and len(b) == len(recs)
        assert b.min() >= 0 and b.max() < n
        assert (np.diff(b[order]) >= 0).all()  # monotonic: in key order, never down
    counts = np.bincount(bucket_of(recs, 4), minlength=4)
    assert counts.min() > 4000  # uniform keys spread evenly
    edge = np.zeros((3, RECORD), dtype=np.uint8)
    edge[1, :KEY] = 0xFF
    edge[2, 0] = 0x80
    assert bucket_of(edge, 10).tolist() == [0, 9, 5]
    with pytest.raises(ValueError):
        bucket_of(recs, 0)
    with pytest.raises(ValueError):
        bucket_of(recs, 2**32 + 1)


def with_ties(n: int, seed: int) -> np.ndarray:
    """Records whose keys collide a lot: on all 10 bytes, and on the first 8 only."""
    rng = np.random.default_rng(seed)
    recs = gen_records(0, n, seed=seed)
    recs[:, :KEY] = rng.integers(0, 3, size=(n, KEY), dtype=np.uint8)
    recs[: n // 2, :8] = 1  # a long run equal on the first 8 bytes: only the tail decides
    return recs


@pytest.mark.parametrize("n", [0, 1, 2, 5, 1000])
def test_sort_matches_python_sorted(n: int) -> None:
    for recs in (gen_records(17, n), with_ties(n, seed=n)):
        got = sort_records(recs)
        # Python's sort is stable: equal keys keep their input order, row numbers too.
        ref = sorted((bytes(r) for r in recs), key=lambda b: b[:KEY])
        assert [bytes(r) for r in got] == ref
        assert got.shape == (n, RECORD)


def test_sort_accepts_flat_buffers() -> None:
    recs = gen_records(0, 50)
    expect = sort_records(recs)
    assert np.array_equal(sort_records(recs.tobytes()), expect)
    assert np.array_equal(sort_records(bytearray(recs.tobytes())), expect)
    assert np.array_equal(sort_records(recs.ravel()), expect)
    assert np.array_equal(sort_records(recs[::-1]), sort_records(recs[::-1].copy()))
    assert as_records(memoryview(recs.tobytes())).shape == (50, RECORD)
    with pytest.raises(ValueError):
        as_records(b"x" * 150)


def test_checksum_order_independent_and_sensitive() -> None:
    recs = gen_records(0, 5000)
    c = checksum(recs)
    assert 0 <= c < 2**64
    assert checksum(recs[::-1]) == c
    assert checksum(np.random.default_rng(1).permutation(recs)) == c
    assert (checksum(recs[:1234]) + checksum(recs[1234:])) % 2**64 == c
    assert checksum(recs[:0]) == 0
    # Any change is seen: one bit anywhere, a dropped record, a duplicated one.
    for pos in (0, 9, 10, 50, 99):
        bad = recs.copy()
        bad[777, pos] ^= 0x80
        assert checksum(bad) != c, pos
    two = recs.copy()
    two[3, 0] ^= 0x80  # the top bit of two words: a plain multilinear hash misses this
    two[3, 8] ^= 0x80
    assert checksum(two) != c
    assert checksum(recs[1:]) != c
    assert checksum(np.concatenate([recs, recs[:1]])) != c
    assert checksum(gen_records(0, 5000, seed=1)) != c


def test_summary_and_merge() -> None:
    recs = sort_records(gen_records(0, 3000))
    s = summary(recs)
    assert s["records"] == 3000 and s["sorted"] and s["unsorted_at"] == -1
    assert s["checksum"] == checksum(recs)
    assert s["first_key"] == bytes(recs[0, :KEY]) and s["last_key"] == bytes(recs[-1, :KEY])
    empty = summary(recs[:0])
    assert empty == {
        "records": 0,
        "checksum": 0,
        "first_key": None,
        "last_key": None,
        "sorted": True,
        "unsorted_at": -1,
    }

    swapped = recs.copy()
    swapped[[100, 101]] = swapped[[101, 100]]
    bad = summary(swapped)
    assert not bad["sorted"] and bad["unsorted_at"] == 101

    parts = [summary(recs[:1000]), empty, summary(recs[1000:2500]), summary(recs[2500:])]
    m = merge_summaries(parts)
    assert m == {"records": 3000, "checksum": s["checksum"], "sorted": True, "error": None}
    # Keys as hex strings, as they come back through JSON.
    hexed = [{**p, "first_key": p["first_key"] and p["first_key"].hex()} for p in parts]
    hexed = [{**p, "last_key": p["last_key"] and p["last_key"].hex()} for p in hexed]
    assert merge_summaries(hexed)["sorted"]

    # Each part sorted, but in the wrong order: the boundary is caught.
    wrong = merge_summaries([parts[2], parts[0], parts[3]])
    assert not wrong["sorted"] and "part 1" in wrong["error"]
    assert wrong["records"] == 3000 and wrong["checksum"] == s["checksum"]
    inner = merge_summaries([parts[0], bad])
    assert not inner["sorted"] and "record 101" in inner["error"]
    assert merge_summaries([]) == {"records": 0, "checksum": 0, "sorted": True, "error": None}


def test_text_round_trip() -> None:
    recs = gen_records(5, 300)
    text = to_text(recs)
    assert len(text) == 300 * 201
    line = text[:201]
    assert line.endswith(b"\n") and line[:200] == recs[0].tobytes().hex().upper().encode()
    assert np.array_equal(from_text(text), recs)
    assert np.array_equal(from_text(text.lower()), recs)  # lower-case digits read too
    assert to_text(recs[:0]) == b"" and from_text(b"").shape == (0, RECORD)
    with pytest.raises(ValueError):
        from_text(text[:-1])
    with pytest.raises(ValueError):
        from_text(b"G" + text[1:])
    with pytest.raises(ValueError):
        from_text(text[:200] + b"0")


@pytest.mark.skipif(shutil.which("sort") is None, reason="no sort(1)")
def test_gnu_sort_agrees() -> None:
    recs = with_ties(2000, seed=5)
    recs[1000:] = gen_records(0, 1000)
    out = subprocess.run(
        ["sort"],
        input=to_text(recs),
        capture_output=True,
        check=True,
        env={**os.environ, "LC_ALL": "C"},
    ).stdout
    got = from_text(out)
    assert keys(got) == keys(sort_records(recs))
    assert summary(got)["sorted"] and checksum(got) == checksum(recs)


def test_kernels_are_vectorised_enough() -> None:
    # A loose floor (the target is >= 100 MB/s on one core), to catch a per-record loop.
    t0 = time.perf_counter()
    recs = gen_records(0, 200_000)
    gen_s = time.perf_counter() - t0
    assert gen_s < 2.0, f"gen_records: {20 / gen_s:.0f} MB/s"
    assert ts.summary(sort_records(recs))["sorted"]
