"""The mount's block cache on a temp dir with a fake fetch (no FUSE, no cluster): it
fetches each block once however many readers ask, keeps the disk within its limit,
survives a restart, and lets a failed fetch be tried again."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from sector.errors import ConnectError
from sector.mount.cache import BlockCache
from sector.testing.cluster import wait_for

BLOCK = 1024
DATA = bytes(range(256)) * 40  # 10,240 bytes: 10 blocks
ST = {"blob": "b1", "size": len(DATA), "path": "/f"}


class Fetcher:
    def __init__(self, *, fail: int = 0, delay: float = 0.0) -> None:
        self.calls: list[tuple[int, int]] = []
        self.fail = fail
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, st: dict[str, Any], offset: int, length: int) -> bytes:
        with self.lock:
            self.calls.append((offset, length))
            if self.fail:
                self.fail -= 1
                raise ConnectError("down")
        time.sleep(self.delay)
        return DATA[offset : offset + length]


def on_disk(c: BlockCache) -> int:
    return sum(p.stat().st_size for p in c.dir.iterdir() if not p.name.startswith("."))


def test_blocks_are_fetched_once_and_served_from_disk_after(tmp_path: Path) -> None:
    f = Fetcher()
    c = BlockCache(tmp_path, 100 * BLOCK, f, block=BLOCK, in_memory=1)
    assert b"".join(c.get(ST, i) for i in range(10)) == DATA
    assert len(f.calls) == 10 and f.calls[-1] == (9 * BLOCK, len(DATA) - 9 * BLOCK)
    assert b"".join(c.get(ST, i) for i in range(10)) == DATA  # from disk now
    assert len(f.calls) == 10
    c.close()
    again = BlockCache(tmp_path, 100 * BLOCK, f, block=BLOCK)  # a remount
    assert again.get(ST, 3) == DATA[3 * BLOCK : 4 * BLOCK] and len(f.calls) == 10
    # Another version of the file is another blob: never the old bytes.
    other = {**ST, "blob": "b2"}
    again.get(other, 3)
    assert len(f.calls) == 11
    again.close()


def test_disk_use_stays_within_the_limit(tmp_path: Path) -> None:
    c = BlockCache(tmp_path, 3 * BLOCK, Fetcher(), block=BLOCK, in_memory=1)
    for i in range(10):
        c.get(ST, i)
    assert on_disk(c) <= 3 * BLOCK and c.used <= 3 * BLOCK
    c.close()


def test_concurrent_readers_share_one_fetch(tmp_path: Path) -> None:
    f = Fetcher(delay=0.2)
    c = BlockCache(tmp_path, 100 * BLOCK, f, block=BLOCK)
    got: list[bytes] = []
    threads = [threading.Thread(target=lambda: got.append(c.get(ST, 5))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [DATA[5 * BLOCK : 6 * BLOCK]] * 8 and len(f.calls) == 1
    c.close()


def test_a_failed_fetch_raises_and_the_next_read_tries_again(tmp_path: Path) -> None:
    f = Fetcher(fail=1)
    c = BlockCache(tmp_path, 100 * BLOCK, f, block=BLOCK)
    with pytest.raises(ConnectError):
        c.get(ST, 0)
    assert c.get(ST, 0) == DATA[:BLOCK] and len(f.calls) == 2
    c.close()


def test_prefetch_fills_the_cache_in_the_background(tmp_path: Path) -> None:
    f = Fetcher()
    c = BlockCache(tmp_path, 100 * BLOCK, f, block=BLOCK)
    c.prefetch(ST, range(4))
    wait_for(lambda: len(f.calls) == 4, 10, interval=0.01, what="the prefetches")
    for i in range(4):
        assert c.get(ST, i) == DATA[i * BLOCK : (i + 1) * BLOCK]
    assert len(f.calls) == 4
    c.close()
