"""The mount's local block cache: blocks of files on disk, LRU within a size limit.

``<dir>/blocks-<size>/<blob>.<index>`` holds block ``index`` of the blob (one version
of a file's bytes, see ``blocks``). A block is written to a temp file and renamed, so
a crash never leaves half a block; a block whose length is not what the file's size
says is fetched again. The LRU order lives in memory and is rebuilt from the files'
mtimes at start, so a cache survives a remount.

Fetching: a block missing from the cache is fetched once however many readers want
it at the same moment (the others wait for the same future), and blocks read ahead
are fetched by a small pool of threads while the reader consumes the ones before. The
last few blocks fetched are also kept in memory, so a sequential reader gets the
block its readahead brought without reading it back from disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from sector.mount.blocks import BLOCK, LruIndex, block_span

log = logging.getLogger("sector.mount")

# fetch(stat record, offset, length) -> the bytes, or raises (bounded by a timeout).
Fetch = Callable[[dict[str, Any], int, int], bytes]


class BlockCache:
    def __init__(
        self,
        root: Path,
        limit: int,
        fetch: Fetch,
        *,
        block: int = BLOCK,
        workers: int = 4,
        in_memory: int = 8,
    ) -> None:
        self.block = block
        self.dir = root / f"blocks-{block >> 10}k"
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # others' file contents
        self._fetch = fetch
        self._lock = threading.Lock()
        self._lru = LruIndex(limit)
        self._inflight: dict[str, Future[bytes]] = {}
        self._recent: OrderedDict[str, bytes] = OrderedDict()
        self._in_memory = in_memory
        # Daemon threads, not an executor: the process must be able to exit while a
        # fetch is stuck on the network (an executor's threads are joined at exit).
        self._jobs: queue.SimpleQueue[tuple[dict[str, Any], int] | None] = queue.SimpleQueue()
        self._closed = False
        for n in range(workers):
            threading.Thread(target=self._work, name=f"sector-readahead-{n}", daemon=True).start()
        self._workers = workers
        self.fetched = self.hits = 0  # blocks fetched from the cluster / found here
        self._load_index()

    def _load_index(self) -> None:
        """The LRU order of the blocks a previous mount left, oldest mtime first."""
        found = []
        for e in os.scandir(self.dir):
            if e.name.startswith("."):  # a temp file of a block never finished
                with contextlib.suppress(OSError):
                    os.unlink(e.path)
                continue
            with contextlib.suppress(OSError):
                st = e.stat()
                found.append((st.st_mtime, e.name, st.st_size))
        for _, name, size in sorted(found):
            for victim in self._lru.add(name, size):
                self._drop(victim)

    def close(self) -> None:
        self._closed = True
        for _ in range(self._workers):
            self._jobs.put(None)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            if not self._closed:
                self._quiet_get(*job)

    @property
    def used(self) -> int:
        return self._lru.total

    def key(self, st: dict[str, Any], index: int) -> str:
        return f"{st['blob']}.{index}"

    def get(self, st: dict[str, Any], index: int) -> bytes:
        """Block ``index`` of the file ``st`` (a stat record: blob, size, replicas)."""
        key = self.key(st, index)
        _, want = block_span(index, int(st["size"]), self.block)
        with self._lock:
            data = self._recent.get(key)
            fut = self._inflight.get(key)
            cached = data is None and fut is None and self._lru.touch(key)
        if data is not None:
            self.hits += 1
            return data
        if cached:
            data = self._read(key, want)
            if data is not None:
                self.hits += 1
                return data
        owner = False
        with self._lock:
            fut = self._inflight.get(key)
            if fut is None:
                fut = self._inflight[key] = Future()
                owner = True
        if owner:
            self._fill(fut, st, index, key)
        return fut.result()

    def prefetch(self, st: dict[str, Any], indexes: Iterable[int]) -> None:
        """Fetch these blocks in the background (errors are left for the reader to meet)."""
        for i in indexes:
            key = self.key(st, i)
            with self._lock:
                if self._closed or key in self._inflight or key in self._recent or key in self._lru:
                    continue
            self._jobs.put((st, i))

    def _quiet_get(self, st: dict[str, Any], index: int) -> None:
        try:
            self.get(st, index)
        except Exception as exc:
            log.debug("readahead of block %d of %s failed: %s", index, st.get("path"), exc)

    def _fill(self, fut: Future[bytes], st: dict[str, Any], index: int, key: str) -> None:
        try:
            start, length = block_span(index, int(st["size"]), self.block)
            data = self._fetch(st, start, length) if length else b""
            if len(data) != length:
                raise OSError(f"short read of block {index} of {st.get('path')}")
        except BaseException as exc:
            with self._lock:
                self._inflight.pop(key, None)
            fut.set_exception(exc)
            return
        self.fetched += 1
        with self._lock:
            self._recent[key] = data
            while len(self._recent) > self._in_memory:
                self._recent.popitem(last=False)
            self._inflight.pop(key, None)
        fut.set_result(data)
        self._write(key, data)

    def _read(self, key: str, want: int) -> bytes | None:
        try:
            with open(self.dir / key, "rb") as f:
                data = f.read()
        except OSError:
            data = None
        if data is None or len(data) != want:
            with self._lock:
                self._lru.remove(key)
            return None
        return data

    def _write(self, key: str, data: bytes) -> None:
        tmp = self.dir / f".{key}.{threading.get_ident()}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, self.dir / key)
        except OSError as exc:  # a full disk costs the cache, not the read
            log.warning("cannot cache a block in %s: %s", self.dir, exc)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return
        with self._lock:
            victims = self._lru.add(key, len(data))
        for v in victims:
            self._drop(v)

    def _drop(self, key: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.dir / key)
