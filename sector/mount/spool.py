"""Files being written through the mount: local spool files, put into Sector on close.

A file created through the mount (or opened with ``O_TRUNC``, which replaces it) is
written to ``<spool>/<n>/<name>`` on local disk. On ``flush`` (every ``close()`` of a
descriptor) or ``fsync`` the spool is put into Sector whole, which makes it the
file's next version atomically; ``release`` (the last close) puts it if no flush did,
then deletes it. Until then the file is *pending*: ``stat`` and ``readdir`` show it
with its spool's size, a rename before the first put only changes where it will go,
and an unlink drops it.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sector.meta import records as rec


@dataclass(eq=False)
class WriteHandle:
    """One file being written: where it goes, its spool, what is already stored."""

    path: str
    spool: Path  # the spool file
    fd: int
    dirty: bool = True  # bytes not yet in Sector (a new file is, even when empty)
    stored: bool = False  # a put of it succeeded once (it exists in Sector)
    discarded: bool = False  # unlinked before its close: nothing to put
    mtime_ns: int = field(default_factory=time.time_ns)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def write(self, data: bytes, offset: int) -> int:
        n = os.pwrite(self.fd, data, offset)
        self.dirty, self.mtime_ns = True, time.time_ns()
        return n

    def truncate(self, length: int) -> None:
        os.ftruncate(self.fd, length)
        self.dirty, self.mtime_ns = True, time.time_ns()

    def read(self, size: int, offset: int) -> bytes:
        return os.pread(self.fd, size, offset)


class Spool:
    """The spool directory of one mount process and its pending files by path."""

    def __init__(self, root: Path) -> None:
        (root / "spool").mkdir(parents=True, exist_ok=True, mode=0o700)
        self.root = root / "spool" / str(os.getpid())
        self.root.mkdir(exist_ok=True)
        # Held while this process lives: a spool whose lock is free was left by a
        # mount process that is gone (files never closed, so never stored).
        self._lockfd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lockfd, fcntl.LOCK_EX)
        _clear_dead(root / "spool")
        self._n = itertools.count()
        self._lock = threading.Lock()
        self._pending: dict[str, WriteHandle] = {}

    def create(self, path: str) -> WriteHandle:
        d = self.root / str(next(self._n))
        d.mkdir()
        f = d / rec.basename(path)
        fd = os.open(f, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        h = WriteHandle(path, f, fd)
        with self._lock:
            self._pending[path] = h
        return h

    def pending(self, path: str) -> WriteHandle | None:
        with self._lock:
            return self._pending.get(path)

    def names_in(self, directory: str) -> dict[str, WriteHandle]:
        """Pending files directly in ``directory``, by name."""
        prefix = directory.rstrip("/") + "/"
        with self._lock:
            return {
                p[len(prefix) :]: h
                for p, h in self._pending.items()
                if p.startswith(prefix) and "/" not in p[len(prefix) :]
            }

    def any_under(self, directory: str) -> bool:
        prefix = directory.rstrip("/") + "/"
        with self._lock:
            return any(p.startswith(prefix) for p in self._pending)

    def moved(self, old: str, new: str) -> None:
        """``old`` (a file or a directory) was renamed to ``new``: pending files there
        go to their new paths on close."""
        with self._lock:
            for p in list(self._pending):
                if p == old or p.startswith(old + "/"):
                    h = self._pending.pop(p)
                    h.path = new + p[len(old) :]
                    self._pending[h.path] = h

    def forget(self, h: WriteHandle) -> None:
        """``h`` is no longer pending (stored and closed, or discarded)."""
        with self._lock:
            if self._pending.get(h.path) is h:
                del self._pending[h.path]

    def close(self, h: WriteHandle) -> None:
        self.forget(h)
        with contextlib.suppress(OSError):
            os.close(h.fd)
        shutil.rmtree(h.spool.parent, ignore_errors=True)

    def open_handles(self) -> list[WriteHandle]:
        with self._lock:
            return list(self._pending.values())

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.close(self._lockfd)


def _clear_dead(spools: Path) -> None:
    """Remove the spools of mount processes that are gone (their lock is free)."""
    for d in spools.iterdir():
        try:
            fd = os.open(d / ".lock", os.O_RDWR)
        except OSError:
            continue  # not a spool, or one still being made
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its process is alive
        finally:
            os.close(fd)
        shutil.rmtree(d, ignore_errors=True)
