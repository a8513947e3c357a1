"""Compressed shuffle parts (``sphere.packed``): frames round trip, torn ones refused."""

from __future__ import annotations

import io

import numpy as np
import pytest

from sector.sphere import packed
from sector.sphere import terasort as ts


def test_frames_round_trip_in_order_and_size_the_part_from_headers() -> None:
    chunks = [b"", b"a" * 1000, np.arange(5000, dtype=np.int64).tobytes(), b"xyz"]
    part = b"".join(packed.pack(c) for c in chunks)
    assert packed.raw_size(part) == sum(map(len, chunks))
    assert packed.scan(io.BytesIO(part), len(part)) == list(packed.frames(part))
    dst = bytearray(packed.raw_size(part))
    assert packed.unpack_into(part, dst) == len(dst)
    assert bytes(dst) == b"".join(chunks)
    assert [packed.unpack(part, f) for f in packed.frames(part)] == chunks


@pytest.mark.parametrize("cut", [3, 9, -1])
def test_a_torn_part_is_an_error_not_short_data(cut: int) -> None:
    part = packed.pack(b"q" * 4096) + packed.pack(b"r" * 4096)
    torn = part[:cut]
    with pytest.raises(ValueError, match="ends inside a frame"):
        packed.raw_size(torn)
    with pytest.raises(ValueError, match="ends inside a frame"):
        packed.scan(io.BytesIO(torn), len(torn))


def test_a_part_that_holds_more_than_its_buffer_is_refused() -> None:
    part = packed.pack(b"z" * 100)
    with pytest.raises(ValueError, match="more than its headers"):
        packed.unpack_into(part, bytearray(50))


def test_gensort_records_shrink_several_fold() -> None:
    """The claim of the module's doc: TeraSort's records compress well at the fast
    level (the filler and the row digits), which is what the option is for."""
    raw = ts.gen_records(10**7, 20000, 0).tobytes()
    assert len(raw) / len(packed.pack(raw)) > 4
