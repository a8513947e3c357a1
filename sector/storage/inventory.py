"""What this node stores and for which file (issue 3, parts 2 and 3).

``<data>/inventory.sqlite3`` holds one row per sealed blob: the file path it was
written for, its size and checksum, when it was committed and last re-verified. The
scrubber (``node/scrub.py``) re-hashes blobs against the checksum; the collector
(``node/gc.py``) asks the owner of the path whether the file's current record still
claims the blob *and* this node.

Rules:
- A row is written in the same thread as the blob's commit (after the rename), so a
  sealed blob has a row unless the node died between the two: ``reconcile`` adopts
  such blobs, and blobs of older nodes, with path "" and no checksum (the first
  verification records it; a blob with no known path is never collected).
- A rename adds the new path as an *alias* before the record moves: the collector
  keeps a blob if any of its paths still claims it, so a failed or racing rename
  never makes a live blob look orphaned. Once one path is confirmed the others go.
- ``verdict`` is the whole collection decision and is pure (tested on its own).

The connection is shared by the event loop and worker threads (commits run in the
blob-io pool), hence one lock; every statement is a single-row one and cheap.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass

KEEP = "keep"  # the path's record claims this blob on this node
COLLECT = "collect"  # the record is gone, or names another blob, or not this node
UNSURE = "unsure"  # no record at all (maybe a shard still syncing): ask again later


@dataclass(frozen=True, slots=True)
class Row:
    blob: str
    path: str
    size: int
    checksum: str | None
    committed_at: float
    last_verified: float


def verdict(kind: str | None, rec_blob: str | None, holders: list[str], blob: str, me: str) -> str:
    """What the record of a blob's path says about this node's copy of it.

    ``kind``: "file", "dir", "gone" (tombstone) or None (no record found).
    A tombstone is a definite answer (the file was deleted or moved away, and a move
    left an alias); no record at all is not, right after a restart a shard can
    still be filling, so the caller must see it twice before acting.
    """
    if kind is None:
        return UNSURE
    if kind == "file" and rec_blob == blob:
        return KEEP if me in holders else COLLECT
    return COLLECT


class Inventory:
    def __init__(self, path: str) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS blobs (blob TEXT PRIMARY KEY, path TEXT NOT NULL,"
            " size INTEGER NOT NULL, checksum TEXT, committed_at REAL NOT NULL,"
            " last_verified REAL NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS aliases (blob TEXT NOT NULL, path TEXT NOT NULL,"
            " PRIMARY KEY (blob, path))"
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def record(
        self,
        blob: str,
        path: str,
        size: int,
        checksum: str | None,
        now: float,
        *,
        replace: bool = False,
    ) -> None:
        """A blob was committed. A second commit of the same blob (a retried chain
        write) keeps the first row, only filling in a path it did not know and taking
        the new commit time (``reconcile`` must not drop a row re-recorded while the
        disk was listed, before its file was linked); ``replace``: the bytes replaced a
        rotten copy, whose size and checksum go."""
        keep = "COALESCE(checksum, excluded.checksum)"
        with self._lock:
            self._db.execute(
                "INSERT INTO blobs VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(blob) DO UPDATE SET"
                " path = CASE WHEN path = '' THEN excluded.path ELSE path END,"
                f" checksum = {'excluded.checksum' if replace else keep},"
                " size = excluded.size, committed_at = excluded.committed_at",
                (blob, path, size, checksum, now, now),
            )

    def get(self, blob: str) -> Row | None:
        with self._lock:
            r = self._db.execute("SELECT * FROM blobs WHERE blob = ?", (blob,)).fetchone()
        return Row(*r) if r else None

    def rows(self) -> list[Row]:
        """Every row, least recently verified first (the scrubber's order)."""
        with self._lock:
            got = self._db.execute("SELECT * FROM blobs ORDER BY last_verified").fetchall()
        return [Row(*r) for r in got]

    def paths(self, blob: str) -> list[str]:
        """The blob's path and its aliases ("" not included)."""
        with self._lock:
            r = self._db.execute("SELECT path FROM blobs WHERE blob = ?", (blob,)).fetchone()
            al = self._db.execute("SELECT path FROM aliases WHERE blob = ?", (blob,)).fetchall()
        out = [r[0]] if r and r[0] else []
        return out + [a[0] for a in al if a[0] not in out]

    def add_alias(self, blob: str, path: str) -> bool:
        with self._lock:
            if not self._db.execute("SELECT 1 FROM blobs WHERE blob = ?", (blob,)).fetchone():
                return False
            self._db.execute("INSERT OR IGNORE INTO aliases VALUES (?, ?)", (blob, path))
        return True

    def confirm_alias(self, blob: str, path: str) -> bool:
        """A finished rename: ``path``, if the blob is known by it, becomes its only path."""
        with self._lock:
            known = self._db.execute(
                "SELECT 1 FROM blobs WHERE blob = ? AND path = ? UNION ALL "
                "SELECT 1 FROM aliases WHERE blob = ? AND path = ?",
                (blob, path, blob, path),
            ).fetchone()
            if not known:
                return False
            self._db.execute("UPDATE blobs SET path = ? WHERE blob = ?", (path, blob))
            self._db.execute("DELETE FROM aliases WHERE blob = ?", (blob,))
        return True

    def confirm_path(self, blob: str, path: str) -> None:
        """``path`` claims the blob: it becomes the path, the aliases go."""
        with self._lock:
            self._db.execute("UPDATE blobs SET path = ? WHERE blob = ?", (path, blob))
            self._db.execute("DELETE FROM aliases WHERE blob = ?", (blob,))

    def verified(self, blob: str, checksum: str, now: float) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE blobs SET last_verified = ?, checksum = COALESCE(checksum, ?)"
                " WHERE blob = ?",
                (now, checksum, blob),
            )

    def remove(self, blob: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM blobs WHERE blob = ?", (blob,))
            self._db.execute("DELETE FROM aliases WHERE blob = ?", (blob,))

    def reconcile(self, on_disk: dict[str, int], now: float) -> tuple[int, int]:
        """Match the rows to the blobs on disk (blob -> size): adopt blobs with no row
        (path "", checksum unknown), drop rows whose blob is gone. (adopted, dropped)

        ``now`` must be taken *before* the disk was listed: a row committed since then
        has a blob the listing missed, and is kept."""
        with self._lock:
            known = dict(self._db.execute("SELECT blob, committed_at FROM blobs").fetchall())
            new = [b for b in on_disk if b not in known]
            gone = [b for b, t in known.items() if b not in on_disk and t < now]
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR IGNORE INTO blobs VALUES (?, '', ?, NULL, ?, 0)",
                [(b, on_disk[b], now) for b in new],
            )
            self._db.executemany("DELETE FROM blobs WHERE blob = ?", [(b,) for b in gone])
            self._db.executemany("DELETE FROM aliases WHERE blob = ?", [(b,) for b in gone])
            self._db.execute("COMMIT")
        return len(new), len(gone)

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM blobs").fetchone()[0])
