"""Metadata records, their merge rules and the path rules (pure: no I/O, no clock).

Rules
-----
1. Every record carries a version ``v``, a hybrid logical clock stamp
   ``(wall ms, counter, origin node id hex)`` compared lexicographically. ``Clock`` makes
   them: strictly increasing on one node, and ahead of every stamp it has observed, so
   a change made after seeing another change always wins over it.
2. A path holds one of three records: ``FileRecord``, ``DirRecord`` or ``Gone`` (a
   tombstone, so a delete is not undone by a replica that missed it).
3. ``merge`` is a join: commutative, associative and idempotent, so replicas that see
   the same set of updates in any order, any number of times, end up equal. That is
   what lets metadata survive handoff when ownership moves on join, leave or crash.
4. The record with the higher ``v`` wins whole (an exact tie of stamps, which a correct
   clock never makes, is broken by comparing the encoded records, so it is still
   deterministic). ``v`` versions what a user wrote: content, existence, name.
4a. Where a file's copies are (``replicas``) and how many it should have (``rf``) are
   versioned apart, by ``rv``: repair and ``setrf`` bump ``rv`` and keep ``v``, and
   ``rv`` only orders two records of the *same* ``v``. So a change of the replica list
   never outranks a change of content or a delete, however late it was made: a repair
   that worked from a stale record (the far side of a partition, a new owner that has
   not caught up) cannot bring an overwritten or deleted version back. Rejected: one
   stamp for both (what we had), where a repair re-stamped the version it repaired
   and so beat a later overwrite made elsewhere.
5. A directory's children are a versioned add/remove set: per name, the entry with the
   higher ``Child.v`` wins; removing a name leaves a ``"gone"`` entry (a tombstone)
   until ``purge_tombstones`` drops it after a grace period. Two directory records
   merge their children this way whatever their ``v``; attributes come from the winner.
6. Children entries survive into a later directory of the same path even when a file
   or a tombstone came in between (a create racing an ``rmdir`` is never lost: it
   reappears when the directory is made again). To keep ``merge`` associative the
   entries must then be carried by the file or tombstone record meanwhile: that is the
   ``shadow`` field of ``FileRecord`` and ``Gone`` (empty, and not even encoded, in
   the normal case). Rejected alternative: dropping the children when a non-directory
   wins. ``merge(merge(dir1, gone2), dir3)`` would then differ from
   ``merge(dir1, merge(gone2, dir3))``, and replicas would disagree for ever.
7. A directory removed with its tree (``Gone.tree``, ``rm -r``) that later merges with
   a copy listing a live entry older than the removal (the entry was acknowledged on
   copies the removal could not reach: a kill and a partition at once) did not see
   that child; the removal is finished on it (``unseen_children``: the owner removes
   the child's tree and buries the entry). A live entry *newer* than the removal is a
   create that raced it and stays, as in rule 6.

Path rules (``normalize``): absolute POSIX paths, duplicate and trailing slashes
collapsed; ``.`` and ``..`` segments, NUL, control characters, segments over 255 UTF-8
bytes and paths over 4096 bytes are refused with ``InvalidPath``. Unicode and spaces are
fine and are kept as given: no Unicode normalisation, as in POSIX file systems, where
names are byte strings.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

from sector.errors import BadRequest, InvalidPath, UsageError

__all__ = [
    "KINDS",
    "MAX_NAME_BYTES",
    "MAX_PATH_BYTES",
    "Child",
    "Clock",
    "DirRecord",
    "FileRecord",
    "Gone",
    "Record",
    "Stamp",
    "add_child",
    "basename",
    "bury_shadow_entry",
    "check_name",
    "decode",
    "encode",
    "entry",
    "few",
    "from_builtins",
    "join",
    "kind_of",
    "live_children",
    "merge",
    "merge_into",
    "normalize",
    "parent",
    "purge_tombstones",
    "remove_child",
    "stamp_of",
    "to_builtins",
    "unseen_children",
]

Stamp = tuple[int, int, str]
"""Hybrid logical clock stamp: (wall ms, counter, origin node id hex)."""

KINDS = ("file", "dir", "gone")
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096
MAX_DEPTH = 1000  # path levels, as HDFS's MAX_PATH_DEPTH


# --------------------------------------------------------------------------- clock


class Clock:
    """Hybrid logical clock (Kulkarni et al. 2014), pure: the caller passes ``now``.

    A stamp keeps the wall clock when it moves forward and falls back on the counter
    when it does not (same millisecond, clock stepped back, or a peer ahead of us), so
    stamps are strictly increasing on one node whatever the wall clock does.
    """

    __slots__ = ("_counter", "_wall", "origin")

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self._wall = 0
        self._counter = 0

    def tick(self, now_ms: int) -> Stamp:
        """A new stamp, later than every stamp made or observed so far."""
        if now_ms > self._wall:
            self._wall, self._counter = now_ms, 0
        else:
            self._counter += 1
        return (self._wall, self._counter, self.origin)

    def observe(self, s: Stamp) -> None:
        """Take in a stamp seen from a peer, so our next tick comes after it."""
        wall, counter = s[0], s[1]
        if (wall, counter) > (self._wall, self._counter):
            self._wall, self._counter = wall, counter

    @property
    def last(self) -> Stamp:
        """The latest stamp made or observed (with our origin)."""
        return (self._wall, self._counter, self.origin)


# --------------------------------------------------------------------------- records


class Child(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One entry of a directory: its version and kind ("file", "dir" or "gone").

    ``gc=False``: a Child holds only a tuple of ints and strings, so it can never be in
    a reference cycle; untracked, a 100k-entry directory decodes twice as fast.
    """

    v: Stamp
    kind: str


class FileRecord(msgspec.Struct, frozen=True, tag="file", omit_defaults=True):
    """A sealed file version: its size, checksum, blob name and replica locations."""

    path: str
    v: Stamp
    size: int
    checksum: str
    blob: str
    replicas: list[tuple[str, str]]  # (node id hex, address)
    rf: int  # target replica count
    owner: str = ""
    mode: int = 0o644
    ctime: float = 0.0
    mtime: float = 0.0
    # Children of a directory that lived at this path before (rule 6). Not a listing.
    shadow: dict[str, Child] = {}
    # Version of ``replicas`` and ``rf`` within version ``v`` (rule 4a); None (not
    # encoded: records written before it existed read the same) until first changed.
    rv: Stamp | None = None
    # The piece list's piece size and root (``storage/pieces.py``, issue 14): a reader
    # verifies each piece of the file against them. 0 and "" (not encoded) in records
    # made before piece lists existed: such a file is verified whole.
    piece_size: int = 0
    pieces: str = ""


class DirRecord(msgspec.Struct, frozen=True, tag="dir", omit_defaults=True):
    """A directory: its attributes and its children (a versioned add/remove set)."""

    path: str
    v: Stamp
    children: dict[str, Child] = {}
    rf: int = 0  # 0: inherit the replica target from the parent
    owner: str = ""
    mode: int = 0o755
    ctime: float = 0.0
    mtime: float = 0.0


class Gone(msgspec.Struct, frozen=True, tag="gone", omit_defaults=True):
    """A tombstone: the path was removed at ``v``."""

    path: str
    v: Stamp
    mtime: float = 0.0
    shadow: dict[str, Child] = {}  # rule 6, as in FileRecord
    # Where a renamed file went ("" = deleted): lets whoever holds a copy under the old
    # name find the record that still claims it (the collector follows it).
    moved: str = ""
    # The token of the delete that made it (route.py): a retry of that same delete,
    # whose first attempt took effect but was not acknowledged, is answered as done
    # instead of "no such file".
    token: str = ""
    # Removed with everything under it (rm -r): a live shadow entry older than ``v``
    # is a child the delete did not see (its copies were out of reach), and goes too
    # (rule 7). False for an rmdir, which removes only an empty directory.
    tree: bool = False


Record = FileRecord | DirRecord | Gone
R = TypeVar("R", FileRecord, DirRecord, Gone)


def kind_of(r: Record) -> str:
    """ "file", "dir" or "gone"."""
    if isinstance(r, FileRecord):
        return "file"
    if isinstance(r, DirRecord):
        return "dir"
    return "gone"


# --------------------------------------------------------------------------- merge


def merge(a: Record | None, b: Record) -> Record:
    """Join two versions of the record of one path (see the rules above)."""
    if a is None:
        return b
    if a.path != b.path:
        raise UsageError(f"cannot merge records of different paths: {a.path!r} and {b.path!r}")
    win = a if _beats(a, b) else b
    kids = _merge_children(_entries(a), _entries(b))
    if kids == _entries(win):
        return win
    if isinstance(win, DirRecord):
        return msgspec.structs.replace(win, children=kids)
    return msgspec.structs.replace(win, shadow=kids)


def _entries(r: Record) -> dict[str, Child]:
    return r.children if isinstance(r, DirRecord) else r.shadow


def _beats(a: Record, b: Record) -> bool:
    """True if a's attributes win over b's (a >= b in the record order)."""
    if a.v != b.v:
        return a.v > b.v
    if isinstance(a, FileRecord) and isinstance(b, FileRecord) and a.rv != b.rv:
        return _rv(a) > _rv(b)  # rule 4a: the same version, a newer replica list
    # Equal stamps: only a buggy or replayed origin makes them. Compare the encoded
    # records without their children (those are merged anyway): a total order on
    # distinct attribute sets, the same on every node.
    return _tiebreak(a) >= _tiebreak(b)


_ZERO: Stamp = (0, 0, "")


def _rv(r: FileRecord) -> Stamp:
    return r.rv if r.rv is not None else _ZERO


def _tiebreak(r: Record) -> bytes:
    if isinstance(r, DirRecord):
        r = msgspec.structs.replace(r, children={})
    else:
        r = msgspec.structs.replace(r, shadow={})
    return _encoder.encode(r)


def _child_key(c: Child) -> tuple[Stamp, str]:
    # The kind breaks an exact tie of stamps ("gone" > "file" > "dir"): deterministic.
    return (c.v, c.kind)


def _merge_children(x: dict[str, Child], y: dict[str, Child]) -> dict[str, Child]:
    if not y or x == y:
        return x
    if not x:
        return y
    out = dict(x)
    _join_into(out, y)
    # Not sorted: records compare equal whatever the order of their entries, and
    # sorting a 100k-entry directory on every merge costs more than the merge itself.
    # The encoded bytes may therefore differ between replicas in entry order: whatever
    # hashes records to compare replicas must sort the entries first.
    return out


def _join_into(out: dict[str, Child], y: dict[str, Child]) -> bool:
    """Each entry of y into out where it is newer; whether any was."""
    changed = False
    for name, c in y.items():
        old = out.get(name)
        # `old != c` first: most entries are equal, and that test runs in C.
        if old is None or (old != c and _child_key(c) > _child_key(old)):
            out[name] = c
            changed = True
    return changed


def merge_into(cur: DirRecord, r: DirRecord) -> DirRecord:
    """``merge(cur, r)`` for a few entries into a large directory, without copying its
    entries: ``cur``'s own are updated in place and shared by the result (a new record
    whenever an entry changed). Only for a record nobody keeps as a snapshot: the
    metadata service's current copy of a directory (``MetaService.stage``); a merge
    that copies would cost O(entries) for each create in a directory of a million."""
    kids = cur.children
    changed = _join_into(kids, r.children)
    if not _beats(cur, r):
        return msgspec.structs.replace(r, children=kids)
    return msgspec.structs.replace(cur, children=kids) if changed else cur


def few(r: DirRecord, cur: DirRecord) -> bool:
    """Whether r's entries are few enough beside cur's to be merged one by one in place
    (``merge_into``) rather than by a copy of cur's (a C-level dict copy costs ~1/16
    of an update in Python per entry)."""
    return 16 * len(r.children) <= len(cur.children)


def entry(d: DirRecord, name: str, kind: str, v: Stamp) -> DirRecord:
    """The one-entry delta of ``d`` setting ``name`` to ``kind`` at ``v``: its
    attributes, and that entry alone (merged into ``d``: ``add_child``)."""
    return msgspec.structs.replace(d, children={name: _child(name, kind, v)})


def _child(name: str, kind: str, v: Stamp) -> Child:
    """Entry ``name`` as ``kind`` at ``v``, once both are checked."""
    check_name(name)
    if kind not in KINDS:
        raise UsageError(f"unknown child kind {kind!r} (expected one of {', '.join(KINDS)})")
    return Child(v, kind)


def add_child(d: DirRecord, name: str, kind: str, v: Stamp) -> DirRecord:
    """d with entry ``name`` set to ``kind`` at ``v`` (an older ``v`` changes nothing).

    The directory's own ``v`` is left alone: it versions the attributes, while each
    entry carries its own version, so concurrent adds on different nodes all survive.
    """
    new = _child(name, kind, v)
    old = d.children.get(name)
    if old is not None and _child_key(old) >= _child_key(new):
        return d
    children = dict(d.children)
    children[name] = new
    return msgspec.structs.replace(d, children=children)


def stamp_of(x: Any) -> Stamp:
    """A stamp as it travels (``[wall ms, counter, origin]``); BadRequest if it is not."""
    ok = isinstance(x, list | tuple) and len(x) == 3
    if not ok or not all(type(i) is int for i in x[:2]) or not isinstance(x[2], str):
        raise BadRequest(f"not a version stamp: {x!r}")
    return (x[0], x[1], x[2])


def remove_child(d: DirRecord, name: str, v: Stamp) -> DirRecord:
    """d with entry ``name`` removed at ``v`` (leaves a "gone" entry: a tombstone)."""
    return add_child(d, name, "gone", v)


def live_children(d: DirRecord) -> dict[str, str]:
    """The listing: name -> kind ("file" or "dir") of every entry not removed, by name."""
    return {n: c.kind for n, c in sorted(d.children.items()) if c.kind != "gone"}


def unseen_children(r: Record) -> dict[str, str]:
    """The children an ``rm -r`` did not see (rule 7): name -> kind of each live shadow
    entry of a tree tombstone stamped before it. Empty for any other record."""
    if not isinstance(r, Gone) or not r.tree or not r.shadow:
        return {}
    return {n: c.kind for n, c in r.shadow.items() if c.kind != "gone" and c.v < r.v}


def bury_shadow_entry(r: Gone, name: str, v: Stamp) -> Gone:
    """A tombstone with shadow entry ``name`` made "gone" at ``v`` (``remove_child`` on
    a directory's entry, for the entries rule 6 carries: rule 7's finish)."""
    old = r.shadow.get(name)
    new = Child(v, "gone")
    if old is None or _child_key(old) >= _child_key(new):
        return r
    return msgspec.structs.replace(r, shadow={**r.shadow, name: new})


def purge_tombstones(d: R, older_than_ms: int) -> R:
    """d without the "gone" entries stamped before ``older_than_ms`` (wall clock, ms).

    Only safe once every replica has seen the tombstone (a stale replica could bring
    back the entry it buried), hence a grace period well beyond the repair interval.
    Works on the shadow entries of files and tombstones too.
    """
    entries = _entries(d)
    kept = {n: c for n, c in entries.items() if c.kind != "gone" or c.v[0] >= older_than_ms}
    if len(kept) == len(entries):
        return d
    if isinstance(d, DirRecord):
        return msgspec.structs.replace(d, children=kept)
    return msgspec.structs.replace(d, shadow=kept)


# --------------------------------------------------------------------------- encoding

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Record)


def encode(r: Record) -> bytes:
    """The msgpack bytes of a record (what the store keeps on disk)."""
    return _encoder.encode(r)


def decode(b: bytes, *, check: bool = True) -> Record:
    """A record from msgpack bytes; BadRequest if they are not a valid record.

    ``check=False`` skips the semantic checks (normal paths, child names, ranges) but
    never the type checks: for bytes this node wrote itself, e.g. the store's rows.
    """
    try:
        r = _decoder.decode(b)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise BadRequest(f"malformed metadata record: {exc}") from None
    if check:
        _check(r)
    return r


def to_builtins(r: Record) -> dict[str, Any]:
    """A record as plain dicts/lists/tuples, for embedding in an RPC frame."""
    out: dict[str, Any] = msgspec.to_builtins(r)
    return out


def from_builtins(obj: Any) -> Record:
    """The inverse of ``to_builtins``; BadRequest if ``obj`` is not a valid record."""
    try:
        r: Record = msgspec.convert(obj, Record)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"malformed metadata record: {exc}") from None
    _check(r)
    return r


def _check(r: Record) -> None:
    """Semantic checks msgspec's type checks cannot express. Raises BadRequest."""
    try:
        if normalize(r.path) != r.path:
            raise BadRequest(f"metadata record path {r.path!r:.100} is not normalised")
        _check_stamp(r.v)
        if isinstance(r, FileRecord) and r.rv is not None:
            _check_stamp(r.rv)
        for name, c in _entries(r).items():
            check_name(name)
            _check_stamp(c.v)
            if c.kind not in KINDS:
                raise BadRequest(f"child {name!r:.100} of {r.path!r:.100} has kind {c.kind!r:.20}")
        if isinstance(r, FileRecord):
            if r.size < 0 or r.rf < 0 or r.piece_size < 0:
                raise BadRequest(f"file record {r.path!r:.100}: negative size, rf or piece size")
            if not 0 <= r.mode <= 0o7777:
                raise BadRequest(f"file record {r.path!r:.100}: bad mode {r.mode:o}")
        elif isinstance(r, DirRecord):
            if r.rf < 0:
                raise BadRequest(f"dir record {r.path!r:.100}: negative rf")
            if not 0 <= r.mode <= 0o7777:
                raise BadRequest(f"dir record {r.path!r:.100}: bad mode {r.mode:o}")
    except InvalidPath as exc:
        raise BadRequest(f"metadata record: {exc}", **exc.data) from None


def _check_stamp(v: Stamp) -> None:
    if v[0] < 0 or v[1] < 0:
        raise BadRequest(f"negative clock stamp {v!r:.100}")


# --------------------------------------------------------------------------- paths

# NUL and the other C0/C1 control characters; lone surrogates (not encodable as UTF-8).
_BAD_CHAR = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _show(path: str) -> str:
    """The path for an error message: repr (so one line, control chars escaped), cut short."""
    return repr(path) if len(path) <= 80 else repr(path[:77]) + "..."


def _bad_char_message(what: str, text: str, ch: str) -> str:
    if ch == "\x00":
        return f"invalid {what} {_show(text)}: contains a NUL byte"
    if "\ud800" <= ch <= "\udfff":
        return f"invalid {what} {_show(text)}: not valid Unicode (lone surrogate)"
    return f"invalid {what} {_show(text)}: contains control character U+{ord(ch):04X}"


# A path already in normal form, as almost every path a node sees is (one the cluster
# made, or a client already normalised): segments of allowed characters, short enough
# whatever their UTF-8 width, none starting with "." (so never "." or "..": a name
# like ".hidden" takes the long way, and comes out the same).
_SEG_CHAR = "[^/\\x00-\\x1f\\x7f-\\x9f\\ud800-\\udfff]"
_NORMAL = re.compile(f"(?:/(?!\\.){_SEG_CHAR}{{1,{MAX_NAME_BYTES // 4}}})+")


def normalize(path: str) -> str:
    """The normal form of an absolute path; InvalidPath (naming the path) if it has none."""
    if (
        type(path) is str
        and len(path) <= MAX_PATH_BYTES // 4
        and _NORMAL.fullmatch(path)
        and path.count("/") <= MAX_DEPTH
    ):
        return path
    if not isinstance(path, str):
        raise InvalidPath(f"invalid path {path!r:.80}: not a string", path=repr(path)[:200])
    # Bail out early on absurd input before doing any work on it.
    if len(path) > 4 * MAX_PATH_BYTES:
        raise InvalidPath(
            f"invalid path {_show(path)}: longer than {MAX_PATH_BYTES} bytes", path=path[:200]
        )
    if not path.startswith("/"):
        raise InvalidPath(
            f"invalid path {_show(path)}: not absolute (must start with '/')", path=path[:200]
        )
    m = _BAD_CHAR.search(path)
    if m is not None:
        raise InvalidPath(_bad_char_message("path", path, m.group()), path=path[:200])
    segs = [s for s in path.split("/") if s]
    if len(segs) > MAX_DEPTH:
        raise InvalidPath(
            f"invalid path {_show(path)}: deeper than {MAX_DEPTH} levels", path=path[:200]
        )
    for s in segs:
        if s == "." or s == "..":
            raise InvalidPath(
                f"invalid path {_show(path)}: '{s}' segments are not allowed", path=path[:200]
            )
        # A char is at most 4 UTF-8 bytes: only long segments need encoding to measure.
        if len(s) > MAX_NAME_BYTES // 4 and len(s.encode("utf-8")) > MAX_NAME_BYTES:
            raise InvalidPath(
                f"invalid path {_show(path)}: segment {_show(s)} is longer than "
                f"{MAX_NAME_BYTES} bytes",
                path=path[:200],
            )
    out = "/" + "/".join(segs)
    if len(out) > MAX_PATH_BYTES // 4 and len(out.encode("utf-8")) > MAX_PATH_BYTES:
        raise InvalidPath(
            f"invalid path {_show(path)}: longer than {MAX_PATH_BYTES} bytes", path=path[:200]
        )
    return out


def check_name(name: str) -> str:
    """``name`` if it is a valid single path segment (a directory entry), else InvalidPath."""
    if not isinstance(name, str) or not name:
        raise InvalidPath(f"invalid name {name!r:.80}: must be a non-empty string")
    if "/" in name:
        raise InvalidPath(f"invalid name {_show(name)}: contains '/'", name=name[:200])
    if name == "." or name == "..":
        raise InvalidPath(f"invalid name {name!r}: '.' and '..' are not allowed", name=name)
    m = _BAD_CHAR.search(name)
    if m is not None:
        raise InvalidPath(_bad_char_message("name", name, m.group()), name=name[:200])
    if len(name) > MAX_NAME_BYTES // 4 and len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise InvalidPath(
            f"invalid name {_show(name)}: longer than {MAX_NAME_BYTES} bytes", name=name[:200]
        )
    return name


def parent(path: str) -> str:
    """The directory holding ``path`` ("/" for "/" itself)."""
    p = normalize(path)
    return p.rsplit("/", 1)[0] or "/"


def basename(path: str) -> str:
    """The last segment of ``path`` ("" for "/")."""
    return normalize(path).rsplit("/", 1)[1]


def join(dir: str, name: str) -> str:
    """The path of entry ``name`` (one segment) in directory ``dir``."""
    d = normalize(dir)
    check_name(name)
    return normalize(d + "/" + name)  # re-checks the total length
