"""The mfusepy ``Operations`` of the mount: a thin shell over ``core.SectorFS``.

mfusepy binds libfuse 3's high-level API with ctypes; each method here only unpacks
what libfuse hands over (the ``fuse_file_info`` with ``raw_fi``) and calls the core,
whose ``OSError`` mfusepy answers as ``-errno``. Importing this module loads libfuse
3, so only the mount process imports it.

Options (see ``fuse_options``): ``auto_unmount`` has fusermount3 unmount the mount
point when this process dies, even by SIGKILL; libfuse's own handlers of SIGTERM,
SIGINT and SIGHUP end the loop and unmount. ``hard_remove``: an unlinked file that
is still open is not renamed to ``.fuse_hidden*`` (which would be a Sector mv and rm)
and its handle goes on reading. Stat results and missing names are kept by the
kernel for ``ttl`` seconds, as by the core.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")  # never libfuse 2, if both are present

import mfusepy

from sector.mount.core import SectorFS


class SectorOperations(mfusepy.Operations):
    use_ns = True  # times in nanoseconds
    flag_nullpath_ok = True  # calls on open files need their handle, not their path
    flag_nopath = True

    def __init__(self, fs: SectorFS, on_init: Callable[[], None]) -> None:
        self.fs = fs
        self._on_init = on_init

    def init(self, path: str) -> None:
        self._on_init()

    def destroy(self, path: str) -> None:
        self.fs.close()

    def getattr(self, path: str | None, fh: Any = None) -> dict[str, Any]:
        return self.fs.getattr(path, fh.fh if fh is not None else None)

    # With nullpath_ok libfuse may pass no path to readdir: the handle keeps it.
    def opendir(self, path: str) -> int:
        return self.fs.opendir(path)

    def readdir(self, path: str | None, fh: int) -> list[tuple[str, dict[str, Any], int]]:
        return [(name, attrs, 0) for name, attrs in self.fs.readdir(path, fh)]

    def releasedir(self, path: str | None, fh: int) -> int:
        self.fs.releasedir(fh)
        return 0

    def open(self, path: str, fi: Any) -> int:
        fi.fh, keep = self.fs.open(path, fi.flags)
        fi.keep_cache = int(keep)
        return 0

    def create(self, path: str, mode: int, fi: Any) -> int:
        fi.fh = self.fs.create(path, fi.flags)
        return 0

    def read(self, path: str | None, size: int, offset: int, fi: Any) -> bytes:
        return self.fs.read(fi.fh, size, offset)

    def write(self, path: str | None, data: bytes, offset: int, fi: Any) -> int:
        return self.fs.write(fi.fh, data, offset)

    def truncate(self, path: str | None, length: int, fh: Any = None) -> int:
        self.fs.truncate(path, length, fh.fh if fh is not None else None)
        return 0

    def flush(self, path: str | None, fi: Any) -> int:
        self.fs.flush(fi.fh)
        return 0

    def fsync(self, path: str | None, datasync: int, fi: Any) -> int:
        self.fs.fsync(fi.fh)
        return 0

    def release(self, path: str | None, fi: Any) -> int:
        self.fs.release(fi.fh)
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        self.fs.mkdir(path)
        return 0

    def rmdir(self, path: str) -> int:
        self.fs.rmdir(path)
        return 0

    def unlink(self, path: str) -> int:
        self.fs.unlink(path)
        return 0

    def rename(self, old: str, new: str, flags: int = 0) -> int:
        self.fs.rename(old, new, flags)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        return self.fs.statfs()

    def chmod(self, path: str | None, mode: int) -> int:
        self.fs.check_writable(path or "/", "chmod")
        return 0

    def chown(self, path: str | None, uid: int, gid: int) -> int:
        self.fs.check_writable(path or "/", "chown")
        return 0

    def utimens(self, path: str | None, times: Any = None) -> int:
        self.fs.check_writable(path or "/", "set the times of")
        return 0


def fuse_options(fsname: str, *, read_only: bool, ttl: float) -> dict[str, Any]:
    """The libfuse options of a Sector mount (``-o`` words)."""
    return {
        "foreground": True,  # daemon.py daemonizes itself, before any thread starts
        "auto_unmount": True,
        "fsname": fsname,
        "subtype": "sector",
        "ro": read_only,
        "hard_remove": True,
        "attr_timeout": ttl,
        "entry_timeout": ttl,
        "negative_timeout": ttl,
        "default_permissions": False,
    }


class _FUSE(mfusepy.FUSE):
    """mfusepy's FUSE with two libfuse 3 calls completed: an ftruncate passes its open
    file (mfusepy drops it), a rename its flags (RENAME_NOREPLACE, RENAME_EXCHANGE)."""

    def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
        name = None if path is None else path.decode(self.encoding, self.errors)
        res: int = self.operations.truncate(name, length, fip.contents if fip else None)
        return res

    def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
        res: int = self.operations.rename(
            old.decode(self.encoding, self.errors), new.decode(self.encoding, self.errors), flags
        )
        return res


def serve(ops: SectorOperations, mountpoint: str, options: dict[str, Any]) -> None:
    """Mount and serve until unmounted or signalled (returns then; raises if libfuse
    could not mount, or ended with an error before serving)."""
    _FUSE(ops, mountpoint, raw_fi=True, **options)
