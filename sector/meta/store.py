"""The SQLite store of the metadata records a node holds.

Rules
-----
1. One row per path: the path (primary key), its ring position as 40 hex digits (the
   zero-padded hex sorts like the integer, so a ring interval is one or two index range
   scans), its kind, the file size (so ``counts`` is one aggregate, no decoding) and the
   encoded record (msgpack, see ``records.encode``; never pickle).
2. Writes go through ``put_many``, many records in ONE transaction, committed with WAL
   and ``synchronous=FULL``, so when it returns they are durable. The writer has
   merged each record over the stored one already (the metadata service stages every
   record so before committing it): merging, never overwriting, is what makes replays,
   handoffs and repair pushes harmless. A directory's entries are rows of their own
   (``entries.py``): a write names the entries it changed and only those are written.
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

import contextlib
import sqlite3
import threading
from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import Any

import msgspec

from sector.errors import UsageError
from sector.ids import key_id, to_hex
from sector.meta import digest, entries, schema
from sector.meta.records import DirRecord, FileRecord, Record, decode, encode, kind_of, merge

__all__ = ["MetaStore"]

_COLS = "path, key, kind, size, data, h, rf, holders, seq, esum"
_MARKS = "?, ?, ?, ?, ?, ?, ?, ?, ?, ?"

# SQLite's default limit of bound parameters was 999 before 3.32: stay under it.
_CHUNK = 500
_PAGE = 1000
_BY_PATH = "SELECT path, {} FROM records WHERE path > ? ORDER BY path LIMIT ?"


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
            try:
                schema.prepare(self._w, self._row, path)
            except BaseException:
                self._w.close()
                raise
            self.seq = int(
                self._w.execute("SELECT COALESCE(MAX(seq), 0) FROM records").fetchone()[0]
            )
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

    # ---------------------------------------------------------------- reads

    @staticmethod
    def _full(con: sqlite3.Connection, path: str, kind: str, data: bytes) -> Record:
        """A row's record, a directory with its entries (``entries.py``): call inside
        the read's transaction, so that row and entries are one snapshot."""
        r = decode(data, check=False)
        if kind == "dir" and isinstance(r, DirRecord):
            r = msgspec.structs.replace(r, children=entries.load(con, path))
        return r

    def get(self, path: str) -> Record | None:
        sql = "SELECT kind, data FROM records WHERE path = ?"
        with self._rlock:
            row = self._r.execute(sql, (path,)).fetchone()
            if row is None or row[0] != "dir":
                return None if row is None else decode(row[1], check=False)
            with self._snapshot():  # a directory: its row and its entries, as one
                row = self._r.execute(sql, (path,)).fetchone()
                return None if row is None else self._full(self._r, path, *row)

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[None]:
        """One read transaction on the reader connection (held under its lock)."""
        self._r.execute("BEGIN")
        try:
            yield
        finally:
            self._r.execute("COMMIT")

    def get_many(self, paths: list[str]) -> dict[str, Record]:
        """The stored records of those paths (missing paths are left out)."""
        paths = list(dict.fromkeys(paths))
        out: dict[str, Record] = {}
        # One read transaction: one snapshot even across several chunks.
        with self._rlock, self._snapshot():
            dirs: list[str] = []
            for chunk in _chunks(paths):
                marks = ",".join("?" * len(chunk))
                rows = self._r.execute(
                    f"SELECT path, kind, data FROM records WHERE path IN ({marks})", chunk
                ).fetchall()
                for p, kind, data in rows:
                    out[p] = decode(data, check=False)
                    if kind == "dir":
                        dirs.append(p)
            for chunk in _chunks(dirs):
                for p, kids in entries.load_many(self._r, chunk).items():
                    out[p] = msgspec.structs.replace(out[p], children=kids)
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
        with self._rlock, self._snapshot():
            rows = self._r.execute(f"SELECT path, kind, data FROM records {sql}", args).fetchall()
            return [self._full(self._r, *row) for row in rows]

    def all(self) -> Iterator[Record]:
        """Every record, by path, fetched a page at a time (rule 4)."""

        def fetch(after: str) -> list[tuple[str, Record]]:
            with self._rlock, self._snapshot():
                rows = self._r.execute(_BY_PATH.format("kind, data"), (after, _PAGE)).fetchall()
                return [(row[0], self._full(self._r, *row)) for row in rows]

        for page in schema.by_path(fetch, _PAGE):
            yield from (r for _, r in page)

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
        with self._rlock, self._snapshot():
            for a, b in digest.intervals(to_hex(lo), to_hex(hi)):
                where, args = self._in(a, b, bucket)
                rows = self._r.execute(
                    f"SELECT path, kind, data FROM records WHERE {where}", args
                ).fetchall()
                out += [self._full(self._r, *row) for row in rows]
        return out

    def arc_pages(self, lo: int, hi: int) -> Iterator[list[Record]]:
        """The records of the arc (lo, hi] by key, a page at a time (rule 4): what a
        handoff moves, never all in memory at once."""
        for a, b in digest.intervals(to_hex(lo), to_hex(hi)):
            after = (a, "\U0010ffff")  # past every row of key a: (a, b] leaves a out
            while True:
                with self._rlock, self._snapshot():
                    rows = self._r.execute(
                        "SELECT key, path, kind, data FROM records WHERE (key, path) > (?, ?) "
                        "AND key <= ? ORDER BY key, path LIMIT ?",
                        (*after, b, _PAGE),
                    ).fetchall()
                    page = [self._full(self._r, p, kind, d) for _, p, kind, d in rows]
                if page:
                    yield page
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
        ``since`` (a seq) the files and tombstones written after it instead, read by
        the seq index, so an incremental scan costs what changed (and sees a file that
        became a tombstone). Only the rows asked for are decoded; never a directory
        (its entries are not loaded: no such scan needs them)."""
        spans = digest.intervals(to_hex(lo), to_hex(hi))
        inside = " OR ".join(["(key > ? AND key <= ?)"] * len(spans))
        bounds = [x for span in spans for x in span]
        # Without ``since``: the table in path order (its own B-tree, no index hops);
        # with it, the seq index, named: SQLite would rather range over the key index
        # and sort the whole arc by seq.
        col, after, kind, index = (
            ("path", "", "AND kind = 'file'", "")
            if since is None
            else ("seq", since, "AND kind != 'dir'", "INDEXED BY records_seq")
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

        def fetch(after: str) -> list[tuple[str, bytes]]:
            with self._rlock:
                return self._r.execute(_BY_PATH.format("data"), (after, _PAGE)).fetchall()

        return schema.by_path(fetch, _PAGE)

    # ---------------------------------------------------------------- writes

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """One write transaction, under the writer's lock: committed, or rolled back
        if anything in it fails; ``generation`` counts the committed ones."""
        with self._wlock:
            self._w.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._w.execute("COMMIT")
            except BaseException:
                # A failed COMMIT may already have rolled back: do not mask its error.
                if self._w.in_transaction:
                    self._w.execute("ROLLBACK")
                raise
            self.generation += 1

    def merge_many(self, records: list[Record]) -> list[Record]:
        """Merge each record with the stored one and commit them all at once.

        Returns the merged records, in the order given (a path given twice is merged
        twice, the second time with the first result). Rows that the merge leaves
        unchanged are not rewritten; of a directory, only the entries the given record
        names (all a merge can change).
        """
        out: list[Record] = []
        with self._writing():
            for r in records:
                row = self._w.execute(
                    "SELECT kind, data FROM records WHERE path = ?", (r.path,)
                ).fetchone()
                old = None if row is None else self._full(self._w, r.path, *row)
                new = merge(old, r)
                if new != old:
                    self._put(new, r.children if isinstance(r, DirRecord) else r.shadow)
                out.append(new)
        return out

    def put_many(
        self, records: list[Record], changed: Mapping[str, Collection[str]] | None = None
    ) -> None:
        """Write records as they are (no merge with the stored ones: rule 2), in one
        transaction. ``changed``: per path, the names of the directory entries that
        may differ from the stored ones (``entries.py`` rule 2); a path not in it (or
        no ``changed`` at all) has every entry written."""
        with self._writing():
            for r in records:
                names = None if changed is None else changed.get(r.path)
                self._put(r, names)

    def _put(self, r: Record, names: Collection[str] | None) -> None:
        prev = self._w.execute(
            "SELECT kind, esum FROM records WHERE path = ?", (r.path,)
        ).fetchone()
        esum = 0
        if isinstance(r, DirRecord):
            if prev is None or prev[0] != "dir":
                names = None  # was no directory here: every entry (entries.py rule 2)
            esum = entries.write(self._w, r, names, prev[1] if names is not None else 0)
        elif prev is not None and prev[0] == "dir":
            entries.drop(self._w, [r.path])  # its entries live on in its shadow
        self._w.execute(
            f"INSERT OR REPLACE INTO records ({_COLS}) VALUES ({_MARKS})",
            self._row(r, self._next(), esum),
        )

    def _next(self) -> int:
        """The next write's seq (under the write lock: commits come in seq order)."""
        self.seq += 1
        return self.seq

    @staticmethod
    def _row(r: Record, seq: int = 0, esum: int = 0) -> tuple[Any, ...]:
        """The columns of a row, in ``_COLS`` order: a directory's without its entries,
        whose hashes sum to ``esum`` (``entries.py`` rule 1)."""
        if isinstance(r, FileRecord):
            size, rf, holders = r.size, r.rf, " ".join(nid for nid, _ in r.replicas)
        else:
            size, rf, holders = 0, 0, ""
        if isinstance(r, DirRecord) and r.children:
            r = msgspec.structs.replace(r, children={})
        key = to_hex(key_id(r.path))
        h = (digest.attrs_hash(r) + esum) % digest.HASH_MOD
        return (r.path, key, kind_of(r), size, encode(r), h, rf, holders, seq, esum)

    def delete_many(self, paths: list[str]) -> None:
        """Drop the rows of those paths, in one transaction (tombstone purge, handoff)."""
        with self._writing():
            for chunk in _chunks(list(paths)):
                marks = ",".join("?" * len(chunk))
                self._w.execute(f"DELETE FROM records WHERE path IN ({marks})", chunk)
                entries.drop(self._w, chunk)

    def replace_exact(self, rows: list[tuple[str, bytes, Record | None]]) -> int:
        """For each (path, old encoded record, new record or None = drop the row): write
        it only where the row still holds exactly the old bytes, in one transaction; a
        row changed meanwhile (a commit of the metadata service) is left as it is.
        Returns how many rows were written or dropped. Rows of directories are not
        for this: their entries are purged by ``purge_entries``."""
        done = 0
        with self._writing():
            for path, old, new in rows:
                if isinstance(new, DirRecord):
                    raise UsageError(f"replace_exact of the directory {path}")
                if new is None:
                    cur = self._w.execute(
                        "DELETE FROM records WHERE path = ? AND data = ? AND kind != 'dir'",
                        (path, old),
                    )
                else:
                    _, key, kind, size, data, h, rf, holders, seq, _ = self._row(new, self._next())
                    cur = self._w.execute(
                        "UPDATE records SET key = ?, kind = ?, size = ?, data = ?, h = ?, "
                        "rf = ?, holders = ?, seq = ? WHERE path = ? AND data = ? AND kind != 'dir'",
                        (key, kind, size, data, h, rf, holders, seq, path, old),
                    )
                done += cur.rowcount
        return done

    def clear(self) -> int:
        """Drop every record (a node back after longer than the tombstone grace,
        ``purge.py`` rule 4); returns how many there were."""
        with self._writing():
            n = self._w.execute("DELETE FROM records").rowcount
            self._w.execute("DELETE FROM entries")
        return n

    def purge_entries(self, before_ms: int) -> tuple[list[str], int]:
        """Drop the "gone" entries of directories stamped before ``before_ms`` (the
        tombstone grace, ``purge.py``), in one transaction; the directories changed
        and how many entries went. Their rows' hashes move with them (rule 5)."""
        with self._writing():
            gone = entries.purge_gone(self._w, before_ms)
            m = digest.HASH_MOD
            for d, (_, s) in gone.items():
                self._w.execute(
                    f"UPDATE records SET esum = ((esum - ?) % {m} + {m}) % {m}, "
                    f"h = ((h - ?) % {m} + {m}) % {m}, seq = ? WHERE path = ?",
                    (s, s, self._next(), d),
                )
        return sorted(gone), sum(n for n, _ in gone.values())

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
