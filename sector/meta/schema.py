"""The SQLite schema of the metadata store (``store.py``) and its upgrades.

A store is opened by ``prepare``: a store of a newer version is refused, an older one
upgraded in place, once (version 1: the row hashes, replica columns and bucket sums of
store rule 5; version 2: a directory's entries out of its row, ``entries.py``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

from sector.meta import digest, entries
from sector.meta.records import DirRecord, decode

__all__ = ["SCHEMA_VERSION", "by_path", "prepare"]

Row = Callable[..., tuple[Any, ...]]  # ``MetaStore._row``: a record's columns
_PAGE = 1000

SCHEMA_VERSION = 3

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
    seq  INTEGER NOT NULL DEFAULT 0, -- when the row was last written (v. 2): rule 5
    esum INTEGER NOT NULL DEFAULT 0  -- a directory's entries' hash sum (v. 3): entries.py
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


def prepare(w: sqlite3.Connection, row: Row, path: str) -> None:
    """Create or upgrade the tables of the store at ``path`` on its writer connection
    ``w``; ``row`` makes a record's columns (``MetaStore._row``)."""
    version = w.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"metadata store {path} has schema version {version}, "
            f"newer than this code's {SCHEMA_VERSION}"
        )
    w.executescript(_SCHEMA + entries.SCHEMA)
    if 0 < version < 3:
        w.execute("ALTER TABLE records ADD COLUMN esum INTEGER NOT NULL DEFAULT 0")
    if version == 1:
        _upgrade_1(w, row)
    w.executescript(_BUCKETS)
    w.execute(_ALL_BUCKETS)
    w.execute(_SEQ_INDEX)
    if version < 2:
        _fill_buckets(w)
    if 0 < version < 3:
        _upgrade_2(w, row)
    w.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _upgrade_1(w: sqlite3.Connection, row: Row) -> None:
    """A version-1 store: add the columns of rule 5 and fill them, once, in one
    transaction (a page of rows at a time)."""
    for col in ("h", "rf", "seq"):
        col += " INTEGER NOT NULL DEFAULT 0"
        w.execute(f"ALTER TABLE records ADD COLUMN {col}")
    w.execute("ALTER TABLE records ADD COLUMN holders TEXT NOT NULL DEFAULT ''")
    w.execute("BEGIN IMMEDIATE")
    for rows in _pages(w, ""):
        upd = []
        for p, data in rows:
            _, _, _, _, _, h, rf, holders, _, _ = row(decode(data, check=False))
            upd.append((h, rf, holders, p))
        w.executemany("UPDATE records SET h = ?, rf = ?, holders = ? WHERE path = ?", upd)
    w.execute("COMMIT")


def by_path(fetch: Callable[[str], list[Any]], page: int = _PAGE) -> Iterator[list[Any]]:
    """Pages of rows whose first column is the path, in path order: ``fetch(after)``
    returns the (at most ``page``) rows after the last one of the page before."""
    after = ""
    while True:
        rows = fetch(after)
        yield rows
        if len(rows) < page:
            return
        after = rows[-1][0]


def _pages(w: sqlite3.Connection, where: str) -> Iterator[list[tuple[str, bytes]]]:
    """The (path, data) of the rows ``where`` (an SQL condition and "AND", or ""), a
    page at a time, read as the rows before are rewritten."""
    sql = f"SELECT path, data FROM records WHERE {where} path > ? ORDER BY path LIMIT ?"
    return by_path(lambda after: w.execute(sql, (after, _PAGE)).fetchall())


def _upgrade_2(w: sqlite3.Connection, row: Row) -> None:
    """A version-2 store: a directory's entries move out of its row into rows of
    their own (``entries.py``), once, in one transaction; the bucket triggers move
    the sums to the rows' new hashes (the attributes' plus the entries')."""
    w.execute("BEGIN IMMEDIATE")
    for rows in _pages(w, "kind = 'dir' AND"):
        for _, data in rows:
            r = decode(data, check=False)
            esum = entries.write(w, r, None, 0) if isinstance(r, DirRecord) else 0
            p, _, _, _, data, h, _, _, _, _ = row(r, esum=esum)
            w.execute(
                "UPDATE records SET data = ?, h = ?, esum = ? WHERE path = ?", (data, h, esum, p)
            )
    w.execute("COMMIT")


def _fill_buckets(w: sqlite3.Connection) -> None:
    p = digest.PREFIX
    w.execute(
        f"INSERT OR REPLACE INTO buckets (b, n, lo, hi, files, dirs, gone, bytes, short) "
        f"SELECT substr(key, 1, {p}), COUNT(*), SUM(h & 2147483647), SUM(h >> 31), "
        f"SUM(kind = 'file'), SUM(kind = 'dir'), SUM(kind = 'gone'), SUM(size), "
        f"SUM(kind = 'file' AND rf > (length(holders) + 1) / 41) "
        f"FROM records GROUP BY substr(key, 1, {p})"
    )
