"""The node's cache of other nodes' files (``sector/node/cache.py``): LRU under its
limit, keyed by blob id, dropped on a changed record, rebuilt from disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sector.errors import NoSpace
from sector.node.cache import Cache, Entry
from sector.storage import pieces
from sector.storage.blobs import checksum_of, new_blob_id


def fill(c: Cache, path: str, size: int) -> tuple[Entry, bytes]:
    data = os.urandom(size)
    h = pieces.PieceHasher(4096)
    h.update(data)
    pl = pieces.PieceList(size, 4096, h.digests())
    e = c.begin(new_blob_id(), path, size, checksum_of(data), pl)
    assert e.fd is not None
    os.pwrite(e.fd, data, 0)
    e.have = (1 << e.pieces) - 1
    c.seal(e)
    return e, data


def test_lru_evicts_the_least_recently_used_beyond_the_limit(tmp_path: Path) -> None:
    c = Cache(tmp_path, 30_000)
    c.load()
    a, _ = fill(c, "/a", 10_000)
    b, _ = fill(c, "/b", 10_000)
    assert c.lookup("/a", a.blob) is a  # a is now the most recently used
    fill(c, "/c", 10_000)
    fill(c, "/d", 10_000)  # b goes, not a
    assert c.get(b.blob) is None and not os.path.exists(b.file)
    assert c.get(a.blob) is a
    assert c.used <= c.limit and c.status()["cache_evicted"] == 1
    with pytest.raises(NoSpace):
        fill(c, "/big", 30_001)  # larger than the whole cache


def test_a_fetch_in_progress_is_never_evicted(tmp_path: Path) -> None:
    c = Cache(tmp_path, 20_000)
    c.load()
    pl = pieces.PieceList(15_000, 4096, b"\0" * 32 * 4)
    partial = c.begin(new_blob_id(), "/p", 15_000, "blake3:x", pl)
    with pytest.raises(NoSpace):
        fill(c, "/q", 10_000)
    c.abort(partial)
    assert c.used == 0 and not os.listdir(c.tmp)
    fill(c, "/q", 10_000)


def test_lookup_drops_a_copy_the_record_no_longer_names(tmp_path: Path) -> None:
    c = Cache(tmp_path, 100_000)
    c.load()
    old, _ = fill(c, "/f", 5000)
    assert c.lookup("/f", new_blob_id()) is None  # the file is another blob now
    assert c.get(old.blob) is None and not os.path.exists(old.file)
    e, _ = fill(c, "/g", 5000)
    assert c.drop(e.blob) and not c.drop(e.blob)
    # a fetch under way is marked (it fails), not removed under it
    pl = pieces.PieceList(100, 4096, b"\0" * 32)
    p = c.begin(new_blob_id(), "/h", 100, "blake3:x", pl)
    assert c.drop(p.blob) and p.dropped and c.get(p.blob) is p


def test_the_cache_is_rebuilt_from_disk(tmp_path: Path) -> None:
    c = Cache(tmp_path, 100_000)
    c.load()
    a, data = fill(c, "/a", 7000)
    b, _ = fill(c, "/b", 7000)
    Path(b.file + ".info").unlink()  # a torn entry: removed at start
    junk = c.tmp / "x.part"
    junk.write_bytes(b"half")
    c2 = Cache(tmp_path, 100_000)
    c2.load()
    got = c2.lookup("/a", a.blob)
    assert got is not None and got.complete and Path(got.file).read_bytes() == data
    assert got.digests == a.digests and got.have == a.have
    assert c2.get(b.blob) is None and not os.path.exists(b.file)
    assert not junk.exists() and c2.used == 7000


def test_an_answers_pieces_are_checked_one_by_one_and_a_had_piece_is_never_overwritten(
    tmp_path: Path,
) -> None:
    import threading

    from sector.node.swarm_fetch import _Corrupt, _Run

    ps = 16 << 10
    data = os.urandom(4 * ps)
    digests = b"".join(pieces.digest(data[i : i + ps]) for i in range(0, len(data), ps))
    pl = pieces.PieceList(len(data), ps, digests)
    c = Cache(tmp_path, 1 << 20)
    c.load()
    e = c.begin(new_blob_id(), "/f", len(data), checksum_of(data), pl)
    lock, stop = threading.Lock(), threading.Event()
    assert e.fd is not None
    os.pwrite(e.fd, b"\xee" * ps, 2 * ps)  # piece 2 is had (from an endgame's other copy)
    e.have = 1 << 2
    run = _Run(e, lock, stop, [3, 2, 0], pl)
    wire = data[3 * ps :] + bytes(ps) + data[:ps]  # the copy of piece 2 sent here is bad
    run.write(memoryview(wire[:5000]))  # chunks that do not line up with the pieces
    run.write(memoryview(wire[5000 : ps + 3000]))  # piece 3 whole, piece 2 begun
    with pytest.raises(_Corrupt) as info:  # piece 2's end: its hash is wrong
        run.write(memoryview(wire[ps + 3000 : 2 * ps + 100]))
    assert info.value.piece == 2
    assert run.done == [3]
    assert os.pread(e.fd, ps, 3 * ps) == data[3 * ps :]
    assert os.pread(e.fd, ps, 2 * ps) == b"\xee" * ps  # the had piece was not written over
    run = _Run(e, lock, stop, [0], pl)
    stop.set()  # the request was given up: nothing more is written
    with pytest.raises(NoSpace):
        run.write(memoryview(data[:ps]))


def test_consecutive_pieces_are_served_as_one_run() -> None:
    from sector.node.swarm import _runs

    assert _runs([]) == []
    assert _runs([3, 4, 5, 9, 10, 2]) == [(3, 3), (9, 2), (2, 1)]
    assert _runs([7]) == [(7, 1)]
