"""Segmentation of a stream: units, record kinds, the .idx check, and line bounds."""

from __future__ import annotations

import mmap

import numpy as np
import pytest

from sector.errors import UsageError
from sector.sphere.segments import (
    InputFile,
    Segment,
    check_index,
    line_bounds,
    plan_segments,
    task_segments,
)

MB = 1 << 20


def f(path: str, size: int, index: np.ndarray | None = None) -> InputFile:
    return InputFile(path, size, blob="b" + path, holders=("n1", "n2"), index=index)


def spans(segs: list[Segment]) -> list[tuple[str, int, int]]:
    return [(s.path, s.offset, s.length) for s in segs]


def test_file_mode_gives_one_segment_per_file_even_empty() -> None:
    segs = plan_segments([f("/a", 10 * MB), f("/b", 0), f("/c", 5)], "file", engines=4)
    assert spans(segs) == [("/a", 0, 10 * MB), ("/b", 0, 0), ("/c", 0, 5)]
    assert [s.id for s in segs] == [0, 1, 2]
    assert all(s.kind == "file" and s.holders == ("n1", "n2") for s in segs)
    assert segs[0].blob == "b/a" and segs[0].count == -1


def test_lines_unit_is_total_over_engines_rounded_up() -> None:
    # 4 MB + 2 over 2 engines: a unit of 2 MB + 1, so two segments and no 2-byte tail.
    segs = plan_segments([f("/a", 4 * MB + 2)], "lines", engines=2)
    assert spans(segs) == [("/a", 0, 2 * MB + 1), ("/a", 2 * MB + 1, 2 * MB + 1)]


def test_lines_unit_is_clamped_and_the_last_takes_the_remainder() -> None:
    # Tiny stream: the unit is min_unit, one segment per file.
    segs = plan_segments([f("/a", 100), f("/b", 0), f("/c", 50)], "lines", engines=8)
    assert spans(segs) == [("/a", 0, 100), ("/c", 0, 50)]  # empty file: none
    assert [s.id for s in segs] == [0, 1]
    # A big stream on one engine: max_unit pieces.
    segs = plan_segments([f("/a", 1000)], "lines", engines=1, min_unit=10, max_unit=300)
    assert spans(segs) == [("/a", 0, 300), ("/a", 300, 300), ("/a", 600, 300), ("/a", 900, 100)]


def test_segments_never_span_files() -> None:
    files = [f("/a", 250), f("/b", 250)]
    segs = plan_segments(files, "lines", engines=3, min_unit=1, max_unit=1000)  # unit 167
    assert spans(segs) == [
        ("/a", 0, 167),
        ("/a", 167, 83),
        ("/b", 0, 167),
        ("/b", 167, 83),
    ]


def test_fixed_records_are_whole_and_counted() -> None:
    files = [f("/a", 1000), f("/e", 0), f("/b", 300)]
    segs = plan_segments(files, 100, engines=3, min_unit=1, max_unit=10_000)
    # unit = ceil(1300 / 3) = 434 -> 4 records per segment.
    assert [(s.path, s.first, s.count, s.offset, s.length) for s in segs] == [
        ("/a", 0, 4, 0, 400),
        ("/a", 4, 4, 400, 400),
        ("/a", 8, 2, 800, 200),
        ("/b", 0, 3, 0, 300),
    ]
    assert all(s.kind == "fixed" and s.record_size == 100 for s in segs)


def test_fixed_records_bigger_than_the_unit_go_one_per_segment() -> None:
    segs = plan_segments([f("/a", 3000)], 1000, engines=1, min_unit=1, max_unit=500)
    assert [(s.first, s.count, s.length) for s in segs] == [
        (0, 1, 1000),
        (1, 1, 1000),
        (2, 1, 1000),
    ]


def test_fixed_size_must_divide_the_file() -> None:
    with pytest.raises(UsageError, match=r"/data/x\.bin: size 1001 is not a multiple of .* 100"):
        plan_segments([f("/ok", 100), f("/data/x.bin", 1001)], 100, engines=1)


def test_idx_splits_by_records_within_the_unit() -> None:
    lengths = [30, 30, 30, 200, 10, 10, 10]
    index = np.concatenate(([0], np.cumsum(lengths)))
    segs = plan_segments(
        [f("/a", int(index[-1]), index)], "idx", engines=1, min_unit=1, max_unit=100
    )
    assert [(s.first, s.count, s.offset, s.length) for s in segs] == [
        (0, 3, 0, 90),  # a 4th record would pass 100 bytes
        (3, 1, 90, 200),  # one record bigger than the unit: alone
        (4, 3, 290, 30),
    ]
    assert all(s.kind == "idx" for s in segs)


def test_idx_empty_file_gives_no_segment_and_needs_an_index() -> None:
    assert plan_segments([f("/a", 0, np.array([0]))], "idx", engines=1) == []
    with pytest.raises(UsageError, match=r"/a: records='idx' needs"):
        plan_segments([f("/a", 10)], "idx", engines=1)


@pytest.mark.parametrize(
    ("index", "match"),
    [
        (np.array([1, 10]), "must start at 0"),
        (np.array([0, 9]), "ends at 9 but the file has 10 bytes"),
        (np.array([0, 6, 5, 10]), r"goes backwards at record 1 \(6 -> 5\)"),
        (np.array([[0, 10]]), "1-D array of integer offsets"),
        (np.array([0.0, 10.0]), "1-D array of integer offsets"),
        (np.array([], dtype=np.int64), "is empty"),
    ],
)
def test_check_index_refuses_bad_offsets(index: np.ndarray, match: str) -> None:
    with pytest.raises(UsageError, match=match) as e:
        check_index(index, 10, "/p.idx")
    assert str(e.value).startswith("/p.idx: ") and "\n" not in str(e.value)


def test_check_index_returns_int64_and_allows_empty_records() -> None:
    a = check_index(np.array([0, 4, 4, 10], dtype=np.uint32), 10, "/p")
    assert a.dtype == np.int64 and a.tolist() == [0, 4, 4, 10]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"records": "words"}, "records must be"),
        ({"records": True}, "records must be"),
        ({"records": 1.5}, "records must be"),
        ({"records": 0}, "at least 1 byte"),
        ({"engines": 0}, "engines must be at least 1"),
        ({"min_unit": 0}, "min_unit must be at least 1"),
        ({"min_unit": 10, "max_unit": 5}, r"max_unit \(5\) is below min_unit \(10\)"),
    ],
)
def test_bad_arguments_are_usage_errors(kw: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"records": "lines", "engines": 2} | kw
    with pytest.raises(UsageError, match=match):
        plan_segments([f("/a", 10)], **args)  # type: ignore[arg-type]


def test_task_segments_carry_their_param_and_no_file() -> None:
    segs = task_segments([{"seed": 1}, {"seed": 2}])
    assert [(s.id, s.kind, s.param, s.holders, s.path) for s in segs] == [
        (0, "task", {"seed": 1}, (), ""),
        (1, "task", {"seed": 2}, (), ""),
    ]


def test_input_files_compare_without_their_index() -> None:
    assert f("/a", 3, np.array([0, 3])) == f("/a", 3, np.array([0, 1, 3]))


TEXT = b"alpha\nbeta\n\ngamma delta\nomega"  # 29 bytes, lines start at 0, 6, 11, 12, 24


@pytest.mark.parametrize(
    ("offset", "length", "expected"),
    [
        (0, 3, (0, 6)),  # the first line is read past the range's end
        (3, 5, (6, 11)),  # starts inside "alpha": that line belongs to the range before
        (6, 5, (6, 11)),  # starts exactly on "beta": ours, as the range before ends at 6
        (7, 2, (11, 11)),  # inside "beta" entirely: no line of its own
        (13, 100, (24, 29)),  # the last range ends at the end, even without "\n"
        (25, 4, (29, 29)),  # inside the last line (no final newline)
        (0, 0, (0, 0)),
        (29, 0, (29, 29)),
    ],
)
def test_line_bounds_follows_the_hadoop_rule(
    offset: int, length: int, expected: tuple[int, int]
) -> None:
    assert line_bounds(TEXT, offset, length, len(TEXT)) == expected


def test_line_bounds_on_mmap_and_memoryview() -> None:
    m = mmap.mmap(-1, len(TEXT))  # anonymous memory: no file
    m.write(TEXT)
    mv = memoryview(TEXT)
    try:
        for off, ln in [(0, 3), (3, 5), (7, 2), (12, 100)]:
            want = line_bounds(TEXT, off, ln, len(TEXT))
            assert line_bounds(m, off, ln, len(TEXT)) == want
            assert line_bounds(mv, off, ln, len(TEXT)) == want
    finally:
        mv.release()
        m.close()


def test_line_bounds_on_a_long_line_in_a_memoryview() -> None:
    # Longer than the first search window: the window has to grow.
    data = b"x" * 200_000 + b"\n" + b"y" * 10
    assert line_bounds(memoryview(data), 5, 10, len(data)) == (200_001, 200_001)
    assert line_bounds(memoryview(data), 200_001, 3, len(data)) == (200_001, len(data))


def test_line_bounds_refuses_a_range_outside_the_file() -> None:
    with pytest.raises(ValueError, match="bad range"):
        line_bounds(TEXT, 30, 1, len(TEXT))
    with pytest.raises(ValueError, match="only 29"):
        line_bounds(TEXT, 0, 1, 30)
