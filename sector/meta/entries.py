"""A directory's entries as rows of their own (issue 17), under ``store.py``'s records.

Rules:
1. The ``records`` row of a directory keeps its attributes (the record without its
   entries) and ``esum``, the sum of its entries' hashes (``digest.entry_hash``); each
   entry is a row of ``entries``, keyed by (directory, name), with its stamp, kind and
   hash. The row's ``h`` is the attributes' hash plus ``esum`` (modulo 2**62), which
   is ``digest.row_hash`` of the whole record: digests compare as before.
2. A write names the entries it changed (``write``): only those rows are written and
   ``esum`` moves by the difference of their hashes, so a create in a directory of a
   million entries writes one entry, not the million. Without names (a write that
   does not know, or a directory that was not one in the store: made over a
   tombstone, whose shadow entries become its entries) every entry is written.
3. A name the record does not have is deleted from the rows: the record a writer
   stages holds everything stored (the metadata service's rule), so this only ever
   drops what a purge of old "gone" entries (``purge_gone``) already dropped.
4. A read puts the entries back into the record (``load``), in the snapshot the
   store's read runs in. Functions here run inside the store's transactions, on its
   connections and under its locks; they never commit.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from sector.meta.digest import HASH_MOD, entry_hash
from sector.meta.records import Child, DirRecord

__all__ = ["SCHEMA", "drop", "load", "load_many", "purge_gone", "write"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    dir    TEXT NOT NULL,            -- the directory's path
    name   TEXT NOT NULL,
    ms     INTEGER NOT NULL,         -- the entry's stamp: wall ms, counter, origin
    ctr    INTEGER NOT NULL,
    origin TEXT NOT NULL,
    kind   TEXT NOT NULL,            -- file | dir | gone
    h      INTEGER NOT NULL,         -- digest.entry_hash
    PRIMARY KEY (dir, name)
) WITHOUT ROWID;
-- The tombstone pass's "gone" entries past the grace, without a scan of every entry.
CREATE INDEX IF NOT EXISTS entries_gone ON entries(ms) WHERE kind = 'gone';
"""

_INSERT = "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?, ?)"


def _row(path: str, name: str, c: Child) -> tuple[str, str, int, int, str, str, int]:
    return (path, name, c.v[0], c.v[1], c.v[2], c.kind, entry_hash(path, name, c))


def write(con: sqlite3.Connection, r: DirRecord, names: Iterable[str] | None, esum: int) -> int:
    """Write the entries of ``r`` named in ``names`` (rule 2; None: all of them, and
    no others), given the stored ``esum`` (ignored for all); returns the new one."""
    path = r.path
    if names is None:
        con.execute("DELETE FROM entries WHERE dir = ?", (path,))
        # A snapshot first (one C call: atomic under the GIL): the service's current
        # record may gain entries on the event loop meanwhile (``records.merge_into``).
        rows = [_row(path, n, c) for n, c in list(r.children.items())]
        con.executemany(_INSERT, rows)
        return sum(row[6] for row in rows) % HASH_MOD
    for n in names:
        old = con.execute("SELECT h FROM entries WHERE dir = ? AND name = ?", (path, n)).fetchone()
        c = r.children.get(n)
        if c is None:  # rule 3
            if old is not None:
                con.execute("DELETE FROM entries WHERE dir = ? AND name = ?", (path, n))
                esum -= old[0]
            continue
        row = _row(path, n, c)
        if old is not None and old[0] == row[6]:
            continue  # the same entry: nothing to write
        con.execute(_INSERT, row)
        esum += row[6] - (old[0] if old is not None else 0)
    return esum % HASH_MOD


def drop(con: sqlite3.Connection, paths: list[str]) -> None:
    """Forget the entries of these paths (no longer directories, or dropped)."""
    con.executemany("DELETE FROM entries WHERE dir = ?", [(p,) for p in paths])


def load(con: sqlite3.Connection, path: str) -> dict[str, Child]:
    """The entries of directory ``path``, by name."""
    rows = con.execute(
        "SELECT name, ms, ctr, origin, kind FROM entries WHERE dir = ?", (path,)
    ).fetchall()
    return {n: Child((ms, ctr, o), k) for n, ms, ctr, o, k in rows}


def load_many(con: sqlite3.Connection, paths: list[str]) -> dict[str, dict[str, Child]]:
    """The entries of each of these directories (at most the store's chunk of them)."""
    out: dict[str, dict[str, Child]] = {p: {} for p in paths}
    marks = ",".join("?" * len(paths))
    rows = con.execute(
        f"SELECT dir, name, ms, ctr, origin, kind FROM entries WHERE dir IN ({marks})", paths
    )
    for d, n, ms, ctr, o, k in rows:
        out[d][n] = Child((ms, ctr, o), k)
    return out


def purge_gone(con: sqlite3.Connection, before_ms: int) -> dict[str, tuple[int, int]]:
    """Drop the "gone" entries stamped before ``before_ms`` (records rule: the
    tombstone grace); per directory, how many went and the sum of their hashes."""
    out: dict[str, tuple[int, int]] = {}
    rows = con.execute(
        "SELECT dir, h FROM entries WHERE kind = 'gone' AND ms < ?", (before_ms,)
    ).fetchall()
    for d, h in rows:
        n, s = out.get(d, (0, 0))
        out[d] = (n + 1, (s + h) % HASH_MOD)
    if rows:
        con.execute("DELETE FROM entries WHERE kind = 'gone' AND ms < ?", (before_ms,))
    return out
