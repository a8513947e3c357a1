"""Tombstone purge (issue 17): when the traces of a removal may go, and when a node that
was away must forget what it holds (pure: times are given, wall-clock milliseconds).

Rules
-----
1. A removal leaves a ``Gone`` record and a "gone" entry in its directory (records.py
   rules 2 and 5) so that a replica which missed it cannot bring it back. Both are
   dropped once they are older than the *grace* period (``cutoff``): by then every
   replica that was up has it, through the synchronous replication or the periodic
   anti-entropy push (``handoff.FULL_SYNC_EVERY``), so the grace must be well beyond
   that push's period (the default is a day; Cassandra's ``gc_grace_seconds`` is ten).
2. A ``Gone`` record goes as a whole only when nothing else rides on it: its shadow
   entries (rule 6 of records.py: children of a directory that a create raced with an
   rmdir) are purged by the same cutoff, and live ones keep it.
3. Each node purges what it holds, owned or not, by the records' own stamps: the
   nodes agree on what is old without talking. A node keeps its *horizon*, the latest
   cutoff it purged with: no tombstone stamped before it is left there.
4. A node that was away longer than the grace may hold a file whose removal it never
   saw and whose tombstone is gone everywhere else: pushed back, that file would come
   back to life. So a node keeps the last time it was in a healthy ring (*alive*:
   quorum in its member view) and, coming back, asks its peers for their horizons:
   one past ``alive - grace / 2`` (the half grace is the margin for a removal it
   missed shortly before it left, which the anti-entropy push would have given it)
   means its records cannot be trusted, and it drops them all before it serves or
   pushes any (``stale``). Its records' replicas are on the nodes that stayed, which
   hand it what it owns as they do to any node that joins. A cluster that was down as
   a whole purged nothing meanwhile, and its nodes keep their records.
"""

from __future__ import annotations

from sector.meta.records import DirRecord, Gone, Record, purge_tombstones

__all__ = ["cutoff", "purged", "stale"]


def cutoff(now_ms: int, grace_ms: int) -> int:
    """Tombstones stamped before this may go (rule 1)."""
    return now_ms - grace_ms


def purged(r: Record, before_ms: int) -> Record | None:
    """``r`` without its tombstones stamped before ``before_ms``: None = drop the whole
    record (an old ``Gone`` with nothing riding on it, rule 2); ``r`` itself (the same
    object) when there is nothing to purge."""
    if isinstance(r, Gone):
        kept = purge_tombstones(r, before_ms)
        if r.v[0] < before_ms and not kept.shadow:
            return None
        return kept
    if isinstance(r, DirRecord):
        return purge_tombstones(r, before_ms)
    return purge_tombstones(r, before_ms) if r.shadow else r


def stale(alive_ms: int | None, horizon_ms: int, grace_ms: int) -> bool:
    """Whether a node last alive at ``alive_ms`` must drop its records, coming back to a
    peer whose horizon is ``horizon_ms`` (rule 4). Never for a node with no record of
    being alive (a new one, or one from before this rule: it has nothing to fear or
    nothing to compare)."""
    if alive_ms is None:
        return False
    return horizon_ms > alive_ms - grace_ms // 2
