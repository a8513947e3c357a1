"""The FUSE mount's pure decisions, without FUSE: open flags, truncate, rename, errno
mapping, stat and statfs fields, mountinfo parsing, block arithmetic, readahead and the
LRU of cached blocks."""

from __future__ import annotations

import errno
import os
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sector import errors
from sector.mount.blocks import LruIndex, Readahead, block_span, blocks_of
from sector.mount.policy import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    Access,
    OpenKind,
    Owner,
    Refused,
    access_for,
    attrs_of,
    errno_of,
    mounts_of,
    plan_open,
    plan_rename,
    plan_truncate,
    statfs_of,
)
from sector.security.tokens import Grant

RW = Access()
RO = Access(read_only=True)
ALICE = Access(user="alice", write=("/home/alice",))


def refused(fn: object, *args: object) -> Refused:
    with pytest.raises(Refused) as info:
        fn(*args)  # type: ignore[operator]
    return info.value


# ---------------------------------------------------------------- open


def test_read_opens_read() -> None:
    assert plan_open("/a", os.O_RDONLY, RW) is OpenKind.READ
    assert plan_open("/a", os.O_RDONLY, RO) is OpenKind.READ  # read-only mounts read


def test_trunc_replaces() -> None:
    for acc in (os.O_WRONLY, os.O_RDWR):
        assert plan_open("/a", acc | os.O_TRUNC, RW) is OpenKind.REPLACE


@pytest.mark.parametrize(
    "flags",
    [os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_APPEND, os.O_RDWR | os.O_APPEND | os.O_TRUNC],
)
def test_in_place_writes_are_refused_with_eperm_and_a_reason(flags: int) -> None:
    r = refused(plan_open, "/data/a", flags, RW)
    assert r.errno == errno.EPERM
    assert "/data/a" in r.reason and "write-once" in r.reason


def test_read_only_mount_refuses_writes_with_erofs() -> None:
    for flags in (os.O_WRONLY | os.O_TRUNC, os.O_WRONLY, os.O_RDWR | os.O_APPEND):
        r = refused(plan_open, "/a", flags, RO)
        assert r.errno == errno.EROFS and "read-only" in r.reason
    assert refused(RO.check_write, "/a", "mkdir").errno == errno.EROFS


def test_grant_bounds_writes() -> None:
    ALICE.check_write("/home/alice/x", "create")
    ALICE.check_write("/home/alice", "create")
    r = refused(ALICE.check_write, "/home/alicebob/x", "create")
    assert r.errno == errno.EACCES and "alice" in r.reason and "/home/alice" in r.reason
    Access(user="root", write=(), admin=True).check_write("/anything", "create")


def test_access_for() -> None:
    assert access_for(secure=True, user=None, grant=None).read_only
    assert not access_for(secure=False, user=None, grant=None).read_only  # an open cluster
    g = Grant("bob", ("/b",), (), False, False, 0.0, 0.0, "0" * 16, "c" * 16)
    a = access_for(secure=True, user="bob", grant=g)
    assert a.write == ("/b",) and not a.read_only and a.user == "bob"


# ---------------------------------------------------------------- truncate, rename


def test_truncate() -> None:
    assert plan_truncate("/a", 0, 10, RW) is True  # replaced by an empty version
    assert plan_truncate("/a", 10, 10, RW) is False  # nothing to do
    assert plan_truncate("/a", 0, 0, RW) is False
    assert refused(plan_truncate, "/a", 5, 10, RW).errno == errno.EPERM
    assert refused(plan_truncate, "/a", 0, 10, RO).errno == errno.EROFS


def test_rename_flags() -> None:
    assert plan_rename("/a", "/b", 0) is True
    assert plan_rename("/a", "/b", RENAME_NOREPLACE) is False
    assert refused(plan_rename, "/a", "/b", RENAME_EXCHANGE).errno == errno.EINVAL


# ---------------------------------------------------------------- errno


@pytest.mark.parametrize(
    ("exc", "err"),
    [
        (errors.NotFound("x"), errno.ENOENT),
        (errors.AlreadyExists("x"), errno.EEXIST),
        (errors.NotADirectory("x"), errno.ENOTDIR),
        (errors.IsADirectory("x"), errno.EISDIR),
        (errors.DirectoryNotEmpty("x"), errno.ENOTEMPTY),
        (errors.NoSpace("x"), errno.ENOSPC),
        (errors.PermissionDenied("x"), errno.EACCES),
        (errors.CredentialError("x"), errno.EACCES),
        (errors.InvalidPath("bad"), errno.EINVAL),
        (errors.InvalidPath("invalid name 'x': longer than 255 bytes"), errno.ENAMETOOLONG),
        (errors.ConnectError("x"), errno.EIO),
        (errors.Timeout("x"), errno.EIO),
        (errors.Unavailable("x"), errno.EIO),
        (errors.ReplicationError("x"), errno.EIO),
        (errors.ChecksumMismatch("x"), errno.EIO),
        (errors.SectorError("x"), errno.EIO),
        (Refused(errno.EPERM, "why"), errno.EPERM),
        (OSError(errno.EBADF, "x"), errno.EBADF),
    ],
)
def test_errno_of(exc: BaseException, err: int) -> None:
    assert errno_of(exc) == err


# ---------------------------------------------------------------- stat, statfs


def test_attrs_of_file_and_dir() -> None:
    owner = Owner(1000, 100)
    f = attrs_of({"type": "file", "size": 5000, "mtime": 12.5, "mode": 0o600}, owner)
    assert stat.S_ISREG(f["st_mode"]) and f["st_mode"] & 0o777 == 0o600
    assert f["st_size"] == 5000 and f["st_blocks"] == 10
    assert f["st_mtime"] == 12_500_000_000 and (f["st_uid"], f["st_gid"]) == (1000, 100)
    d = attrs_of({"type": "dir", "mtime": 1.0}, owner)
    assert stat.S_ISDIR(d["st_mode"]) and d["st_nlink"] == 2
    ro = attrs_of({"type": "file", "size": 1, "mode": 0o644}, Owner(0, 0, read_only=True))
    assert ro["st_mode"] & 0o777 == 0o444
    odd = attrs_of({"type": "file", "size": None, "mode": 0, "mtime": "junk"}, owner)
    assert odd["st_size"] == 0 and odd["st_mode"] & 0o777 == 0o644 and odd["st_mtime"] == 0


def test_statfs_counts_live_nodes() -> None:
    status = {
        "nodes": [
            {"state": "up", "bytes_used": 4096 * 10, "bytes_free": 4096 * 90, "files": 3},
            {"state": "up", "bytes_used": 0, "bytes_free": 4096 * 100, "files": 2},
            {"state": "down", "bytes_used": 4096 * 1000, "bytes_free": 4096 * 1000},
        ]
    }
    s = statfs_of(status)
    assert s["f_blocks"] == 200 and s["f_bfree"] == 190 and s["f_bavail"] == 190
    assert s["f_frsize"] == 4096 and s["f_namemax"] == 255
    assert statfs_of({})["f_blocks"] == 0


def test_mountinfo() -> None:
    text = (
        "36 35 98:0 / /mnt/a\\040b rw,noatime master:1 - fuse.sector sector:h:1 rw\n"
        "37 35 98:0 / / rw - ext4 /dev/vda rw\n"
        "garbage\n"
    )
    assert mounts_of(text) == {"/mnt/a b": "fuse.sector", "/": "ext4"}


# ---------------------------------------------------------------- blocks


def test_block_arithmetic() -> None:
    b = 4
    assert list(blocks_of(0, 4, 10, b)) == [0]
    assert list(blocks_of(3, 2, 10, b)) == [0, 1]
    assert list(blocks_of(8, 100, 10, b)) == [2]
    assert list(blocks_of(10, 5, 10, b)) == []
    assert block_span(2, 10, b) == (8, 2)
    assert block_span(3, 10, b) == (12, 0)


@given(st.integers(0, 10_000), st.integers(0, 3_000), st.integers(0, 10_000), st.integers(1, 64))
def test_blocks_cover_exactly_the_range(offset: int, length: int, size: int, block: int) -> None:
    covered = set()
    for i in blocks_of(offset, length, size, block):
        start, n = block_span(i, size, block)
        assert n > 0
        covered |= set(range(start, start + n))
    want = set(range(offset, min(offset + length, size)))
    assert want <= covered
    assert all(offset - block < x < offset + length + block for x in covered)


def test_sequential_reads_grow_the_window_and_never_ask_twice() -> None:
    ra = Readahead(max_blocks=4)
    asked: list[int] = []
    for i in range(40):
        got = list(ra.on_read(i, i, 40))
        assert not set(got) & set(asked)
        asked += got
        assert all(b > i for b in got)
    assert sorted(asked) == list(range(1, 40))
    assert ra.window == 4


def test_out_of_order_neighbours_stay_sequential() -> None:
    ra = Readahead(max_blocks=8)
    for i in (0, 1, 2, 3):
        ra.on_read(i, i, 100)
    w = ra.window
    ra.on_read(2, 2, 100)  # a straggler of the kernel's parallel reads
    assert ra.window == w


def test_a_jump_resets_readahead() -> None:
    ra = Readahead(max_blocks=8)
    for i in range(5):
        ra.on_read(i, i, 100)
    assert list(ra.on_read(50, 50, 100)) == []  # random access: only what is read
    assert ra.window == 0
    assert list(ra.on_read(51, 51, 100)) == [52]  # sequential again: it starts over


def test_lru_evicts_oldest_first() -> None:
    lru = LruIndex(limit=10)
    assert lru.add("a", 4) == []
    assert lru.add("b", 4) == []
    assert lru.touch("a")
    assert lru.add("c", 4) == ["b"]  # a was used after b
    assert "a" in lru and "c" in lru and lru.total == 8
    assert lru.add("huge", 11) == ["a", "c", "huge"]  # larger than the cache: not kept
    assert lru.total == 0 and len(lru) == 0
    assert not lru.touch("nope")
    lru.add("x", 3)
    lru.add("x", 5)  # re-added: counted once
    assert lru.total == 5
