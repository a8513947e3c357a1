"""Range digests of a metadata shard: what anti-entropy compares before it pushes
(Dynamo's Merkle trees, Cassandra's repair; here one level of fixed ring buckets).

Rules:
1. The ring is cut into ``4096`` buckets by the first ``PREFIX`` hex digits of a
   record's key (``key_id(path)`` as 40 hex digits). A bucket's digest is the count of
   its rows and the sums of the low and high 31 bits of their hashes: sums, so the
   store keeps every bucket's digest up to date on each write (SQLite triggers, O(1)
   per row) and a digest never needs a rescan of the shard.
2. A row's hash (``row_hash``) is BLAKE2b of the record's canonical encoding (maps by
   sorted key); a directory's is that of its attributes (the record without entries)
   plus the sum of its entries' hashes (``entry_hash``), modulo 2**62. Two replicas
   holding the same record agree on it, whatever order their merges built the entries
   in, and the store updates it by the entries a write changes, never rehashing a
   directory of a million entries for one create (``store.py``, ``entries.py``).
3. An arc (lo, hi] of the ring is one or two plain key intervals (``intervals``); each
   covers whole buckets (their digests are read from the bucket table) and at most two
   partial ones at its ends (``partial``; summed from those rows alone). So a digest of
   an arc costs O(buckets + the rows of two buckets), not O(rows).
4. Owner and replica compute the digests of the same arc; the owner pushes the records
   of the buckets that differ (``differ``). Merges are idempotent: a bucket that differs
   only because writes are in flight costs one bucket's push, never a wrong record.
"""

from __future__ import annotations

import hashlib

import msgspec

from sector.meta.records import Child, DirRecord, Record

__all__ = [
    "MAX_KEY",
    "PREFIX",
    "Digest",
    "attrs_hash",
    "differ",
    "entry_hash",
    "intervals",
    "partial",
    "row_hash",
]

PREFIX = 3  # hex digits: 4096 buckets, ~250 rows each in a shard of a million
MAX_KEY = "f" * 40
AFTER = "g"  # sorts after every hex digit: a bucket p holds the keys p <= key < p + AFTER

Digest = tuple[int, int, int]  # rows, sum of low 31 bits, sum of high 31 bits

_canonical = msgspec.msgpack.Encoder(order="sorted")


HASH_MOD = 1 << 62  # row hashes are 62 bits: they fit SQLite's signed integers


def _h62(b: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(b, digest_size=8).digest(), "big") >> 2


def attrs_hash(r: Record) -> int:
    """The hash of a record without a directory's entries (for any other kind, the
    record's whole hash: a file's or a tombstone's shadow entries are in it)."""
    if isinstance(r, DirRecord) and r.children:
        r = msgspec.structs.replace(r, children={})
    return _h62(_canonical.encode(r))


def entry_hash(path: str, name: str, c: Child) -> int:
    """The hash of entry ``name`` of directory ``path`` (rule 2)."""
    return _h62(_canonical.encode((path, name, c.v, c.kind)))


def row_hash(r: Record) -> int:
    """62 bits of the record's canonical hash (rule 2), computed whole."""
    h = attrs_hash(r)
    if isinstance(r, DirRecord):
        h += sum(entry_hash(r.path, n, c) for n, c in r.children.items())
    return h % HASH_MOD


def intervals(lo: str, hi: str) -> list[tuple[str, str]]:
    """The ring arc (lo, hi] (40 hex digits each) as key intervals (a, b], a < b, that
    do not wrap; ``a == ""`` is "from the first key". lo == hi is the whole ring."""
    if lo < hi:
        return [(lo, hi)]
    if lo == hi:
        return [("", MAX_KEY)]
    out = [("", hi)]
    if lo < MAX_KEY:
        out.append((lo, MAX_KEY))
    return out


def partial(a: str, b: str) -> list[str]:
    """The buckets that the interval (a, b] covers only in part: those of its ends.
    Every other bucket p with a[:PREFIX] < p < b[:PREFIX] lies wholly inside it."""
    ends = [b[:PREFIX]]
    if a and a[:PREFIX] != ends[0]:
        ends.insert(0, a[:PREFIX])
    return ends


def differ(mine: dict[str, Digest], theirs: dict[str, Digest]) -> list[str]:
    """The buckets whose digests are not the same on both sides (a bucket missing on
    one side differs from a non-empty one on the other), sorted."""
    return sorted(b for b in mine.keys() | theirs.keys() if mine.get(b) != theirs.get(b))
