"""A node's cache of other nodes' files (issue 14): what a swarm fetch brings here.

Layout under the node's data directory::

    cache/ab/abcdef...         a cached file, complete and verified, named by blob id
    cache/ab/abcdef....info    its file's path, size, checksum and piece list
    cache/tmp/abcdef....part   a fetch in progress (pieces written in place)

Rules:
- Cached copies are not replicas: no record lists them, they never count toward a
  file's replica target, repair never reads them, the collector never sees them.
- Keyed by blob id, so a replaced file's old version is never served for the new
  one: its blob id is another. A lookup by path (``lookup``) drops a cached blob the
  file's current record no longer names; so do ``drop`` (``cache.drop``, sent when a
  file is replaced or removed, or when a copy here served a corrupt piece) and the
  periodic check of every entry against its record (``node/swarm.py``).
- An LRU under a size limit (``--cache-size``): a fetch reserves its file's size
  first, evicting the least recently used complete files; a file larger than the
  limit is not cached (``NoSpace``). Fetches in progress are never evicted. The disk's
  free-space floor (``--min-free``) is kept as for replicas.
- A partial fetch serves the pieces it has verified (``have``) to its peers: that is
  what makes pipelining work. Verified means checked against the piece list, which
  was checked against the record's root.
- Nothing here is fsynced: a cache is rebuilt after a crash from what is on disk (a
  file whose ``.info`` is missing or does not match is removed; partial fetches are).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import stat
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from sector.errors import NoSpace
from sector.storage import pieces
from sector.storage.blobs import check_blob_id, open_nofollow

log = logging.getLogger("sector.cache")

INFO = ".info"
_BLOB = re.compile(r"[0-9a-f]{32}")


class Info(msgspec.Struct, frozen=True):
    """The ``.info`` beside a cached file."""

    path: str
    size: int
    checksum: str
    piece_size: int
    digests: bytes


@dataclass(slots=True)
class Entry:
    blob: str
    path: str  # the file it was fetched for
    size: int
    checksum: str
    piece_size: int
    digests: bytes
    file: str  # where its bytes are (the .part while partial)
    complete: bool = False
    have: int = 0  # verified pieces (all of them once complete)
    fd: int | None = None  # open for writing while partial
    dropped: bool = False  # dropped while partial: the fetch fails

    @property
    def pieces(self) -> int:
        return pieces.count(self.size, self.piece_size)


@dataclass(slots=True)
class Counters:
    hits: int = 0
    evicted: int = 0
    evicted_bytes: int = 0
    dropped: int = 0


class Cache:
    """The cache of one node (module rules). Methods run on the event loop; they do
    small file operations only (create, rename, unlink, a few KiB of ``.info``)."""

    def __init__(self, root: Path, limit: int, *, min_free: int = 0) -> None:
        self.dir = root / "cache"
        self.tmp = self.dir / "tmp"
        self.limit = limit
        self.min_free = min_free
        self.entries: OrderedDict[str, Entry] = OrderedDict()  # LRU order: oldest first
        self.by_path: dict[str, str] = {}
        self.used = 0  # complete files and reserved partial ones
        self.counters = Counters()

    # ------------------------------------------------------------------ start

    def load(self) -> None:
        """Take in what is on disk (blocking: call from a thread, before serving)."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        for p in self.tmp.iterdir():
            with contextlib.suppress(OSError):
                p.unlink()
        found: list[tuple[float, Entry]] = []
        for d in self.dir.iterdir():
            if len(d.name) != 2 or not d.is_dir() or d.is_symlink():
                continue
            for p in d.iterdir():
                if p.name.endswith(INFO) and _BLOB.fullmatch(p.name[: -len(INFO)]):
                    if not (d / p.name[: -len(INFO)]).exists():
                        with contextlib.suppress(OSError):
                            p.unlink()
                    continue
                e = self._read(p) if _BLOB.fullmatch(p.name) else None
                if e is None:
                    self._remove_files(str(p))
                    continue
                found.append((p.stat().st_atime, e))
        for _, e in sorted(found, key=lambda t: t[0]):
            self._add(e)
        log.info("cache: %d files, %d bytes (limit %d)", len(self.entries), self.used, self.limit)

    def _read(self, p: Path) -> Entry | None:
        try:
            st = os.stat(p, follow_symlinks=False)
            raw = (p.parent / (p.name + INFO)).read_bytes()
            info = msgspec.msgpack.decode(raw, type=Info)
        except (OSError, msgspec.ValidationError, msgspec.DecodeError):
            return None
        pl = pieces.PieceList(info.size, info.piece_size, info.digests)
        if not stat.S_ISREG(st.st_mode) or st.st_size != info.size or not pl.valid():
            return None
        return Entry(
            p.name,
            info.path,
            info.size,
            info.checksum,
            info.piece_size,
            info.digests,
            str(p),
            complete=True,
            have=(1 << pieces.count(info.size, info.piece_size)) - 1,
        )

    def _add(self, e: Entry) -> None:
        self.entries[e.blob] = e
        self.by_path[e.path] = e.blob
        self.used += e.size

    # ------------------------------------------------------------------ lookups

    def lookup(self, path: str, blob: str) -> Entry | None:
        """The complete cached copy of ``path`` at ``blob``; a cached copy of another
        version of ``path`` is dropped (the record no longer names it)."""
        old = self.by_path.get(path)
        if old is not None and old != blob:
            log.info("cache: %s changed (blob %s -> %s): dropping the old copy", path, old, blob)
            self.drop(old)
        e = self.entries.get(blob)
        if e is None or not e.complete:
            return None
        self.entries.move_to_end(blob)
        self.counters.hits += 1
        return e

    def get(self, blob: str) -> Entry | None:
        """The entry of ``blob``, complete or partial (serving pieces)."""
        return self.entries.get(blob)

    # ------------------------------------------------------------------ a fetch

    def begin(self, blob: str, path: str, size: int, checksum: str, pl: pieces.PieceList) -> Entry:
        """Reserve room for a fetch of ``blob`` and open its partial file."""
        check_blob_id(blob)
        if blob in self.entries:
            raise NoSpace(f"blob {blob} is already cached or being fetched here")
        if size > self.limit:
            raise NoSpace(f"{path} ({size} bytes) is larger than this node's cache ({self.limit})")
        self._evict(size)
        free = shutil.disk_usage(self.dir).free
        if size + self.min_free > free:
            raise NoSpace(f"no room to cache {path}: {free} bytes free, floor {self.min_free}")
        part = str(self.tmp / f"{blob}.part")
        fd = os.open(
            part, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644
        )
        try:
            os.ftruncate(fd, size)
        except OSError as exc:
            os.close(fd)
            self._remove_files(part)
            raise NoSpace(f"cannot cache {path}: {exc.strerror}") from None
        e = Entry(blob, path, size, checksum, pl.piece_size, pl.digests, part, fd=fd)
        self._add(e)
        return e

    def seal(self, e: Entry) -> None:
        """A fetch is complete (every piece verified): move it into place."""
        if e.dropped:
            raise NoSpace(f"the cached copy of {e.path} was dropped during its fetch")
        d = self.dir / e.blob[:2]
        with contextlib.suppress(FileExistsError):
            d.mkdir()
        info = Info(e.path, e.size, e.checksum, e.piece_size, e.digests)
        final = str(d / e.blob)
        tmp = str(self.tmp / f"{e.blob}{INFO}")
        with open(tmp, "wb") as f:
            f.write(msgspec.msgpack.encode(info))
        os.replace(tmp, final + INFO)
        os.replace(e.file, final)
        self._close(e)
        e.file, e.complete = final, True

    def abort(self, e: Entry) -> None:
        """A fetch failed: its partial file and reservation go."""
        self._close(e)
        if self.entries.get(e.blob) is e:
            self._forget(e)
        self._remove_files(e.file)

    def _close(self, e: Entry) -> None:
        if e.fd is not None:
            with contextlib.suppress(OSError):
                os.close(e.fd)
            e.fd = None

    # ------------------------------------------------------------------ removal

    def drop(self, blob: str) -> bool:
        """Remove ``blob``'s copy. A fetch in progress is marked and fails."""
        e = self.entries.get(blob)
        if e is None:
            return False
        if not e.complete:
            e.dropped = True
            return True
        self._forget(e)
        self._remove_files(e.file)
        self.counters.dropped += 1
        return True

    def _forget(self, e: Entry) -> None:
        del self.entries[e.blob]
        if self.by_path.get(e.path) == e.blob:
            del self.by_path[e.path]
        self.used -= e.size

    def _evict(self, size: int) -> None:
        """Least recently used complete files out until ``size`` more bytes fit."""
        for blob in list(self.entries):
            if self.used + size <= self.limit:
                return
            e = self.entries[blob]
            if e.complete:
                log.info("cache: evicting %s (%s, %d bytes)", blob, e.path, e.size)
                self._forget(e)
                self._remove_files(e.file)
                self.counters.evicted += 1
                self.counters.evicted_bytes += e.size
        if self.used + size > self.limit:
            raise NoSpace(f"cache full: {self.used} bytes in fetches under way, limit {self.limit}")

    @staticmethod
    def _remove_files(file: str) -> None:
        for p in (file, file + INFO):
            with contextlib.suppress(OSError):
                os.unlink(p)

    # ------------------------------------------------------------------ serving

    def open(self, e: Entry) -> int:
        """A read descriptor of the entry's file (kept open, its bytes stay readable
        even if the entry is evicted meanwhile)."""
        return open_nofollow(e.file)

    def complete_entries(self) -> list[Entry]:
        return [e for e in self.entries.values() if e.complete]

    def status(self) -> dict[str, Any]:
        done = self.complete_entries()
        return {
            "cache_bytes": sum(e.size for e in done),
            "cache_files": len(done),
            "cache_limit": self.limit,
            "cache_fetching": len(self.entries) - len(done),
            "cache_hits": self.counters.hits,
            "cache_evicted": self.counters.evicted,
            "cache_dropped": self.counters.dropped,
        }


def default_limit(root: Path) -> int:
    """``--cache-size`` unset: a tenth of the disk's free space at start, but at least
    2 GiB where the disk has four times that free (a node of a small disk keeps its
    space for replicas, one with room enough for a model or an environment)."""
    free = shutil.disk_usage(root).free
    return max(free // 10, min(2 << 30, free // 4))
