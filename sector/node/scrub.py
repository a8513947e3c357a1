"""The scrubber: re-verifies this node's blobs against their checksums (issue 3,
part 2; HDFS's block scanner, garage's ``block/repair.rs`` scrub worker).

Rules:
- A pass walks the inventory least-recently-verified first and re-hashes each blob
  in a worker thread, paced to ``rate`` bytes/s (0 = no cap) so a pass never
  competes with client reads for the disk; the loop is never blocked.
- A blob with no recorded checksum (adopted from before the inventory) gets the one
  it has now: there is nothing to check it against.
- A mismatch (or a size that differs from the row) is a corrupt copy: it is reported
  to the owner of the file's record (``repair.report {path, node_id}``, routed as
  repair routes it), then deleted here; the owner's repair worker copies a good one
  to a new holder and drops this node from the record. If the report cannot be
  delivered the corrupt copy stays (reads fail over past it) and the next pass tries
  again: deleting it unreported would leave the record naming a copy that is gone.
- Passes start ``interval`` seconds apart, counted from the last pass's start as
  recorded in ``<data>/scrub.last`` (a node restarted every day still scrubs, and a
  restart loop does not become a re-hash loop); ``scrub.now`` (tests, operators)
  runs one at once and answers when it is done, with the worker's status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import blake3

from sector.aio import Worker
from sector.errors import SectorError
from sector.ids import to_hex
from sector.routing.chord import Peer
from sector.storage.blobs import CHUNK, BlobStore, open_nofollow
from sector.storage.inventory import Inventory, Row


class Reporter(Protocol):
    async def report(
        self, path: str, node_id: str | None = None, *, blob: str | None = None
    ) -> Any: ...


class ScrubHost(Protocol):
    """What the scrubber needs from its node: the local blobs and their inventory, the
    data directory (for its marker), and the repair worker to tell of a bad copy."""

    blobs: BlobStore
    inventory: Inventory
    data: Path

    @property
    def me(self) -> Peer: ...
    @property
    def repair(self) -> Reporter: ...


log = logging.getLogger("sector.scrub")


def hash_paced(path: Path, rate: int, stop: threading.Event) -> tuple[str, int] | None:
    """BLAKE3 of a file read at no more than ``rate`` bytes/s; (checksum, size), or
    None if stopped. Runs in a thread (it sleeps to keep the pace)."""
    h = blake3.blake3()
    n = 0
    started = time.monotonic()
    with open(open_nofollow(path), "rb") as f:  # a link planted mid-pass is not read
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while k := f.readinto(buf):
            if stop.is_set():
                return None
            h.update(view[:k])
            n += k
            if rate:
                ahead = n / rate - (time.monotonic() - started)
                if ahead > 0:
                    stop.wait(ahead)
    return "blake3:" + h.hexdigest(), n


class ScrubWorker(Worker):
    def __init__(self, node: ScrubHost, *, rate: int, interval: float, settle: float) -> None:
        super().__init__("scrub", interval=interval, settle=settle)
        self.node = node
        self.rate = rate
        self.counters = {"verified": 0, "bytes": 0, "corrupt": 0, "passes": 0, "adopted": 0}
        self.progress = 0.0  # % of the current (or last) pass
        self._lock = asyncio.Lock()
        self._stop = threading.Event()

    async def stop(self) -> None:
        self._stop.set()  # a hashing thread notices within one chunk
        await super().stop()

    def handlers(self) -> dict[str, Any]:
        return {"scrub.now": self._h_now}

    def status(self) -> dict[str, Any]:
        return {
            **super().status(),
            "progress": round(self.progress, 1),
            **self.counters,
            "rate": self.rate,
        }

    async def _h_now(self, a: dict[str, Any]) -> Any:
        await self.run_pass()
        return self.status()

    def _last_start(self) -> float:
        """When the schedule last started a pass. A node with no record yet starts its
        schedule now rather than scrubbing at once: every copy it holds was verified
        against its checksum when it was written."""
        mark = self.node.data / "scrub.last"
        try:
            return float(mark.read_text())
        except (OSError, ValueError):
            now = time.time()
            with contextlib.suppress(OSError):
                mark.write_text(f"{now}\n")
            return now

    async def work(self) -> float:
        """A pass when the schedule says so (it survives restarts); else how long until
        then (at most a minute, so a changed clock or marker is noticed)."""
        wait = self._last_start() + self.interval - time.time()
        if wait > 0:
            return min(wait, 60.0)
        (self.node.data / "scrub.last").write_text(f"{time.time()}\n")
        await self.run_pass()
        return 0.0

    async def run_pass(self) -> None:
        async with self._lock:  # scrub.now during a scheduled pass waits for it
            self.state = "scrubbing"
            self.progress = 0.0
            try:
                rows = await asyncio.to_thread(self._reconcile)
                for i, row in enumerate(rows):
                    await self._check(row)
                    self.progress = 100.0 * (i + 1) / len(rows)
                self.progress = 100.0
                self.counters["passes"] += 1
            finally:
                self.state = "idle"

    def _reconcile(self) -> list[Row]:
        inv = self.node.inventory
        now = time.time()
        adopted, _ = inv.reconcile(self.node.blobs.sizes(), now)
        self.counters["adopted"] += adopted
        return inv.rows()

    async def _check(self, row: Row) -> None:
        p = self.node.blobs.path(row.blob)
        try:
            got = await asyncio.to_thread(hash_paced, p, self.rate, self._stop)
        except FileNotFoundError:
            return  # deleted since the listing
        if got is None:
            return
        checksum, size = got
        self.counters["verified"] += 1
        self.counters["bytes"] += size
        if row.checksum is None or (checksum == row.checksum and size == row.size):
            await asyncio.to_thread(self.node.inventory.verified, row.blob, checksum, time.time())
            return
        self.counters["corrupt"] += 1
        log.warning("blob %s (%s) is corrupt: %s != %s", row.blob, row.path, checksum, row.checksum)
        await self.condemn(row.blob, row.path)

    async def condemn(self, blob: str, path: str) -> bool:
        """Report a bad local copy to its file's owner, then delete it (module rules)."""
        # Every path the blob may be known by (a rename leaves an alias until confirmed).
        paths = await asyncio.to_thread(self.node.inventory.paths, blob)
        for p in paths or ([path] if path else []):
            try:
                await self.node.repair.report(p, to_hex(self.node.me.id), blob=blob)
            except SectorError as exc:
                self.last_error = f"report of corrupt {blob} ({path}) failed: {exc}"
                log.warning("%s", self.last_error)
                return False
        await asyncio.to_thread(self.node.blobs.delete, blob)
        return True
