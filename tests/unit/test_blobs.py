"""Write-once blob files: temp, verify, fsync, rename; never a half file."""

from __future__ import annotations

from pathlib import Path

import pytest

from sector.errors import AlreadyExists, BadRequest, ChecksumMismatch, NoSpace, NotFound
from sector.storage.blobs import BlobStore, checksum_of, new_blob_id


def test_commit_makes_the_whole_file_visible_only_at_the_end(tmp_path: Path) -> None:
    s = BlobStore(tmp_path)
    b = new_blob_id()
    w = s.writer(b, 10)
    w.write(b"hello")
    assert not s.exists(b)
    w.write(b"world")
    assert w.commit(checksum_of(b"helloworld")) == checksum_of(b"helloworld")
    s.committed(w)
    with s.open(b) as f:
        assert f.read() == b"helloworld"
    assert s.used == 10
    assert not list((tmp_path / "tmp").iterdir())


def test_checksum_mismatch_and_short_writes_leave_nothing(tmp_path: Path) -> None:
    s = BlobStore(tmp_path)
    b = new_blob_id()
    w = s.writer(b, 3)
    w.write(b"abc")
    with pytest.raises(ChecksumMismatch):
        w.commit(checksum_of(b"abd"))
    w2 = s.writer(b, 3)
    w2.write(b"ab")
    with pytest.raises(BadRequest):
        w2.commit(None)
    assert not s.exists(b)
    assert not list((tmp_path / "tmp").iterdir())


def test_more_bytes_than_announced_is_refused(tmp_path: Path) -> None:
    w = BlobStore(tmp_path).writer(new_blob_id(), 2)
    with pytest.raises(BadRequest):
        w.write(b"abc")
    w.abort()


@pytest.mark.parametrize("bad", ["../../etc/passwd", "ABCDEF" * 6, "", "a" * 31, 42, None])
def test_blob_ids_cannot_name_paths(tmp_path: Path, bad: object) -> None:
    s = BlobStore(tmp_path)
    with pytest.raises(BadRequest):
        s.path(bad)  # type: ignore[arg-type]


def test_quota_refuses_what_does_not_fit(tmp_path: Path) -> None:
    s = BlobStore(tmp_path, quota=100)
    with pytest.raises(NoSpace):
        s.writer(new_blob_id(), 101)
    assert s.free() == 100


def test_leftover_parts_of_a_crash_are_removed_on_start(tmp_path: Path) -> None:
    BlobStore(tmp_path)
    # What a writer killed mid-upload leaves behind:
    (tmp_path / "tmp" / f"{new_blob_id()}.0a1b2c3d.part").write_bytes(b"12")
    BlobStore(tmp_path)
    assert not list((tmp_path / "tmp").iterdir())


def test_delete_and_missing(tmp_path: Path) -> None:
    s = BlobStore(tmp_path)
    b = new_blob_id()
    w = s.writer(b, 1)
    w.write(b"x")
    w.commit(None)
    s.committed(w)
    assert s.delete(b) and not s.delete(b)
    with pytest.raises(NotFound):
        s.open(b)
    assert s.used == 0


def test_a_sealed_blob_is_never_overwritten(tmp_path: Path) -> None:
    s = BlobStore(tmp_path)
    b = new_blob_id()
    for data in (b"first", b"first"):  # the same bytes again: an idempotent retry
        w = s.writer(b, len(data))
        w.write(data)
        w.commit(None)
        s.committed(w)
    assert s.used == 5 and s.count == 1
    w = s.writer(b, 5)
    w.write(b"other")
    with pytest.raises(AlreadyExists):
        w.commit(None)
    with s.open(b) as f:
        assert f.read() == b"first"
    assert not list((tmp_path / "tmp").iterdir())


def test_a_rotten_copy_is_replaced_by_verified_bytes(tmp_path: Path) -> None:
    """Other bytes under the id while the new ones match the announced checksum: the
    copy here is rotten (a blob id names one content), so the verified bytes win."""
    s = BlobStore(tmp_path)
    b = new_blob_id()
    w = s.writer(b, 5)
    w.write(b"first")
    good = w.commit(None)
    s.committed(w)
    p = s.path(b)
    p.write_bytes(b"fiRst")  # bit rot
    w = s.writer(b, 5)
    w.write(b"first")
    assert w.commit(good) == good
    s.committed(w)
    assert p.read_bytes() == b"first"
    assert s.used == 5 and s.count == 1
    assert not list((tmp_path / "tmp").iterdir())


class _Killed(BaseException):
    """Stands for SIGKILL at one instruction: nothing after it runs."""


def test_the_inventory_knows_a_blobs_path_before_the_blob_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill between the two must leave a row without a blob (dropped by reconcile),
    never a blob without a path (which the collector could never ask about)."""
    import os

    from sector.storage.inventory import Inventory

    inv = Inventory(str(tmp_path / "inv.sqlite3"))
    s = BlobStore(tmp_path, inventory=inv)
    b = new_blob_id()
    w = s.writer(b, 3, "/f")
    w.write(b"abc")

    def killed(*_a: object) -> None:
        raise _Killed

    with monkeypatch.context() as m:
        m.setattr(os, "link", killed)
        with pytest.raises(_Killed):
            w.commit(checksum_of(b"abc"))
    assert not s.exists(b)
    assert inv.paths(b) == ["/f"]  # the path was down first
    assert inv.reconcile({}, now=1e18) == (0, 1)  # and the blob-less row goes
    # The same write completing: blob and path together.
    w = s.writer(b, 3, "/f")
    w.write(b"abc")
    w.commit(checksum_of(b"abc"))
    assert s.exists(b) and inv.paths(b) == ["/f"]
