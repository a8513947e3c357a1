"""The SQLite store of the metadata records a node holds.

Rules
-----
1. One row per path: the path (primary key), its ring position as 40 hex digits (the
   zero-padded hex sorts like the integer, so a ring interval is one or two index range
   scans), its kind, the file size (so ``counts`` is one aggregate, no decoding) and the
   encoded record (msgpack, see ``records.encode``; never pickle).
2. Writes go through ``merge_many``: each incoming record is merged with the stored
   one (``records.merge``) in ONE transaction, committed with WAL and
   ``synchronous=FULL``, so when it returns the merged records are durable. Merging
   (never overwriting) is what makes replays, handoffs and repair pushes harmless.
   ``put_many`` skips the merge for a writer that has merged already (the metadata
   service stages every record over the stored one before committing it).
3. Two connections: a writer (used by the committer thread) and a reader (used by the
   event loop). In WAL mode readers never wait for the writer's fsync, and they only
   ever see committed data. Each has a lock, since a Python sqlite3 connection must not
   run two statements at once. ``":memory:"`` uses one connection for both.
4. Scans (``all``) page through the table by path, releasing the lock between pages,
   so a scan of a big shard never stalls the writer nor holds a lock inside a generator.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from sector.ids import key_id, to_hex
from sector.meta.records import FileRecord, Record, decode, encode, kind_of, merge

__all__ = ["MetaStore"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    path TEXT PRIMARY KEY,
    key  TEXT NOT NULL,              -- key_id(path) as 40 hex digits
    kind TEXT NOT NULL,              -- file | dir | gone
    size INTEGER NOT NULL DEFAULT 0, -- file size, 0 for the others
    data BLOB NOT NULL               -- records.encode(record)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_key ON records(key);
"""

# SQLite's default limit of bound parameters was 999 before 3.32: stay under it.
_CHUNK = 500
_PAGE = 1000


def _chunks(items: list[str], n: int = _CHUNK) -> Iterable[list[str]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


class MetaStore:
    """The records of one node, in one SQLite file (see the rules above)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._w = self._connect(path)
        self._wlock = threading.Lock()
        with self._wlock:
            version = self._w.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                self._w.close()
                raise RuntimeError(
                    f"metadata store {path} has schema version {version}, "
                    f"newer than this code's {SCHEMA_VERSION}"
                )
            self._w.executescript(_SCHEMA)
            self._w.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        if path == ":memory:":
            self._r, self._rlock = self._w, self._wlock
        else:
            self._r = self._connect(path)
            self._rlock = threading.Lock()
        self._closed = False

    @staticmethod
    def _connect(path: str) -> sqlite3.Connection:
        # isolation_level=None: autocommit, we issue BEGIN/COMMIT ourselves, so a
        # transaction is exactly what merge_many says it is.
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: the WAL is fsynced at every commit, so a commit survives power loss
        # (NORMAL would only survive a process crash). "Nothing acknowledged is lost."
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=10000")
        return conn

    # ---------------------------------------------------------------- reads

    def get(self, path: str) -> Record | None:
        with self._rlock:
            row = self._r.execute("SELECT data FROM records WHERE path = ?", (path,)).fetchone()
        return None if row is None else decode(row[0], check=False)

    def get_many(self, paths: list[str]) -> dict[str, Record]:
        """The stored records of those paths (missing paths are left out)."""
        paths = list(dict.fromkeys(paths))
        out: dict[str, Record] = {}
        with self._rlock:
            # One read transaction: one snapshot even across several chunks.
            self._r.execute("BEGIN")
            try:
                for chunk in _chunks(paths):
                    marks = ",".join("?" * len(chunk))
                    rows = self._r.execute(
                        f"SELECT path, data FROM records WHERE path IN ({marks})", chunk
                    ).fetchall()
                    for p, data in rows:
                        out[p] = decode(data, check=False)
            finally:
                self._r.execute("COMMIT")
        return out

    def in_range(self, lo: int, hi: int) -> list[Record]:
        """Records whose key_id(path) lies in the ring interval (lo, hi], by key.

        The interval wraps around zero when lo > hi; lo == hi is the whole ring (a
        one-node ring owns everything), as ``ids.between_right``.
        """
        a, b = to_hex(lo), to_hex(hi)
        args: tuple[str, ...]
        # Ordered clockwise from lo (a handoff streams them in ring order): when the
        # interval wraps, the keys after lo come first, then those from zero up to hi.
        if lo < hi:
            sql, args = "WHERE key > ? AND key <= ? ORDER BY key", (a, b)
        elif lo > hi:
            sql = "WHERE key > ? OR key <= ? ORDER BY key <= ?, key"
            args = (a, b, b)
        else:
            sql, args = "ORDER BY key <= ?, key", (a,)
        with self._rlock:
            rows = self._r.execute(f"SELECT data FROM records {sql}", args).fetchall()
        return [decode(d, check=False) for (d,) in rows]

    def all(self) -> Iterator[Record]:
        """Every record, by path, fetched a page at a time (rule 4)."""
        for page in self.raw_pages():
            for _, data in page:
                yield decode(data, check=False)

    def counts(self) -> dict[str, int]:
        """files, dirs, tombstones, and bytes (the sum of file sizes)."""
        with self._rlock:
            rows = self._r.execute(
                "SELECT kind, COUNT(*), COALESCE(SUM(size), 0) FROM records GROUP BY kind"
            ).fetchall()
        by_kind = {k: (n, s) for k, n, s in rows}
        return {
            "files": by_kind.get("file", (0, 0))[0],
            "dirs": by_kind.get("dir", (0, 0))[0],
            "tombstones": by_kind.get("gone", (0, 0))[0],
            "bytes": by_kind.get("file", (0, 0))[1],
        }

    def raw_pages(self) -> Iterator[list[tuple[str, bytes]]]:
        """Every row as (path, encoded record), a page at a time (rule 4): for a scan
        that writes back only what did not change meanwhile (``replace_exact``)."""
        after = ""
        while True:
            with self._rlock:
                rows = self._r.execute(
                    "SELECT path, data FROM records WHERE path > ? ORDER BY path LIMIT ?",
                    (after, _PAGE),
                ).fetchall()
            yield rows
            if len(rows) < _PAGE:
                return
            after = rows[-1][0]

    # ---------------------------------------------------------------- writes

    def merge_many(self, records: list[Record]) -> list[Record]:
        """Merge each record with the stored one and commit them all at once.

        Returns the merged records, in the order given (a path given twice is merged
        twice, the second time with the first result). Rows that the merge leaves
        unchanged are not rewritten.
        """
        out: list[Record] = []
        with self._wlock:
            self._w.execute("BEGIN IMMEDIATE")
            try:
                for r in records:
                    row = self._w.execute(
                        "SELECT data FROM records WHERE path = ?", (r.path,)
                    ).fetchone()
                    old = None if row is None else decode(row[0], check=False)
                    new = merge(old, r)
                    if new != old:
                        self._w.execute(
                            "INSERT OR REPLACE INTO records (path, key, kind, size, data) "
                            "VALUES (?, ?, ?, ?, ?)",
                            self._row(new),
                        )
                    out.append(new)
                self._w.execute("COMMIT")
            except BaseException:
                # A failed COMMIT may already have rolled back: do not mask its error.
                if self._w.in_transaction:
                    self._w.execute("ROLLBACK")
                raise
        return out

    def put_many(self, records: list[Record]) -> None:
        """Write records as they are (no merge with the stored ones), in one transaction.

        For a writer that already merged each record over the stored one, like the
        metadata service's committer: reading and decoding a large directory again only
        to learn that the new record contains it would double the cost of every update.
        """
        with self._wlock:
            self._w.execute("BEGIN IMMEDIATE")
            try:
                self._w.executemany(
                    "INSERT OR REPLACE INTO records (path, key, kind, size, data) VALUES (?, ?, ?, ?, ?)",
                    [self._row(r) for r in records],
                )
                self._w.execute("COMMIT")
            except BaseException:
                if self._w.in_transaction:
                    self._w.execute("ROLLBACK")
                raise

    @staticmethod
    def _row(r: Record) -> tuple[Any, ...]:
        size = r.size if isinstance(r, FileRecord) else 0
        return (r.path, to_hex(key_id(r.path)), kind_of(r), size, encode(r))

    def delete_many(self, paths: list[str]) -> None:
        """Drop the rows of those paths, in one transaction (tombstone purge, handoff)."""
        with self._wlock:
            self._w.execute("BEGIN IMMEDIATE")
            try:
                for chunk in _chunks(list(paths)):
                    marks = ",".join("?" * len(chunk))
                    self._w.execute(f"DELETE FROM records WHERE path IN ({marks})", chunk)
                self._w.execute("COMMIT")
            except BaseException:
                # A failed COMMIT may already have rolled back: do not mask its error.
                if self._w.in_transaction:
                    self._w.execute("ROLLBACK")
                raise

    def replace_exact(self, rows: list[tuple[str, bytes, Record | None]]) -> int:
        """For each (path, old encoded record, new record or None = drop the row): write
        it only where the row still holds exactly the old bytes, in one transaction; a
        row changed meanwhile (a commit of the metadata service) is left as it is.
        Returns how many rows were written or dropped."""
        done = 0
        with self._wlock:
            self._w.execute("BEGIN IMMEDIATE")
            try:
                for path, old, new in rows:
                    if new is None:
                        cur = self._w.execute(
                            "DELETE FROM records WHERE path = ? AND data = ?", (path, old)
                        )
                    else:
                        _, key, kind, size, data = self._row(new)
                        cur = self._w.execute(
                            "UPDATE records SET key = ?, kind = ?, size = ?, data = ? "
                            "WHERE path = ? AND data = ?",
                            (key, kind, size, data, path, old),
                        )
                    done += cur.rowcount
                self._w.execute("COMMIT")
            except BaseException:
                if self._w.in_transaction:
                    self._w.execute("ROLLBACK")
                raise
        return done

    def clear(self) -> int:
        """Drop every record (a node back after longer than the tombstone grace,
        ``purge.py`` rule 4); returns how many there were."""
        with self._wlock:
            cur = self._w.execute("DELETE FROM records")
        return cur.rowcount

    # ---------------------------------------------------------------- lifecycle

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._wlock:
            self._w.close()
        if self._r is not self._w:
            with self._rlock:
                self._r.close()

    def __enter__(self) -> MetaStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
