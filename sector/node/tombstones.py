"""The tombstone purger of a node (issue 17; the rules are ``meta/purge.py``'s).

- ``TombstoneWorker`` runs every ``ALIVE_EVERY`` (or a tenth of the grace, if less):
  while the node has quorum it notes the time as *alive*; every ``interval`` it scans
  the metadata store a page at a time and drops the tombstones older than the grace
  (``Gone`` rows, "gone" entries of directories and shadows), writing back only rows
  no commit changed meanwhile (``MetaStore.replace_exact``), so a create or a merge
  racing with the pass always wins. The decoded copy the metadata service keeps of
  each row it wrote is forgotten. Alive and horizon are kept in ``purge.json`` in the
  data directory (written atomically), and ``meta.horizon`` (node-only) serves them.
- ``check_stale`` runs once at start, before the node joins the ring: it asks the
  peers it knows for their horizons and, if one is past what the node can vouch for
  (rule 4), drops every record before anything could serve or push one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Protocol

from sector.aio import Worker
from sector.errors import SectorError
from sector.meta import purge
from sector.meta.records import decode
from sector.meta.service import MetaService
from sector.meta.store import MetaStore
from sector.node.members import Members

log = logging.getLogger("sector.meta")

STATE_FILE = "purge.json"
ALIVE_EVERY = 60.0  # seconds between two notes of "alive" (at most; see grace)
ASK_TIMEOUT = 3.0  # seconds a peer has to say its horizon at start


class TombHost(Protocol):
    store: MetaStore
    data: Path

    @property
    def members(self) -> Members: ...
    @property
    def meta(self) -> MetaService: ...
    def quorum_refusal(self) -> str | None: ...
    async def call(
        self, addr: str, op: str, args: dict[str, Any], timeout: float | None = None
    ) -> Any: ...


def _load(path: Path) -> dict[str, int]:
    try:
        raw = json.loads(path.read_text())
        return {k: int(raw[k]) for k in ("alive_ms", "horizon_ms") if k in raw}
    except (OSError, ValueError, TypeError, KeyError):
        return {}


def _save(path: Path, state: dict[str, int]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _ms() -> int:
    return int(time.time() * 1000)


class TombstoneWorker(Worker):
    def __init__(self, node: TombHost, grace: float, interval: float) -> None:
        super().__init__("tombstones", interval=min(ALIVE_EVERY, max(0.05, grace / 10)))
        self.node = node
        self.grace_ms = int(grace * 1000)
        self.every = interval
        self.path = node.data / STATE_FILE
        self.saved = _load(self.path)
        self._next_pass = time.monotonic() + interval
        self.counters = {"passes": 0, "purged_records": 0, "purged_entries": 0, "wiped": 0}

    def status(self) -> dict[str, Any]:
        return {
            **super().status(),
            **self.counters,
            "grace": self.grace_ms / 1000,
            "alive_ms": self.saved.get("alive_ms"),
            "horizon_ms": self.saved.get("horizon_ms", 0),
        }

    def handlers(self) -> dict[str, Any]:
        return {"meta.horizon": self._h_horizon}

    async def _h_horizon(self, a: dict[str, Any]) -> Any:
        return {"horizon_ms": self.saved.get("horizon_ms", 0)}

    async def check_stale(self, join: str | None) -> bool:
        """Rule 4 of ``purge.py``, before the node joins: True if the records went.
        Asked: ``join`` and every member of the saved member table."""
        members = self.node.members
        peers = sorted({m.addr for m in members.voters() if m.id != members.me_id})
        peers = [join, *peers] if join and join not in peers else peers
        alive = self.saved.get("alive_ms")
        if alive is None or not peers:
            return False
        replies = await asyncio.gather(
            *(self.node.call(p, "meta.horizon", {}, ASK_TIMEOUT) for p in peers),
            return_exceptions=True,
        )
        horizons = [int(r["horizon_ms"]) for r in replies if isinstance(r, dict)]
        seen = max(horizons, default=0)
        if not purge.stale(alive, seen, self.grace_ms):
            return False
        n = await asyncio.to_thread(self.node.store.clear)
        self.counters["wiped"] += n
        away = (_ms() - alive) / 1000
        log.warning(
            "this node was away %.0f s, longer than the tombstone grace of %.0f s: its "
            "%d metadata records were dropped (what it owns comes back from its peers)",
            away,
            self.grace_ms / 1000,
            n,
        )
        await self._note(alive_ms=_ms())
        return True

    async def work(self) -> None:
        if self.node.quorum_refusal() is None:
            await self._note(alive_ms=_ms())
        if time.monotonic() >= self._next_pass:
            await self.run_pass()

    async def _note(self, **fields: int) -> None:
        self.saved = {**self.saved, **fields}
        await asyncio.to_thread(_save, self.path, dict(self.saved))

    async def run_pass(self) -> int:
        """One purge pass over the whole store; returns how many rows changed."""
        self._next_pass = time.monotonic() + self.every
        before = purge.cutoff(_ms(), self.grace_ms)
        changed = await asyncio.to_thread(self._pass, before)
        for path in changed:  # on the loop: the service's copies are the loop's
            self.node.meta.handoff.forget(path)
        self.counters["passes"] += 1
        horizon = max(before, self.saved.get("horizon_ms", 0))
        await self._note(horizon_ms=horizon)
        return len(changed)

    def _pass(self, before: int) -> list[str]:
        store, changed = self.node.store, []
        for page in store.raw_pages():
            rows: list[tuple[str, bytes, Any]] = []
            entries = 0
            for path, data in page:
                try:
                    r = decode(data, check=False)
                except SectorError:
                    continue
                new = purge.purged(r, before)
                if new is r:
                    continue
                rows.append((path, data, new))
                if new is not None:
                    entries += _entries(r) - _entries(new)
            if not rows:
                continue
            store.replace_exact(rows)
            changed += [path for path, _, _ in rows]
            self.counters["purged_records"] += sum(1 for _, _, n in rows if n is None)
            self.counters["purged_entries"] += entries
        dirs, n = store.purge_entries(before)  # a directory's entries are rows of their own
        self.counters["purged_entries"] += n
        return changed + dirs


def _entries(r: Any) -> int:
    return len(getattr(r, "children", None) or getattr(r, "shadow", None) or {})
