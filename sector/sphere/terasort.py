"""TeraSort kernels: gensort records, key-range buckets, sort, checksum, validation.

Pure numpy, no I/O: the Sphere UDFs of ``sector terasort`` and the peers of
``bench/terasort.py`` call these on batches of records, so every system sorts and
validates the very same bytes the same way.

A record is 100 bytes in the binary format of gensort (sortbenchmark.org)::

    0..10    key: 10 random bytes, compared as unsigned bytes (memcmp order)
    10..12   0x00 0x11
    12..44   the row number as 32 upper-case ASCII hex digits, zero padded
    44..48   0x88 0x99 0xAA 0xBB
    48..96   filler: 12 groups of 4 equal letters 'A'..'P', one per hex digit of the
             row number's low 48 bits (gensort derives its filler the same way, from
             its random number instead of the row)
    96..100  0xCC 0xDD 0xEE 0xFF

A batch of records is a C-contiguous ``(n, 100)`` uint8 array; ``as_records`` views a
flat buffer as one. Every function here is vectorised: no Python call per record.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "KEY",
    "RECORD",
    "TEXT_LINE",
    "as_records",
    "bucket_of",
    "checksum",
    "from_text",
    "gen_records",
    "merge_summaries",
    "sort_order",
    "sort_records",
    "summary",
    "to_text",
]

RECORD = 100
KEY = 10
TEXT_LINE = 2 * RECORD + 1  # 200 hex digits + "\n"

Records = npt.NDArray[np.uint8]

_U64 = np.uint64

# -- views ------------------------------------------------------------------------------


def as_records(buf: Any) -> Records:
    """View a flat buffer (bytes, bytearray, memoryview, uint8 array) as (n, 100) records.

    No copy when the buffer allows it; an (n, 100) uint8 array is returned as it is.
    """
    if isinstance(buf, np.ndarray):
        if buf.ndim == 2 and buf.shape[1] == RECORD and buf.dtype == np.uint8:
            return buf
        arr = buf.reshape(-1).view(np.uint8)
    else:
        arr = np.frombuffer(buf, dtype=np.uint8)
    if arr.size % RECORD:
        raise ValueError(f"{arr.size} bytes is not a whole number of {RECORD}-byte records")
    return arr.reshape(-1, RECORD)


def _contiguous(records: Any) -> Records:
    return np.ascontiguousarray(as_records(records))


def _key_hi(records: Records) -> npt.NDArray[np.uint64]:
    """The key's first 8 bytes as a native uint64 whose numeric order is memcmp order."""
    return np.ascontiguousarray(records[:, :8]).view(">u8").ravel().astype(_U64)


def _key_lo(records: Records) -> npt.NDArray[np.uint16]:
    """The key's last 2 bytes as a native uint16 (big-endian read, so memcmp order)."""
    return np.ascontiguousarray(records[:, 8:KEY]).view(">u2").ravel().astype(np.uint16)


# -- generation -------------------------------------------------------------------------

# Keys come from a counter-based generator so that any row range can be generated on
# its own, in any order and on any node, and still give the rows one big run would.
# Philox-4x64 keyed by the seed turns counter c into 4 uint64 (one "block"); row r takes
# the 16 bytes of words 2r and 2r+1, i.e. half of block r // 2, and keeps the first 10.
# Generating rows [start, start + count) is then: position a fresh Philox at block
# start // 2 and drop the first half block when start is odd. (Rejected: one seeded
# stream per fixed block of rows with SeedSequence([seed, block]) -- also correct, but
# it needs a loop over blocks and a slice at both ends of every range.)
_HEX = np.frombuffer(b"0123456789ABCDEF", dtype=np.uint8)
_LETTERS = np.frombuffer(b"ABCDEFGHIJKLMNOP", dtype=np.uint8)
_TEMPLATE = np.zeros(RECORD, dtype=np.uint8)
_TEMPLATE[10:12] = (0x00, 0x11)
_TEMPLATE[12:28] = ord("0")  # the high 64 bits of the 128-bit row number: rows < 2**64
_TEMPLATE[44:48] = (0x88, 0x99, 0xAA, 0xBB)
_TEMPLATE[96:100] = (0xCC, 0xDD, 0xEE, 0xFF)


def _random_keys(start: int, count: int, seed: int) -> Records:
    skip = start % 2
    bitgen = np.random.Philox(key=seed, counter=start // 2)
    words = bitgen.random_raw(2 * (count + skip))
    # random_raw is documented as uint64; pin the byte order so keys do not depend on
    # the host's endianness.
    raw = np.asarray(words, dtype="<u8").view(np.uint8).reshape(-1, 16)
    return raw[skip : skip + count, :KEY]


def gen_records(start: int, count: int, seed: int = 0) -> Records:
    """Rows [start, start + count) of the gensort-format data set of ``seed``: (count, 100).

    Deterministic and independent of chunking: the rows of one call equal the same rows
    from any split of the range into several calls (see the note on Philox above).
    """
    if start < 0 or count < 0 or start + count > 2**64:
        raise ValueError(f"bad row range: start={start} count={count}")
    out = np.empty((count, RECORD), dtype=np.uint8)
    if count == 0:
        return out
    out[:] = _TEMPLATE
    out[:, :KEY] = _random_keys(start, count, seed)
    rows = np.arange(count, dtype=_U64) + _U64(start)
    be = rows.astype(">u8").view(np.uint8).reshape(count, 8)  # big-endian bytes
    out[:, 28:44:2] = _HEX[be >> 4]  # the low 16 hex digits, two per byte
    out[:, 29:44:2] = _HEX[be & 15]
    # Filler: hex digit i (0..11) of the row's low 48 bits as a letter, 4 times each.
    letters = np.empty((count, 12), dtype=np.uint8)
    letters[:, 0::2] = _LETTERS[be[:, 2:8] >> 4]
    letters[:, 1::2] = _LETTERS[be[:, 2:8] & 15]
    for j in range(4):
        out[:, 48 + j : 96 : 4] = letters
    return out


# -- partitioning and sorting -----------------------------------------------------------


def bucket_of(records: Any, nbuckets: int) -> npt.NDArray[np.int64]:
    """The bucket in [0, nbuckets) of each record, by key range (monotonic in the key).

    With k the key's first 8 bytes as a big-endian integer, the bucket is
    ``((k >> 32) * nbuckets) >> 32``: about ``k * nbuckets / 2**64`` without 128-bit
    arithmetic, exact enough for uniform keys, and monotonic, so every key of bucket i
    is <= every key of bucket j > i. Needs nbuckets <= 2**32.
    """
    if not 1 <= nbuckets <= 2**32:
        raise ValueError(f"nbuckets must be in [1, 2**32], not {nbuckets}")
    recs = as_records(records)
    hi = _key_hi(recs) >> _U64(32)
    return ((hi * _U64(nbuckets)) >> _U64(32)).astype(np.int64)


_IDX_BITS = 24  # records per sort of packed keys: up to 2**24 (a 1.6 GB bucket)
_IDX_MASK = _U64((1 << _IDX_BITS) - 1)


def sort_order(records: Any) -> npt.NDArray[np.intp]:
    """The stable permutation that sorts ``records`` by key (memcmp order)."""
    recs = as_records(records)
    n = len(recs)
    hi = _key_hi(recs)
    if n < 2:
        return np.arange(n, dtype=np.intp)
    if n <= 1 << _IDX_BITS:
        # One sort of values, not an argsort: the key's top 40 bits above the record's
        # index in 24 bits, in one uint64. numpy sorts plain uint64 several times
        # faster than it argsorts them (SIMD; 18 ms against 137 ms for 1.25 M keys), and
        # the index makes the sort stable and gives the permutation back.
        packed = (hi & ~_IDX_MASK) | np.arange(n, dtype=_U64)
        packed.sort()
        order = (packed & _IDX_MASK).astype(np.intp)
        top = packed >> _U64(_IDX_BITS)
        tie = top[1:] == top[:-1]
    else:
        order = np.argsort(hi, kind="stable")
        shi = hi[order]
        tie = shi[1:] == shi[:-1]
    if tie.any():
        # Runs that the first sort could not tell apart (equal top 40 bits; random
        # keys give a handful per million) are re-sorted on the whole key, stably, so
        # records with equal keys keep their input order.
        in_run = np.zeros(n, dtype=bool)
        in_run[1:] |= tie
        in_run[:-1] |= tie
        pos = np.flatnonzero(in_run)
        starts = np.ones(len(pos), dtype=bool)
        starts[1:] = ~tie[pos[:-1]]  # a run starts where the previous pair is not a tie
        run = np.cumsum(starts)
        sub = order[pos]
        order[pos] = sub[np.lexsort((_key_lo(recs)[sub], hi[sub], run))]
    return order


def sort_records(records: Any) -> Records:
    """A new array of the records sorted by their 10-byte key, stable."""
    recs = _contiguous(records)
    if len(recs) < 2:
        return recs.copy()
    order = sort_order(recs)
    # One 100-byte item per row lets take() copy whole records rather than bytes.
    return np.take(recs.view(f"V{RECORD}").ravel(), order).view(np.uint8).reshape(-1, RECORD)


# -- checksum and validation ------------------------------------------------------------

# Per record: NH (the universal hash of UMAC) over its 25 little-endian 32-bit words --
# pairs (w[2i] + k[2i] mod 2**32) * (w[2i+1] + k[2i+1] mod 2**32) summed mod 2**64, the
# odd word out times a fixed odd constant -- then the splitmix64 finaliser. The checksum
# is the sum of the record hashes mod 2**64: it does not depend on order or on how the
# records are split into batches, and two different multisets give the same sum only by
# accident (NH collides with probability about 2**-32 per pair of records). Rejected: a
# plain multilinear sum of 64-bit words times odd constants -- mod 2**64 it cannot see
# two records that differ only in the top bit of two words. Batches of 16 Ki records
# keep the temporaries in cache (~1.2 GB/s on one core; 256 Ki was 3x slower).
_NH_KEYS = np.random.Generator(np.random.Philox(key=0x5EC7_0A11)).integers(
    0, 2**32, size=26, dtype=np.uint32
)
_NH_EVEN = _NH_KEYS[0:24:2]
_NH_ODD = _NH_KEYS[1:24:2]
_NH_LAST = _NH_KEYS[24]
_ODD = _U64(0x9E3779B97F4A7C15)
_CHECK_BATCH = 1 << 14


def _record_hashes(recs: Records) -> npt.NDArray[np.uint64]:
    words = recs.view("<u4")  # (n, 25); uint32 additions wrap, which is the mod 2**32
    a = (words[:, 0:24:2] + _NH_EVEN).astype(_U64)
    a *= (words[:, 1:24:2] + _NH_ODD).astype(_U64)
    z = a.sum(axis=1, dtype=_U64)
    z += (words[:, 24] + _NH_LAST).astype(_U64) * _ODD
    z ^= z >> _U64(30)
    z *= _U64(0xBF58476D1CE4E5B9)
    z ^= z >> _U64(27)
    z *= _U64(0x94D049BB133111EB)
    z ^= z >> _U64(31)
    return z


def checksum(records: Any) -> int:
    """Order-independent 64-bit checksum of a batch of records (sum of record hashes)."""
    recs = _contiguous(records)
    total = 0
    for i in range(0, len(recs), _CHECK_BATCH):
        total += int(_record_hashes(recs[i : i + _CHECK_BATCH]).sum(dtype=_U64))
    return total % 2**64


def summary(records: Any) -> dict[str, Any]:
    """What validation needs of one batch: count, checksum, first/last key, sortedness.

    ``unsorted_at`` is the index of the first record whose key is smaller than its
    predecessor's, or -1 when the keys never decrease.
    """
    recs = _contiguous(records)
    n = len(recs)
    at = -1
    if n > 1:
        hi, lo = _key_hi(recs), _key_lo(recs)
        down = (hi[1:] < hi[:-1]) | ((hi[1:] == hi[:-1]) & (lo[1:] < lo[:-1]))
        bad = np.flatnonzero(down)
        at = int(bad[0]) + 1 if len(bad) else -1
    return {
        "records": n,
        "checksum": checksum(recs),
        "first_key": bytes(recs[0, :KEY]) if n else None,
        "last_key": bytes(recs[-1, :KEY]) if n else None,
        "sorted": at < 0,
        "unsorted_at": at,
    }


def _key(value: bytes | str) -> bytes:
    # Summaries that went through JSON carry their keys as hex strings.
    return bytes.fromhex(value) if isinstance(value, str) else bytes(value)


def merge_summaries(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Combine the summaries of consecutive parts, in order, into one verdict.

    Sorted iff every part is sorted and no part starts below the previous part's last
    key (empty parts are skipped). ``error`` names the first problem found, or is None.
    """
    records = 0
    total = 0
    error: str | None = None
    prev_last: bytes | None = None
    for i, part in enumerate(parts):
        n = int(part["records"])
        records += n
        total += int(part["checksum"])
        if n == 0:
            continue
        if error is None and not part.get("sorted", True):
            error = f"part {i} is not sorted at record {part.get('unsorted_at', '?')}"
        first = _key(part["first_key"])
        if error is None and prev_last is not None and first < prev_last:
            error = f"part {i} starts with key {first.hex()} below the previous last key {prev_last.hex()}"
        prev_last = _key(part["last_key"])
    return {"records": records, "checksum": total % 2**64, "sorted": error is None, "error": error}


# -- the text form, for GNU sort ----------------------------------------------------------

# Each record as one line of 200 upper-case hex digits: LC_ALL=C sort compares bytes, and
# '0' < ... < '9' < 'A' < ... < 'F' in ASCII, so line order is the records' memcmp order.
# Both ways go through a table of digit pairs read as one uint16 (a byte <-> its two
# digits), gathered 16 Ki records at a time so the temporaries stay in cache.
_TEXT_BATCH = 1 << 14
_PAIR_OF_BYTE = (
    np.stack([_HEX[np.arange(256) >> 4], _HEX[np.arange(256) & 15]], axis=1).view("<u2").ravel()
)
_BAD = 0xFFFF
_BYTE_OF_PAIR = np.full(1 << 16, _BAD, dtype=np.uint16)
for _digits in (b"0123456789ABCDEF", b"0123456789abcdef"):
    _d = np.frombuffer(_digits, dtype=np.uint8).astype(np.int64)
    _BYTE_OF_PAIR[_d[:, None] | (_d[None, :] << 8)] = np.arange(256).reshape(16, 16)


def to_text(records: Any) -> bytes:
    """The text form: one line per record, its 100 bytes as 200 hex digits."""
    recs = as_records(records)
    out = np.empty((len(recs), TEXT_LINE), dtype=np.uint8)
    pairs = out[:, :-1].view("<u2")
    for i in range(0, len(recs), _TEXT_BATCH):
        pairs[i : i + _TEXT_BATCH] = _PAIR_OF_BYTE[recs[i : i + _TEXT_BATCH]]
    out[:, -1] = ord("\n")
    return out.tobytes()


def from_text(buf: Any) -> Records:
    """Records back from their text form (whole lines of 200 hex digits + newline)."""
    arr = np.frombuffer(buf, dtype=np.uint8)
    if arr.size % TEXT_LINE:
        raise ValueError(f"{arr.size} bytes is not a whole number of {TEXT_LINE}-byte lines")
    lines = arr.reshape(-1, TEXT_LINE)
    if not (lines[:, -1] == ord("\n")).all():
        raise ValueError("text form: a line is not 200 hex digits and a newline")
    pairs = lines[:, :-1].view("<u2")
    out = np.empty((len(lines), RECORD), dtype=np.uint8)
    for i in range(0, len(lines), _TEXT_BATCH):
        got = _BYTE_OF_PAIR[pairs[i : i + _TEXT_BATCH]]
        if (got == _BAD).any():
            raise ValueError("text form: a line holds a character that is not a hex digit")
        out[i : i + _TEXT_BATCH] = got
    return out
