"""The persisted repair queue of one node: ``<data>/repair.sqlite3`` (garage's resync queue).

Rules:
- One row per path: when it is due, how many attempts failed, why it was queued, the
  nodes whose copy was reported bad, the last error. A path queued again while queued
  keeps one row: the earlier due time wins, unless the row is backing off (then the
  backoff is kept: a periodic scan must not turn a 60 s backoff into a 30 s one).
- Every enqueue bumps the row's generation. The worker finishes a path with the
  generation it took: if the path was queued again meanwhile (a new crash while the
  repair ran), the row stays for another pass instead of being deleted.
- A failure pushes the row back by ``backoff(attempts)``: 1, 2, 4 ... seconds, capped.
- Time is passed in (``now``, wall-clock seconds: rows outlive the process).

Rejected: an in-memory queue rebuilt by a scan at start. A scan is O(records) and runs
only every scan interval; the queue holds what is known to be wrong *now* (reported bad
copies above all, which no scan of the records can rediscover).
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass

__all__ = ["BACKOFF_CAP", "Entry", "RepairQueue", "backoff"]

BACKOFF_BASE = 1.0
BACKOFF_CAP = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS repair (
    path     TEXT PRIMARY KEY,
    due      REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    reason   TEXT NOT NULL DEFAULT '',
    bad      TEXT NOT NULL DEFAULT '',   -- node ids, comma-separated
    error    TEXT NOT NULL DEFAULT '',
    gen      INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS repair_due ON repair(due);
"""


def backoff(attempts: int) -> float:
    """Seconds to wait after the ``attempts``-th failure (1, 2, 4, ... capped)."""
    return min(BACKOFF_CAP, BACKOFF_BASE * 2 ** max(0, attempts - 1))


@dataclass(frozen=True, slots=True)
class Entry:
    path: str
    due: float
    attempts: int
    reason: str
    bad: frozenset[str]
    error: str
    gen: int


class RepairQueue:
    """Thread-safe (one lock): scans enqueue from a worker thread."""

    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL, not FULL: a queue row lost to a power cut is found again by the next
        # scan; the metadata itself is what must survive, and it does (FULL there).
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def enqueue(
        self, path: str, reason: str, now: float, *, bad: str | None = None, urgent: bool = False
    ) -> None:
        self.enqueue_many([path], reason, now, bad=bad, urgent=urgent)

    def enqueue_many(
        self,
        paths: list[str],
        reason: str,
        now: float,
        *,
        bad: str | None = None,
        urgent: bool = False,
    ) -> None:
        """Queue paths, due now (``urgent``: even a row that is backing off)."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for p in paths:
                    row = self._db.execute(
                        "SELECT due, attempts, bad FROM repair WHERE path = ?", (p,)
                    ).fetchone()
                    if row is None:
                        self._db.execute(
                            "INSERT INTO repair(path, due, reason, bad, gen) VALUES (?,?,?,?,1)",
                            (p, now, reason, bad or ""),
                        )
                        continue
                    due, attempts, old_bad = row
                    if attempts == 0 or urgent:
                        due = min(due, now)
                    nodes = {x for x in old_bad.split(",") if x}
                    if bad:
                        nodes.add(bad)
                    self._db.execute(
                        "UPDATE repair SET due = ?, reason = ?, bad = ?, gen = gen + 1"
                        " WHERE path = ?",
                        (due, reason, ",".join(sorted(nodes)), p),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def due(
        self, now: float, limit: int, *, skip: set[str] | frozenset[str] = frozenset()
    ) -> list[Entry]:
        """Up to ``limit`` rows due at ``now``, earliest first, none of ``skip``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT path, due, attempts, reason, bad, error, gen FROM repair"
                " WHERE due <= ? ORDER BY due LIMIT ?",
                (now, limit + len(skip)),
            ).fetchall()
        out = [
            Entry(p, d, a, r, frozenset(x for x in b.split(",") if x), e, g)
            for p, d, a, r, b, e, g in rows
            if p not in skip
        ]
        return out[:limit]

    def next_due(self) -> float | None:
        with self._lock:
            row = self._db.execute("SELECT MIN(due) FROM repair").fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def get(self, path: str) -> Entry | None:
        with self._lock:
            row = self._db.execute(
                "SELECT path, due, attempts, reason, bad, error, gen FROM repair WHERE path = ?",
                (path,),
            ).fetchone()
        if row is None:
            return None
        p, d, a, r, b, e, g = row
        return Entry(p, d, a, r, frozenset(x for x in b.split(",") if x), e, g)

    def done(self, e: Entry) -> bool:
        """Remove the row, unless it was queued again since ``e`` was taken."""
        with self._lock:
            cur = self._db.execute("DELETE FROM repair WHERE path = ? AND gen = ?", (e.path, e.gen))
            if cur.rowcount:
                return True
            # Queued again meanwhile: the reports it carried are handled, the new
            # trigger is not.
            self._db.execute("UPDATE repair SET attempts = 0 WHERE path = ?", (e.path,))
            return False

    def failed(self, e: Entry, now: float, error: str) -> float:
        """Back off; returns the new due time."""
        attempts = e.attempts + 1
        due = now + backoff(attempts)
        with self._lock:
            self._db.execute(
                "UPDATE repair SET due = MAX(due, ?), attempts = ?, error = ? WHERE path = ?",
                (due, attempts, error[:500], e.path),
            )
        return due

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM repair").fetchone()[0])
