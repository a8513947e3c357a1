"""Piece lists (issue 14): sizes, hashing in any chunking, the list beside each blob,
and its recomputation when it is missing, torn or of another piece size."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import blake3
import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from sector.storage import pieces
from sector.storage.blobs import BlobStore, checksum_of, new_blob_id


def by_hand(data: bytes, ps: int) -> bytes:
    return b"".join(blake3.blake3(data[i : i + ps]).digest() for i in range(0, len(data), ps))


def test_piece_size_keeps_files_under_the_piece_cap() -> None:
    assert pieces.piece_size_for(0) == pieces.SMALL_PIECE  # small files: small pieces
    assert pieces.piece_size_for(16 << 20) == 64 << 10  # at least MIN_COUNT pieces
    assert pieces.piece_size_for(256 << 20) == 1 << 20
    assert pieces.piece_size_for(1 << 20, base=16 << 10) == 16 << 10  # never above base
    assert pieces.piece_size_for(1 << 30) == 4 << 20  # 256 pieces
    assert pieces.piece_size_for(8 << 30) == 4 << 20  # 2048 exactly
    assert pieces.piece_size_for((8 << 30) + 1) == 8 << 20
    assert pieces.piece_size_for(64 << 30) == 32 << 20
    assert pieces.piece_size_for(10, base=1) == pieces.MIN_PIECE  # a floor on tiny pieces
    for size in (1, 4 << 20, 5 << 30, 100 << 30):
        ps = pieces.piece_size_for(size)
        assert pieces.count(size, ps) <= pieces.MAX_PIECES
    assert pieces.count(0, 4) == 0
    assert [pieces.piece_len(i, 10, 4) for i in range(3)] == [4, 4, 2]


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(min_size=0, max_size=5000),
    ps=st.sampled_from([16, 64, 1000, 4096]),
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=8),
)
def test_hasher_gives_the_same_list_whatever_the_chunks(
    data: bytes, ps: int, cuts: list[int]
) -> None:
    h = pieces.PieceHasher(ps)
    last = 0
    for c in sorted(c for c in cuts if c <= len(data)):
        h.update(data[last:c])
        last = c
    h.update(data[last:])
    assert h.digests() == by_hand(data, ps)
    assert h.digests() == by_hand(data, ps)  # idempotent


def _feed(ver: pieces.Verifier, data: bytes, runs: list[int], chunks: list[int]) -> None:
    """Feed ``data`` to ``ver`` as a striped read would: one run per span between the
    sorted cut points, each in chunks of the given sizes (cycled)."""
    bounds = [0, *runs, len(data)]
    for a, b in itertools.pairwise(bounds):
        r = ver.run(a)
        at, k = a, 0
        while at < b:
            n = max(1, chunks[k % len(chunks)])
            r.update(memoryview(data)[at : min(b, at + n)])
            at, k = at + n, k + 1


@settings(max_examples=80, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=5000),
    ps=st.sampled_from([16, 64, 1000, 4096]),
    cuts=st.lists(st.integers(min_value=1, max_value=4999), max_size=6),
    chunks=st.lists(st.integers(min_value=1, max_value=3000), min_size=1, max_size=5),
    flip=st.integers(min_value=0, max_value=4999),
)
def test_a_read_in_runs_is_checked_piece_by_piece(
    data: bytes, ps: int, cuts: list[int], chunks: list[int], flip: int
) -> None:
    """A striped read's check (issue 15): each run hashes the pieces wholly inside it,
    the others are hashed apart (``missing``); every piece is checked, and a changed
    byte anywhere is pinned on its piece."""
    pl = pieces.PieceList(len(data), ps, by_hand(data, ps))
    runs = sorted({c for c in cuts if c < len(data)})

    def check(got: bytes) -> list[int]:
        ver = pieces.Verifier(len(got), ps)
        _feed(ver, got, runs, chunks)
        missing = ver.missing()
        for i in missing:  # a piece cut by a run's start or end is not hashed by a run
            assert any(i * ps < c < min(len(got), (i + 1) * ps) for c in runs), (i, runs)
        extra = {i: pieces.digest(got[i * ps : (i + 1) * ps]) for i in missing}
        return ver.bad(pl, extra)

    assert check(data) == []
    at = flip % len(data)
    rotten = data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]
    assert check(rotten) == [at // ps]


def test_a_check_without_the_other_pieces_or_of_another_list_fails() -> None:
    data = os.urandom(10_000)
    pl = pieces.PieceList(len(data), 4096, by_hand(data, 4096))
    ver = pieces.Verifier(len(data), 4096)
    ver.run(5000).update(data[5000:])  # pieces 2 (whole); 1 is cut, 0 never came
    assert ver.missing() == [0, 1]
    assert ver.bad(pl, {}) == [0, 1]  # not hashed: not taken as good
    assert ver.bad(pl, {0: pl.of(0), 1: pl.of(1)}) == []
    other = pieces.PieceList(len(data), 1024, by_hand(data, 1024))
    assert ver.bad(other, {}) == [0, 1, 2]  # a list of another piece size checks nothing


def test_list_round_trip_and_validity() -> None:
    data = os.urandom(10_000)
    pl = pieces.PieceList(len(data), 4096, by_hand(data, 4096))
    assert pl.valid() and pieces.decode(pieces.encode(pl)) == pl
    assert pl.root == "blake3:" + blake3.blake3(pl.digests).hexdigest()
    assert pl.of(2) == blake3.blake3(data[8192:]).digest()
    torn = pieces.encode(pl)[:-5]
    assert pieces.decode(torn) is None
    assert pieces.decode(pieces.encode(pieces.PieceList(10_000, 4096, b"x" * 32))) is None


def _put(s: BlobStore, data: bytes) -> str:
    b = new_blob_id()
    w = s.writer(b, len(data), "/f")
    for i in range(0, len(data), 7000):
        w.write(data[i : i + 7000])
    w.commit(checksum_of(data))
    s.committed(w)
    return b


def test_a_sealed_blob_has_its_list_beside_it_and_it_goes_with_it(tmp_path: Path) -> None:
    s = BlobStore(tmp_path)
    s.piece_base = 16 << 10
    data = os.urandom(100_000)
    b = _put(s, data)
    side = s.path(b).with_name(b + pieces.SUFFIX)
    assert side.exists()
    pl = s.piece_list(b)
    assert pl.piece_size == 16 << 10 and pl.digests == by_hand(data, 16 << 10)
    assert s.sizes() == {b: len(data)}  # the list is no blob
    s.delete(b)
    assert not side.exists()


def test_adopt_makes_the_list_in_the_same_pass(tmp_path: Path) -> None:
    s = BlobStore(tmp_path)
    s.piece_base = 16 << 10
    data = os.urandom(50_000)
    (tmp_path / "job").mkdir()
    src = tmp_path / "job" / "out.bin"
    src.write_bytes(data)
    b = new_blob_id()
    _, checksum = s.adopt(src, b, "/o")
    assert checksum == checksum_of(data)
    assert s.piece_list(b).digests == by_hand(data, 16 << 10)


def test_a_missing_torn_or_other_sized_list_is_recomputed(tmp_path: Path) -> None:
    s = BlobStore(tmp_path)
    s.piece_base = 16 << 10
    data = os.urandom(70_000)
    b = _put(s, data)
    side = s.path(b).with_name(b + pieces.SUFFIX)
    side.write_bytes(b"garbage")
    assert s.piece_list(b).digests == by_hand(data, 16 << 10)
    side.unlink()
    assert s.piece_list(b).digests == by_hand(data, 16 << 10)
    assert side.exists()  # stored again
    other = s.piece_list(b, 32 << 10)
    assert other.piece_size == 32 << 10 and other.digests == by_hand(data, 32 << 10)
    assert not list((tmp_path / "tmp").iterdir())  # no temp file left behind


def test_records_without_piece_fields_read_as_before() -> None:
    from sector.meta import records as rec

    r = rec.FileRecord(
        path="/f", v=(1, 0, "a"), size=3, checksum="blake3:x", blob="b" * 32, replicas=[], rf=1
    )
    raw = rec.encode(r)
    assert b"piece_size" not in raw and b"pieces" not in raw  # encoded as before
    back = rec.decode(raw)
    assert isinstance(back, rec.FileRecord) and (back.piece_size, back.pieces) == (0, "")
    newer = msgspec.structs.replace(r, piece_size=16, pieces="blake3:r")
    with_list = rec.decode(rec.encode(newer))
    assert isinstance(with_list, rec.FileRecord) and with_list.pieces == "blake3:r"
