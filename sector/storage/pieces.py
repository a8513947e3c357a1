"""Piece hashes of a file (issue 14, swarm distribution): the list that lets a reader
verify a file piece by piece, from any peer, before it has the whole.

A file of ``size`` bytes is cut into pieces of ``piece_size`` bytes (the last one
shorter); each piece's BLAKE3 digest (32 bytes) goes into the *piece list*, and the
file's record keeps only ``piece_size`` and the *root*, ``blake3:`` + BLAKE3 of the
concatenated digests (BitTorrent v1's ``pieces`` field with a root over it, as
Kraken's metainfo does). A reader fetches the list from any holder, checks it against
the record's root, then checks every piece as it arrives: a corrupt piece is pinned on
the peer that sent it, where a whole-file checksum would only say "something, somewhere".

Choices:
- The piece size is a power of two times the base (4 MiB by default, as Kraken and
  Dragonfly use; a node option), doubled until a file has at most ``MAX_PIECES``
  pieces: a 1 GiB file has 256 pieces of 4 MiB, a 64 GiB one 2048 of 32 MiB. The list
  then stays under 64 KiB (one control frame) and a have-bitmap under 256 bytes. A
  smaller file has smaller pieces, halved down to 64 KiB while it has fewer than 256:
  a 16 MiB file 256 of 64 KiB, a 256 MiB one 256 of 1 MiB (the swarm pipelines by
  the piece).
- Rejected: a BLAKE3 *tree* (the hash's own chunk chaining values, Bao style), which
  would make the whole-file checksum and the pieces one computation. The blake3
  module does not expose chaining values, and hashing each piece apart costs one
  more BLAKE3 over the bytes (~0.3 s of a core per GB), in the same pass.
- The list is computed where a put's first copy is sealed (``BlobWriter``, ``adopt``),
  in the pass that computes the checksum, and kept beside the blob as
  ``<blob>.pieces``, without fsync. The later hops of a chain and repair's copies skip
  it (one list is all a record needs, and hashing at every hop cost a 3-copy put ~20%
  on a 2-core host); they make theirs from their copy when first asked
  (``load_or_compute``), as a lost or torn list, or one of another piece size, is.

Pure except ``compute_file``/``load_or_compute``/``store``, which read and write the
list's files given their paths.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid

import blake3
import msgspec

from sector.errors import BadRequest

__all__ = [
    "DIGEST",
    "MAX_PIECES",
    "PIECE",
    "PieceHasher",
    "PieceList",
    "RunDigests",
    "Verifier",
    "check_size",
    "compute_file",
    "count",
    "decode",
    "encode",
    "load",
    "load_or_compute",
    "piece_len",
    "piece_size_for",
    "root_of",
    "store",
]

PIECE = 4 << 20  # the default base piece size
MIN_PIECE = 16 << 10  # smaller pieces cost more in requests and bitmaps than they save
MAX_PIECES = 2048
# A file has at least this many pieces where the piece size may shrink to
# ``SMALL_PIECE``: a swarm pipelines piece by piece, and a 16 MiB file in four 4 MiB
# pieces had ten readers wait a whole piece (a third of a second at 100 Mbit/s) at
# every hop (3.0x S/R measured); at 64 KiB, 256 pieces.
MIN_COUNT = 256
SMALL_PIECE = 64 << 10
DIGEST = 32  # bytes of one piece's BLAKE3 digest
SUFFIX = ".pieces"
log = logging.getLogger("sector.blobs")
READ = 1 << 20


def piece_size_for(size: int, base: int = PIECE) -> int:
    """The piece size of a file of ``size`` bytes: ``base`` doubled until the file has
    at most ``MAX_PIECES`` pieces, or halved (down to ``SMALL_PIECE``) while it has
    fewer than ``MIN_COUNT``."""
    p = max(MIN_PIECE, base)
    while size > p * MAX_PIECES:
        p *= 2
    floor = max(MIN_PIECE, min(p, SMALL_PIECE))
    while p // 2 >= floor and size < p * MIN_COUNT:
        p //= 2
    return p


def count(size: int, piece_size: int) -> int:
    """Pieces of a file of ``size`` bytes (0 for an empty file)."""
    return -(-size // piece_size) if size > 0 else 0


def check_size(size: int, piece_size: int) -> None:
    """A piece size a request may name: at most ``MAX_PIECES`` pieces of the file (a
    list of 1-byte pieces of a large file would cost a hash per byte, and memory)."""
    if piece_size <= 0 or count(size, piece_size) > MAX_PIECES:
        raise BadRequest(f"{piece_size}-byte pieces of {size} bytes: more than {MAX_PIECES}")


def piece_len(i: int, size: int, piece_size: int) -> int:
    """Bytes of piece ``i`` (the last one may be shorter)."""
    return max(0, min(piece_size, size - i * piece_size))


def root_of(digests: bytes) -> str:
    """The root a record keeps: BLAKE3 of the concatenated piece digests."""
    return "blake3:" + blake3.blake3(digests).hexdigest()


def digest(data: bytes | bytearray | memoryview) -> bytes:
    return blake3.blake3(data).digest()


class PieceHasher:
    """Piece digests of bytes fed in order, in pieces of ``piece_size`` (the sink's
    chunks need not line up with the pieces)."""

    def __init__(self, piece_size: int) -> None:
        self.piece_size = piece_size
        self._h = blake3.blake3()
        self._fill = 0
        self._out = bytearray()
        self._done = False

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view:
            take = min(len(view), self.piece_size - self._fill)
            self._h.update(view[:take])
            self._fill += take
            view = view[take:]
            if self._fill == self.piece_size:
                self._out += self._h.digest()
                self._h = blake3.blake3()
                self._fill = 0

    def digests(self) -> bytes:
        """The piece list (idempotent: the last short piece is closed once)."""
        if self._fill and not self._done:
            self._out += self._h.digest()
        self._done = True
        return bytes(self._out)


class PieceList(msgspec.Struct, frozen=True):
    """A piece list as it is kept on disk and sent: the file's size, the piece size,
    the digests (``DIGEST`` bytes each, piece 0 first)."""

    size: int
    piece_size: int
    digests: bytes

    @property
    def root(self) -> str:
        return root_of(self.digests)

    def valid(self) -> bool:
        return (
            self.piece_size > 0
            and self.size >= 0
            and len(self.digests) == DIGEST * count(self.size, self.piece_size)
        )

    def of(self, i: int) -> bytes:
        return self.digests[i * DIGEST : (i + 1) * DIGEST]


class RunDigests:
    """The digests of the whole pieces inside one contiguous run of a file's bytes, fed
    in order from byte ``start`` (one span of a striped read, issue 15). The bytes
    before the run's first piece boundary, and a piece the run stops inside of, are
    not its to hash (``Verifier.missing``). One run is fed by one thread."""

    def __init__(self, start: int, size: int, piece_size: int) -> None:
        self.size, self.piece_size = size, piece_size
        self.index = -(-start // piece_size)  # the first piece that starts in the run
        self._skip = self.index * piece_size - start
        self._h = blake3.blake3()
        self._fill = 0
        self.done: dict[int, bytes] = {}

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        if self._skip:
            n = min(self._skip, len(view))
            self._skip -= n
            view = view[n:]
        while view:
            want = piece_len(self.index, self.size, self.piece_size) - self._fill
            if want <= 0:
                return  # past the file's last piece: nothing of a piece
            take = min(len(view), want)
            self._h.update(view[:take])
            self._fill += take
            view = view[take:]
            if take == want:
                self.done[self.index] = self._h.digest()
                self.index += 1
                self._h = blake3.blake3()
                self._fill = 0


class Verifier:
    """Checks a file fetched in runs (a striped read) against its piece list, so the
    whole file need not be read again once it has arrived: each run hashes the pieces
    wholly inside it as they arrive (``run``); the few it does not cover (cut by a
    span's start or end) are hashed from the file afterwards and handed to ``bad``."""

    def __init__(self, size: int, piece_size: int) -> None:
        if piece_size <= 0:
            raise ValueError(f"piece size {piece_size}")
        self.size, self.piece_size = size, piece_size
        self.runs: list[RunDigests] = []

    def run(self, start: int) -> RunDigests:
        r = RunDigests(start, self.size, self.piece_size)
        self.runs.append(r)
        return r

    def digests(self) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        for r in self.runs:
            out.update(r.done)
        return out

    def missing(self) -> list[int]:
        """The pieces no run hashed whole, in order."""
        have = self.digests()
        return [i for i in range(count(self.size, self.piece_size)) if i not in have]

    def bad(self, pl: PieceList, extra: dict[int, bytes]) -> list[int]:
        """The pieces whose digest (from a run, or from ``extra``) is not the list's;
        a piece with neither counts as bad, as does a list of another shape."""
        if pl.size != self.size or pl.piece_size != self.piece_size or not pl.valid():
            return list(range(count(self.size, self.piece_size)))
        got = {**self.digests(), **extra}
        n = count(self.size, self.piece_size)
        return [i for i in range(n) if got.get(i) != pl.of(i)]


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(PieceList)


def encode(pl: PieceList) -> bytes:
    return _enc.encode(pl)


def decode(b: bytes) -> PieceList | None:
    """The list in ``b``; None if it is not a valid one (torn, of another format)."""
    try:
        pl = _dec.decode(b)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    return pl if pl.valid() else None


def compute_file(fd: int, size: int, piece_size: int) -> PieceList:
    """The piece list of the first ``size`` bytes of an open file (blocking)."""
    h = PieceHasher(piece_size)
    buf = bytearray(min(READ, max(1, size)))
    view = memoryview(buf)
    off = 0
    while off < size:
        n = os.preadv(fd, [view[: min(len(buf), size - off)]], off)
        if n <= 0:
            raise OSError(f"file ended {size - off} bytes early")
        h.update(view[:n])
        off += n
    return PieceList(size, piece_size, h.digests())


def store(pl: PieceList, dir_fd: int, name: str, tmp_dir: str) -> None:
    """Write a list as ``name`` in the directory open as ``dir_fd``, through a temp file
    in ``tmp_dir`` and a rename, which replaces a symlink at the name rather than
    writing through it. No fsync: a list lost in a crash is recomputed (module doc)."""
    tmp = os.path.join(tmp_dir, f"{uuid.uuid4().hex}{SUFFIX}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        with open(fd, "wb") as f:
            f.write(encode(pl))
        os.replace(tmp, name, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def keep(where: str, blob: str, pl: PieceList, tmp_dir: str) -> None:
    """Store ``pl`` as the list of ``blob`` in its directory ``where`` (best effort: a
    list that could not be written is recomputed when asked for)."""
    try:
        dfd = os.open(where, _DIR)
    except OSError:
        return
    try:
        store(pl, dfd, blob + SUFFIX, tmp_dir)
    except OSError as exc:
        log.warning("blob %s: piece list not stored (%s)", blob, exc)
    finally:
        os.close(dfd)


def read_list(dir_fd: int, name: str) -> PieceList | None:
    """The list stored as ``name`` in an open directory, None if absent or invalid."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    with open(fd, "rb") as f:
        return decode(f.read(1 << 20))


def _kept(dir_fd: int, blob: str, size: int, piece_size: int | None) -> PieceList | None:
    pl = read_list(dir_fd, blob + SUFFIX)
    if pl is not None and pl.size == size and piece_size in (None, pl.piece_size):
        return pl
    return None


def load(where: str, blob: str, size: int, piece_size: int | None) -> PieceList | None:
    """The list kept beside a blob of ``size`` bytes in directory ``where``, if it is
    valid and of ``piece_size`` (None: whichever it has); None, never computed."""
    try:
        dfd = os.open(where, _DIR)
    except OSError:
        return None
    try:
        return _kept(dfd, blob, size, piece_size)
    finally:
        os.close(dfd)


def load_or_compute(
    where: str,
    blob: str,
    fd: int,
    piece_size: int | None,
    tmp_dir: str,
    base: int = PIECE,
) -> PieceList:
    """The list of the blob open as ``fd`` (in directory ``where``): the stored one if
    it is valid, of the blob's size and of ``piece_size`` (None: whichever it has);
    else computed from the blob (pieces of ``piece_size``, or of
    ``piece_size_for(size, base)``) and stored again. Blocking."""
    size = os.fstat(fd).st_size
    dfd = os.open(where, _DIR)
    try:
        pl = _kept(dfd, blob, size, piece_size)
        if pl is not None:
            return pl
        pl = compute_file(fd, size, piece_size or piece_size_for(size, base))
        with contextlib.suppress(OSError):
            store(pl, dfd, blob + SUFFIX, tmp_dir)
        return pl
    finally:
        os.close(dfd)
