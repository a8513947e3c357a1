"""Pure decisions of the FUSE mount: no FUSE, no sockets, no clock.

The rules (Sector's write model, DESIGN §2 storage: files are write-once):

* An existing file opens for reading. Opening it for writing *replaces* it, so that
  is allowed only with ``O_TRUNC`` (what ``cp``, ``tar`` and ``>`` do): the new bytes
  go to a local spool and become the file's next version on close. Any other write
  open (``O_WRONLY``/``O_RDWR`` without ``O_TRUNC``, ``O_APPEND``) would change bytes
  in place, which Sector cannot do: refused with EPERM and a reason for the log, never
  accepted and silently lost.
* A mount that holds no credential on a secure cluster is read-only (EROFS); one that
  holds a credential is checked against its write grant before anything is sent
  (EACCES), so a refusal comes at open(), not at close(). The nodes check again.
* Failures map to the errno a program expects (``errno_of``); anything that is the
  network's fault is EIO.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from enum import Enum
from typing import Any

from sector.errors import (
    AlreadyExists,
    CredentialError,
    DirectoryNotEmpty,
    InvalidPath,
    IsADirectory,
    NoSpace,
    NotADirectory,
    NotFound,
    PermissionDenied,
    SectorError,
    UsageError,
)
from sector.security.authz import covers
from sector.security.tokens import Grant

# What stat(2) reports as the preferred I/O size: programs that honour it (cp, Python's
# buffered files) then read and write in large pieces, which is what FUSE rewards.
IO_SIZE = 1 << 20
FRAGMENT = 4096  # statfs's unit: `df` multiplies block counts by it


class Refused(Exception):
    """An operation the mount refuses on purpose: the errno and the reason to log."""

    def __init__(self, err: int, reason: str) -> None:
        super().__init__(reason)
        self.errno = err
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Access:
    """What this mount may write.

    ``read_only``: no credential on a secure cluster. ``write`` is the credential's
    write grant (path prefixes), or None where the mount cannot know it in advance
    (an open cluster, where every client may write) and the nodes alone decide."""

    read_only: bool = False
    user: str | None = None
    write: tuple[str, ...] | None = None
    admin: bool = False

    def check_write(self, path: str, what: str) -> None:
        """Raise ``Refused`` if this mount may not ``what`` (e.g. "create") ``path``."""
        if self.read_only:
            raise Refused(
                errno.EROFS,
                f"{what} {path}: the mount is read-only (it holds no credential for this "
                "secure cluster: `sector login`, or --token)",
            )
        if self.write is None or self.admin:
            return
        if not any(covers(p, path) for p in self.write):
            grant = ", ".join(self.write) or "nothing"
            raise Refused(
                errno.EACCES,
                f"{what} {path}: {self.user or 'this credential'} may write only under {grant}",
            )


def access_for(*, secure: bool, user: str | None, grant: Grant | None) -> Access:
    """A mount's ``Access`` from what the cluster said of its client: no credential on
    a secure (TLS) cluster is read-only; a credential's grant bounds its writes; on an
    open cluster every client may write and the nodes alone decide."""
    if secure and user is None:
        return Access(read_only=True)
    if grant is not None:
        return Access(user=user, write=tuple(grant.write), admin=grant.admin)
    return Access(user=user)


class OpenKind(Enum):
    READ = "read"  # read the stored version
    REPLACE = "replace"  # write a new version from empty; it replaces the file on close


def plan_open(path: str, flags: int, access: Access) -> OpenKind:
    """What ``open(path, flags)`` of an *existing file* does, or ``Refused``."""
    acc = flags & os.O_ACCMODE
    if acc == os.O_RDONLY and not flags & os.O_TRUNC:
        return OpenKind.READ
    access.check_write(path, "open for writing")
    if flags & os.O_APPEND:
        raise Refused(
            errno.EPERM,
            f"open {path} for appending: Sector files are write-once (write a new file "
            "and rename it over this one)",
        )
    if not flags & os.O_TRUNC:
        raise Refused(
            errno.EPERM,
            f"open {path} for writing in place ({'O_RDWR' if acc == os.O_RDWR else 'O_WRONLY'} "
            "without O_TRUNC): Sector files are write-once (replace the file whole, "
            "e.g. with O_TRUNC, or write a new one)",
        )
    return OpenKind.REPLACE


def plan_truncate(path: str, length: int, size: int, access: Access) -> bool:
    """``truncate(path, length)`` of a stored file that no one here is writing: True
    to replace it by an empty version (length 0), False if nothing changes (its size
    already), else ``Refused`` (cutting or growing bytes in place)."""
    access.check_write(path, "truncate")
    if length == size:
        return False
    if length == 0:
        return True
    raise Refused(
        errno.EPERM,
        f"truncate {path} to {length} bytes: Sector files are write-once (only a "
        "truncation to 0, which replaces the file by an empty one, is possible)",
    )


RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2  # renameat2(2) flags


def plan_rename(src: str, dst: str, flags: int) -> bool:
    """Whether a rename may replace an existing ``dst`` (rename(2): yes; with
    RENAME_NOREPLACE: no); an exchange of two paths is refused (Sector has no
    atomic swap)."""
    if flags & RENAME_EXCHANGE:
        raise Refused(errno.EINVAL, f"exchange {src} and {dst}: Sector has no atomic swap")
    return not flags & RENAME_NOREPLACE


def errno_of(exc: BaseException) -> int:
    """The errno for a failure of a Sector call (EIO: the network, a node, a timeout)."""
    if isinstance(exc, Refused):
        return exc.errno
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    table: tuple[tuple[type[SectorError], int], ...] = (
        (NotFound, errno.ENOENT),
        (AlreadyExists, errno.EEXIST),
        (NotADirectory, errno.ENOTDIR),
        (IsADirectory, errno.EISDIR),
        (DirectoryNotEmpty, errno.ENOTEMPTY),
        (NoSpace, errno.ENOSPC),
        (PermissionDenied, errno.EACCES),
        (CredentialError, errno.EACCES),
        (InvalidPath, errno.EINVAL),
        (UsageError, errno.EINVAL),
    )
    for cls, err in table:
        if isinstance(exc, cls):
            if err == errno.EINVAL and "longer than" in str(exc):
                return errno.ENAMETOOLONG
            return err
    return errno.EIO


@dataclass(frozen=True, slots=True)
class Owner:
    """Who the files appear to belong to (the mounting user: Sector's owners are its
    own user names, not this host's uids) and whether write bits are shown."""

    uid: int
    gid: int
    read_only: bool = False


def _ns(t: Any) -> int:
    try:
        return int(float(t) * 1e9)
    except (TypeError, ValueError):
        return 0


def attrs_of(rec: dict[str, Any], owner: Owner) -> dict[str, Any]:
    """stat(2) fields (times in ns) of a Sector record (a ``stat`` or ``ls`` entry)."""
    is_dir = rec.get("type") == "dir"
    if is_dir:
        mode = stat.S_IFDIR | 0o755
        size = 0
    else:
        raw = rec.get("mode")
        perm = raw & 0o777 if isinstance(raw, int) and raw & 0o777 else 0o644
        mode = stat.S_IFREG | perm
        size = int(rec.get("size") or 0)
    if owner.read_only:
        mode &= ~0o222
    mtime = _ns(rec.get("mtime"))
    ctime = _ns(rec.get("ctime")) or mtime
    return {
        "st_mode": mode,
        "st_nlink": 2 if is_dir else 1,
        "st_size": size,
        "st_uid": owner.uid,
        "st_gid": owner.gid,
        "st_mtime": mtime,
        "st_atime": mtime,
        "st_ctime": ctime,
        "st_blksize": IO_SIZE,
        "st_blocks": (size + 511) // 512,
    }


def spool_attrs(size: int, mtime_ns: int, owner: Owner) -> dict[str, Any]:
    """stat(2) of a file being written here (not yet in Sector): its spool's size."""
    return attrs_of({"type": "file", "size": size, "mtime": mtime_ns / 1e9, "mode": 0o644}, owner)


def statfs_of(status: dict[str, Any], name_max: int = 255) -> dict[str, int]:
    """statvfs(3) fields from ``fs.status``: the raw capacity of the live nodes.

    Like HDFS's ``df``, sizes are raw bytes over all nodes (a file of N bytes with R
    replicas takes N x R of them); nodes that share a disk are each counted."""
    used = free = files = 0
    for n in status.get("nodes") or []:
        if not isinstance(n, dict) or n.get("state") != "up":
            continue
        used += int(n.get("bytes_used") or 0)
        free += int(n.get("bytes_free") or 0)
        files += int(n.get("files") or 0)
    blocks = (used + free) // FRAGMENT
    bfree = free // FRAGMENT
    return {
        "f_bsize": IO_SIZE,
        "f_frsize": FRAGMENT,
        "f_blocks": blocks,
        "f_bfree": bfree,
        "f_bavail": bfree,
        "f_files": files + (1 << 20),
        "f_ffree": 1 << 20,
        "f_favail": 1 << 20,
        "f_namemax": name_max,
    }


def _unescape(field: str) -> str:
    """/proc mount fields escape space, tab, newline and backslash as \\ooo."""
    out, i = [], 0
    while i < len(field):
        c = field[i]
        code = field[i + 1 : i + 4]
        if c == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(c)
            i += 1
    return "".join(out)


def mounts_of(mountinfo: str) -> dict[str, str]:
    """Mount point -> file system type, from the text of /proc/self/mountinfo."""
    out: dict[str, str] = {}
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5:
            continue
        out[_unescape(fields[4])] = right.split()[0] if right.split() else ""
    return out


def is_sector_mount(fstype: str | None) -> bool:
    return fstype == "fuse.sector"
