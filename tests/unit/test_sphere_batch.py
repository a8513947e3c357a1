"""What a UDF sees (Batch), what it may return (normalize) and the split by bucket."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from sector.sphere.batch import Batch, Output, normalize, split

# -- Batch ------------------------------------------------------------------------------


def test_lines_batch_counts_a_final_line_without_newline() -> None:
    b = Batch(b"a\nbb\r\n\nccc", kind="lines", path="/t", segment=3, node="n1")
    assert len(b) == 4
    assert b.offsets.tolist() == [0, 2, 6, 7, 10] and b.offsets.dtype == np.int64
    assert b.lines() == [b"a", b"bb", b"", b"ccc"]
    assert (b.path, b.segment, b.node) == ("/t", 3, "n1")
    assert b.text() == "a\nbb\r\n\nccc"


@pytest.mark.parametrize(
    ("data", "n", "offsets"),
    [(b"", 0, [0]), (b"\n", 1, [0, 1]), (b"x", 1, [0, 1]), (b"x\n", 1, [0, 2])],
)
def test_lines_edge_cases(data: bytes, n: int, offsets: list[int]) -> None:
    b = Batch(data, kind="lines")
    assert len(b) == n == len(b.lines()) and b.offsets.tolist() == offsets


def test_lone_carriage_return_does_not_end_a_line() -> None:
    assert Batch(b"a\rb\n", kind="lines").lines() == [b"a\rb"]


def test_fixed_records_are_a_read_only_zero_copy_view() -> None:
    raw = bytearray(range(12))
    b = Batch(raw, kind="fixed", record_size=4, first=7)
    assert len(b) == 3 and b.first == 7
    r = b.records
    assert r.shape == (3, 4) and r.dtype == np.uint8 and r[1].tolist() == [4, 5, 6, 7]
    assert np.shares_memory(r, np.frombuffer(raw, np.uint8))
    assert not r.flags.writeable and b.data.readonly
    assert b.offsets.tolist() == [0, 4, 8, 12]
    assert b.array(np.uint32).shape == (3,)


def test_fixed_batch_must_hold_whole_records() -> None:
    with pytest.raises(ValueError, match="not a whole number of 4-byte records"):
        Batch(b"12345", kind="fixed", record_size=4)


def test_idx_offsets_are_relative_to_the_data() -> None:
    b = Batch(b"aaabbbbc", kind="idx", offsets=np.array([100, 103, 107, 108]), offset=100)
    assert len(b) == 3 and b.offsets.tolist() == [0, 3, 7, 8]
    with pytest.raises(ValueError, match="needs the records' offsets"):
        Batch(b"x", kind="idx")
    with pytest.raises(ValueError, match="do not cover the batch's 8 bytes"):
        Batch(b"aaabbbbc", kind="idx", offsets=np.array([0, 3, 7]))


def test_file_and_task_batches_are_one_record() -> None:
    f = Batch(b"whole file", kind="file")
    assert len(f) == 1 and f.offsets.tolist() == [0, 10]
    t = Batch(b"", kind="task", param={"seed": 5})
    assert len(t) == 1 and t.param == {"seed": 5} and t.offsets.tolist() == [0, 0]


def test_records_on_a_variable_batch_says_what_to_use() -> None:
    with pytest.raises(TypeError, match=r"fixed-size records .* 'lines'.*batch\.offsets"):
        _ = Batch(b"a\n", kind="lines").records


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown batch kind 'rows'"):
        Batch(b"", kind="rows")


def test_batch_accepts_a_memoryview_of_another_format() -> None:
    a = np.arange(4, dtype=np.int32)
    b = Batch(memoryview(a), kind="fixed", record_size=4)
    assert b.data.nbytes == 16 and b.array(np.int32).tolist() == [0, 1, 2, 3]


# -- normalize --------------------------------------------------------------------------


def recs(out: Output) -> list[bytes]:
    data = bytes(out.data)
    if out.width:
        return [data[i : i + out.width] for i in range(0, len(data), out.width)]
    assert out.offsets is not None
    o = out.offsets.tolist()
    return [data[a:b] for a, b in itertools.pairwise(o)]


@pytest.mark.parametrize(
    ("ret", "expected"),
    [
        (None, []),
        (b"abc", [b"abc"]),
        (bytearray(b"ab"), [b"ab"]),
        (memoryview(b"xyz")[1:], [b"yz"]),
        ("é", ["é".encode()]),
        ([b"a", bytearray(b"bc"), memoryview(b"def"), "g", b""], [b"a", b"bc", b"def", b"g", b""]),
        ((b"a", b"b"), [b"a", b"b"]),  # a pair of records, not (records, buckets)
        ([], []),
    ],
)
def test_normalize_variable_records(ret: Any, expected: list[bytes]) -> None:
    out = normalize(ret)
    assert out.width == 0 and out.buckets is None
    assert recs(out) == expected and len(out) == len(expected)
    assert out.nbytes == sum(map(len, expected))


def test_normalize_arrays_as_fixed_records() -> None:
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = normalize(a)
    assert out.width == 4 and out.offsets is None and len(out) == 3
    assert np.shares_memory(np.frombuffer(out.data, np.uint8), a)  # contiguous: no copy
    # A non-contiguous view is copied in row order.
    out = normalize(a[:, ::2])
    assert out.width == 2 and recs(out) == [bytes([0, 2]), bytes([4, 6]), bytes([8, 10])]
    # 1-D numeric: one record per element.
    out = normalize(np.array([1, 2], dtype="<u2"))
    assert out.width == 2 and recs(out) == [b"\x01\x00", b"\x02\x00"]
    # Structured: one record per element of itemsize bytes.
    st = np.zeros(5, dtype=[("key", "S10"), ("value", "S90")])
    out = normalize(st)
    assert out.width == 100 and len(out) == 5
    # Records of no bytes are kept, as empty variable records.
    out = normalize(np.zeros((3, 0), np.uint8))
    assert len(out) == 3 and out.nbytes == 0


@pytest.mark.parametrize(
    ("ret", "match"),
    [
        ({"a": 1}, "a UDF must return None, bytes, str, a numpy array, .*; got dict"),
        (5, "got int"),
        (np.array(3), "1-D or 2-D numpy array"),
        (np.zeros((2, 2, 2)), "not 3-D"),
        (np.array([b"x", None], dtype=object), "Python objects"),
        ([b"a", 3], "bytes-likes .* not int"),
    ],
)
def test_normalize_refuses_anything_else(ret: Any, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        normalize(ret)


def test_normalize_records_with_bucket_ids() -> None:
    out = normalize(([b"a", b"b", b"c"], [2, 0, 2]))
    assert isinstance(out.buckets, np.ndarray) and out.buckets.dtype == np.int64
    assert out.buckets.tolist() == [2, 0, 2]
    out = normalize((np.zeros((4, 10), np.uint8), np.array([1, 1, 0, 3], dtype=np.uint8)))
    assert isinstance(out.buckets, np.ndarray) and out.buckets.tolist() == [1, 1, 0, 3]
    out = normalize((b"x", 7))
    assert out.buckets == 7 and recs(out) == [b"x"]
    out = normalize((b"x", np.int16(3)))
    assert out.buckets == 3 and type(out.buckets) is int
    out = normalize((None, []))
    assert len(out) == 0


def test_bucket_ids_must_match_the_records() -> None:
    with pytest.raises(ValueError, match="returned 3 records but 2 bucket ids"):
        normalize(([b"a", b"b", b"c"], [0, 1]))
    with pytest.raises(ValueError, match="returned 2 records but 4 bucket ids"):
        normalize((np.zeros((2, 3), np.uint8), np.zeros((2, 2), np.int64)))


# -- split ------------------------------------------------------------------------------


def test_split_groups_records_in_their_order() -> None:
    out = normalize(([b"a", b"bb", b"", b"ccc", b"d"], [1, 0, 1, 1, 3]))
    assert [(b, bytes(v)) for b, v in split(out, 4)] == [(0, b"bb"), (1, b"accc"), (3, b"d")]


def test_split_with_one_id_returns_the_buffer_itself() -> None:
    out = normalize((b"all of it", 2))
    [(b, view)] = split(out, 3)
    assert b == 2 and view is out.data


def test_split_of_grouped_records_does_not_copy() -> None:
    a = np.arange(40, dtype=np.uint8).reshape(10, 4)
    out = normalize((a, [0, 0, 1, 1, 1, 1, 2, 2, 2, 2]))
    parts = split(out, 3)
    assert [b for b, _ in parts] == [0, 1, 2]
    assert all(np.shares_memory(np.frombuffer(v, np.uint8), a) for _, v in parts)
    assert bytes(parts[1][1]) == a[2:6].tobytes()


def test_split_refuses_bad_ids_and_missing_ids() -> None:
    with pytest.raises(ValueError, match=r"bucket id 4 \(record 1\) is outside \[0, 4\)"):
        split(normalize(([b"a", b"b", b"c"], [0, 4, -1])), 4)
    with pytest.raises(ValueError, match=r"bucket id 9 is outside \[0, 4\)"):
        split(normalize((b"a", 9)), 4)
    with pytest.raises(ValueError, match="must return \\(records, bucket_ids\\)"):
        split(normalize([b"a"]), 4)
    with pytest.raises(ValueError, match="at least one bucket"):
        split(normalize(([b"a"], [0])), 0)


def test_split_of_no_records_is_empty_even_without_ids() -> None:
    assert split(normalize(None), 8) == []


def test_split_a_million_fixed_records() -> None:
    rng = np.random.default_rng(7)
    n, w, nb = 1_000_000, 16, 300  # more than 256 buckets: 16-bit sort keys
    a = rng.integers(0, 256, (n, w), dtype=np.uint8)
    ids = rng.integers(0, nb, n)
    parts = split(normalize((a, ids)), nb)
    assert [b for b, _ in parts] == sorted(set(ids.tolist()))
    for b, view in parts[:: len(parts) // 10]:
        assert bytes(view) == a[ids == b].tobytes()
    assert sum(len(v) for _, v in parts) == n * w


def test_split_many_variable_records() -> None:
    rng = np.random.default_rng(8)
    n, nb = 50_000, 70_000  # more than 65536 buckets: int64 sort keys
    lengths = rng.integers(0, 40, n)
    records = [bytes(rng.integers(0, 256, k, dtype=np.uint8)) for k in lengths[:2000]]
    records += [b"r%d" % i for i in range(n - len(records))]
    ids = rng.integers(0, nb, n)
    parts = dict(split(normalize((records, ids)), nb))
    want: dict[int, list[bytes]] = {}
    for r, b in zip(records, ids.tolist(), strict=True):
        want.setdefault(b, []).append(r)
    assert list(parts) == sorted(want)
    assert all(bytes(parts[b]) == b"".join(rs) for b, rs in want.items())


def test_split_a_record_bigger_than_the_gather_chunk() -> None:
    big = bytes(range(256)) * 10_000  # 2.5 MB, more than one gather chunk
    out = normalize(([b"a", big, b"b", big[:100], b"c"], [1, 0, 1, 0, 1]))
    assert [(b, bytes(v)) for b, v in split(out, 2)] == [(0, big + big[:100]), (1, b"abc")]
