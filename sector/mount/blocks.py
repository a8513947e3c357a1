"""Pure block logic of the mount's read path: which blocks a read needs, which to
read ahead, which cached blocks to drop.

A file is read in fixed-size blocks (``BLOCK``), each fetched with one ranged read
from a replica and kept in the local cache under the file's *blob id* and the block's
index. A blob is one version of a file's bytes and never changes, so a cached block
is never stale: a replaced file has a new blob and simply misses the cache.

Readahead follows the kernel's on-demand readahead: a read that continues where the
last one left off (in the same block or the next) is sequential and doubles the
window of blocks fetched ahead, up to ``max_blocks``; a jump elsewhere resets it to
nothing, so random reads (a zip's index, a database page) cost only their own blocks.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

BLOCK = 4 << 20  # 4 MiB: one round trip per block; a few fill a fast link


def block_span(index: int, size: int, block: int = BLOCK) -> tuple[int, int]:
    """(offset, length) of block ``index`` of a file of ``size`` bytes."""
    start = index * block
    return start, max(0, min(block, size - start))


def blocks_of(offset: int, length: int, size: int, block: int = BLOCK) -> range:
    """The blocks that hold bytes ``[offset, offset + length)`` of the file (none past
    its end)."""
    end = min(offset + length, size)
    if offset >= end:
        return range(0)
    return range(offset // block, (end - 1) // block + 1)


@dataclass
class Readahead:
    """Sequential-read detection for one open file (one per handle)."""

    max_blocks: int = 8
    window: int = 0  # blocks to keep fetched ahead of the reader
    last: int = -2  # the last block read
    ahead: int = -1  # the highest block already asked for

    def on_read(self, first: int, last: int, nblocks: int) -> range:
        """A read of blocks ``first..last`` of a file of ``nblocks`` blocks: the blocks
        to fetch ahead of it now (those not asked for already)."""
        # Parallel reads of the kernel may arrive a little out of order: a read of the
        # block before the last one is still part of the same sequential stream.
        starting = self.last == -2 and first == 0
        if starting or self.last - 1 <= first <= self.last + 1:
            if last > self.last:
                self.window = min(self.max_blocks, max(1, self.window * 2))
                self.last = last
        else:
            self.window = 0
            self.last = self.ahead = last
        start = max(last + 1, self.ahead + 1)
        stop = min(nblocks, last + 1 + self.window)
        if start >= stop:
            return range(0)
        self.ahead = stop - 1
        return range(start, stop)


@dataclass
class LruIndex:
    """The cached blocks by key, least recently used first, within ``limit`` bytes."""

    limit: int
    total: int = 0
    _sizes: OrderedDict[str, int] = field(default_factory=OrderedDict)

    def __contains__(self, key: str) -> bool:
        return key in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)

    def touch(self, key: str) -> bool:
        """Mark ``key`` used now; False if it is not cached."""
        if key not in self._sizes:
            return False
        self._sizes.move_to_end(key)
        return True

    def add(self, key: str, size: int) -> list[str]:
        """Record ``key`` (``size`` bytes) as cached and used now; returns the keys to
        evict to stay within the limit, oldest first (``key`` itself if it alone is
        larger than the whole cache)."""
        self.remove(key)
        self._sizes[key] = size
        self.total += size
        victims: list[str] = []
        while self.total > self.limit and self._sizes:
            old, n = self._sizes.popitem(last=False)
            self.total -= n
            victims.append(old)
        return victims

    def remove(self, key: str) -> None:
        n = self._sizes.pop(key, None)
        if n is not None:
            self.total -= n
