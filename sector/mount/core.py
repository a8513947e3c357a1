"""The mount's file system operations over the Sector client (no FUSE here).

Every public method is one file system request; it returns what the request needs
or raises ``OSError`` with the errno to answer (``_op`` maps Sector's errors through
``policy.errno_of`` and logs why: a refusal as a warning with its reason, a failure
of the cluster as an error). The decisions themselves are in ``policy`` (pure).

Consistency: what this mount does it sees at once. What other clients do it sees
within ``ttl`` seconds (stat results are kept that long, as the kernel keeps them),
and an ``open`` always asks the cluster afresh: close-to-open consistency, as NFS.
A file opened for reading is read from the version (blob) it had at open, whatever
happens to its path meanwhile.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sector.errors import AlreadyExists, InvalidPath, NotFound, SectorError
from sector.meta import records as rec
from sector.mount import policy
from sector.mount.blocks import Readahead, blocks_of
from sector.mount.cache import BlockCache
from sector.mount.policy import Access, OpenKind, Owner, Refused
from sector.mount.remote import Remote
from sector.mount.spool import Spool, WriteHandle

log = logging.getLogger("sector.mount")
F = TypeVar("F", bound=Callable[..., Any])


def _op(fn: F) -> F:
    """Answer a request's failure with an errno, and say why in the log."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except Refused as exc:
            log.warning("refused (%s): %s", errno.errorcode.get(exc.errno, exc.errno), exc.reason)
            raise OSError(exc.errno, exc.reason) from None
        except SectorError as exc:
            err = policy.errno_of(exc)
            if err == errno.EIO:
                log.error("%s %s: %s", fn.__name__, _what(args), exc)
            else:
                log.debug("%s %s: %s", fn.__name__, _what(args), exc)
            raise OSError(err, str(exc)) from None
        except OSError:
            raise
        except Exception:
            log.exception("%s %s failed", fn.__name__, _what(args))
            raise OSError(errno.EIO, "internal error") from None

    return wrapper  # type: ignore[return-value]


def _what(args: tuple[Any, ...]) -> str:
    """The path a request was about, for the log: its path, or its open file's."""
    for a in args[1:3]:
        if isinstance(a, str):
            return a
        if isinstance(a, int) and not isinstance(a, bool):
            h = args[0]._handles.get(a)
            return str(h.path) if h is not None else ""
    return ""


@dataclass(eq=False)
class ReadHandle:
    """A stored file open for reading: the version it had at open."""

    st: dict[str, Any]
    ra: Readahead = field(default_factory=Readahead)
    lock: threading.Lock = field(default_factory=threading.Lock)
    block: tuple[int, bytes] | None = None  # the last block read, kept for the next read

    @property
    def path(self) -> str:
        return str(self.st.get("path", ""))


@dataclass(eq=False)
class SpoolReader:
    """A file still being written here, opened again for reading: reads its spool."""

    path: str
    fd: int

    def read(self, size: int, offset: int) -> bytes:
        return os.pread(self.fd, size, offset)


@dataclass(eq=False)
class DirHandle:
    path: str


Handle = ReadHandle | WriteHandle | SpoolReader | DirHandle


class SectorFS:
    def __init__(
        self,
        remote: Remote,
        cache: BlockCache,
        spool: Spool,
        access: Access,
        *,
        ttl: float = 1.0,
        status_ttl: float = 5.0,
    ) -> None:
        self.remote = remote
        self.cache = cache
        self.spool = spool
        self.access = access
        self.owner = Owner(os.getuid(), os.getgid(), access.read_only)
        self.ttl = ttl
        self.status_ttl = status_ttl
        self._lock = threading.Lock()
        self._handles: dict[int, Handle] = {}
        self._next_fh = 1
        self._attrs: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._opened: dict[str, str] = {}  # path -> the blob its last open read
        self._status: tuple[float, dict[str, Any]] | None = None
        self._root = {"type": "dir", "mtime": time.time()}  # "/" shows the mount's time

    # ------------------------------------------------------------------ helpers

    def _add(self, h: Handle) -> int:
        with self._lock:
            fh = self._next_fh
            self._next_fh += 1
            self._handles[fh] = h
        return fh

    def _handle(self, fh: int) -> Handle:
        with self._lock:
            h = self._handles.get(fh)
        if h is None:
            raise OSError(errno.EBADF, "no such open file")
        return h

    def _writer(self, fh: int) -> WriteHandle:
        h = self._handle(fh)
        if not isinstance(h, WriteHandle):
            raise OSError(errno.EBADF, "not open for writing")
        return h

    def _remember(self, path: str, record: dict[str, Any] | None) -> None:
        with self._lock:
            if len(self._attrs) > 10_000:
                now = time.monotonic()
                self._attrs = {p: v for p, v in self._attrs.items() if v[0] > now}
            self._attrs[path] = (time.monotonic() + self.ttl, record)

    def _forget(self, *paths: str) -> None:
        """Drop what is known of these paths and everything under them."""
        with self._lock:
            for p in list(self._attrs):
                if any(p == q or p.startswith(q.rstrip("/") + "/") for q in paths):
                    del self._attrs[p]

    def _stat(self, path: str, *, fresh: bool = False) -> dict[str, Any]:
        """The record of ``path`` (NotFound if none), from the last ``ttl`` seconds."""
        if not fresh:
            with self._lock:
                hit = self._attrs.get(path)
            if hit is not None and hit[0] > time.monotonic():
                if hit[1] is None:
                    raise NotFound(f"no such file or directory: {path}")
                return hit[1]
        try:
            st = self.remote.stat(path)
        except NotFound:
            self._remember(path, None)
            raise
        self._remember(path, st)
        return st

    @staticmethod
    def _path(path: str) -> str:
        return rec.normalize(path)

    def _writable(self, path: str, what: str) -> str:
        """The normal form of ``path``, if this mount may ``what`` it (else ``Refused``)."""
        p = self._path(path)
        self.access.check_write(p, what)
        return p

    # ------------------------------------------------------------------ reading

    @_op
    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, Any]:
        if fh is not None:
            h = self._handle(fh)
            if isinstance(h, WriteHandle):
                return policy.spool_attrs(h.size(), h.mtime_ns, self.owner)
            if isinstance(h, ReadHandle):
                return policy.attrs_of(h.st, self.owner)
            if isinstance(h, SpoolReader):
                return policy.spool_attrs(os.fstat(h.fd).st_size, time.time_ns(), self.owner)
            path = h.path
        if path is None:
            raise OSError(errno.EBADF, "no path and no open file")
        try:
            p = self._path(path)
        except InvalidPath as exc:  # a name Sector cannot hold (a control character)
            if "longer than" in str(exc):
                raise
            raise OSError(errno.ENOENT, str(exc)) from None
        if p == "/":
            return policy.attrs_of(self._root, self.owner)
        w = self.spool.pending(p)
        if w is not None:
            return policy.spool_attrs(w.size(), w.mtime_ns, self.owner)
        return policy.attrs_of(self._stat(p), self.owner)

    @_op
    def opendir(self, path: str) -> int:
        return self._add(DirHandle(self._path(path)))

    def releasedir(self, fh: int) -> None:
        with self._lock:
            self._handles.pop(fh, None)

    @_op
    def readdir(self, path: str | None, fh: int | None = None) -> list[tuple[str, dict[str, Any]]]:
        h = self._handle(fh) if fh else None
        if isinstance(h, DirHandle):
            p = h.path
        elif path is not None:
            p = self._path(path)
        else:
            raise OSError(errno.EBADF, "no path and no open directory")
        entries = self.remote.ls(p)
        out: dict[str, dict[str, Any]] = {}
        for e in entries:
            name = str(e.get("name", ""))
            if not name:
                continue
            attrs = policy.attrs_of(e, self.owner)
            out[name] = attrs
            # For the stat that follows (`ls -l`); an open asks afresh (it needs the blob).
            self._remember(rec.join(p, name), e)
        for name, w in self.spool.names_in(p).items():
            out[name] = policy.spool_attrs(w.size(), w.mtime_ns, self.owner)
        return [(".", {"st_mode": 0o040755}), ("..", {"st_mode": 0o040755}), *out.items()]

    @_op
    def open(self, path: str, flags: int) -> tuple[int, bool]:
        """(file handle, whether the kernel may keep the pages it has of this file)."""
        p = self._path(path)
        w = self.spool.pending(p)
        st: dict[str, Any] = {}
        if w is None:
            st = self._stat(p, fresh=True)
            if st.get("type") == "dir":
                raise OSError(errno.EISDIR, f"{p} is a directory")
        if policy.plan_open(p, flags, self.access) is OpenKind.REPLACE:
            self._forget(p)
            return self._add(self.spool.create(p)), False
        if w is not None:
            return self._add(SpoolReader(p, os.open(w.spool, os.O_RDONLY))), False
        blob = str(st["blob"])
        with self._lock:
            keep = self._opened.get(p) == blob
            self._opened[p] = blob
        return self._add(ReadHandle(st)), keep

    @_op
    def read(self, fh: int, size: int, offset: int) -> bytes:
        h = self._handle(fh)
        if isinstance(h, DirHandle):
            raise OSError(errno.EISDIR, f"{h.path} is a directory")
        if not isinstance(h, ReadHandle):
            return h.read(size, offset)
        st = h.st
        fsize = int(st["size"])
        blocks = blocks_of(offset, size, fsize, self.cache.block)
        if not blocks:
            return b""
        nblocks = (fsize + self.cache.block - 1) // self.cache.block
        with h.lock:
            ahead = h.ra.on_read(blocks[0], blocks[-1], nblocks)
            last = h.block
        self.cache.prefetch(st, ahead)
        parts = []
        for i in blocks:
            if last is not None and last[0] == i:
                data = last[1]
            else:
                data = self.cache.get(st, i)
                with h.lock:
                    h.block = last = (i, data)
            start = i * self.cache.block
            lo = max(offset - start, 0)
            hi = min(offset + size - start, len(data))
            parts.append(data[lo:hi])
        return parts[0] if len(parts) == 1 else b"".join(parts)

    @_op
    def statfs(self) -> dict[str, int]:
        now = time.monotonic()
        with self._lock:
            cached = self._status
        if cached is None or cached[0] < now:
            cached = (now + self.status_ttl, self.remote.status())
            with self._lock:
                self._status = cached
        return policy.statfs_of(cached[1])

    # ------------------------------------------------------------------ writing

    @_op
    def create(self, path: str, flags: int) -> int:
        p = self._writable(path, "create")
        rec.check_name(rec.basename(p))
        self._forget(p)
        return self._add(self.spool.create(p))

    @_op
    def write(self, fh: int, data: bytes, offset: int) -> int:
        return self._writer(fh).write(data, offset)

    @_op
    def truncate(self, path: str | None, length: int, fh: int | None = None) -> None:
        if fh is not None:
            self._writer(fh).truncate(length)
            return
        if path is None:
            raise OSError(errno.EBADF, "no path and no open file")
        p = self._path(path)
        w = self.spool.pending(p)
        if w is not None:
            w.truncate(length)
            return
        st = self._stat(p, fresh=True)
        if st.get("type") == "dir":
            raise OSError(errno.EISDIR, f"{p} is a directory")
        if policy.plan_truncate(p, length, int(st.get("size") or 0), self.access):
            h = self.spool.create(p)
            try:
                self._commit(h)
            finally:
                self.spool.close(h)

    @_op
    def flush(self, fh: int) -> None:
        h = self._handle(fh)
        if isinstance(h, WriteHandle):
            self._commit(h)

    fsync = flush

    @_op
    def release(self, fh: int) -> None:
        with self._lock:
            h = self._handles.pop(fh, None)
        if isinstance(h, SpoolReader):
            os.close(h.fd)
        if not isinstance(h, WriteHandle):
            return
        try:
            self._commit(h)  # bytes written after the last flush (or a flush that failed)
        finally:
            self.spool.close(h)

    def _commit(self, h: WriteHandle) -> None:
        """Put the spool into Sector if it has bytes not yet stored there (EIO if the
        put fails: the close() that flushed reports it)."""
        with h.lock:
            if h.discarded or not h.dirty:
                return
            size = h.size()
            try:
                st = self.remote.put(h.spool, h.path, size)
            except SectorError as exc:
                err = policy.errno_of(exc)
                log.error(
                    "cannot store %s (%d bytes) in Sector: %s; close() returns %s",
                    h.path,
                    size,
                    exc,
                    errno.errorcode.get(err, err),
                )
                raise OSError(err if err != errno.EINVAL else errno.EIO, str(exc)) from None
            h.dirty, h.stored = False, True
            self._forget(h.path)
            self._remember(h.path, st)
            log.debug("stored %s (%d bytes)", h.path, size)

    # ------------------------------------------------------------------ namespace

    @_op
    def mkdir(self, path: str) -> None:
        p = self._writable(path, "mkdir")
        self._forget(p)
        self.remote.mkdir(p)

    @_op
    def rmdir(self, path: str) -> None:
        p = self._writable(path, "rmdir")
        if self._stat(p, fresh=True).get("type") != "dir":
            raise OSError(errno.ENOTDIR, f"{p} is not a directory")
        if self.spool.any_under(p):
            raise OSError(errno.ENOTEMPTY, f"{p} has files being written")
        self._forget(p)
        self.remote.rm(p)

    @_op
    def unlink(self, path: str) -> None:
        p = self._writable(path, "unlink")
        w = self.spool.pending(p)
        if w is not None:
            w.discarded = True
            self.spool.forget(w)
            if not w.stored:
                self._forget(p)
                try:  # a replacement of a stored file: the old version goes too
                    self.remote.rm(p)
                except NotFound:
                    pass
                return
        elif self._stat(p, fresh=True).get("type") == "dir":
            raise OSError(errno.EISDIR, f"{p} is a directory")
        self._forget(p)
        self.remote.rm(p)

    @_op
    def rename(self, old: str, new: str, flags: int = 0) -> None:
        src, dst = self._writable(old, "rename"), self._writable(new, "rename onto")
        replace = policy.plan_rename(src, dst, flags)
        w = self.spool.pending(src)
        if w is not None and not w.stored:
            # Not in Sector yet: it will simply be put at its new path on close.
            try:
                there = self.remote.stat(dst).get("type")
            except NotFound:
                there = None
            if there == "dir":
                raise OSError(errno.EISDIR, f"{dst} is a directory")
            if there is not None and not replace:
                raise OSError(errno.EEXIST, f"{dst} exists")
            self.spool.moved(src, dst)
            self._forget(src, dst)
            return
        self._forget(src, dst)
        try:
            self.remote.mv(src, dst)
        except AlreadyExists:
            if not replace:
                raise
            self._replace(src, dst)
        self.spool.moved(src, dst)
        with self._lock:
            if src in self._opened:
                self._opened[dst] = self._opened.pop(src)

    def _replace(self, src: str, dst: str) -> None:
        """rename(2) onto an existing ``dst``: POSIX replaces it, Sector's mv does not.
        Remove ``dst`` (a file, or an empty directory), then move: not atomic, unlike
        rename(2); a reader in between sees no ``dst`` for a moment."""
        a, b = self.remote.stat(src), self.remote.stat(dst)
        if a.get("type") == "dir" and b.get("type") != "dir":
            raise OSError(errno.ENOTDIR, f"{dst} is not a directory")
        if a.get("type") != "dir" and b.get("type") == "dir":
            raise OSError(errno.EISDIR, f"{dst} is a directory")
        if b.get("type") == "dir" and self.remote.ls(dst):
            raise OSError(errno.ENOTEMPTY, f"{dst} is not empty")
        self.remote.rm(dst)
        self.remote.mv(src, dst)

    @_op
    def check_writable(self, path: str, what: str) -> None:
        """For chmod, chown and utimens: Sector keeps no host owners, modes or times
        set by hand, so these succeed without effect where the mount may write."""
        self._writable(path, what)

    # ------------------------------------------------------------------ lifecycle

    def unfinished(self) -> list[str]:
        """Files still open for writing with bytes not stored in Sector."""
        return [h.path for h in self.spool.open_handles() if h.dirty and not h.discarded]

    def close(self) -> None:
        lost = self.unfinished()
        if lost:
            log.warning(
                "unmounted with %d file(s) still open for writing, not stored: %s",
                len(lost),
                ", ".join(lost[:10]),
            )
        self.cache.close()
        self.spool.remove()


def state_dir(cache: Path | None, mountpoint: Path, home: Path) -> Path:
    """Where a mount keeps its cache, spool and log: ``--cache`` or one per mount point."""
    if cache is not None:
        return cache
    import hashlib

    tag = hashlib.sha1(str(mountpoint).encode()).hexdigest()[:16]
    return home / "mounts" / tag
