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
5. Every row also keeps its hash (``digest.row_hash``) and, for a file, its replica
   target and holders; triggers keep a ``buckets`` table of per-bucket sums (rows,
   hash sums, files, dirs, tombstones, bytes) up to date on every write, so the
   digests of an arc (anti-entropy) and its counts (``node.info``) cost O(buckets),
   not a scan of the shard (``digest.py``). ``generation`` counts the writes, for a
   reader's cache; each row's ``seq`` says which write wrote it last (increasing, kept
   across restarts), so a scan can read only the rows written since its last pass.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from sector.ids import key_id, to_hex
from sector.meta import digest
from sector.meta.records import FileRecord, Record, decode, encode, kind_of, merge

__all__ = ["MetaStore"]

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    path TEXT PRIMARY KEY,
    key  TEXT NOT NULL,              -- key_id(path) as 40 hex digits
    kind TEXT NOT NULL,              -- file | dir | gone
    size INTEGER NOT NULL DEFAULT 0, -- file size, 0 for the others
    data BLOB NOT NULL,              -- records.encode(record)
    h    INTEGER NOT NULL DEFAULT 0, -- digest.row_hash(record)          (version 2)
    rf   INTEGER NOT NULL DEFAULT 0, -- a file's replica target, else 0  (version 2)
    holders TEXT NOT NULL DEFAULT '', -- a file's replica node ids, " "-separated (v. 2)
    seq  INTEGER NOT NULL DEFAULT 0  -- when the row was last written (v. 2): rule 5
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_key ON records(key);
"""
_SEQ_INDEX = "CREATE INDEX IF NOT EXISTS records_seq ON records(seq)"

# Rule 5. A bucket is substr(key, 1, PREFIX); all 4096 rows exist from the start, so the
# triggers only UPDATE. (An INSERT OR IGNORE in a trigger would not do: the outer
# statement's INSERT OR REPLACE overrides a trigger's conflict policy, and would reset
# a bucket's sums to zero.)
_B = f"substr(NEW.key, 1, {digest.PREFIX})"
_OB = f"substr(OLD.key, 1, {digest.PREFIX})"
_ADD = """n = n {op} 1, lo = lo {op} ({r}.h & 2147483647), hi = hi {op} ({r}.h >> 31),
    files = files {op} ({r}.kind = 'file'), dirs = dirs {op} ({r}.kind = 'dir'),
    gone = gone {op} ({r}.kind = 'gone'), bytes = bytes {op} {r}.size,
    short = short {op} ({r}.kind = 'file' AND {r}.rf > (length({r}.holders) + 1) / 41)"""
_BUCKETS = f"""
CREATE TABLE IF NOT EXISTS buckets (
    b TEXT PRIMARY KEY, n INTEGER NOT NULL DEFAULT 0, lo INTEGER NOT NULL DEFAULT 0,
    hi INTEGER NOT NULL DEFAULT 0, files INTEGER NOT NULL DEFAULT 0,
    dirs INTEGER NOT NULL DEFAULT 0, gone INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    short INTEGER NOT NULL DEFAULT 0 -- files listing fewer holders than their target
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS records_ins AFTER INSERT ON records BEGIN
    UPDATE buckets SET {_ADD.format(op="+", r="NEW")} WHERE b = {_B};
END;
CREATE TRIGGER IF NOT EXISTS records_del AFTER DELETE ON records BEGIN
    UPDATE buckets SET {_ADD.format(op="-", r="OLD")} WHERE b = {_OB};
END;
CREATE TRIGGER IF NOT EXISTS records_upd AFTER UPDATE ON records BEGIN
    UPDATE buckets SET {_ADD.format(op="-", r="OLD")} WHERE b = {_OB};
    UPDATE buckets SET {_ADD.format(op="+", r="NEW")} WHERE b = {_B};
END;
"""
_ALL_BUCKETS = f"""
WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i < {16**digest.PREFIX - 1})
INSERT OR IGNORE INTO buckets (b) SELECT printf('%0{digest.PREFIX}x', i) FROM c
"""
_COLS = "path, key, kind, size, data, h, rf, holders, seq"
_MARKS = "?, ?, ?, ?, ?, ?, ?, ?, ?"

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
            if version == 1:
                self._upgrade_1()
            self._w.executescript(_BUCKETS)
            self._w.execute(_ALL_BUCKETS)
            self._w.execute(_SEQ_INDEX)
            self.seq = int(
                self._w.execute("SELECT COALESCE(MAX(seq), 0) FROM records").fetchone()[0]
            )
            if version < 2:
                self._fill_buckets()
            self._w.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self.generation = 0  # bumped by every write (rule 5)
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
        # INSERT OR REPLACE deletes the row it replaces: only with recursive triggers on
        # does that fire the delete trigger that keeps the bucket sums (rule 5).
        conn.execute("PRAGMA recursive_triggers=ON")
        return conn

    def _upgrade_1(self) -> None:
        """A version-1 store: add the columns of rule 5 and fill them, once, in one
        transaction (a page of rows at a time)."""
        for col in ("h", "rf", "seq"):
            col += " INTEGER NOT NULL DEFAULT 0"
            self._w.execute(f"ALTER TABLE records ADD COLUMN {col}")
        self._w.execute("ALTER TABLE records ADD COLUMN holders TEXT NOT NULL DEFAULT ''")
        self._w.execute("BEGIN IMMEDIATE")
        after = ""
        while True:
            rows = self._w.execute(
                "SELECT path, data FROM records WHERE path > ? ORDER BY path LIMIT ?",
                (after, _PAGE),
            ).fetchall()
            upd = []
            for p, data in rows:
                _, _, _, _, _, h, rf, holders, _ = self._row(decode(data, check=False))
                upd.append((h, rf, holders, p))
            self._w.executemany("UPDATE records SET h = ?, rf = ?, holders = ? WHERE path = ?", upd)
            if len(rows) < _PAGE:
                break
            after = rows[-1][0]
        self._w.execute("COMMIT")

    def _fill_buckets(self) -> None:
        p = digest.PREFIX
        self._w.execute(
            f"INSERT OR REPLACE INTO buckets (b, n, lo, hi, files, dirs, gone, bytes, short) "
            f"SELECT substr(key, 1, {p}), COUNT(*), SUM(h & 2147483647), SUM(h >> 31), "
            f"SUM(kind = 'file'), SUM(kind = 'dir'), SUM(kind = 'gone'), SUM(size), "
            f"SUM(kind = 'file' AND rf > (length(holders) + 1) / 41) "
            f"FROM records GROUP BY substr(key, 1, {p})"
        )

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

    # Rule 5: an arc (lo, hi] is summed from the bucket table plus its partial buckets.
    @staticmethod
    def _in(a: str, b: str, bucket: str) -> tuple[str, tuple[str, str]]:
        """The rows of ``bucket`` in the key interval (a, b], as ONE range of the key
        index (given both bounds of each side, SQLite ranges over one pair and filters
        the other: the whole arc per bucket)."""
        end = bucket + digest.AFTER
        low = ("key > ?", a) if a >= bucket else ("key >= ?", bucket)
        high = ("key <= ?", b) if b < end else ("key < ?", end)
        return f"{low[0]} AND {high[0]}", (low[1], high[1])

    def _arc_sums(self, lo: int, hi: int, bcols: str, rcols: str) -> dict[str, tuple[int, ...]]:
        """Per bucket of the arc, the sums ``bcols`` of the bucket table (whole buckets)
        or ``rcols`` over the rows (partial ones); empty buckets left out."""
        out: dict[str, tuple[int, ...]] = {}

        def add(b: str, vals: tuple[int, ...]) -> None:
            if vals[0]:
                old = out.get(b)
                out[b] = (
                    vals if old is None else tuple(x + y for x, y in zip(old, vals, strict=True))
                )

        with self._rlock:
            self._r.execute("BEGIN")  # one snapshot for the table and the rows
            try:
                for a, b in digest.intervals(to_hex(lo), to_hex(hi)):
                    p = digest.PREFIX
                    for row in self._r.execute(
                        f"SELECT b, n, {bcols} FROM buckets WHERE b > ? AND b < ? AND n > 0",
                        (a[:p], b[:p]),
                    ):
                        add(row[0], tuple(row[1:]))
                    for part in digest.partial(a, b):
                        where, args = self._in(a, b, part)
                        row = self._r.execute(
                            f"SELECT COUNT(*), {rcols} FROM records WHERE {where}", args
                        ).fetchone()
                        add(part, tuple(x or 0 for x in row))
            finally:
                self._r.execute("COMMIT")
        return out

    def arc_digests(self, lo: int, hi: int) -> dict[str, digest.Digest]:
        """The digest of each non-empty bucket of the ring arc (lo, hi] (``digest.py``)."""
        sums = self._arc_sums(lo, hi, "lo, hi", "SUM(h & 2147483647), SUM(h >> 31)")
        return {b: (v[0], v[1], v[2]) for b, v in sums.items()}

    def arc_counts(self, lo: int, hi: int) -> dict[str, int]:
        """files, dirs, tombstones, bytes and short (files listing fewer holders than
        their target) of the records in the arc (lo, hi]."""
        sums = self._arc_sums(
            lo,
            hi,
            "files, dirs, gone, bytes, short",
            "SUM(kind = 'file'), SUM(kind = 'dir'), SUM(kind = 'gone'), SUM(size), "
            "SUM(kind = 'file' AND rf > (length(holders) + 1) / 41)",
        )
        tot = [sum(v[i] for v in sums.values()) for i in range(1, 6)]
        return dict(zip(("files", "dirs", "tombstones", "bytes", "short"), tot, strict=True))

    def bucket_records(self, lo: int, hi: int, bucket: str) -> list[Record]:
        """The records of one bucket that lie in the arc (lo, hi]."""
        out: list[Record] = []
        with self._rlock:
            for a, b in digest.intervals(to_hex(lo), to_hex(hi)):
                where, args = self._in(a, b, bucket)
                rows = self._r.execute(f"SELECT data FROM records WHERE {where}", args).fetchall()
                out += [decode(d, check=False) for (d,) in rows]
        return out

    def arc_pages(self, lo: int, hi: int) -> Iterator[list[Record]]:
        """The records of the arc (lo, hi] by key, a page at a time (rule 4): what a
        handoff moves, never all in memory at once."""
        for a, b in digest.intervals(to_hex(lo), to_hex(hi)):
            after = (a, "\U0010ffff")  # past every row of key a: (a, b] leaves a out
            while True:
                with self._rlock:
                    rows = self._r.execute(
                        "SELECT key, path, data FROM records WHERE (key, path) > (?, ?) "
                        "AND key <= ? ORDER BY key, path LIMIT ?",
                        (*after, b, _PAGE),
                    ).fetchall()
                if rows:
                    yield [decode(d, check=False) for _, _, d in rows]
                if len(rows) < _PAGE:
                    break
                after = (rows[-1][0], rows[-1][1])

    def next_key(self, after: int, upto: int) -> int | None:
        """The first key held in the ring arc (after, upto], clockwise; None if none."""
        a, b = to_hex(after), to_hex(upto)
        ranges = [(a, b)] if a < b else [(a, digest.MAX_KEY), ("", b)]
        with self._rlock:
            for x, y in ranges:
                row = self._r.execute(
                    "SELECT MIN(key) FROM records WHERE key > ? AND key <= ?", (x, y)
                ).fetchone()
                if row[0] is not None:
                    return int(row[0], 16)
        return None

    def last_seq(self) -> int:
        """The seq of the last committed write (rule 5)."""
        with self._rlock:
            row = self._r.execute("SELECT COALESCE(MAX(seq), 0) FROM records").fetchone()
        return int(row[0])

    def files(self, lo: int, hi: int, since: int | None = None) -> Iterator[list[Record]]:
        """The file records of the arc (lo, hi], a page at a time (rule 4); with
        ``since`` (a seq) the records of every kind written after it instead, read by
        the seq index, so an incremental scan costs what changed (and sees a file that
        became a tombstone). Only the rows asked for are decoded."""
        spans = digest.intervals(to_hex(lo), to_hex(hi))
        inside = " OR ".join(["(key > ? AND key <= ?)"] * len(spans))
        bounds = [x for span in spans for x in span]
        # Without ``since``: the table in path order (its own B-tree, no index hops);
        # with it, the seq index, named: SQLite would rather range over the key index
        # and sort the whole arc by seq.
        col, after, kind, index = (
            ("path", "", "AND kind = 'file'", "")
            if since is None
            else ("seq", since, "", "INDEXED BY records_seq")
        )
        while True:
            with self._rlock:
                rows = self._r.execute(
                    f"SELECT {col}, data FROM records {index} WHERE {col} > ? {kind} "
                    f"AND ({inside}) ORDER BY {col} LIMIT ?",
                    (after, *bounds, _PAGE),
                ).fetchall()
            if rows:
                yield [decode(d, check=False) for _, d in rows]
            if len(rows) < _PAGE:
                return
            after = rows[-1][0]

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
                            f"INSERT OR REPLACE INTO records ({_COLS}) VALUES ({_MARKS})",
                            self._row(new, self._next()),
                        )
                    out.append(new)
                self._w.execute("COMMIT")
                self.generation += 1
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
                    f"INSERT OR REPLACE INTO records ({_COLS}) VALUES ({_MARKS})",
                    [self._row(r, self._next()) for r in records],
                )
                self._w.execute("COMMIT")
                self.generation += 1
            except BaseException:
                if self._w.in_transaction:
                    self._w.execute("ROLLBACK")
                raise

    def _next(self) -> int:
        """The next write's seq (under the write lock: commits come in seq order)."""
        self.seq += 1
        return self.seq

    @staticmethod
    def _row(r: Record, seq: int = 0) -> tuple[Any, ...]:
        """The columns of a row, in ``_COLS`` order."""
        if isinstance(r, FileRecord):
            size, rf, holders = r.size, r.rf, " ".join(nid for nid, _ in r.replicas)
        else:
            size, rf, holders = 0, 0, ""
        key = to_hex(key_id(r.path))
        return (r.path, key, kind_of(r), size, encode(r), digest.row_hash(r), rf, holders, seq)

    def delete_many(self, paths: list[str]) -> None:
        """Drop the rows of those paths, in one transaction (tombstone purge, handoff)."""
        with self._wlock:
            self._w.execute("BEGIN IMMEDIATE")
            try:
                for chunk in _chunks(list(paths)):
                    marks = ",".join("?" * len(chunk))
                    self._w.execute(f"DELETE FROM records WHERE path IN ({marks})", chunk)
                self._w.execute("COMMIT")
                self.generation += 1
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
                        _, key, kind, size, data, h, rf, holders, seq = self._row(new, self._next())
                        cur = self._w.execute(
                            "UPDATE records SET key = ?, kind = ?, size = ?, data = ?, h = ?, "
                            "rf = ?, holders = ?, seq = ? WHERE path = ? AND data = ?",
                            (key, kind, size, data, h, rf, holders, seq, path, old),
                        )
                    done += cur.rowcount
                self._w.execute("COMMIT")
                self.generation += 1
            except BaseException:
                if self._w.in_transaction:
                    self._w.execute("ROLLBACK")
                raise
        return done

    def clear(self) -> int:
        """Drop every record (a node back after longer than the tombstone grace,
        ``purge.py`` rule 4); returns how many there were."""
        with self._wlock:
            self._w.execute("BEGIN IMMEDIATE")
            cur = self._w.execute("DELETE FROM records")
            self._w.execute("COMMIT")
            self.generation += 1
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
